"""Buffered (FedBuff) aggregation through the real service, with real party processes.

The same ``Federation`` loop that simulates FedBuff on a simulated clock runs in the service on
real time: every ``buffer_size`` accepted arrivals are fused, staleness-weighted and
checkpointed, and a killed service resumes from its checkpoint.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import httpx

from fedfuse.data import federate, load_dataset
from service_helpers import Service, cli_create, fedfuse_process, party_processes, stop_all


def _party_files(tmp_path: Path, n: int) -> list[Path]:
    train, test = load_dataset("digits")
    return federate(train, test, n, "iid", seed=0).save_npz(tmp_path / "parties")


def _bound_url(log: Path, proc) -> str:
    """The URL ``fedfuse serve --port 0`` printed once it had bound a port."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"fedfuse service on (http://127\.0\.0\.1:(\d+))", log.read_text())
        if found and int(found.group(2)) > 0:
            return found.group(1)
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"no port in the service log: {log.read_text()}")


def _wait(url: str, fid: str, predicate, timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/federations/{fid}", timeout=30).json()
        if predicate(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"timed out: {status}")


def _check_buffers(rounds: list[dict], buffer_size: int) -> None:
    for record in rounds:
        assert record["fused"], record
        assert len(record["participants"]) == buffer_size
        assert len(record["staleness"]) == buffer_size
        assert all(isinstance(s, int) and s >= 0 for s in record["staleness"])
        assert record["train"]["num_examples"] > 0


def test_buffered_federation_through_the_service_with_party_processes(tmp_path):
    log = tmp_path / "service.log"
    service = fedfuse_process("serve", "--port", "0", "--data-dir", str(tmp_path / "data"), log=log)
    parties = []
    try:
        url = _bound_url(log, service)  # `--port 0` says which port it got
        answer = cli_create(
            url,
            tmp_path,
            *("--num-parties", "3", "--rounds", "4", "--mode", "buffered", "--buffer-size", "2"),
            *("--round-timeout", "120", "--learning-rate", "0.1", "--epochs", "2"),
        )
        fid = answer["aggregator_id"]
        spec = httpx.get(f"{url}/v1/federations/{fid}").json()["config"]
        assert spec["aggregation"]["mode"] == "buffered"
        assert spec["aggregation"]["buffer_size"] == 2
        files = _party_files(tmp_path, 3)
        parties = party_processes(url, answer["join_token"], files, tmp_path)
        status = _wait(url, fid, lambda s: s["status"] in ("completed", "failed"))
        assert status["status"] == "completed", status
        assert [p.wait(120) for p in parties] == [0, 0, 0]
        rounds = httpx.get(f"{url}/v1/federations/{fid}/history").json()["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3, 4]
        _check_buffers(rounds, 2)
        # the service log says what each buffer fused
        assert f"federation {fid[:8]} round 4: 2/2 parties" in log.read_text()
    finally:
        stop_all([*parties, service])


def test_a_killed_buffered_federation_resumes_from_its_checkpoint(tmp_path):
    service = Service(tmp_path / "data").start()
    token = "b" * 24
    parties = []
    try:
        form = {
            "fusion_algorithm": "fedavg", "model": "mlp", "input_shape": "64",
            "num_classes": 10, "learning_rate": "0.1", "auto_start": "true",
            "num_parties": "2", "rounds": "6", "epochs": "5", "mode": "buffered",
            "buffer_size": "2", "round_timeout": "120", "join_token": token,
        }  # fmt: skip
        r = httpx.post(service.url + "/start-aggregator", data=form, timeout=30)
        assert r.status_code == 200, r.text
        fid = r.json()["aggregator_id"]
        for i, path in enumerate(_party_files(tmp_path, 2)):
            args = ("party", "--server", service.url, "--token", token, "--data", str(path))
            args += ("--name", f"site{i}")
            parties.append(fedfuse_process(*args, log=tmp_path / f"party{i}.log"))
        _wait(service.url, fid, lambda s: s["rounds_done"] >= 2)
        service.kill()  # SIGKILL mid-training
        service.start()  # same folder and port: the parties reconnect
        status = _wait(service.url, fid, lambda s: s["status"] in ("completed", "failed"))
        assert status["status"] == "completed", status
        assert [p.wait(120) for p in parties] == [0, 0]
        with sqlite3.connect(service.data_dir / "fedfuse.sqlite3") as db:
            rows = db.execute(
                "SELECT record FROM rounds WHERE federation_id=? ORDER BY round", (fid,)
            ).fetchall()
        rounds = [json.loads(row[0]) for row in rows]
        assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]  # none lost, none repeated
        _check_buffers(rounds, 2)
    finally:
        stop_all(parties)
        service.stop()
