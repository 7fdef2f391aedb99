"""Secure aggregation and differential privacy through the real service, with real party
processes: the SecAgg+ stages travel over the party protocol, and epsilon reaches the REST
history."""

from __future__ import annotations

import httpx

from fedfuse.data import federate, load_dataset
from service_helpers import cli_create, fedfuse_process, party_processes, stop_all
from test_buffered_service import _bound_url, _wait


def test_secagg_with_distributed_dp_through_the_service_with_party_processes(tmp_path):
    log = tmp_path / "service.log"
    service = fedfuse_process("serve", "--port", "0", "--data-dir", str(tmp_path / "data"), log=log)
    parties = []
    try:
        url = _bound_url(log, service)
        answer = cli_create(
            url,
            tmp_path,
            *("--num-parties", "3", "--rounds", "2", "--secagg", "--noise-multiplier", "0.5"),
            *("--noise", "distributed", "--l2-norm-clip", "1.0", "--learning-rate", "0.1"),
            *("--round-timeout", "120"),
        )
        fid = answer["aggregator_id"]
        spec = httpx.get(f"{url}/v1/federations/{fid}").json()["config"]
        assert spec["secure"]["secagg"] and spec["privacy"]["noise"] == "distributed"
        train, test = load_dataset("digits")
        files = federate(train, test, 3, "iid", seed=0).save_npz(tmp_path / "parties")
        parties = party_processes(url, answer["join_token"], files, tmp_path)
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


def test_the_tutorial_form_turns_on_dp_and_secagg_and_refuses_what_cannot_work(tmp_path):
    from fastapi.testclient import TestClient

    from fedfuse.service import ServiceSettings, create_app
    from test_service_api import FORM, model_bytes

    app = create_app(ServiceSettings(data_dir=str(tmp_path), max_upload_bytes=2_000_000))
    files = {"model_file": ("m.pt", model_bytes())}
    with TestClient(app) as client:
        form = FORM | {"noise_multiplier": "1.1", "max_epsilon": "5", "secagg": "true",
                       "noise": "distributed", "dropout_rate": "0.2"}  # fmt: skip
        r = client.post("/start-aggregator", data=form, files=files)
        assert r.status_code == 200, r.text
        config = client.get(f"/v1/federations/{r.json()['aggregator_id']}").json()["config"]
        assert config["privacy"]["noise_multiplier"] == 1.1
        assert config["privacy"]["max_epsilon"] == 5
        assert config["secure"] == config["secure"] | {"secagg": True, "dropout_rate": 0.2}
        for bad, needle in [
            ({"secagg": "true", "noise_seed": "1", "noise_multiplier": "1"}, "noise_seed"),
            ({"noise_multiplier": "-2"}, "privacy.noise_multiplier"),
            ({"secagg": "maybe"}, "secagg"),
        ]:
            r = client.post("/start-aggregator", data=FORM | bad, files=files)
            assert r.status_code == 400, r.text
            assert needle in r.json()["detail"]


def test_a_spent_privacy_budget_completes_the_federation_and_says_why(tmp_path):
    import time

    from fastapi.testclient import TestClient

    from fedfuse.service import ServiceSettings, create_app
    from test_service_api import FORM, model_bytes, party

    app = create_app(ServiceSettings(data_dir=str(tmp_path), max_upload_bytes=2_000_000))
    form = FORM | {"rounds": "10", "noise_multiplier": "1.0", "max_epsilon": "4.5",
                   "fusion_algorithm": "fedavg"}  # fmt: skip
    with TestClient(app) as client:
        r = client.post(
            "/start-aggregator", data=form, files={"model_file": ("m.pt", model_bytes())}
        )
        agg = r.json()["aggregator_id"]
        party(client, agg)
        party(client, agg)
        assert client.post("/train", json={"aggregator_id": agg, "wait": False}).status_code == 202
        deadline = time.monotonic() + 120
        while client.get(f"/v1/federations/{agg}").json()["status"] == "training":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        status = client.get(f"/v1/federations/{agg}").json()
        rounds = client.get(f"/v1/federations/{agg}/history").json()["rounds"]
    assert status["status"] == "completed"
    assert 0 < len(rounds) < 10 and all(r["epsilon"] <= 4.5 for r in rounds)
    assert "max_epsilon" in str(status)
