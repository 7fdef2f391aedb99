"""A federation the dashboard tests can watch: the real service in this process, and remote
parties played by threads that speak the party protocol over HTTP (one can be made to send a
wrong-shaped update, which the service rejects with a reason)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import uvicorn

from fedfuse.weights import to_bytes

FORM = {
    "fusion_algorithm": "fedavg",
    "model_type": "pytorch",
    "learning_rate": 0.1,
    "epochs": 1,
    "optimizer": "optim.SGD",
    "round_timeout": 60,
}
WRONG_SHAPE = "parameter 'w' has shape (3, 3), expected (2, 2)"


def create_federation(
    url: str, rounds: int, num_parties: int = 2, api_key: str | None = None
) -> tuple[str, str]:
    """A federation of ``num_parties`` remote parties on a 2x2 array; (its id, join token)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    initial = to_bytes({"w": np.zeros((2, 2), np.float32)})
    r = httpx.post(
        f"{url}/start-aggregator",
        data={k: str(v) for k, v in FORM.items()}
        | {"num_parties": str(num_parties), "rounds": str(rounds), "auto_start": "true"},
        files={"initial_weights": ("w.safetensors", initial)},
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["aggregator_id"], r.json()["join_token"]


class FakeParty(threading.Thread):
    """A remote party: joins as ``name`` and answers every task until the federation ends.

    ``bad``: its updates have the wrong shape (rejected). ``gate``: each train reply waits for
    one release of this semaphore, so a test decides when each round can end."""

    def __init__(
        self,
        url: str,
        join_token: str,
        name: str,
        *,
        bad: bool = False,
        gate: threading.Semaphore | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"party-{name}")
        self.url, self.bad, self.gate = url, bad, gate
        self.http = httpx.Client(base_url=url, timeout=60)
        joined = self.http.post("/v1/join", json={"token": join_token, "name": name})
        assert joined.status_code == 200, joined.text
        self.joined = joined.json()
        self.fid = self.joined["federation_id"]
        self.auth = {"Authorization": f"Bearer {self.joined['party_token']}"}
        self.stop = threading.Event()
        self.trained = 0

    def _reply(self, task_id: int, meta: dict[str, Any], body: bytes = b"") -> None:
        self.http.post(
            f"/v1/federations/{self.fid}/tasks/{task_id}/reply",
            content=body,
            headers=self.auth | {"X-Fedfuse-Meta": json.dumps(meta)},
        )

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                task = self.http.get(
                    f"/v1/federations/{self.fid}/tasks/next?wait=2", headers=self.auth
                )
            except httpx.TransportError:
                return  # the service stopped
            if task.status_code != 200:
                if task.status_code == 204:
                    continue
                return  # 410: the federation ended
            meta = json.loads(task.headers["X-Fedfuse-Meta"])
            if meta["kind"] == "evaluate":
                metrics = {"accuracy": 0.5, "loss": 1.0}
                self._reply(
                    meta["task_id"],
                    {"kind": "evaluation", "num_examples": 3, "metrics": metrics},
                )
                continue
            if self.gate is not None:
                while not self.gate.acquire(timeout=0.5):
                    if self.stop.is_set():
                        return
            self.trained += 1
            shape = (3, 3) if self.bad else (2, 2)
            body = to_bytes({"w": np.full(shape, 0.5, np.float32)})
            metrics = {"loss": 1.0 / self.trained, "accuracy": 1 - 0.5 / self.trained}
            self._reply(
                meta["task_id"],
                {"kind": "update", "num_examples": 5, "metrics": metrics},
                body,
            )


def run_parties(url: str, token: str, **good_options: Any) -> list[FakeParty]:
    """Two parties, started: ``good`` (options as given) and ``bad`` (always rejected)."""
    good = FakeParty(url, token, "good", **good_options)
    parties = [good, FakeParty(url, token, "bad", bad=True)]
    for party in parties:
        party.start()
    return parties


def stop(parties: list[FakeParty]) -> None:
    for party in parties:
        party.stop.set()
    for party in parties:
        party.join(30)


def sse_events(response: httpx.Response):
    """The server-sent events of a streaming response, as (event, id, data) as they come;
    comments (heartbeats) as ("comment", None, text)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", None, line[1:].strip()
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:  # ("retry: N" alone only sets the reconnection delay)
            event_id = fields.get("id")
            yield fields.get("event"), event_id and int(event_id), json.loads(fields["data"])
            fields = {}
        else:
            fields = {}


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port while the block runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)  # polling until uvicorn says it serves
    assert server.started, "the dashboard app did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
