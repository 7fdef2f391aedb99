"""Reading federations: list, status, history and the global model (``/v1``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response

from fedfuse.service._boundary import GuardedRoute, before_body
from fedfuse.service._guards import Guards
from fedfuse.service._manager import Manager
from fedfuse.weights import to_bytes

__all__ = ["federation_routes"]


def federation_routes(manager: Manager, guards: Guards) -> APIRouter:
    """With an API key: the key, or for one federation a party token of it."""
    router = APIRouter(route_class=GuardedRoute)

    @router.get("/v1/federations", tags=["federations"])
    @before_body(guards.reader)
    def list_federations(
        authorization: Annotated[str | None, Header()] = None,
    ) -> list[dict[str, Any]]:
        return manager.list()

    @router.get("/v1/federations/{fid}", tags=["federations"])
    @before_body(guards.reader)
    def federation_status(
        fid: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        return manager.status(fid)

    @router.get("/v1/federations/{fid}/history", tags=["federations"])
    @before_body(guards.reader)
    def federation_history(
        fid: str, authorization: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        manager.status(fid)
        return {"rounds": manager.store.rounds(fid), "rejected": manager.store.rejected(fid)}

    @router.get("/v1/federations/{fid}/model", tags=["federations"])
    @before_body(guards.reader)
    def download_model(fid: str, authorization: Annotated[str | None, Header()] = None) -> Response:
        """The current global model as a safetensors file."""
        weights = manager.global_weights(fid)
        rounds = manager.status(fid)["rounds_done"]
        return Response(
            to_bytes(weights, {"rounds_done": str(rounds)}),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{fid}.safetensors"'},
        )

    return router
