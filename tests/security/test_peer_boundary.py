"""Peer nodes against an outsider: what a stranger on the network can and cannot make a node do.

Threat model (SECURITY.md): a node trusts nothing but the run's token. Without it a caller may
read ``/status`` (no secret in it) and nothing else; with it, a neighbour still cannot push a
message far outside the node's own variables, a malformed or oversized body, or hold the
node's threads with idle or slow connections. Every attack here goes through a real socket to a
real ``PeerNode`` on 127.0.0.1 and checks the status, the message, that the node's weights are
unchanged and that it still answers.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.cli import main
from fedfuse.consensus import (
    ECL,
    NODE_TOKEN_ENV,
    ConsensusConfig,
    ConsensusNode,
    LocalGraph,
    PeerNode,
    node_datasets,
)
from fedfuse.weights import to_bytes

TOKEN = "s3cret-token-for-the-tests"
CONFIG = ConsensusConfig(
    num_nodes=4,
    partition_params={"classes_per_party": 5},
    model="logreg",
    batch_size=16,
    learning_rate=0.5,
)
PATIENCE = 60.0  # seconds to wait for a condition on a loaded machine (polled, never slept)


def _two_nodes():
    """Node 0 (served) and its neighbour 1, built like a run builds them (same template)."""
    datasets, _, num_classes = node_datasets(CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        template = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    return [
        ConsensusNode(
            i, peers, copy.deepcopy(template), datasets[i], ECL(), learning_rate=0.5, local_steps=2
        )
        for i, peers in ((0, [1, 3]), (1, [0, 2]))
    ]


@contextlib.contextmanager
def _served(**options):
    node, neighbour = _two_nodes()
    options = {"token": TOKEN, **options}
    peer = PeerNode(node, {1: "http://127.0.0.1:9", 3: "http://127.0.0.1:9"}, **options).start()
    peer.ready.set()
    try:
        yield peer, neighbour
    finally:
        peer.stop()


def _request(peer, method, path, body=None, headers=None):
    """(status, parsed JSON or raw body) through http.client."""
    host, port = peer._server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=PATIENCE)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    is_json = response.getheader("Content-Type") == "application/json"
    return response.status, json.loads(data) if is_json else data


def _raw(peer, data: bytes) -> tuple[int, dict]:
    """Send raw bytes, read the whole answer (the server closes after one request)."""
    with socket.create_connection(peer._server.server_address[:2], timeout=PATIENCE) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _headers(token=TOKEN, sender="1", **extra):
    headers = {"X-Fedfuse-Node": sender, "X-Fedfuse-Degree": "2", **extra}
    if token is not None:
        headers["X-Fedfuse-Token"] = token
    return headers


def _snapshot(node):
    return {n: a.copy() for n, a in node.weights().items()}


def _assert_unchanged(node, before):
    for name, arr in node.weights().items():
        np.testing.assert_array_equal(arr, before[name])


def _assert_answers(peer):
    status, doc = _request(peer, "GET", "/status")
    assert status == 200 and doc["node"] == 0


def test_model_exchange_and_bye_need_the_token():
    with _served() as (peer, neighbour):
        before = _snapshot(peer.node)
        message = to_bytes(neighbour.message(0))
        for token in (None, "wrong", TOKEN + "x", "ü-non-ascii"):
            headers = _headers(token)
            assert _request(peer, "GET", "/model", headers=headers) == (
                403,
                {"error": "missing or wrong token"},
            )
            status, doc = _request(peer, "POST", "/exchange", message, headers)
            assert (status, doc["error"]) == (403, "missing or wrong token")
            status, doc = _request(peer, "POST", "/bye", b"", headers)
            assert (status, doc["error"]) == (403, "missing or wrong token")
        assert peer.finished_peers == set() and peer.node.exchanges == 0
        _assert_unchanged(peer.node, before)
        status, doc = _request(peer, "GET", "/status")  # open, and nothing secret in it
        assert status == 200 and TOKEN not in json.dumps(doc)
        status, body = _request(peer, "GET", "/model", headers=_headers())
        assert status == 200 and len(body) > 0
        status, body = _request(peer, "POST", "/exchange", message, _headers())
        assert status == 204 and peer.node.exchanges == 1


@pytest.mark.parametrize(
    "hostile",
    [
        lambda m: {n: np.full_like(a, 1e30) for n, a in m.items()},
        lambda m: {n: a * 100 for n, a in m.items()},
        lambda m: {n: np.full_like(a, np.nan) for n, a in m.items()},
        lambda m: {n: np.full_like(a, np.inf) for n, a in m.items()},
    ],
    ids=["1e30", "scaled-100x", "nan", "inf"],
)
def test_message_far_outside_the_nodes_own_is_refused(hostile):
    with _served() as (peer, neighbour):
        before = _snapshot(peer.node)
        honest = neighbour.message(0)
        status, doc = _request(peer, "POST", "/exchange", to_bytes(hostile(honest)), _headers())
        assert status == 400
        assert "exceeds max_message_ratio" in doc["error"] or "non-finite" in doc["error"]
        _assert_unchanged(peer.node, before)
        assert peer.node.exchanges == 0 and peer.node.refused == 1
        assert _request(peer, "GET", "/status")[1]["refused"] == 1
        assert [e["event"] for e in peer.events] == ["message_refused"]
        status, _ = _request(peer, "POST", "/exchange", to_bytes(honest), _headers())
        assert status == 204 and peer.node.exchanges == 1  # the honest message still goes in


def test_the_bound_is_configurable_and_can_be_turned_off():
    with _served() as (peer, neighbour):
        scaled = {n: a * 100 for n, a in neighbour.message(0).items()}
        peer.node.max_message_ratio = 1000.0
        assert _request(peer, "POST", "/exchange", to_bytes(scaled), _headers())[0] == 204
        peer.node.max_message_ratio = 0  # no bound at all
        huge = {n: np.full_like(a, 1e30) for n, a in neighbour.message(0).items()}
        assert _request(peer, "POST", "/exchange", to_bytes(huge), _headers())[0] == 204
    datasets, _, _ = node_datasets(CONFIG)
    with pytest.raises(ValueError, match="max_message_ratio must be >= 0 or None, got -1"):
        ConsensusNode(
            0, [1], nn.Linear(64, 10), datasets[0], ECL(), learning_rate=0.5, max_message_ratio=-1
        )


@pytest.mark.parametrize(
    ("lines", "status", "message"),
    [
        (["Content-Length: -1"], 400, "Content-Length must be one non-negative integer"),
        (["Content-Length: abc"], 400, "Content-Length must be one non-negative integer"),
        (["Content-Length: +5"], 400, "Content-Length must be one non-negative integer"),
        (["Content-Length: 1_0"], 400, "Content-Length must be one non-negative integer"),
        (["Content-Length: 4", "Content-Length: 5"], 400, "one non-negative integer"),
        ([], 411, "a POST needs a Content-Length"),
        (["Transfer-Encoding: chunked"], 411, "a POST needs a Content-Length"),
        (["Content-Length: 99999999999999999999"], 413, "exceeds this node's limit"),
    ],
    ids=["negative", "letters", "plus", "underscore", "two", "missing", "chunked", "huge"],
)
def test_content_length_must_be_one_plain_integer(lines, status, message):
    with _served() as (peer, _):
        before = _snapshot(peer.node)
        head = [
            "POST /exchange HTTP/1.1",
            "Host: x",
            "X-Fedfuse-Node: 1",
            f"X-Fedfuse-Token: {TOKEN}",
        ]
        got, doc = _raw(peer, ("\r\n".join([*head, *lines]) + "\r\n\r\n").encode())
        assert got == status and message in doc["error"]
        _assert_unchanged(peer.node, before)
        _assert_answers(peer)


def test_a_body_that_stops_short_is_a_400():
    with _served() as (peer, _):
        head = f"POST /exchange HTTP/1.1\r\nX-Fedfuse-Node: 1\r\nX-Fedfuse-Token: {TOKEN}\r\n"
        with socket.create_connection(peer._server.server_address[:2], timeout=PATIENCE) as sock:
            sock.sendall((head + "Content-Length: 1000\r\n\r\n").encode() + b"x" * 10)
            sock.shutdown(socket.SHUT_WR)
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.0 400") and b"ended after 10 of 1000 bytes" in answer
        _assert_answers(peer)


def test_refusals_before_the_body_is_read_reach_a_sender_still_writing():
    """A body refused on its headers (too large, wrong token) is answered, then drained: the
    sender reads the refusal rather than a reset (the EPIPE that made main red)."""
    with _served() as (peer, _):
        oversized = b"x" * (peer._max_body + 1)
        for _ in range(5):
            status, doc = _request(peer, "POST", "/exchange", oversized, _headers())
            assert status == 413 and "exceeds this node's limit" in doc["error"]
            status, doc = _request(peer, "POST", "/exchange", oversized, _headers("wrong"))
            assert (status, doc["error"]) == (403, "missing or wrong token")
            status, doc = _request(peer, "POST", "/nowhere", oversized, _headers())
            assert status == 404 and "no such path" in doc["error"]
        _assert_answers(peer)


def test_status_answers_while_50_idle_and_slow_connections_are_open():
    with _served(request_timeout=PATIENCE * 2) as (peer, neighbour):
        address = peer._server.server_address[:2]
        slow = []
        try:
            for i in range(50):
                sock = socket.create_connection(address, timeout=PATIENCE)
                if i % 3 == 1:  # headers that never end
                    sock.sendall(b"POST /exchange HTTP/1.1\r\nX-Fedfuse-Node: 1\r\n")
                elif i % 3 == 2:  # a body that never ends
                    head = f"POST /exchange HTTP/1.1\r\nX-Fedfuse-Token: {TOKEN}\r\n"
                    sock.sendall(
                        (head + "X-Fedfuse-Node: 1\r\nContent-Length: 5000\r\n\r\n").encode()
                    )
                slow.append(sock)
            _assert_answers(peer)
            message = to_bytes(neighbour.message(0))
            assert _request(peer, "POST", "/exchange", message, _headers())[0] == 204
        finally:
            for sock in slow:
                sock.close()
        _assert_answers(peer)


def _poll(condition, what):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {PATIENCE} s: {what}")


def test_connections_beyond_the_bound_get_503_until_one_closes():
    with _served(max_connections=4, request_timeout=PATIENCE * 2) as (peer, _):
        address = peer._server.server_address[:2]
        idle = [socket.create_connection(address, timeout=PATIENCE) for _ in range(4)]
        try:
            _, doc = _poll(
                lambda: (answer := _request(peer, "GET", "/status"))[0] == 503 and answer,
                "a fifth connection is refused",
            )
            assert "at most 4 connections at once" in doc["error"]
        finally:
            for sock in idle:
                sock.close()
        _poll(lambda: _request(peer, "GET", "/status")[0] == 200, "/status answers again")


def test_a_slow_loris_is_cut_off_at_the_request_deadline():
    """One byte every 0.1 s keeps every single read short, but the request as a whole must
    arrive within request_timeout: the node closes the connection after it."""
    with _served(request_timeout=1.0) as (peer, _):
        started = time.monotonic()
        with socket.create_connection(peer._server.server_address[:2], timeout=0.1) as sock:
            closed = False
            while not closed and time.monotonic() - started < PATIENCE:
                try:
                    sock.sendall(b"X")
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    pass
                except OSError:  # reset or broken pipe: closed as well
                    closed = True
        assert closed and time.monotonic() - started >= 1.0
        _assert_answers(peer)


def test_no_token_means_loopback_only(tmp_path, capsys, monkeypatch):
    node, _ = _two_nodes()
    peers = {1: "http://127.0.0.1:9", 3: "http://127.0.0.1:9"}
    for host in ("0.0.0.0", "", "example.org", "10.0.0.1"):
        with pytest.raises(ValueError, match="without a token"):
            PeerNode(node, peers, host=host)
    PeerNode(node, peers, host="127.0.0.1").stop()  # loopback needs none
    monkeypatch.delenv(NODE_TOKEN_ENV, raising=False)
    args = ["node", "--id", "0", "--host", "0.0.0.0", "--peer", "1=http://127.0.0.1:9"]
    assert main([*args, "--num-nodes", "2", "--topology", "complete", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on '0.0.0.0' without a token" in err and "--insecure" in err
    assert not list(tmp_path.iterdir())  # nothing was written


def test_local_graph_keeps_its_secret_off_command_lines(tmp_path):
    config = CONFIG.replace(num_nodes=3, topology="complete", epochs=3, centralized=False)
    graph = LocalGraph(config, tmp_path, step_delay=0.01, linger=30, timeout=10)
    assert len(graph.token) >= 40 and graph.token not in repr(graph)
    with graph:
        graph.wait_until(0, steps=1, timeout=PATIENCE * 2)
        for proc in graph.processes.values():
            proc_dir = Path(f"/proc/{proc.pid}")
            assert graph.token.encode() not in (proc_dir / "cmdline").read_bytes()
            environ = (proc_dir / "environ").read_bytes().split(b"\0")
            assert f"{NODE_TOKEN_ENV}={graph.token}".encode() in environ
        url = graph.addresses[0]
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=PATIENCE)
        conn.request("GET", "/model", headers={"X-Fedfuse-Node": "1"})
        response = conn.getresponse()
        assert response.status == 403 and b"missing or wrong token" in response.read()
        conn.close()
        codes = graph.wait(timeout=300)
    assert codes == {0: 0, 1: 0, 2: 0}
    for path in tmp_path.iterdir():
        if path.is_file() and path.suffix in (".json", ".log"):
            assert graph.token not in path.read_text(errors="replace")
    reports = [json.loads((tmp_path / f"node_{i}.json").read_text()) for i in range(3)]
    assert all(r["exchanges"] > 0 and r["refused"] == 0 for r in reports)


class _HostileNeighbour(BaseHTTPRequestHandler):
    """Serves ``/model`` as the test says: NaN weights, or a body far larger than any model."""

    def log_message(self, format, *args):
        return

    def do_GET(self):
        kind, weights = self.server.hostile
        if kind == "nan":
            body = to_bytes({n: np.full_like(a, np.nan) for n, a in weights.items()})
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 40))
        self.end_headers()
        with contextlib.suppress(OSError):  # the joiner hangs up once it has read its cap
            chunk = b"\0" * (1 << 20)
            for _ in range(1 << 20):
                self.wfile.write(chunk)


@pytest.mark.parametrize("kind", ["nan", "endless"])
def test_a_late_joiner_refuses_a_hostile_neighbours_model(kind):
    node, neighbour = _two_nodes()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HostileNeighbour)
    server.daemon_threads = True
    server.hostile = (kind, neighbour.weights())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    peer = PeerNode(node, {1: url, 3: "http://127.0.0.1:9"}, token=TOKEN, timeout=PATIENCE)
    try:
        before = _snapshot(node)
        assert peer.join() is None
        _assert_unchanged(node, before)
        events = [e["event"] for e in peer.events]
        assert events == (["model_refused", "join_failed"] if kind == "nan" else ["join_failed"])
    finally:
        peer.stop()
        server.shutdown()
        server.server_close()
