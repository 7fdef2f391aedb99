"""Secure aggregation and differential privacy through the real service, with real party
processes: the SecAgg+ stages travel over the party protocol, and epsilon reaches the REST
history."""

from __future__ import annotations

import json

import httpx

from fedfuse.data import federate, load_dataset
from service_helpers import fedfuse_process, stop_all
from test_buffered_service import _bound_url, _wait


def test_secagg_with_distributed_dp_through_the_service_with_party_processes(tmp_path):
    log = tmp_path / "service.log"
    service = fedfuse_process("serve", "--port", "0", "--data-dir", str(tmp_path / "data"), log=log)
    parties = []
    try:
        url = _bound_url(log, service)
        created = tmp_path / "created.json"
        create = fedfuse_process(
            *("create", "--server", url, "--num-parties", "3", "--rounds", "2"),
            *("--secagg", "--noise-multiplier", "0.5", "--noise", "distributed"),
            *("--l2-norm-clip", "1.0", "--learning-rate", "0.1", "--round-timeout", "120"),
            log=created,
        )
        assert create.wait(120) == 0, created.read_text()
        answer = json.loads(created.read_text())
        fid = answer["aggregator_id"]
        spec = httpx.get(f"{url}/v1/federations/{fid}").json()["config"]
        assert spec["secure"]["secagg"] and spec["privacy"]["noise"] == "distributed"
        train, test = load_dataset("digits")
        files = federate(train, test, 3, "iid", seed=0).save_npz(tmp_path / "parties")
        for i, path in enumerate(files):
            args = ("party", "--server", url, "--token", answer["join_token"], "--data", str(path))
            parties.append(fedfuse_process(*args, log=tmp_path / f"party{i}.log"))
        status = _wait(url, fid, lambda s: s["status"] in ("completed", "failed"))
        assert status["status"] == "completed", status
        assert [p.wait(120) for p in parties] == [0, 0, 0]
        rounds = httpx.get(f"{url}/v1/federations/{fid}/history").json()["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        for record in rounds:
            assert record["fused"], record["not_fused"]
            assert len(record["participants"]) == 3
            assert record["secure"]["dropped"] == {}
            assert record["sigma"] == 0.5 and record["epsilon"] > 0
        assert rounds[1]["epsilon"] > rounds[0]["epsilon"]
        assert "epsilon" in log.read_text()
    finally:
        stop_all([*parties, service])
