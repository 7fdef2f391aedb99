"""No request produces a 5xx: property-based attacks on the whole service.

Threat: any client, sending anything the schema allows and much it does not. Two kinds of
generated traffic, each asserting only what the README promises (every answer is a 2xx or a 4xx
with a message) and that the service still answers afterwards:

* stateful sequences from the OpenAPI schema (schemathesis links: create a federation, register
  parties with its id, train it, read its status), so handlers run on live federations;
* hostile shapes the schema does not suggest: deeply nested JSON, huge and non-finite numbers and
  wrong types, in the JSON form fields (``fusion_params``, ``train_options``), in JSON bodies,
  in nested federation specs (``POST /v1/federations``, the ``spec`` form field) and in the
  party protocol's ``X-Fedfuse-Meta`` header.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import tempfile
import zlib

import numpy as np
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from fedfuse import FederationSpec
from fedfuse.service import ServiceSettings, create_app
from fedfuse.weights import SizeLimits, to_bytes

_dir = tempfile.mkdtemp(prefix="fedfuse-fuzz-stateful-")
_app = create_app(ServiceSettings(data_dir=_dir, max_upload_bytes=1_000_000))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)
_client = TestClient(_app, raise_server_exceptions=False)
_client.__enter__()  # the lifespan runs once for the module; the client closes at exit

WEIGHTS = to_bytes({"w": np.zeros((2, 2), np.float32)})
FORM = {"fusion_algorithm": "fedavg", "num_parties": 1, "rounds": 1}


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf,
        x_train=rng.random((8, 1, 28, 28), dtype=np.float32),
        y_train=rng.integers(0, 10, 8),
        x_test=rng.random((2, 1, 28, 28), dtype=np.float32),
        y_test=rng.integers(0, 10, 2),
    )
    return buf.getvalue()


# half of the generated creations and registrations are made valid, so that the links lead to
# live federations (random forms almost never name a model source or carry a real .npz)
_VALID = {
    "POST /start-aggregator": {
        "fusion_algorithm": "fedavg", "num_parties": 1, "rounds": 1, "model": "mlp",
        "input_shape": "1,28,28", "num_classes": 10, "batch_size": 4,
    },
    "POST /start-party": {"data": _npz(), "data_handler_class_name": "mnist_pytorch"},
}  # fmt: skip


class ServiceMachine(schema.as_state_machine()):
    def before_call(self, case) -> None:
        valid = _VALID.get(case.operation.label)
        chosen = zlib.crc32(repr(case.body).encode()) % 2  # the same choice on every run
        if valid is not None and isinstance(case.body, dict) and chosen:
            keep = {k: v for k, v in case.body.items() if k == "aggregator_id"}
            case.body = valid | keep

    def validate_response(self, response, case, **kwargs) -> None:
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        answered[(case.operation.label, response.status_code)] += 1


answered: collections.Counter = collections.Counter()


def test_stateful_sequences_reach_live_federations():
    """Sequences of linked calls (create -> register -> train -> status), none answered 5xx."""
    run_state_machine_as_test(
        ServiceMachine,
        settings=settings(
            max_examples=15,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert answered[("POST /start-aggregator", 200)] > 0
    assert answered[("POST /start-party", 200)] + answered[("GET /v1/federations/{fid}", 200)] > 0


def test_the_schema_links_create_to_party_train_and_status():
    """The stateful run follows a new federation's id: its links name real operations."""
    spec = _client.get("/openapi.json").json()
    links = spec["paths"]["/start-aggregator"]["post"]["responses"]["200"]["links"]
    operations = {
        op["operationId"]: f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    assert {operations[link["operationId"]] for link in links.values()} == {
        "POST /start-party",
        "POST /train",
        "POST /stop",
        "GET /v1/federations/{fid}",
    }


# ---- hostile shapes ----------------------------------------------------------------------------
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=20,
)
_deep = st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n)
_texts = _json.map(json.dumps) | _deep | st.text(max_size=100)
_FIELDS = st.sampled_from(["aggregator_id", "token", "name", "wait", "party_secret"])


def _fine(response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code >= 400:
        assert response.json()["detail"], response.text


@given(field=st.sampled_from(["fusion_params", "train_options"]), text=_texts)
@example(field="fusion_params", text="[" * 2000 + "]" * 2000)
@example(field="train_options", text='{"a": ' * 100 + "1" + "}" * 100)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_json_form_fields_of_any_shape_get_an_answer(field, text):
    r = _client.post(
        "/start-aggregator",
        data=FORM | {field: text[:4096]},
        files={"initial_weights": ("w.safetensors", WEIGHTS)},
    )
    _fine(r)


@given(
    path=st.sampled_from(["/train", "/stop", "/v1/join"]),
    body=_json
    | st.dictionaries(st.sampled_from(["aggregator_id", "token", "name", "wait"]), _json),
    deep=_deep,
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_json_bodies_of_any_shape_get_an_answer(path, body, deep):
    for content in (json.dumps(body), deep):  # NaN and Infinity literals included
        _fine(_client.post(path, content=content, headers={"Content-Type": "application/json"}))


# nested specs: the spec's own keys with values of any shape, so that most documents get past
# the key checks and reach the value checks; the model is small (the operator's cap) or random
_spec_dir = tempfile.mkdtemp(prefix="fedfuse-fuzz-spec-")
_spec_app = create_app(ServiceSettings(data_dir=_spec_dir, limits=SizeLimits(max_params=50_000)))
_spec_client = TestClient(_spec_app, raise_server_exceptions=False)
_spec_client.__enter__()
_PARTS = {name: [f.name for f in dataclasses.fields(part)] for name, part in
          FederationSpec.parts().items()}  # fmt: skip
_TOP = [f.name for f in dataclasses.fields(FederationSpec) if f.name not in _PARTS]
_SMALL_MODEL = {"name": "mlp", "input_shape": [8], "num_classes": 2}
_values = _json | st.integers(min_value=0, max_value=12) | st.sampled_from(["fedavg", "sync"])
_specs = st.fixed_dictionaries(
    {"model": st.just(_SMALL_MODEL) | st.dictionaries(st.sampled_from(_PARTS["model"]), _values)},
    optional={
        **{name: _values for name in _TOP},
        **{
            name: st.dictionaries(st.sampled_from(fields), _values, max_size=4) | _json
            for name, fields in _PARTS.items()
            if name != "model"
        },
        "join_token": st.text(min_size=16, max_size=20) | _json,
    },
)


def _created_spec_is_sound(r, document: dict) -> None:
    """A created federation stored the nested spec, valid as read back."""
    fid = r.json()["aggregator_id"]
    config = _spec_client.get(f"/v1/federations/{fid}").json()["config"]
    FederationSpec.from_dict(config).validate()
    assert set(config) == {*_TOP, *_PARTS}
    for name, value in document.items():
        if name in _TOP:
            assert config[name] == value


@given(document=_specs)
@example(document={"model": _SMALL_MODEL, "rounds": float("nan")})
@example(document={"model": _SMALL_MODEL, "training": {"learning_rate": float("inf")}})
@example(document={"model": _SMALL_MODEL, "num_parties": 10**400})
@example(document={"model": {"name": "mlp", "input_shape": [10**6], "num_classes": 10**6}})
@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
def test_nested_specs_of_any_shape_get_an_answer(document):
    r = _spec_client.post(
        "/v1/federations", content=json.dumps(document),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    _fine(r)
    assert r.status_code in (200, 400, 409), r.text
    if r.status_code == 200:
        _created_spec_is_sound(r, document)
    spec = {k: v for k, v in document.items() if k != "join_token"}
    r = _spec_client.post(
        "/start-aggregator", data={"spec": json.dumps(spec)},
        files={"initial_weights": ("w.safetensors", WEIGHTS)},
    )  # fmt: skip
    _fine(r)
    assert _spec_client.get("/healthz").json() == {"status": "ok"}


def _federation_with_a_task() -> tuple[str, dict, int]:
    fed = _client.post(
        "/start-aggregator",
        data=FORM | {"round_timeout": 600},
        files={"initial_weights": ("w.safetensors", WEIGHTS)},
    ).json()
    joined = _client.post("/v1/join", json={"token": fed["join_token"]}).json()
    auth = {"Authorization": f"Bearer {joined['party_token']}"}
    _client.post("/train", json={"aggregator_id": fed["aggregator_id"], "wait": False})
    task = _client.get(f"/v1/federations/{fed['aggregator_id']}/tasks/next?wait=30", headers=auth)
    return fed["aggregator_id"], auth, json.loads(task.headers["X-Fedfuse-Meta"])["task_id"]


_FID, _AUTH, _TASK = _federation_with_a_task()


@given(
    meta=_json
    | st.fixed_dictionaries(
        {"kind": st.sampled_from(["update", "skipped", "evaluation", "error"])},
        optional={"num_examples": _json, "metrics": _json, "is_delta": _json, "message": _json},
    ),
    body=st.sampled_from([b"", WEIGHTS, b"\xff" * 16, to_bytes({"w": np.ones(3, np.float64)})]),
)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_reply_metadata_of_any_shape_gets_an_answer(meta, body):
    """Only the first reply is taken (the rest are 409s): every one still gets an answer."""
    r = _client.post(
        f"/v1/federations/{_FID}/tasks/{_TASK}/reply",
        content=body,
        headers=_AUTH | {"X-Fedfuse-Meta": json.dumps(meta)},
    )
    _fine(r)
    assert _client.get("/healthz").json() == {"status": "ok"}


def test_a_rejected_deep_body_is_not_echoed_back():
    """A 422 names what was wrong without quoting the input: 900 nested lists came back
    whole before, too deep for a client to decode."""
    deep = "[" * 900 + "]" * 900
    response = _client.post("/train", content=deep, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert len(response.content) < 2000 and "input" not in response.json()["detail"][0]
