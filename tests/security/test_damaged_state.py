"""Damaged state on disk: one federation's broken files fail that federation alone.

Threat: files under the service's data folder are truncated, deleted or overwritten (a full
disk, a crash, a careless operator, a restore gone wrong). Promise: the service still starts and
serves every other federation; the damaged one is ``failed`` with a reason naming the file; a
damaged checkpoint costs one round; creation leaves nothing half-made; a database that is not
fedfuse's, or an empty one beside existing federations, is refused, never taken as a new service.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from torch import nn

import fedfuse.service._folders as folders_module
import fedfuse.service._manager as manager_module
from fedfuse import FederationSpec
from fedfuse.service import SERVICE_DEFAULTS, Manager, ServiceSettings, StorageError, create_app
from fedfuse.weights import from_bytes
from service_helpers import Service, env, free_port

pytestmark = pytest.mark.timeout(300)

FORM = {
    "fusion_algorithm": "fedavg",
    "model_type": "pytorch",
    "num_parties": 2,
    "epochs": 1,
    "learning_rate": 0.1,
    "optimizer": "sgd",
    "seed": 0,
    "round_timeout": 120,
}


def _model_file() -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), buf)
    return buf.getvalue()


def _npz(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=rng.random((24, 1, 28, 28), dtype=np.float32),
        y_train=rng.integers(0, 10, 24),
        x_test=rng.random((8, 1, 28, 28), dtype=np.float32),
        y_test=rng.integers(0, 10, 8),
    )
    return buf.getvalue()


def _create(service: Service, rounds: int) -> str:
    """A federation with a model file and two hosted parties (ready, not training)."""
    r = httpx.post(
        f"{service.url}/start-aggregator",
        data=FORM | {"rounds": rounds},
        files={"model_file": ("m.pt", _model_file())},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    fid = r.json()["aggregator_id"]
    for seed in (0, 1):
        r = httpx.post(
            f"{service.url}/start-party",
            data={"aggregator_id": fid, "data_handler_class_name": "mnist_pytorch"},
            files={"data": ("d.npz", _npz(seed))},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    return fid


def _train(service: Service, fid: str) -> dict:
    r = httpx.post(f"{service.url}/train", json={"aggregator_id": fid, "wait": False}, timeout=60)
    assert r.status_code == 202, r.text
    return _settled(service, fid)


def _settled(service: Service, fid: str) -> dict:
    return service.wait_for(
        lambda s: s["status"] in ("completed", "failed", "stopped"),
        path=f"/v1/federations/{fid}",
        timeout=240,
    )


def _model(service: Service, fid: str) -> dict[str, np.ndarray]:
    r = service.get(f"/v1/federations/{fid}/model")
    assert r.status_code == 200, r.text
    return from_bytes(r.content)


def _truncate(path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_damaged_federations_fail_alone_and_the_others_train(tmp_path):
    state = tmp_path / "state"
    service = Service(state).start()
    folders = state / "federations"
    try:
        healthy = _create(service, rounds=3)
        resumed = _create(service, rounds=3)  # its newest checkpoint will be truncated
        assert _train(service, resumed)["status"] == "completed"
        finished = _create(service, rounds=2)  # so will this one's, after it completed
        assert _train(service, finished)["status"] == "completed"
        round_1 = from_bytes(
            (folders / finished / "checkpoint" / "round_000001.safetensors").read_bytes()
        )
        no_checkpoint = _create(service, rounds=1)
        assert _train(service, no_checkpoint)["status"] == "completed"
        no_initial = _create(service, rounds=1)
        no_party = _create(service, rounds=1)
        no_model_file = _create(service, rounds=1)
        bad_row = _create(service, rounds=1)
        vanishing = _create(service, rounds=1)  # fails later, while the service runs
    finally:
        service.stop()

    # the damage, done from outside while the service is down
    checkpoint = folders / resumed / "checkpoint"
    assert sorted(p.name for p in checkpoint.glob("round_*")) == [
        "round_000002.safetensors",
        "round_000003.safetensors",
    ]
    _truncate(checkpoint / "round_000003.safetensors")
    _truncate(folders / finished / "checkpoint" / "round_000002.safetensors")
    for path in (folders / no_checkpoint / "checkpoint").glob("round_*"):
        _truncate(path)
    _truncate(folders / no_initial / "initial.safetensors", keep=20)
    (folders / no_party / "parties" / "party_1.npz").unlink()
    (folders / no_model_file / "model_file").unlink()
    with sqlite3.connect(state / "fedfuse.sqlite3") as db:
        db.execute("UPDATE federations SET config = '{\"rounds\": ' WHERE id = ?", (bad_row,))
        # the service was killed after writing round 3's checkpoint, before recording it
        db.execute("DELETE FROM rounds WHERE federation_id = ? AND round = 3", (resumed,))
        db.execute(
            "UPDATE federations SET status = 'training', rounds_done = 2 WHERE id = ?", (resumed,)
        )

    service.start()  # the service starts: every federation is rebuilt on its own
    try:
        assert service.get("/healthz").json() == {"status": "ok"}
        listing = {f["id"]: f for f in service.get("/v1/federations").json()}
        assert len(listing) == 9
        reasons = {
            no_checkpoint: "no usable checkpoint",
            no_initial: "initial.safetensors",
            no_party: "party_1.npz",
            no_model_file: "model_file is missing",
            bad_row: "stored settings are damaged",
        }
        for fid, reason in reasons.items():
            status = service.get(f"/v1/federations/{fid}").json()
            assert status["status"] == "failed", (fid, status)
            assert reason in status["error"], (fid, status["error"])
            assert listing[fid]["status"] == "failed" and reason in listing[fid]["error"]
        error = listing[no_checkpoint]["error"]
        assert "round_000001.safetensors" in error and "truncated" in error

        # the damaged checkpoint cost one round: round 3 is trained again, to the same model
        status = _settled(service, resumed)
        assert status["status"] == "completed" and status["rounds_done"] == 3
        history = service.get(f"/v1/federations/{resumed}/history").json()["rounds"]
        assert [h["round"] for h in history] == [1, 2, 3]

        # a finished federation keeps its status and says that its model is one round older
        status = service.get(f"/v1/federations/{finished}").json()
        assert status["status"] == "completed" and status["rounds_done"] == 1
        assert "round_000002.safetensors" in status["error"]
        assert "the model is round 1's" in status["error"]
        weights = _model(service, finished)
        for name, array in weights.items():
            np.testing.assert_array_equal(array, round_1[f"weights/{name}"])
        history = service.get(f"/v1/federations/{finished}/history").json()["rounds"]
        assert [h["round"] for h in history] == [1]

        # a federation whose folder breaks while the service runs fails alone
        checkpoint_path = folders / vanishing / "checkpoint"
        checkpoint_path.write_text("not a folder")
        status = _train(service, vanishing)
        assert status["status"] == "failed" and "checkpoint" in status["error"]

        # the healthy federation trains to completion, as if nothing had happened
        status = _train(service, healthy)
        assert status["status"] == "completed" and status["rounds_done"] == 3
        reference = _model(service, healthy)
        weights = _model(service, resumed)
        for name in reference:
            np.testing.assert_array_equal(weights[name], reference[name])
        assert service.get("/healthz").status_code == 200
    finally:
        service.stop()


def _serve(data_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fedfuse",
            "serve",
            *("--port", str(free_port())),
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )


def _sqlite_without_fedfuse_tables(path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes), but federation folders exist"),
        (lambda p: p.write_bytes(os.urandom(8192)), "cannot be used as fedfuse's database"),
        (_sqlite_without_fedfuse_tables, "is not a fedfuse database: it has no table"),
        (lambda p: None, "is missing, but federation folders exist"),
    ],
    ids=["empty", "random-bytes", "foreign-sqlite", "missing"],
)
def test_serve_refuses_a_database_that_does_not_hold_the_federations(tmp_path, damage, message):
    data_dir = tmp_path / "state"
    (data_dir / "federations" / ("ab" * 16) / "parties").mkdir(parents=True)
    database = data_dir / "fedfuse.sqlite3"
    damage(database)
    before = database.read_bytes() if database.exists() else None
    result = _serve(data_dir)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedfuse serve: error: ") and message in lines[0]
    assert str(database) in lines[0]
    # nothing was written over what is there
    assert (database.read_bytes() if database.exists() else None) == before
    assert sorted(p.name for p in (data_dir / "federations").iterdir()) == ["ab" * 16]


def test_an_empty_database_without_federations_starts_a_new_service(tmp_path):
    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / "fedfuse.sqlite3").write_bytes(b"")
    service = Service(data_dir).start()
    try:
        assert service.get("/healthz").json() == {"status": "ok"}
        assert service.get("/v1/federations").json() == []
    finally:
        service.stop()


def _spec() -> FederationSpec:
    flat = {"model": "mlp", "input_shape": (8,), "num_classes": 2, "num_parties": 1}
    return FederationSpec.from_flat(flat, base=SERVICE_DEFAULTS)


def _left_behind(data_dir) -> list[str]:
    folder = data_dir / "federations"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_full_disk_at_creation_leaves_no_folder_and_no_row(tmp_path, monkeypatch):
    manager = Manager(tmp_path)
    real_write = folders_module.write_synced  # a federation's files are written there
    calls = []

    def fills_up(path, data):
        calls.append(path.name)
        if len(calls) == 2:  # the weights are written, then the disk is full
            path.with_name(path.name + ".tmp").write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(folders_module, "write_synced", fills_up)
    with pytest.raises(StorageError, match="the disk is full") as info:
        manager.create(_spec(), model_bytes=None)
    assert info.value.errno == errno.ENOSPC
    assert calls == ["initial.safetensors", "manifest.json"]
    assert _left_behind(tmp_path) == []
    assert manager.store.federations() == [] and manager.list() == []
    monkeypatch.setattr(folders_module, "write_synced", real_write)
    fid, _ = manager.create(_spec())  # once there is room again, creation works
    assert _left_behind(tmp_path) == [fid]


def test_a_full_database_at_creation_removes_the_folder(tmp_path, monkeypatch):
    manager = Manager(tmp_path)

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(manager.store, "create_federation", full)
    with pytest.raises(StorageError, match="could not record the federation: the disk is full"):
        manager.create(_spec())
    assert _left_behind(tmp_path) == []
    assert manager.store.federations() == []


def _no_space(path, data):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_a_507_over_http_and_the_service_still_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(folders_module, "write_synced", _no_space)
    monkeypatch.setattr(manager_module, "write_synced", _no_space)
    app = create_app(ServiceSettings(data_dir=str(tmp_path)))
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post(
            "/start-aggregator",
            data=FORM | {"rounds": 1},
            files={"model_file": ("m.pt", _model_file())},
        )
        assert r.status_code == 507, r.text
        assert "disk is full" in r.json()["detail"]
        assert client.get("/v1/federations").json() == []
        assert client.get("/healthz").json() == {"status": "ok"}
    assert _left_behind(tmp_path) == []


def test_a_full_disk_at_registration_stores_no_party(tmp_path, monkeypatch):
    real_write = manager_module.write_synced

    app = create_app(ServiceSettings(data_dir=str(tmp_path)))
    with TestClient(app, raise_server_exceptions=False) as client:
        fid = client.post(
            "/start-aggregator",
            data=FORM | {"rounds": 1},
            files={"model_file": ("m.pt", _model_file())},
        ).json()["aggregator_id"]
        register = {"aggregator_id": fid, "data_handler_class_name": "mnist_pytorch"}
        monkeypatch.setattr(manager_module, "write_synced", _no_space)
        r = client.post("/start-party", data=register, files={"data": ("p.npz", _npz(0))})
        assert r.status_code == 507, r.text
        assert "disk is full" in r.json()["detail"]
        assert client.get(f"/v1/federations/{fid}").json()["parties"] == []
        assert list((tmp_path / "federations" / fid / "parties").iterdir()) == []
        monkeypatch.setattr(manager_module, "write_synced", real_write)
        r = client.post("/start-party", data=register, files={"data": ("p.npz", _npz(0))})
        assert r.status_code == 200 and r.json()["party_id"] == "party_0", r.text


def test_a_crash_during_creation_leaves_nothing_after_restart(tmp_path):
    manager = Manager(tmp_path)
    fid, _ = manager.create(_spec())
    half = tmp_path / "federations" / ".creating-0123"
    (half / "parties").mkdir(parents=True)
    (half / "initial.safetensors").write_bytes(b"\x08\0\0")
    manager.store.close()
    again = Manager(tmp_path)
    assert again.recover() == []
    assert _left_behind(tmp_path) == [fid]
    assert [f["id"] for f in again.list()] == [fid]
    assert again.status(fid)["status"] == "registering"
    assert json.loads((tmp_path / "federations" / fid / "manifest.json").read_text()).keys() == {
        "initial.safetensors"
    }


def test_recovery_fails_federations_whose_folder_or_checkpoint_is_gone(tmp_path):
    manager = Manager(tmp_path)
    gone, _ = manager.create(_spec())
    rewound, _ = manager.create(_spec())
    intact, _ = manager.create(_spec())
    manager.store.record_round(rewound, {"round": 1, "rejected": {}})
    intact_weights = manager.global_weights(intact)
    manager.store.close()
    shutil.rmtree(tmp_path / "federations" / gone)
    again = Manager(tmp_path)
    assert again.recover() == []  # nothing raises out of recovery
    assert again.status(gone)["status"] == "failed"
    assert f"its folder {tmp_path / 'federations' / gone} is missing" in again.status(gone)["error"]
    error = again.status(rewound)["error"]
    assert again.status(rewound)["status"] == "failed"
    assert "holds no checkpoint, but the store records 1 completed round(s)" in error
    assert again.status(intact)["status"] == "registering" and again.status(intact)["error"] is None
    assert again.global_weights(intact).keys() == intact_weights.keys()


def test_a_damaged_round_record_does_not_hide_the_others(tmp_path):
    manager = Manager(tmp_path)
    fid, _ = manager.create(_spec())
    for r in (1, 2):
        manager.store.record_round(fid, {"round": r, "rejected": {}, "fused": True})
    with sqlite3.connect(tmp_path / "fedfuse.sqlite3") as db:
        db.execute("UPDATE rounds SET record = '{\"round\": 1, ' WHERE round = 1")
    assert manager.store.rounds(fid) == [
        {"round": 1, "error": "the stored record of this round is damaged"},
        {"round": 2, "rejected": {}, "fused": True},
    ]


# what the service stored before the nested spec (commit 619e258): its flat settings, whole
FLAT_CONFIG = {
    "fusion_algorithm": "fedavg", "model_type": "pytorch", "num_parties": 1, "rounds": 2,
    "epochs": 1, "learning_rate": 0.05, "optimizer": "sgd", "batch_size": 32, "fraction": None,
    "count": None, "quorum": 1, "round_timeout": 600.0, "seed": 0, "model": "mlp",
    "input_shape": [8], "num_classes": 2, "auto_start": False, "max_update_norm": None,
    "max_update_ratio": 10.0, "fusion_params": {}, "train_options": {},
}  # fmt: skip


def test_a_federation_stored_with_flat_settings_is_recovered(tmp_path):
    manager = Manager(tmp_path)
    fid, _ = manager.create(_spec())
    initial = manager.global_weights(fid)
    manager.store.close()
    with sqlite3.connect(tmp_path / "fedfuse.sqlite3") as db:
        db.execute("UPDATE federations SET config = ? WHERE id = ?", (json.dumps(FLAT_CONFIG), fid))
    again = Manager(tmp_path)
    assert again.recover() == []
    status = again.status(fid)
    assert status["status"] == "registering" and status["error"] is None, status
    assert status["parties_remaining"] == 1
    spec = again._run(fid).spec  # the spec the federation trains with, read from the flat row
    assert spec.fusion.name == "fedavg" and spec.training.learning_rate == 0.05
    assert spec.aggregation.deadline == 600.0 and spec.aggregation.max_update_ratio == 10.0
    assert (spec.rounds, spec.num_parties) == (2, 1)
    assert spec.model.name == "mlp" and tuple(spec.model.input_shape) == (8,)
    assert again.global_weights(fid).keys() == initial.keys()
    (row,) = again.list()
    assert row["id"] == fid and row["rounds"] == 2 and row["status"] == "registering"
