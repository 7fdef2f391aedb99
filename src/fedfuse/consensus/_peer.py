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

What the server trusts (see SECURITY.md): nothing but a token. With ``token`` set, ``/model``,
``/exchange`` and ``/bye`` need it (compared in constant time); ``/status`` stays open and shows
nothing secret. Without a token a node listens on loopback only, unless told ``insecure``. A POST
must declare a plain ``Content-Length`` (411 without one, 400 for anything but digits, 413 above
twice the largest message) and every request must arrive whole within ``request_timeout``
seconds, however slowly its bytes trickle in, so an idle or slow-loris connection is cut off.
At most ``max_connections`` connections are served at once (one more is answered 503 without a
thread). A request refused before its body was read is answered first and its body (up to
twice the largest message) then read and discarded, so the sender, still writing, reads the
refusal instead of a connection reset. A message that ``ConsensusNode.check`` refuses (wrong
shapes, NaN/inf, a norm far above this node's model) is a 400 and changes nothing.

``PeerNode`` wraps a ``ConsensusNode`` with a ``ThreadingHTTPServer`` and a training loop. The
loop trains, and after each local round exchanges with the partners the algorithm draws; an
exchange that fails (refused, timed out, bad reply) counts towards dropping that edge.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import io
import json
import math
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fedfuse._net import is_loopback
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
    method: str,
    url: str,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
    *,
    max_bytes: int | None = None,
) -> HttpReply:
    """The default transport: one ``urllib.request`` call, HTTP errors returned, not raised.

    With ``max_bytes``, a reply body larger than that raises ``OSError`` once that many bytes
    have arrived (a neighbour's reply is read as it arrives, never allocated at its word).
    """
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpReply(response.status, _read(response, max_bytes), dict(response.headers))
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, _read(exc, max_bytes), dict(exc.headers))


def _read(response: Any, max_bytes: int | None) -> bytes:
    if max_bytes is None:
        return response.read()
    body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise OSError(f"the reply is larger than {max_bytes} bytes")
    return body


class PeerNode:
    """Serve one ``ConsensusNode`` over HTTP and train it, exchanging with neighbours' servers.

    Args:
        node: the node (its ``configured_peers`` must be the keys of ``peers``).
        peers: neighbour id -> base URL (``http://127.0.0.1:8701``).
        host, port: where to listen (port 0: any free port; see ``address``).
        timeout: seconds an exchange may take before it counts as failed.
        token: if set, requests must carry it (``X-Fedfuse-Token``) and this node sends it.
        transport: how requests are sent (by default ``urllib_transport``, reading replies up
            to twice the largest message).
        insecure: allow listening on a non-loopback ``host`` without a token.
        request_timeout: seconds a connection has to deliver its whole request.
        max_connections: connections served at once; one more is answered 503.
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
        transport: Transport | None = None,
        insecure: bool = False,
        request_timeout: float = 30.0,
        max_connections: int = 64,
    ) -> None:
        missing = sorted(set(node.configured_peers) - set(peers))
        if missing:
            raise ValueError(f"node {node.node_id}: no address for neighbour(s) {missing}")
        if not token and not insecure and not is_loopback(host):
            raise ValueError(
                f"node {node.node_id}: refusing to listen on {host!r} without a token (anyone "
                "who reaches it could read its model and steer its training); give it one "
                "(FEDFUSE_NODE_TOKEN or --token-file) or accept the risk with --insecure"
            )
        if not request_timeout > 0 or max_connections < 1:
            raise ValueError(
                "request_timeout must be > 0 and max_connections >= 1, got "
                f"{request_timeout}, {max_connections}"
            )
        self.node = node
        self.peers = {int(i): url.rstrip("/") for i, url in peers.items()}
        self.timeout = timeout
        self.token = token
        self.request_timeout = float(request_timeout)
        self.lock = threading.Lock()
        self.done = False
        self.ready = threading.Event()  # set once training starts (after a late join)
        self.finished_peers: set[int] = set()
        self.joined_from: int | None = None
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._max_body = 2 * num_bytes(node.message_template()) + (1 << 20)
        self.transport = transport or functools.partial(
            urllib_transport, max_bytes=2 * self._max_body
        )
        self._server = _NodeServer((host, port), _handler_for(self), max_connections)
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
        """Stop the server and release its port (a server never started only releases it)."""
        if self._thread is not None:
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
                "refused": self.node.refused,
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
        """Join late: start from the model of the first neighbour that serves a valid one."""
        for peer in sorted(self.peers):
            weights = self.fetch_model(peer)
            if weights is not None:
                try:
                    with self.lock:
                        self.node.start_from(weights)
                except ValueError as exc:
                    self._log("model_refused", peer=peer, error=str(exc)[:200])
                    continue
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
        """Train ``epochs`` epochs of ``node.epoch_steps`` steps each (by default a pass over the
        local data), exchanging after every local round.

        ``step_delay`` seconds of sleep after each step emulate a slower machine. With ``test``,
        the node evaluates itself after each epoch; the records are returned.
        """
        node = self.node
        self.ready.set()
        total = math.ceil(epochs * node.epoch_steps)
        epoch = 0
        while node.steps < total:
            with self.lock:
                node.step()
            if step_delay:
                time.sleep(step_delay)
            if node.round_done:
                for peer in node.partners():
                    self.exchange(peer)
            if test is not None and node.steps >= math.ceil((epoch + 1) * node.epoch_steps):
                epoch += 1
                with self.lock:
                    metrics = node.evaluate(test)
                record = {
                    "epoch": epoch,
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


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, every read bounded by what is left of one deadline: a request must
    arrive whole in time, however slowly its bytes trickle in (a per-read timeout alone lets a
    slow-loris hold the connection by sending a byte just before each one runs out)."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self._sock, self._deadline, self._timeout = sock, deadline, timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._timeout)


class _NodeServer(ThreadingHTTPServer):
    """A thread per connection, at most ``max_connections`` of them: one more is answered 503
    and closed by the accepting thread, so no flood of connections can exhaust threads."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 makes a burst of connections wait on SYN retries

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int) -> None:
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            body = json.dumps(
                {"error": f"this node serves at most {self.max_connections} connections at once"}
            ).encode()
            head = (
                "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(head.encode() + body)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a peer that hung up is no error here
            super().handle_error(request, client_address)


def _handler_for(peer_node: PeerNode) -> type[BaseHTTPRequestHandler]:
    max_body = peer_node._max_body
    request_timeout = peer_node.request_timeout

    class Handler(BaseHTTPRequestHandler):
        server_version = "fedfuse-node"
        timeout = request_timeout  # no single socket operation waits longer
        unread = 0  # bytes of a declared body not read yet

        def setup(self) -> None:
            super().setup()
            self.rfile.close()
            deadline = time.monotonic() + request_timeout
            self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline, self.timeout))

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the node logs exchanges itself

        def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header(_NODE, str(peer_node.node.node_id))
            if self.unread:
                self.send_header("Connection", "close")
                self.close_connection = True
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(), "application/json")

        def _sender(self) -> int | None:
            """The calling neighbour's id, or None after answering 403."""
            given = self.headers.get(_TOKEN, "").encode("utf-8", "surrogateescape")
            if peer_node.token and not hmac.compare_digest(given, peer_node.token.encode()):
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

        def _content_length(self) -> int | None:
            """The declared body length, or None after answering 400 or 411."""
            values = self.headers.get_all("Content-Length") or []
            if self.headers.get("Transfer-Encoding") is not None or not values:
                self._error(411, "a POST needs a Content-Length (no Transfer-Encoding)")
                return None
            value = values[0].strip()
            if len(set(values)) > 1 or not (value.isascii() and value.isdigit()):
                shown = ", ".join(values)[:60]
                self._error(400, f"Content-Length must be one non-negative integer, got {shown!r}")
                return None
            self.unread = int(value)
            return self.unread

        def _body(self, length: int) -> bytes | None:
            """The body, read as it arrives within the request deadline; None after an error."""
            if length > max_body:
                self._error(413, f"body of {length} bytes exceeds this node's limit of {max_body}")
                return None
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                self._error(408, f"the request did not arrive within {request_timeout:g} s")
                return None
            self.unread -= len(body)
            if len(body) < length:
                self._error(400, f"the body ended after {len(body)} of {length} bytes")
                return None
            return body

        def _drain(self) -> None:
            """Read and discard a refused body (at most twice the largest message, within the
            request deadline): closing a socket with unread input resets the connection, and
            a sender still writing its body would see that reset instead of the refusal."""
            if not 0 < self.unread <= 2 * max_body:
                return
            with contextlib.suppress(OSError):
                while self.unread > 0:
                    chunk = self.rfile.read1(min(self.unread, 1 << 16))
                    if not chunk:
                        return
                    self.unread -= len(chunk)

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
            try:
                self._post()
            finally:
                self._drain()

        def _post(self) -> None:
            length = self._content_length()
            if length is None:
                return
            if self.path not in ("/exchange", "/bye"):
                self._error(404, f"no such path {self.path!r}")
                return
            sender = self._sender()
            body = self._body(length) if sender is not None else None
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
                peer_node._log("message_refused", peer=sender, error=str(exc)[:200])
                self._error(400, str(exc))
                return
            if reply is None:
                self._send(204, b"", _SAFETENSORS, **{_DEGREE: str(my_degree)})
            else:
                self._send(200, to_bytes(reply), _SAFETENSORS, **{_DEGREE: str(my_degree)})

    return Handler
