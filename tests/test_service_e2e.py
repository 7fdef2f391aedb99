"""End to end: the real service (uvicorn in a child process) and real party processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import httpx
import numpy as np
import pytest
import requests
import torch
from torch import nn

from fedfuse.data import federate, load_dataset
from fedfuse.weights import from_bytes
from service_helpers import Service, fedfuse_process, stop_all

pytestmark = pytest.mark.timeout(240)


def digits_as_mnist(n_parties: int, per_party: int, seed: int = 0):
    """scikit-learn's 8x8 digits drawn at 28x28, split like the tutorial's uniform split."""
    train, test = load_dataset("digits", seed=seed)

    def big(x):
        img = np.kron(x.reshape(-1, 8, 8), np.ones((3, 3), np.float32))
        return np.pad(img, ((0, 0), (2, 2), (2, 2))).reshape(-1, 1, 28, 28)

    rng = np.random.default_rng(seed)
    for _ in range(n_parties):
        tr = rng.choice(len(train), per_party, replace=False)
        te = rng.choice(len(test), len(test) // n_parties, replace=False)
        yield big(train.x[tr]), train.y[tr], big(test.x[te]), test.y[te]


@pytest.fixture
def service(tmp_path):
    svc = Service(tmp_path / "state").start()
    yield svc
    svc.stop()


def test_model_fusion_tutorial_notebook_runs_unchanged(service, tmp_path, monkeypatch):
    """The notebook's cells, as written in the tutorial, with only the URL (and MNIST) changed."""
    monkeypatch.chdir(tmp_path)
    base = service.url
    torch.manual_seed(0)

    model = nn.Sequential(nn.Conv2d(1, 32, 3, 1),
                          nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 1),
                          nn.ReLU(),
                          nn.MaxPool2d(2, 2),
                          nn.Dropout2d(p=0.25),
                          nn.Flatten(),
                          nn.Linear(9216, 128),
                          nn.ReLU(),
                          nn.Dropout2d(p=0.5),
                          nn.Linear(128, 10),
                          nn.LogSoftmax(dim=1))  # fmt: skip

    fname = "torch_mnist_cnn.pt"
    torch.save(model, fname)

    fusion = "fedavg"
    model_type = "pytorch"
    model_file = "torch_mnist_cnn.pt"
    num_parties = 2
    rounds = 3
    epochs = 1
    lr = 1
    optimizer = "optim.Adadelta"

    url = base + "/start-aggregator"
    payload = {
        "fusion_algorithm": fusion,
        "model_type": model_type,
        "num_parties": num_parties,
        "rounds": rounds,
        "learning_rate": lr,
        "epochs": epochs,
        "optimizer": optimizer,
    }  # noqa: E501
    files = {
        "model_file": open(model_file, "rb"),
    }  # noqa: SIM115
    r = requests.post(url, data=payload, files=files, verify=False)
    r.text
    agg_id = r.json()["aggregator_id"]

    for idx, (x_train_pi, y_train_pi, x_test_pi, y_test_pi) in enumerate(digits_as_mnist(2, 300)):
        name_file = "data_party" + str(idx) + ".npz"
        np.savez(
            name_file, x_train=x_train_pi, y_train=y_train_pi, x_test=x_test_pi, y_test=y_test_pi
        )

    data_handler = "mnist_pytorch"
    url = base + "/start-party"
    payload = {"aggregator_id": agg_id, "data_handler_class_name": data_handler}
    files = {
        "data": open("data_party0.npz", "rb"),
    }  # noqa: SIM115
    r = requests.post(url, data=payload, files=files, verify=False)
    assert r.json()["parties_remaining"] == 1
    url = base + "/start-party"
    payload = {"aggregator_id": agg_id, "data_handler_class_name": "mnist_pytorch"}
    files = {
        "data": open("data_party1.npz", "rb"),
    }  # noqa: SIM115
    r = requests.post(url, data=payload, files=files, verify=False)
    assert r.json()["parties_remaining"] == 0

    url = base + "/train"
    payload = {"aggregator_id": agg_id}
    r = requests.post(url, json=payload, verify=False)
    assert r.status_code == 200, r.text
    global_model = r.json()["global_model"]

    url = base + "/stop"
    payload = {"aggregator_id": agg_id}
    r = requests.post(url, json=payload, verify=False)
    assert r.status_code == 200 and r.json()["status"] == "stopped"

    # the global model loads back into the user's model and has learned the digits
    model.load_state_dict({k: torch.tensor(v) for k, v in global_model.items()})
    model.eval()
    x_test, y_test = np.load("data_party0.npz")["x_test"], np.load("data_party0.npz")["y_test"]
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean()
    assert accuracy > 0.6
    history = service.get(f"/v1/federations/{agg_id}/history").json()["rounds"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert all(sorted(h["participants"]) == ["party_0", "party_1"] for h in history)
    assert history[-1]["federated"]["num_examples"] == 2 * (len(y_test))
    # the safetensors download is the same model
    weights = from_bytes(service.get(f"/v1/federations/{agg_id}/model").content)
    np.testing.assert_allclose(weights["7.weight"], np.asarray(global_model["7.weight"]), atol=1e-6)


def _partition(tmp_path, n):
    train, test = load_dataset("digits")
    fed = federate(train, test, n, "iid", seed=0)
    return fed.save_npz(tmp_path)


def _create(service, **form) -> dict:
    base = {
        "fusion_algorithm": "fedavg",
        "model": "mlp",
        "input_shape": "64",
        "num_classes": 10,
        "learning_rate": 0.1,
        "auto_start": "true",
        "round_timeout": 30,
    }
    r = httpx.post(service.url + "/start-aggregator", data=base | form, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_separate_party_processes_train_with_fedavg(service, tmp_path):
    paths = _partition(tmp_path, 2)
    fed = _create(service, num_parties=2, rounds=4, epochs=2, batch_size=16)
    parties = [
        fedfuse_process("party", "--server", service.url, "--token", fed["join_token"],
                        "--data", str(p), log=tmp_path / f"party{i}.log")
        for i, p in enumerate(paths)
    ]  # fmt: skip
    try:
        assert [p.wait(180) for p in parties] == [0, 0]
    finally:
        stop_all(parties)
    status = service.get(f"/v1/federations/{fed['aggregator_id']}").json()
    assert status["status"] == "completed" and status["rounds_done"] == 4
    rounds = service.get(f"/v1/federations/{fed['aggregator_id']}/history").json()["rounds"]
    accuracy = [r["federated"]["accuracy"] for r in rounds]
    assert accuracy[-1] > 0.85 and accuracy[-1] > accuracy[0]
    test_sizes = sum(len(np.load(p)["y_test"]) for p in paths)
    assert rounds[-1]["federated"]["num_examples"] == test_sizes  # weighted by examples
    log = (tmp_path / "party0.log").read_text()
    assert "answered 8 tasks over rounds [1, 2, 3, 4]" in log
    assert "round 4: global model on local test data: loss" in log
    served = service.log.read_text()
    assert f"federation {fed['aggregator_id'][:8]} round 4: 2/2 parties" in served
    assert f"federated loss {rounds[-1]['federated']['loss']:.4f}" in served
    # everything is in the SQLite file
    with sqlite3.connect(service.data_dir / "fedfuse.sqlite3") as db:
        assert db.execute("SELECT COUNT(*) FROM rounds").fetchone()[0] == 4
        assert db.execute("SELECT COUNT(*) FROM parties WHERE kind='remote'").fetchone()[0] == 2


def test_a_party_without_the_token_is_refused(service, tmp_path):
    fed = _create(service, num_parties=1, rounds=1, auto_start="false")
    r = httpx.post(service.url + "/v1/join", json={"token": "not-the-token"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid join token"
    fid = fed["aggregator_id"]
    r = httpx.get(f"{service.url}/v1/federations/{fid}/tasks/next")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = httpx.get(
        f"{service.url}/v1/federations/{fid}/tasks/next", headers={"Authorization": "Bearer forged"}
    )
    assert r.status_code == 401
    proc = fedfuse_process(
        "party",
        "--server",
        service.url,
        "--token",
        "wrong-token-123456",
        "--data",
        str(_partition(tmp_path, 1)[0]),
        log=tmp_path / "p.log",
    )
    assert proc.wait(60) == 2
    assert "join refused (401): invalid join token" in (tmp_path / "p.log").read_text()
    # nothing joined
    assert service.get(f"/v1/federations/{fid}").json()["parties"] == []


def test_a_killed_party_does_not_stop_training_and_can_rejoin(tmp_path):
    service = Service(tmp_path / "state", "--liveness", "2").start()
    paths = _partition(tmp_path, 3)
    fed = _create(service, num_parties=3, rounds=30, epochs=15, quorum=2, round_timeout=15)
    fid = fed["aggregator_id"]

    def party(i):
        return fedfuse_process(
            "party",
            "--server",
            service.url,
            "--token",
            fed["join_token"],
            "--data",
            str(paths[i]),
            "--name",
            f"site{i}",
            "--secret-file",
            str(tmp_path / f"site{i}.secret"),
            log=tmp_path / f"party{i}.log",
        )

    procs = [party(i) for i in range(3)]
    try:
        service.wait_for(lambda s: s["rounds_done"] >= 2, path=f"/v1/federations/{fid}")
        procs[2].kill()  # SIGKILL mid-training
        procs[2].wait()
        killed_at = service.get(f"/v1/federations/{fid}").json()["rounds_done"]
        # three rounds without it: by the third it has not polled for longer than one deadline
        service.wait_for(lambda s: s["rounds_done"] >= killed_at + 3, path=f"/v1/federations/{fid}")
        procs[2] = party(2)  # the same site comes back
        service.wait_for(
            lambda s: s["status"] == "completed", path=f"/v1/federations/{fid}", timeout=200
        )
        assert [p.wait(60) for p in procs] == [0, 0, 0]
    finally:
        stop_all(procs)
        service.stop()
    assert (tmp_path / "site2.secret").stat().st_mode & 0o777 == 0o600  # its proof, kept private
    rounds = service_rounds(service, fid)
    assert [r["round"] for r in rounds] == list(range(1, 31))
    with sqlite3.connect(service.data_dir / "fedfuse.sqlite3") as db:
        (killed,) = db.execute("SELECT party_id FROM parties WHERE name='site2'").fetchone()
    site2 = [r for r in rounds if killed in r["participants"]]
    without = [r for r in rounds if r["round"] > killed_at and killed not in r["participants"]]
    assert without, "rounds after the kill went on without the dead party"
    assert all(r["fused"] and len(r["participants"]) >= 2 for r in without)
    assert site2[-1]["round"] > without[0]["round"], "the party rejoined and took part again"
    # the round running at the kill (killed_at + 1) may hold the reply it sent before it died
    # while it was dead it was either sampled and missed the deadline, or (once it had stopped
    # polling for --liveness seconds) not sampled: which one depends on how busy the machine is
    dead = [r for r in rounds if killed_at + 1 < r["round"] <= killed_at + 3]  # until it is back
    assert len(dead) == 2
    for r in dead:
        assert killed not in r["participants"], r
        assert killed not in r["sampled"] or "deadline" in r["failed"].get(killed, ""), r
    assert killed not in dead[-1]["sampled"], "a party that stopped polling is not sampled"


def service_rounds(service, fid):
    with sqlite3.connect(service.data_dir / "fedfuse.sqlite3") as db:
        rows = db.execute(
            "SELECT record FROM rounds WHERE federation_id=? ORDER BY round", (fid,)
        ).fetchall()
    return [json.loads(r[0]) for r in rows]


def _run_to_end(tmp_path, name, kill_after=None):
    service = Service(tmp_path / name).start()
    paths = _partition(tmp_path, 2)
    fed = _create(service, num_parties=2, rounds=6, epochs=10, quorum=2, join_token="t" * 20)
    fid = fed["aggregator_id"]
    procs = []
    for i, path in enumerate(paths):  # one after the other: site i is always party_i
        procs.append(
            fedfuse_process(
                "party",
                "--server",
                service.url,
                "--token",
                "t" * 20,
                "--data",
                str(path),
                "--name",
                f"site{i}",
                log=tmp_path / f"{name}-party{i}.log",
            )
        )
        service.wait_for(lambda s, i=i: len(s["parties"]) == i + 1, path=f"/v1/federations/{fid}")
    try:
        if kill_after is not None:
            service.wait_for(
                lambda s: s["rounds_done"] >= kill_after, path=f"/v1/federations/{fid}"
            )
            service.kill()  # SIGKILL mid-training
            service.start()  # same data folder, same port: parties reconnect
        service.wait_for(
            lambda s: s["status"] == "completed", path=f"/v1/federations/{fid}", timeout=200
        )
        assert [p.wait(60) for p in procs] == [0, 0]
        weights = from_bytes(service.get(f"/v1/federations/{fid}/model").content)
    finally:
        stop_all(procs)
        service.stop()
    return weights, service_rounds(service, fid)


def test_service_killed_and_restarted_resumes_without_losing_or_repeating_rounds(tmp_path):
    reference, _ = _run_to_end(tmp_path, "straight")
    weights, rounds = _run_to_end(tmp_path, "killed", kill_after=2)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5, 6]
    assert all(sorted(r["participants"]) == ["party_0", "party_1"] for r in rounds)
    for name in reference:  # the same rounds, the same seeds: the same model
        np.testing.assert_allclose(weights[name], reference[name], atol=1e-6)


def test_tls_service_and_party(tmp_path):
    """``--ssl-certfile/--ssl-keyfile`` serve HTTPS; a party trusts the service's own CA."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    service = Service(
        tmp_path / "state",
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        scheme="https",
        verify=str(cert),
    ).start()
    try:
        with pytest.raises(httpx.ConnectError):  # an untrusted certificate is refused
            httpx.get(service.url + "/healthz")
        r = httpx.post(
            service.url + "/start-aggregator",
            verify=str(cert),
            data={
                "fusion_algorithm": "fedavg",
                "model": "logreg",
                "input_shape": "64",
                "num_classes": 10,
                "num_parties": 1,
                "rounds": 2,
                "auto_start": "true",
            },
        )
        fed = r.json()
        path = _partition(tmp_path, 1)[0]
        proc = fedfuse_process(
            "party",
            "--server",
            service.url,
            "--token",
            fed["join_token"],
            "--data",
            str(path),
            "--ca-cert",
            str(cert),
            log=tmp_path / "p.log",
        )
        assert proc.wait(120) == 0, (tmp_path / "p.log").read_text()
        status = service.get(f"/v1/federations/{fed['aggregator_id']}").json()
        assert status["status"] == "completed" and status["rounds_done"] == 2
    finally:
        service.stop()
