"""The Model Fusion tutorial's endpoints (``/start-aggregator``, ``/start-party``, ``/train``,
``/stop``, as IBM's API names them) and ``POST /v1/federations``, which takes the nested spec."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, File, Form, Header, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.formparsers import MultiPartException

from fedfuse.recipes import (
    FederationSpec,
    field_types,
    flat_names,
    flat_table,
    parse_json_object,
)
from fedfuse.service._boundary import GuardedRoute, before_body
from fedfuse.service._config import ServiceSettings
from fedfuse.service._guards import Guards
from fedfuse.service._http import call_soon, read_upload
from fedfuse.service._manager import Manager
from fedfuse.service._spec import SpecError, spec_from_form, spec_from_json
from fedfuse.weights import Weights, num_bytes

__all__ = ["CREATED_LINKS", "fusion_routes"]


class TrainRequest(BaseModel):
    aggregator_id: str = Field(max_length=64)
    wait: bool = True


class StopRequest(BaseModel):
    aggregator_id: str = Field(max_length=64)


_UPLOADS = ("model_file", "initial_weights")
_MAX_FIELD = 64 * 1024


async def _form(request: Request) -> tuple[dict[str, str], dict[str, Any]]:
    """A multipart (or urlencoded) form's text fields and its uploads, refused field by field:
    at most 2 files (``model_file``, ``initial_weights``) and short text values."""
    try:
        form = await request.form(max_files=len(_UPLOADS), max_fields=256)
    except MultiPartException as exc:  # (the boundary's 413/408 pass through as they are)
        raise SpecError(f"the form cannot be read: {exc}") from None
    fields: dict[str, str] = {}
    uploads: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if len(value) > _MAX_FIELD:
                raise SpecError(f"form field {key!r} is longer than {_MAX_FIELD} characters")
            fields[key] = value
        elif key in _UPLOADS:
            uploads[key] = value
        else:
            raise SpecError(f"unexpected file {key!r}; upload only {', '.join(_UPLOADS)}")
    return fields, uploads


def _form_schema() -> dict[str, Any]:
    """The form's OpenAPI schema, derived from the spec's flat names (not listed by hand)."""
    kinds = {"int": "integer", "float": "number", "bool": "boolean"}
    properties: dict[str, Any] = {name: {"type": "string", "format": "binary"} for name in _UPLOADS}
    table, types = flat_table(), field_types()
    for name in flat_names():
        if table.get(name, "").startswith("backend."):
            continue  # a simulation's setting: the service's parties are remote (refused)
        kind = types.get(table.get(name, ""), "str").split(" ")[0].split("[")[0]
        properties[name] = {"type": kinds.get(kind, "string")}
    properties["join_token"] = {"type": "string", "minLength": 16, "maxLength": 256}
    schema = {"type": "object", "properties": properties, "required": ["fusion_algorithm"]}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


_FORM_SCHEMA = _form_schema()


def _party_problems(rounds: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Per party: in how many rounds it ``failed`` (or was ``rejected``), and the last reason."""
    problems: dict[str, dict[str, Any]] = {}
    for record in rounds:
        for pid, reason in (record.get(key) or {}).items():
            entry = problems.setdefault(pid, {"rounds": 0, "reason": ""})
            entry["rounds"] += 1
            entry["reason"] = reason
    return problems


def _json_weights(weights: Weights) -> dict[str, Any]:
    return {name: arr.tolist() for name, arr in weights.items()}


_ID = {"aggregator_id": "$response.body#/aggregator_id"}
CREATED_LINKS = {  # OpenAPI links: what a client (or a stateful fuzzer) does with a new federation
    "StartParty": {"operationId": "start_party_start_party_post", "requestBody": _ID},
    "Train": {"operationId": "train_train_post", "requestBody": _ID},
    "Stop": {"operationId": "stop_stop_post", "requestBody": _ID},
    "Status": {
        "operationId": "federation_status_v1_federations__fid__get",
        "parameters": {"fid": "$response.body#/aggregator_id"},
    },
}


def fusion_routes(settings: ServiceSettings, manager: Manager, guards: Guards) -> APIRouter:
    """The routes that create, train and stop federations (the API key, if any)."""
    router = APIRouter(route_class=GuardedRoute)

    async def _create(
        spec: FederationSpec,
        model_file: Any,
        initial_weights: Any,
        join_token: str | None,
    ) -> dict[str, Any]:
        limit = settings.max_upload_bytes
        model_bytes = await read_upload(model_file, "model_file", limit)
        weights_bytes = await read_upload(initial_weights, "initial_weights", limit)
        fid, token = await to_thread.run_sync(
            lambda: manager.create(
                spec, model_bytes=model_bytes, initial_weights=weights_bytes, join_token=join_token
            )
        )
        return {"aggregator_id": fid, "join_token": token, "status": "registering"}

    @router.post(
        "/start-aggregator",
        tags=["model fusion"],
        responses={200: {"links": CREATED_LINKS}},
        openapi_extra=_FORM_SCHEMA,
    )
    @before_body(guards.control)
    async def start_aggregator(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Create a federation (an aggregator) from the tutorial's form: ``fusion_algorithm``,
        ``model_type``, ``num_parties``, ``rounds``, ``epochs``, ``learning_rate``,
        ``optimizer``... any flat setting of the federation spec (``fedfuse.recipes.flat_names``)
        and the chosen fusion's parameters. Upload ``model_file`` written by
        ``torch.save(model)``, or name a zoo ``model`` (with ``input_shape`` and
        ``num_classes``), or upload ``initial_weights`` (safetensors). ``fusion_params`` and
        ``train_options`` may be JSON objects. Returns ``aggregator_id`` and the
        ``join_token`` remote parties use."""
        fields, uploads = await _form(request)
        join_token = fields.pop("join_token", None)
        if "spec" in fields:  # the nested spec as one JSON field, beside uploaded files
            document = parse_json_object(fields.pop("spec"), "spec")
            if fields:
                raise SpecError(f"give the nested spec or flat fields, not both: {sorted(fields)}")
            spec = spec_from_json(document)
        elif "fusion_algorithm" not in fields:
            raise SpecError("fusion_algorithm is required (e.g. fedavg)")
        else:
            spec = spec_from_form(fields)
        return await _create(
            spec, uploads.get("model_file"), uploads.get("initial_weights"), join_token
        )

    @router.post("/v1/federations", tags=["federations"], responses={200: {"links": CREATED_LINKS}})
    @before_body(guards.control)
    async def create_federation(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        """Create a federation from a nested JSON spec (``{"rounds": 10, "training":
        {"learning_rate": 0.05}, "fusion": {"name": "fedadam", "params": {...}},
        "aggregation": {"mode": "buffered", "buffer_size": 4}, "model": {"name": "mlp",
        "input_shape": [64], "num_classes": 10}}``), the same document ``fedfuse create
        --config`` sends. A ``join_token`` key sets the join token. The model is a zoo model or
        comes from parties (upload files through ``/start-aggregator``)."""
        body = await request.body()  # bounded by the boundary's body limit
        document = parse_json_object(body.decode("utf-8", errors="replace"), "the spec")
        join_token = document.pop("join_token", None)
        if join_token is not None and not isinstance(join_token, str):
            raise SpecError("join_token must be a string")
        return await _create(spec_from_json(document), None, None, join_token)

    @router.post("/start-party", tags=["model fusion"])
    @before_body(guards.control)
    async def start_party(
        aggregator_id: Annotated[str, Form(max_length=64)],
        data_handler_class_name: Annotated[str, Form(max_length=128)],
        data: Annotated[UploadFile, File()],
        authorization: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        """Register a party that trains on the service host on the uploaded ``.npz``
        (``x_train, y_train, x_test, y_test``). Answers how many parties are still to register."""
        npz = await read_upload(data, "data", settings.max_upload_bytes)
        result = await to_thread.run_sync(
            manager.add_hosted_party, aggregator_id, data_handler_class_name, npz
        )
        remaining = result["parties_remaining"]
        return {
            "aggregator_id": aggregator_id,
            **result,
            "message": f"party registered; {remaining} more to register"
            if remaining
            else "all parties registered; ready to train",
        }

    @router.post("/train", tags=["model fusion"])
    @before_body(guards.control)
    async def train(body: TrainRequest, authorization: Annotated[str | None, Header()] = None):
        """Start training. With ``wait`` (the default, as in the tutorial) answer when it ends,
        with ``global_model`` (name -> nested lists, loadable with ``load_state_dict``) and the
        metrics of every round; with ``"wait": false`` answer 202 at once and let the caller
        poll ``GET /v1/federations/{id}``. A model larger than the service's
        ``max_json_model_bytes`` is left out: download it from ``GET /v1/federations/{id}/model``.
        """
        fid = body.aggregator_id
        await to_thread.run_sync(manager.start, fid)
        if not body.wait:
            return JSONResponse({"aggregator_id": fid, "status": "training"}, status_code=202)
        done = asyncio.Event()  # set from the training thread: waiting costs no worker thread
        loop = asyncio.get_running_loop()
        manager.when_done(fid, lambda: call_soon(loop, done.set))
        await done.wait()
        status = await to_thread.run_sync(manager.status, fid)
        weights = manager.global_weights(fid)
        answer = {
            "aggregator_id": fid,
            "status": status["status"],
            "error": status["error"],
            "rounds_done": status["rounds_done"],
        }
        size = num_bytes(weights)
        if size <= settings.max_json_model_bytes:
            answer["global_model"] = await to_thread.run_sync(_json_weights, weights)
        else:
            answer["global_model_url"] = f"/v1/federations/{fid}/model"
            answer["message"] = (
                f"the global model ({size} bytes) is larger than the JSON answer's limit of "
                f"{settings.max_json_model_bytes} bytes; download it as safetensors from "
                f"GET /v1/federations/{fid}/model"
            )
        rounds = await to_thread.run_sync(manager.store.rounds, fid)
        answer["metrics"] = rounds
        answer["failed_parties"] = _party_problems(rounds, "failed")
        answer["rejected_parties"] = _party_problems(rounds, "rejected")
        return answer

    @router.post("/stop", tags=["model fusion"])
    @before_body(guards.control)
    async def stop(body: StopRequest, authorization: Annotated[str | None, Header()] = None):
        """End a federation. Stopping twice is a 409."""
        await to_thread.run_sync(manager.stop, body.aggregator_id)
        return {
            "aggregator_id": body.aggregator_id,
            "status": manager.status(body.aggregator_id)["status"],
        }

    return router
