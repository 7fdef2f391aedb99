"""The service's answers to bad input: a 4xx with a message, never a 500, nothing corrupted."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile

import numpy as np
import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from torch import nn

from fedfuse.service import SERVICE_DEFAULTS, ServiceSettings, create_app
from fedfuse.weights import SizeLimits, to_bytes

MNIST_CNN = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def model_bytes(model: nn.Module = MNIST_CNN) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def npz_bytes(n=20, shape=(1, 28, 28), **override) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.random((n, *shape), dtype=np.float32),
        "y_train": rng.integers(0, 10, n),
        "x_test": rng.random((4, *shape), dtype=np.float32),
        "y_test": rng.integers(0, 10, 4),
    } | override
    arrays = {k: v for k, v in arrays.items() if v is not None}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


FORM = {
    "fusion_algorithm": "fedavg",
    "model_type": "pytorch",
    "num_parties": 2,
    "rounds": 1,
    "learning_rate": 0.1,
    "epochs": 1,
    "optimizer": "optim.Adadelta",
}


@pytest.fixture
def client(tmp_path):
    app = create_app(ServiceSettings(data_dir=str(tmp_path), max_upload_bytes=2_000_000))
    with TestClient(app) as c:
        yield c


def start(client, **form):
    return client.post(
        "/start-aggregator", data=FORM | form, files={"model_file": ("m.pt", model_bytes())}
    )


def party(client, agg_id, data=None, handler="mnist_pytorch"):
    return client.post(
        "/start-party",
        data={"aggregator_id": agg_id, "data_handler_class_name": handler},
        files={"data": ("d.npz", npz_bytes() if data is None else data)},
    )


def _parts(detail: str | tuple[str, ...]) -> tuple[str, ...]:
    """The substrings an error message must hold (several where the middle is a long list)."""
    return (detail,) if isinstance(detail, str) else detail


@pytest.mark.parametrize(
    ("form", "detail"),
    [
        (
            {"fusion_algorithm": "doc2vecc"},
            ("fusion.name must be one of '", "'fedavg'", "got 'doc2vecc'"),
        ),
        (
            {"model_type": "caffe"},
            ("model.model_type must be one of '", "'pytorch'", "got 'caffe'"),
        ),
        ({"optimizer": "optim.Adamm"}, "optimizer: unknown optimizer 'optim.Adamm'"),
        ({"num_parties": 0}, "num_parties must be an integer >= 1"),
        ({"rounds": -3}, "rounds must be an integer >= 1"),
        ({"learning_rate": 0}, "training.learning_rate must be a number > 0, got 0"),
        ({"fraction": 1.5}, "sampling.fraction must be None or a number > 0 and <= 1, got 1.5"),
        ({"quorum": 5}, "aggregation.quorum=5 exceeds num_parties=2"),
    ],
)
def test_start_aggregator_rejects_bad_settings(client, form, detail):
    r = start(client, **form)
    assert r.status_code == 400
    assert all(part in r.json()["detail"] for part in _parts(detail)), r.json()
    assert client.get("/v1/federations").json() == []


def test_start_aggregator_form_errors(client):
    r = client.post(
        "/start-aggregator",
        data={"model_type": "pytorch"},
        files={"model_file": ("m.pt", model_bytes())},
    )
    assert r.status_code == 400
    assert r.json()["detail"] == "fusion_algorithm is required (e.g. fedavg)"
    r = client.post(
        "/start-aggregator",
        data=FORM | {"num_parties": "two"},
        files={"model_file": ("m.pt", model_bytes())},
    )
    assert r.status_code == 400 and r.json()["detail"] == "num_parties must be int, got 'two'"
    r = client.post("/start-aggregator", data=FORM)
    assert r.status_code == 400 and "exactly one model source" in r.json()["detail"]


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (b"definitely not torch", "not a model file written by torch.save"),
        (model_bytes()[:1000], "not a model file"),
        (model_bytes(Custom()), "refers to 'test_service_api.Custom', which is not allowed"),
    ],
)
def test_bad_model_files_are_refused(client, payload, detail):
    r = client.post("/start-aggregator", data=FORM, files={"model_file": ("m.pt", payload)})
    assert r.status_code == 400 and detail in r.json()["detail"]


def test_upload_size_limit(client):
    r = client.post(
        "/start-aggregator", data=FORM, files={"model_file": ("m.pt", b"x" * 2_100_000)}
    )
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"not a zip", "not an .npz file"),
        (npz_bytes()[:300], "npz"),
        (npz_bytes(y_train=None), "y_train"),
        (npz_bytes(shape=(5, 5)), "784 values"),
        (npz_bytes(y_train=np.arange(3)), "rows"),
    ],
)
def test_bad_party_data_is_refused_and_nothing_is_stored(client, data, detail):
    agg = start(client).json()["aggregator_id"]
    r = party(client, agg, data)
    assert r.status_code == 400 and detail in r.json()["detail"], r.json()
    assert client.get(f"/v1/federations/{agg}").json()["parties"] == []


def test_party_data_that_does_not_fit_the_model(client):
    agg = start(client).json()["aggregator_id"]
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(
        buf,
        x_train=rng.random((8, 784), dtype=np.float32),
        y_train=np.zeros(8, int),
        x_test=np.zeros((0, 784), np.float32),
        y_test=np.zeros(0, int),
    )
    r = party(client, agg, buf.getvalue(), handler="mnist_pytorch")
    assert r.status_code == 200  # 784 values are reshaped to 1x28x28 by the handler
    small = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    agg2 = client.post(
        "/start-aggregator", data=FORM, files={"model_file": ("m.pt", model_bytes(small))}
    ).json()["aggregator_id"]
    r = party(client, agg2)
    assert r.status_code == 400 and "does not fit the model" in r.json()["detail"]


def test_unknown_ids_handlers_and_state_conflicts(client):
    assert (
        client.post(
            "/start-party",
            data={"aggregator_id": "nope", "data_handler_class_name": "mnist_pytorch"},
            files={"data": ("d.npz", npz_bytes())},
        ).status_code
        == 404
    )
    assert client.post("/train", json={"aggregator_id": "nope"}).status_code == 404
    assert client.post("/stop", json={"aggregator_id": "nope"}).status_code == 404
    assert client.post("/train", json={}).status_code == 422
    agg = start(client, rounds=1).json()["aggregator_id"]
    r = party(client, agg, handler="cifar_magic")
    assert r.status_code == 400 and "unknown data handler 'cifar_magic'" in r.json()["detail"]
    r = client.post("/train", json={"aggregator_id": agg})
    assert r.status_code == 409 and "waiting for 2 more parties" in r.json()["detail"]
    assert party(client, agg).json()["parties_remaining"] == 1
    assert party(client, agg).json()["parties_remaining"] == 0
    r = party(client, agg)
    assert r.status_code == 409 and "already registered" in r.json()["detail"]
    r = client.post("/train", json={"aggregator_id": agg})
    assert r.status_code == 200 and r.json()["status"] == "completed"
    r = client.post("/train", json={"aggregator_id": agg})
    assert r.status_code == 409 and "already completed" in r.json()["detail"]
    assert client.post("/stop", json={"aggregator_id": agg}).status_code == 200
    r = client.post("/stop", json={"aggregator_id": agg})
    assert r.status_code == 409 and "already stopped" in r.json()["detail"]
    assert client.get(f"/v1/federations/{agg}").json()["rounds_done"] == 1


def test_train_returns_at_once_and_is_polled(client):
    agg = start(client, rounds=2).json()["aggregator_id"]
    party(client, agg)
    party(client, agg)
    r = client.post("/train", json={"aggregator_id": agg, "wait": False})
    assert r.status_code == 202 and r.json()["status"] == "training"
    import time

    deadline = time.monotonic() + 60
    while client.get(f"/v1/federations/{agg}").json()["status"] == "training":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    status = client.get(f"/v1/federations/{agg}").json()
    assert status["status"] == "completed" and status["rounds_done"] == 2
    assert len(client.get(f"/v1/federations/{agg}/history").json()["rounds"]) == 2


def _remote(client, **form):
    r = client.post(
        "/start-aggregator",
        data=FORM | {"num_parties": 1, "rounds": 2, "round_timeout": 5} | form,
        files={"initial_weights": ("w.safetensors", to_bytes({"w": np.zeros((2, 2), np.float32)}))},
    )
    assert r.status_code == 200, r.text
    fed = r.json()
    joined = client.post("/v1/join", json={"token": fed["join_token"], "name": "site"}).json()
    return fed, joined, {"Authorization": f"Bearer {joined['party_token']}"}


def _reply(client, fid, task_id, headers, meta, body=b""):
    return client.post(
        f"/v1/federations/{fid}/tasks/{task_id}/reply",
        content=body,
        headers=headers | {"X-Fedfuse-Meta": json.dumps(meta)},
    )


def test_party_protocol_rejects_bad_replies_and_keeps_the_model(client):
    fed, _joined, auth = _remote(client)
    fid = fed["aggregator_id"]
    assert client.post("/train", json={"aggregator_id": fid, "wait": False}).status_code == 202
    task = client.get(f"/v1/federations/{fid}/tasks/next?wait=10", headers=auth)
    assert task.status_code == 200
    meta = json.loads(task.headers["X-Fedfuse-Meta"])
    tid = meta["task_id"]
    assert meta["kind"] == "train"
    update = {"kind": "update", "num_examples": 5, "metrics": {"loss": 1.0}}
    # a task it was not asked
    r = _reply(client, fid, tid + 100, auth, update, to_bytes({"w": np.ones((2, 2), np.float32)}))
    assert r.status_code == 409 and "was not asked task" in r.json()["detail"]
    # malformed metadata and bodies
    assert _reply(client, fid, tid, auth, {"kind": "gift"}).status_code == 400
    r = client.post(
        f"/v1/federations/{fid}/tasks/{tid}/reply",
        content=b"",
        headers=auth | {"X-Fedfuse-Meta": "{not json"},
    )
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    # an update whose body is not safetensors is the party's answer: rejected with its reason
    r = _reply(client, fid, tid, auth, update, b"pickle? no")
    assert r.status_code == 400 and "safetensors" in r.json()["detail"]
    nan = to_bytes({"w": np.full((2, 2), np.nan, np.float32)})
    r = _reply(client, fid, tid, auth, update, nan)
    assert r.status_code == 409 and "already answered" in r.json()["detail"]
    _drain(client, fid, auth, good=True)
    history = client.get(f"/v1/federations/{fid}/history").json()
    (rejected,) = history["rejected"]
    assert rejected["round"] == 1 and "malformed update reply" in rejected["reason"]
    assert "safetensors" in rejected["reason"]
    from fedfuse.weights import from_bytes

    w = from_bytes(client.get(f"/v1/federations/{fid}/model").content)["w"]
    np.testing.assert_allclose(w, np.full((2, 2), 0.5))  # only the good round-2 update counted


def _drain(client, fid, auth, good):
    """Answer the remaining tasks: evaluations, and a train task with a wrong shape then a good
    update of +0.5."""
    for _ in range(20):
        task = client.get(f"/v1/federations/{fid}/tasks/next?wait=5", headers=auth)
        if task.status_code == 410:
            return
        if task.status_code == 204:
            continue
        meta = json.loads(task.headers["X-Fedfuse-Meta"])
        if meta["kind"] == "evaluate":
            _reply(
                client,
                fid,
                meta["task_id"],
                auth,
                {"kind": "evaluation", "num_examples": 3, "metrics": {"accuracy": 0.5}},
            )
        else:
            wrong = to_bytes({"w": np.zeros((3, 3), np.float32)})
            body = to_bytes({"w": np.full((2, 2), 0.5, np.float32)}) if good else wrong
            _reply(
                client,
                fid,
                meta["task_id"],
                auth,
                {"kind": "update", "num_examples": 5, "metrics": {}},
                body,
            )


def test_wrong_shape_update_is_rejected_with_reason(client):
    fed, _joined, auth = _remote(client, rounds=1)
    fid = fed["aggregator_id"]
    client.post("/train", json={"aggregator_id": fid, "wait": False})
    _drain(client, fid, auth, good=False)
    rejected = client.get(f"/v1/federations/{fid}/history").json()["rejected"]
    assert rejected == [
        {
            "round": 1,
            "party_id": "party_0",
            "reason": "parameter 'w' has shape (3, 3), expected (2, 2)",
        }
    ]
    assert client.get(f"/v1/federations/{fid}").json()["status"] == "completed"


def test_join_errors(client):
    fed, joined, auth = _remote(client)
    assert joined["party_id"] == "party_0" and joined["model"] == {"source": "party"}
    r = client.post("/v1/join", json={"token": fed["join_token"], "name": "site"})
    assert r.status_code == 401 and "party name 'site' is taken" in r.json()["detail"]
    rejoin = {"token": fed["join_token"], "name": "site", "party_secret": joined["party_secret"]}
    again = client.post("/v1/join", json=rejoin).json()
    assert again["party_id"] == "party_0"  # a rejoin by name, with its secret, is the same party
    assert again["party_secret"] == joined["party_secret"]
    r = client.post("/v1/join", json={"token": fed["join_token"], "name": "other"})
    assert r.status_code == 409 and "already joined" in r.json()["detail"]
    assert client.post("/v1/join", json={"token": ""}).status_code == 422
    r = client.post("/v1/join", json={"token": fed["join_token"], "name": "../../etc"})
    assert r.status_code == 422
    # the old token of a rejoined party no longer works
    r = client.get(f"/v1/federations/{fed['aggregator_id']}/tasks/next?wait=0", headers=auth)
    assert r.status_code == 401


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/start-aggregator",
        "/start-party",
        "/train",
        "/stop",
        "/v1/join",
        "/v1/federations/{fid}/model",
    } <= set(paths)


# ---- property-based fuzz of the whole OpenAPI spec: no input may cause a server error ---------
_fuzz_dir = tempfile.mkdtemp(prefix="fedfuse-fuzz-")
_fuzz_app = create_app(ServiceSettings(data_dir=_fuzz_dir, max_upload_bytes=1_000_000))
schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzz_app)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_no_server_errors(case):
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.text[:500])


def test_zip_bomb_like_npz_is_bounded(client):
    """An npz whose member claims a huge array is refused without allocating it."""
    agg = start(client).json()["aggregator_id"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        header = b"\x93NUMPY\x01\x00" + b"v\x00" + b"{'descr': '<f4', 'fortran_order': False, "
        z.writestr("x_train.npy", header + b"'shape': (100000000000,), }".ljust(80) + b"\n")
    r = party(client, agg, buf.getvalue())
    assert r.status_code == 400


def test_fusion_names_and_training_options_through_rest(client):
    """Every fusion name is accepted by the service, with its parameters, and so are the
    parties' local-training options (compression here)."""
    r = start(
        client,
        rounds=2,
        fusion_algorithm="fedadam",
        fusion_params='{"server_learning_rate": 0.01}',
        train_options='{"compression": "int8"}',
    )
    assert r.status_code == 200, r.text
    agg = r.json()["aggregator_id"]
    party(client, agg)
    party(client, agg)
    r = client.post("/train", json={"aggregator_id": agg})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.json()
    last = r.json()["metrics"][-1]
    assert last["fused"] and last["bytes_up"] < 0.3 * last["bytes_dense"]
    config = client.get(f"/v1/federations/{agg}").json()["config"]
    assert config["fusion"] == {"name": "fedadam", "params": {"server_learning_rate": 0.01}}
    assert config["training"]["compression"] == "int8"


@pytest.mark.parametrize(
    ("form", "detail"),
    [
        ({"fusion_params": "{oops"}, "fusion_params must be a JSON object"),
        ({"fusion_params": "[1]"}, "fusion_params must be a JSON object, got list"),
        ({"fusion_algorithm": "krum", "fusion_params": '{"f": 1}'}, "unknown ['f']"),
        ({"train_options": '{"compresion": "int8"}'}, "setting(s) ['compresion']; known: epochs"),
        (
            {"train_options": '{"compression": "zip"}'},
            "training.compression must be one of 'none', 'fp16', 'int8', 'topk', got 'zip'",
        ),
        ({"train_options": '{"seed": 3}'}, "train_options: seed is derived per party and round"),
    ],
)
def test_bad_fusion_params_and_train_options(client, form, detail):
    r = start(client, **form)
    assert r.status_code == 400 and detail in r.json()["detail"], r.json()


def test_labels_outside_the_models_classes_are_refused_at_registration(client):
    three = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    agg = client.post(
        "/start-aggregator", data=FORM, files={"model_file": ("m.pt", model_bytes(three))}
    ).json()["aggregator_id"]
    labels = np.array([0, 1, 2, 7, 5] * 4)
    r = party(client, agg, npz_bytes(y_train=labels, y_test=np.array([0, 1, 9, 2])))
    assert r.status_code == 400, r.text
    assert r.json()["detail"].endswith("labels [5, 7, 9] are outside the model's 3 classes (0..2)")
    assert client.get(f"/v1/federations/{agg}").json()["parties"] == []
    good = npz_bytes(y_train=np.arange(20) % 3, y_test=np.array([0, 1, 2, 0]))
    assert party(client, agg, good).status_code == 200  # good parties still register


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("fusion_params", '{"a": ' * 40 + "1" + "}" * 40),
        ("train_options", '{"a": ' + "[" * 2000 + "]" * 2000 + "}"),
        ("fusion_params", '{"a": ' + "[" * 4000),
    ],
)
def test_deeply_nested_json_settings_are_a_400(field, text, tmp_path):
    settings = ServiceSettings(data_dir=str(tmp_path), max_upload_bytes=2_000_000)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        r = c.post(
            "/start-aggregator",
            data=FORM | {field: text},
            files={"model_file": ("m.pt", model_bytes())},
        )
        assert r.status_code == 400, r.text
        assert r.json()["detail"] in (
            f"{field} nests deeper than 32 levels",
            f"{field} must be a JSON object: Expecting value: line 1 column 4007 (char 4006)",
        )
        r = c.post("/train", json={"aggregator_id": "[" * 100_000})
        assert r.status_code == 422 and "at most 64 characters" in r.text
        deep = b'{"aggregator_id": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        r = c.post("/train", content=deep, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert c.get("/v1/federations").json() == []


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (MemoryError(), 503, "the service has not enough memory for this request now"),
        (OSError(28, "No space left on device"), 507, "the service's disk is full"),
        (OSError(5, "Input/output error"), 503, "could not read or write its files"),
        (KeyError("/srv/x"), 400, "the request could not be processed (KeyError; see the "),
    ],
)
def test_unexpected_failures_get_a_clear_status_never_a_bare_500(
    tmp_path, monkeypatch, caplog, error, status, detail
):
    app = create_app(ServiceSettings(data_dir=str(tmp_path)))

    def fail(*args, **kwargs):
        raise error

    with TestClient(app, raise_server_exceptions=False) as c:
        monkeypatch.setattr(app.state.manager, "create", fail)
        r = start(c)
        assert r.status_code == status and detail in r.json()["detail"], r.text
        assert ("Retry-After" in r.headers) == (status == 503)
        assert "/srv/x" not in r.text
        assert "POST /start-aggregator" in caplog.text  # the traceback is logged
        assert c.get("/healthz").json() == {"status": "ok"}


def test_a_model_too_large_for_the_json_answer_is_pointed_to_its_download(tmp_path):
    settings = ServiceSettings(data_dir=str(tmp_path), max_json_model_bytes=1000)
    with TestClient(create_app(settings)) as c:
        agg = start(c).json()["aggregator_id"]
        party(c, agg)
        party(c, agg)
        r = c.post("/train", json={"aggregator_id": agg}).json()
        assert r["status"] == "completed" and "global_model" not in r
        assert r["global_model_url"] == f"/v1/federations/{agg}/model"
        assert "larger than the JSON answer's limit of 1000 bytes" in r["message"]
        assert len(r["metrics"]) == 1
        model = c.get(r["global_model_url"])
        assert model.status_code == 200 and len(model.content) > 1000


def test_the_operators_model_size_cap_applies_to_uploads_and_zoo_models(tmp_path):
    settings = ServiceSettings(data_dir=str(tmp_path), limits=SizeLimits(max_params=1000))
    with TestClient(create_app(settings)) as c:
        r = start(c)  # the CNN has 27,090 parameters
        assert r.status_code == 400 and "the limit is 1,000" in r.json()["detail"], r.text
        zoo = {"model": "mlp", "input_shape": "64", "num_classes": 10}
        r = c.post("/start-aggregator", data=FORM | zoo)
        assert r.status_code == 400 and "the limit is 1,000" in r.json()["detail"], r.text
        assert c.get("/v1/federations").json() == []


# ---- the nested spec: POST /v1/federations, and /start-aggregator's ``spec`` field ------------
ZOO = {"model": {"name": "mlp", "input_shape": [64], "num_classes": 10}}


def test_create_federation_from_a_nested_json_spec(client):
    document = ZOO | {
        "rounds": 3,
        "num_parties": 2,
        "training": {"learning_rate": 0.05, "epochs": 2},
        "fusion": {"name": "fedadam", "params": {"server_learning_rate": 0.01}},
        "aggregation": {"mode": "buffered", "buffer_size": 2},
    }
    r = client.post("/v1/federations", json=document)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["status"] == "registering" and len(created["join_token"]) >= 16
    fid = created["aggregator_id"]
    status = client.get(f"/v1/federations/{fid}").json()
    config = status["config"]
    # nested, with what was given ...
    assert (config["rounds"], config["num_parties"]) == (3, 2)
    assert config["training"]["learning_rate"] == 0.05 and config["training"]["epochs"] == 2
    assert config["fusion"] == {"name": "fedadam", "params": {"server_learning_rate": 0.01}}
    assert config["aggregation"]["mode"] == "buffered"
    assert config["aggregation"]["buffer_size"] == 2
    assert config["model"] == {
        "name": "mlp",
        "model_type": "pytorch",
        "input_shape": [64],
        "num_classes": 10,
    }
    # ... on the service's defaults for the rest (the tutorial's 600 s round deadline)
    assert config["aggregation"]["deadline"] == 600.0
    assert config == SERVICE_DEFAULTS.replace(**document).to_dict()
    assert "join_token" not in config
    assert status["parties_remaining"] == 2
    (row,) = client.get("/v1/federations").json()
    assert row["id"] == fid and row["fusion"] == "fedadam" and row["rounds"] == 3
    # the parties' side sees the same federation: its join token works
    joined = client.post("/v1/join", json={"token": created["join_token"]})
    assert joined.status_code == 200 and joined.json()["party_id"] == "party_0"


def test_nested_spec_sets_the_join_token(client):
    token = "a-join-token-of-our-own"
    r = client.post("/v1/federations", json=ZOO | {"num_parties": 1, "join_token": token})
    assert r.status_code == 200, r.text
    assert r.json()["join_token"] == token
    fid = r.json()["aggregator_id"]
    assert "join_token" not in client.get(f"/v1/federations/{fid}").json()["config"]
    joined = client.post("/v1/join", json={"token": token}).json()
    assert joined["party_id"] == "party_0"
    r = client.post("/v1/federations", json=ZOO | {"join_token": token})
    assert r.status_code == 409 and "already used by another federation" in r.json()["detail"]
    for bad, detail in [(5, "join_token must be a string"), ("short", "16 to 256 characters")]:
        r = client.post("/v1/federations", json=ZOO | {"join_token": bad})
        assert r.status_code == 400 and detail in r.json()["detail"], r.text
    assert len(client.get("/v1/federations").json()) == 1


@pytest.mark.parametrize(
    ("document", "detail"),
    [
        (
            ZOO | {"training": {"learning_rate": 0}},
            "training.learning_rate must be a number > 0, got 0",
        ),
        (ZOO | {"training": {"epochs": 0}}, "training.epochs must be an integer >= 1, got 0"),
        (
            ZOO | {"sampling": {"fraction": 1.5}},
            "sampling.fraction must be None or a number > 0 and <= 1, got 1.5",
        ),
        (
            ZOO | {"num_parties": 2, "aggregation": {"quorum": 5}},
            "aggregation.quorum=5 exceeds num_parties=2",
        ),
        (
            ZOO | {"aggregation": {"mode": "buffered", "buffer_size": 0}},
            "aggregation.buffer_size must be an integer >= 1, got 0",
        ),
        (
            ZOO | {"fusion": {"name": "nope"}},
            ("fusion.name must be one of '", "'fedadam'", "got 'nope'"),
        ),
        (
            ZOO | {"fusion": {"name": "fedavg", "params": {"server_learning_rate": 0.1}}},
            "fusion.params: bad parameters for fusion 'fedavg': unknown ['server_learning_rate']",
        ),
        (ZOO | {"rounds": "3"}, "rounds must be an integer >= 1 and <= 100000, got '3'"),
        (ZOO | {"roundz": 3}, "unknown federation setting(s) ['roundz']; known: rounds"),
        (ZOO | {"training": {"lr": 1}}, "unknown training setting(s) ['lr']; known: epochs"),
        ({"model": {"name": "mlp"}}, "model.input_shape is required with a zoo model"),
        ({}, "give exactly one model source"),
    ],
)
def test_nested_spec_errors_are_400_naming_the_path(client, document, detail):
    r = client.post("/v1/federations", json=document)
    assert r.status_code == 400, r.text
    assert all(part in r.json()["detail"] for part in _parts(detail)), r.text
    assert client.get("/v1/federations").json() == []


def test_a_nested_part_that_is_not_a_table_is_a_400_naming_it(client):
    r = client.post("/v1/federations", json=ZOO | {"training": 5})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail.startswith("training") and "must be a table (mapping), got int" in detail
    assert client.get("/v1/federations").json() == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"[1, 2]", "the spec must be a JSON object, got list"),
        (b'"fedavg"', "the spec must be a JSON object, got str"),
        (b"null", "the spec must be a JSON object, got NoneType"),
        (b"{not json", "the spec must be a JSON object: Expecting property name"),
        (b"\xff\xfe", "the spec must be a JSON object: Expecting value"),
        (b'{"a": ' * 40 + b"1" + b"}" * 40, "the spec nests deeper than 32 levels"),
        (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "the spec nests deeper than 32"),
        (b'{"a": ' + b"[" * 4000, "the spec"),
    ],
)
def test_a_spec_that_is_not_a_shallow_json_object_is_a_400(tmp_path, body, detail):
    with TestClient(
        create_app(ServiceSettings(data_dir=str(tmp_path))), raise_server_exceptions=False
    ) as c:
        r = c.post("/v1/federations", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["detail"].startswith(detail), r.json()
        assert c.get("/v1/federations").json() == []


SPEC_WITH_MODEL_FILE = {
    "num_parties": 2,
    "rounds": 1,
    "training": {"learning_rate": 0.1, "optimizer": "optim.Adadelta"},
    "fusion": {"name": "fedavg"},
    "model": {"model_type": "pytorch"},
}


def test_start_aggregator_takes_a_nested_spec_field_beside_the_model_file(client):
    r = client.post(
        "/start-aggregator",
        data={"spec": json.dumps(SPEC_WITH_MODEL_FILE), "join_token": "j" * 20},
        files={"model_file": ("m.pt", model_bytes())},
    )
    assert r.status_code == 200, r.text
    assert r.json()["join_token"] == "j" * 20
    agg = r.json()["aggregator_id"]
    config = client.get(f"/v1/federations/{agg}").json()["config"]
    assert config["training"]["optimizer"] == "optim.Adadelta"
    assert config["training"]["learning_rate"] == 0.1
    assert (config["rounds"], config["num_parties"]) == (1, 2)
    assert config["model"]["name"] is None and config["model"]["model_type"] == "pytorch"
    assert config["aggregation"]["deadline"] == 600.0  # the service's default
    assert party(client, agg).json()["parties_remaining"] == 1
    assert party(client, agg).json()["parties_remaining"] == 0
    r = client.post("/train", json={"aggregator_id": agg})
    assert r.status_code == 200 and r.json()["status"] == "completed", r.json()
    assert r.json()["rounds_done"] == 1 and len(r.json()["metrics"]) == 1


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        (
            {"spec": json.dumps(SPEC_WITH_MODEL_FILE), "rounds": "2"},
            "give the nested spec or flat fields, not both: ['rounds']",
        ),
        ({"spec": "[1]"}, "spec must be a JSON object, got list"),
        ({"spec": "{oops"}, "spec must be a JSON object: Expecting property name"),
        (
            {"spec": json.dumps(SPEC_WITH_MODEL_FILE | {"training": {"epochs": 0}})},
            "training.epochs must be an integer >= 1, got 0",
        ),
        (
            {"spec": json.dumps(SPEC_WITH_MODEL_FILE | {"sampling": {"count": 0}})},
            "sampling.count",
        ),
    ],
)
def test_a_bad_spec_field_is_a_400_naming_the_problem(client, fields, detail):
    r = client.post("/start-aggregator", data=fields, files={"model_file": ("m.pt", model_bytes())})
    assert r.status_code == 400 and detail in r.json()["detail"], r.text
    assert client.get("/v1/federations").json() == []


@pytest.mark.parametrize(
    ("form", "name", "takes"),
    [
        ({"bogus": "1"}, "bogus", "fusion 'fedavg' takes clip_norm"),
        # the flat name is fusion_algorithm now
        ({"fusion": "fedavg"}, "fusion", "fusion 'fedavg' takes clip_norm"),
        # a parameter of another fusion than the chosen one
        ({"server_learning_rate": "0.1"}, "server_learning_rate", "fusion 'fedavg' takes"),
        ({"fusion_algorithm": "krum", "alphaa": "0.5"}, "alphaa", "fusion 'krum' takes"),
    ],
)
def test_a_flat_form_field_the_spec_does_not_know_is_a_400_naming_it(client, form, name, takes):
    r = start(client, **form)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"unknown setting {name!r}: it is no flat setting"), detail
    assert takes in detail  # what the chosen fusion does take
    assert "fusion_algorithm" in detail and "learning_rate" in detail  # the flat settings
    assert client.get("/v1/federations").json() == []


def test_a_fusion_parameter_is_a_flat_form_field_of_its_fusion(client):
    r = start(client, fusion_algorithm="fedadam", server_learning_rate="0.01")
    assert r.status_code == 200, r.text
    config = client.get(f"/v1/federations/{r.json()['aggregator_id']}").json()["config"]
    assert config["fusion"] == {"name": "fedadam", "params": {"server_learning_rate": 0.01}}


def test_join_tokens_the_service_makes_are_safe_on_a_command_line(monkeypatch):
    """A token starting with '-' reads as an option to `fedfuse party --token` (1 in 64 did)."""
    import secrets

    from fedfuse.service._manager import _join_token

    drawn = iter(["-starts-with-a-dash-00000000000", "fine-token-000000000000000"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert _join_token() == "fine-token-000000000000000"
