"""A node as a network service: exchanges with neighbours over HTTP, no aggregator anywhere.

Protocol (every body is safetensors of named arrays shaped like the model's parameters; the
ids, degrees and step counts travel in headers; nothing is ever pickled and no data example
ever leaves a node):

- ``POST /exchange`` (headers ``X-Fedfuse-Node``: the sender's id, ``X-Fedfuse-Degree``) with
  the sender's variables for this node. For two-way algorithms (gossip, D-PSGD) the reply (200)
  carries this node's variables for the sender, computed before the sender's were applied; for
  one-way ones (ECL) the reply is 204 with no body. 400 for a body that is not safetensors
  shaped like the model, 403 for a node that is not a configured neighbour (or a wrong token),
  503 while the node has not started training (a late joiner still fetching its model).
- ``GET /model``: the current model (what a late joiner starts from).
- ``GET /status``: JSON with the id, steps, epochs, neighbours, dropped edges, done.
- ``POST /bye``: the sender has finished training.

``PeerNode`` wraps a ``ConsensusNode`` with a ``ThreadingHTTPServer`` and a training loop. The
loop trains, and after each local round exchanges with the partners the algorithm draws; an
exchange that fails (refused, timed out, bad reply) counts towards dropping that edge.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fedfuse.consensus._node import ConsensusNode
from fedfuse.data import ArrayDataset
from fedfuse.weights import WeightsFormatError, from_bytes, num_bytes, to_bytes

__all__ = ["HttpReply", "PeerNode", "Transport", "urllib_transport"]

_NODE, _DEGREE, _TOKEN, _STEPS = (
    "X-Fedfuse-Node",
    "X-Fedfuse-Degree",
    "X-Fedfuse-Token",
    "X-Fedfuse-Steps",
)
_SAFETENSORS = "application/octet-stream"


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    headers: Mapping[str, str]


#: ``transport(method, url, body, headers, timeout) -> HttpReply``; raises ``OSError`` when the
#: other end cannot be reached. Swap it to record or fake the network in tests.
Transport = Callable[[str, str, bytes | None, Mapping[str, str], float], HttpReply]


def urllib_transport(
    method: str, url: str, body: bytes | None, headers: Mapping[str, str], timeout: float
) -> HttpReply:
    """The default transport: one ``urllib.request`` call, HTTP errors returned, not raised."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpReply(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, exc.read(), dict(exc.headers))


class PeerNode:
    """Serve one ``ConsensusNode`` over HTTP and train it, exchanging with neighbours' servers.

    Args:
        node: the node (its ``configured_peers`` must be the keys of ``peers``).
        peers: neighbour id -> base URL (``http://127.0.0.1:8701``).
        host, port: where to listen (port 0: any free port; see ``address``).
        timeout: seconds an exchange may take before it counts as failed.
        token: if set, requests must carry it (``X-Fedfuse-Token``) and this node sends it.
        transport: how requests are sent (``urllib_transport`` by default).
    """

    def __init__(
        self,
        node: ConsensusNode,
        peers: Mapping[int, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timeout: float = 10.0,
        token: str | None = None,
        transport: Transport = urllib_transport,
    ) -> None:
        missing = sorted(set(node.configured_peers) - set(peers))
        if missing:
            raise ValueError(f"node {node.node_id}: no address for neighbour(s) {missing}")
        self.node = node
        self.peers = {int(i): url.rstrip("/") for i, url in peers.items()}
        self.timeout = timeout
        self.token = token
        self.transport = transport
        self.lock = threading.Lock()
        self.done = False
        self.ready = threading.Event()  # set once training starts (after a late join)
        self.finished_peers: set[int] = set()
        self.joined_from: int | None = None
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._max_body = 2 * num_bytes(node.message_template()) + (1 << 20)
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- server side --------------------------------------------------------------------------

    def start(self) -> PeerNode:
        """Start answering requests (in a background thread)."""
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"fedfuse-node-{self.node.node_id}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the server and release its port."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PeerNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "node": self.node.node_id,
                "steps": self.node.steps,
                "epochs": self.node.epochs_done,
                "peers": self.node.peers,
                "dropped": sorted(self.node.dropped),
                "done": self.done,
            }

    # --- client side --------------------------------------------------------------------------

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = {_NODE: str(self.node.node_id), **extra}
        if self.token:
            headers[_TOKEN] = self.token
        return headers

    def _request(
        self, method: str, peer: int, path: str, body: bytes | None = None, **headers: str
    ) -> HttpReply:
        return self.transport(
            method, self.peers[peer] + path, body, self._headers(**headers), self.timeout
        )

    def _log(self, event: str, **fields: Any) -> None:
        self.events.append(
            {"event": event, "time": time.time(), "steps": self.node.steps, **fields}
        )

    def exchange(self, peer: int) -> bool:
        """One exchange with ``peer``; returns whether it succeeded."""
        with self.lock:
            body = to_bytes(self.node.message(peer))
            degree = self.node.degree
        try:
            reply = self._request(
                "POST",
                peer,
                "/exchange",
                body,
                **{_DEGREE: str(degree), "Content-Type": _SAFETENSORS},
            )
            if reply.status == 204:
                return True
            if reply.status != 200:
                raise OSError(f"HTTP {reply.status}: {reply.body[:200]!r}")
            variables = from_bytes(reply.body)
            with self.lock:
                self.node.receive(peer, variables, int(reply.headers.get(_DEGREE, 0)))
            return True
        except (OSError, ValueError) as exc:
            with self.lock:
                dropped = self.node.exchange_failed(peer)
            self._log("exchange_failed", peer=peer, error=str(exc)[:200], dropped=dropped)
            return False

    def fetch_model(self, peer: int) -> dict[str, Any] | None:
        try:
            reply = self._request("GET", peer, "/model")
            return from_bytes(reply.body) if reply.status == 200 else None
        except (OSError, ValueError):
            return None

    def wait_for_peers(self, timeout: float) -> list[int]:
        """Wait (up to ``timeout`` s) until every neighbour answers; returns those that do.

        This node answers exchanges from now on: its initial model is a valid state.
        """
        self.ready.set()
        deadline = time.monotonic() + timeout
        waiting = set(self.peers)
        while waiting and time.monotonic() < deadline:
            for peer in sorted(waiting):
                try:
                    if self._request("GET", peer, "/status").status == 200:
                        waiting.discard(peer)
                except OSError:
                    pass
            if waiting:
                time.sleep(0.05)
        return sorted(set(self.peers) - waiting)

    def join(self) -> int | None:
        """Join late: start from the model of the first neighbour that serves one."""
        for peer in sorted(self.peers):
            weights = self.fetch_model(peer)
            if weights is not None:
                with self.lock:
                    self.node.start_from(weights)
                self.joined_from = peer
                self._log("joined", peer=peer)
                self.ready.set()
                return peer
        self._log("join_failed")
        self.ready.set()
        return None

    def train(
        self,
        epochs: float,
        *,
        test: ArrayDataset | None = None,
        step_delay: float = 0.0,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train ``epochs`` passes over the local data, exchanging after every local round.

        ``step_delay`` seconds of sleep after each step emulate a slower machine. With ``test``,
        the node evaluates itself after each local epoch; the records are returned.
        """
        node = self.node
        self.ready.set()
        steps_per_epoch = node.steps_per_epoch
        total = math.ceil(epochs * steps_per_epoch)
        while node.steps < total:
            with self.lock:
                node.step()
            if step_delay:
                time.sleep(step_delay)
            if node.round_done:
                for peer in node.partners():
                    self.exchange(peer)
            if test is not None and node.steps % steps_per_epoch == 0:
                with self.lock:
                    metrics = node.evaluate(test)
                record = {
                    "epoch": node.steps // steps_per_epoch,
                    "steps": node.steps,
                    "time": time.time(),
                    **metrics,
                }
                self.history.append(record)
                if on_epoch is not None:
                    on_epoch(record)
        return self.history

    def finish(self, linger: float = 30.0) -> None:
        """Tell the neighbours this node is done; keep answering until they are done too.

        Waits at most ``linger`` seconds for the neighbours still connected, then stops serving.
        """
        with self.lock:
            self.done = True
        for peer in sorted(self.peers):
            with contextlib.suppress(OSError):
                self._request("POST", peer, "/bye", b"")
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline:
            with self.lock:
                waiting = set(self.node.peers) - self.finished_peers
            if not waiting:
                break
            time.sleep(0.05)
        self.stop()


def _handler_for(peer_node: PeerNode) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fedfuse-node"

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the node logs exchanges itself

        def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header(_NODE, str(peer_node.node.node_id))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

        def _sender(self) -> int | None:
            """The calling neighbour's id, or None after answering 403."""
            if peer_node.token and not hmac.compare_digest(
                self.headers.get(_TOKEN, ""), peer_node.token
            ):
                self._error(403, "missing or wrong token")
                return None
            try:
                sender = int(self.headers.get(_NODE, ""))
            except ValueError:
                sender = None
            if sender not in peer_node.peers:
                self._error(403, f"node {sender} is not a neighbour of {peer_node.node.node_id}")
                return None
            return sender

        def _body(self) -> bytes | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > peer_node._max_body:
                self._error(413, f"body of {length} bytes is larger than any message")
                return None
            return self.rfile.read(length)

        def do_GET(self) -> None:
            if self.path == "/status":
                self._send(200, json.dumps(peer_node.status()).encode(), "application/json")
            elif self.path == "/model":
                if self._sender() is None:
                    return
                with peer_node.lock:
                    body = to_bytes(peer_node.node.weights())
                    steps = str(peer_node.node.steps)
                self._send(200, body, _SAFETENSORS, **{_STEPS: steps})
            else:
                self._error(404, f"no such path {self.path!r}")

        def do_POST(self) -> None:
            if self.path not in ("/exchange", "/bye"):
                self._error(404, f"no such path {self.path!r}")
                return
            sender = self._sender()
            body = self._body() if sender is not None else None
            if body is None:
                return
            if self.path == "/bye":
                with peer_node.lock:
                    peer_node.finished_peers.add(sender)
                self._send(200, b"{}", "application/json")
                return
            if not peer_node.ready.is_set():
                self._error(503, "this node has not started training yet")
                return
            try:
                variables = from_bytes(body)
                degree = int(self.headers.get(_DEGREE, 0))
                with peer_node.lock:
                    reply, my_degree = peer_node.node.answer(sender, variables, degree)
            except (WeightsFormatError, ValueError) as exc:
                self._error(400, str(exc))
                return
            if reply is None:
                self._send(204, b"", _SAFETENSORS, **{_DEGREE: str(my_degree)})
            else:
                self._send(200, to_bytes(reply), _SAFETENSORS, **{_DEGREE: str(my_degree)})

    return Handler
