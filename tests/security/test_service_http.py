"""The service's HTTP boundary, attacked from outside over real sockets.

Threat: anyone who can reach the port. Each test sends raw HTTP to a real uvicorn server on
127.0.0.1 and checks the status, the message, that the service still answers and that nothing
stored changed: bodies are counted as they arrive (chunked or lying about their length),
credentials are checked before a body is read, a slow body holds up no one, ``Host``/``Origin``
must name the service, failed authentications are rate-limited, a name alone takes no party
identity, reads need the API key, and waiting ``/train`` calls cost no worker thread.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import time
from contextlib import closing
from typing import Any

import httpx
import numpy as np
import pytest

import service_helpers
from fedfuse.service import FailureLimiter, ServiceSettings, background_service
from fedfuse.weights import to_bytes

WEIGHTS = to_bytes({"w": np.zeros((2, 2), np.float32)})
KEY = "k" * 32


def _settings(tmp_path, **overrides) -> ServiceSettings:
    return ServiceSettings(data_dir=str(tmp_path / "service"), **overrides)


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _raw(url: str, head: str, body: bytes = b"", *, timeout: float = 60.0) -> socket.socket:
    """Open a connection and send ``head`` (request line and headers) and ``body``."""
    sock = socket.create_connection(_address(url), timeout=timeout)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
    return sock


def _response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Status, headers and (JSON) body of the one response on ``sock`` (read until it closes)."""
    data = b""
    with closing(sock):
        while b"\r\n\r\n" not in data or not _complete(data):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    is_json = headers.get("content-type") == "application/json"
    return int(lines[0].split()[1]), headers, json.loads(body) if is_json else body.decode()


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(body) >= int(line.split(":")[1])
    return False


def _form_head(path: str, *, extra: str = "", length: int | None = None) -> str:
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        f"POST {path} HTTP/1.1\nHost: 127.0.0.1\n"
        f"Content-Type: multipart/form-data; boundary=XX\n{extra}{size}\n"
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _create(url: str, headers: dict | None = None, **form) -> dict:
    fields = {"fusion_algorithm": "fedavg", "num_parties": 1, "rounds": 1} | form
    r = httpx.post(
        f"{url}/start-aggregator",
        data=fields,
        files={"initial_weights": ("w.safetensors", WEIGHTS)},
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _still_serves(url: str, headers: dict | None = None) -> list:
    assert httpx.get(f"{url}/healthz", timeout=60).json() == {"status": "ok"}
    r = httpx.get(f"{url}/v1/federations", headers=headers, timeout=60)
    assert r.status_code == 200
    return r.json()


# ---- limits cannot be bypassed -----------------------------------------------------------------
def test_a_chunked_body_is_counted_and_stopped_at_the_limit(tmp_path):
    with background_service(_settings(tmp_path, max_upload_bytes=100_000)) as url:
        sock = _raw(url, _form_head("/start-aggregator"))
        part = b"--XX\r\nContent-Disposition: form-data; name=model_file; filename=m\r\n\r\n"
        sock.sendall(_chunk(part))
        with pytest.raises(OSError):  # the server ends the request: sending fails sooner or later
            for _ in range(10_000):  # 650 MB if it never did
                sock.sendall(_chunk(b"\0" * 65_000))
        status, headers, body = _response(sock)
        assert status == 413
        assert body["detail"].startswith("request body exceeds the limit of 100000 bytes")
        assert headers["connection"] == "close"
        assert _still_serves(url) == []  # nothing was created


def test_a_chunked_body_under_the_limit_still_works(tmp_path):
    with background_service(_settings(tmp_path, max_upload_bytes=100_000)) as url:
        form = (
            b"--XX\r\nContent-Disposition: form-data; name=fusion_algorithm\r\n\r\nfedavg\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=num_parties\r\n\r\n1\r\n"
            b"--XX\r\nContent-Disposition: form-data; name=initial_weights; filename=w\r\n\r\n"
            + WEIGHTS
            + b"\r\n--XX--\r\n"
        )
        sock = _raw(url, _form_head("/start-aggregator"), _chunk(form) + _chunk(b""))
        status, _, body = _response(sock)
        assert status == 200 and body["status"] == "registering", body
        assert [f["id"] for f in _still_serves(url)] == [body["aggregator_id"]]


def test_a_declared_length_over_the_limit_is_refused_before_reading(tmp_path):
    with background_service(_settings(tmp_path, max_upload_bytes=100_000)) as url:
        head = "POST /start-aggregator HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 10000000000\n"
        status, _, body = _response(_raw(url, head))
        assert status == 413
        assert body["detail"].startswith("request body exceeds the limit of 100000 bytes")
        assert _still_serves(url) == []


@pytest.mark.parametrize("length", ["-1", "12abc", "1e3"])
def test_a_length_that_is_no_byte_count_is_a_400(tmp_path, length):
    with background_service(_settings(tmp_path)) as url:
        head = f"POST /start-aggregator HTTP/1.1\nHost: 127.0.0.1\nContent-Length: {length}\n"
        status, _, body = _response(_raw(url, head))
        assert (status, body) == (400, "Invalid HTTP request received.")
        assert _still_serves(url) == []


def test_a_body_that_stalls_gets_408_after_the_read_deadline(tmp_path):
    with background_service(_settings(tmp_path, read_timeout=1.0)) as url:
        head = _form_head("/start-aggregator", length=5000)  # claims 5000 bytes, sends 10
        status, _, body = _response(_raw(url, head, b"--XX\r\nCont"))
        assert status == 408
        assert body["detail"] == "no request body bytes for 1 s (the read deadline)"
        assert _still_serves(url) == []


def test_credentials_are_checked_before_a_huge_body_is_read(tmp_path):
    """200 MB announced, 1 kB sent: the 401 comes back at once, so nothing waited for the rest."""
    with background_service(_settings(tmp_path, api_key=KEY)) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        fed = _create(url, auth)
        huge = 200 * 1024 * 1024
        head = _form_head("/start-aggregator", extra="Authorization: Bearer wrong\n", length=huge)
        status, _, body = _response(_raw(url, head, b"x" * 1024))
        assert (status, body) == (401, {"detail": "invalid API key"})
        reply = (
            f"POST /v1/federations/{fed['aggregator_id']}/tasks/1/reply HTTP/1.1\n"
            f"Host: 127.0.0.1\nAuthorization: Bearer wrong\nContent-Length: {huge}\n"
            'X-Fedfuse-Meta: {"kind": "update", "num_examples": 1}\n'
        )
        status, _, body = _response(_raw(url, reply, b"x" * 1024))
        assert (status, body) == (401, {"detail": "invalid party token"})
        assert [f["id"] for f in _still_serves(url, auth)] == [fed["aggregator_id"]]


def _two_remote_parties_with_tasks(url: str) -> tuple[str, list[dict], list[dict]]:
    fed = _create(url, num_parties=2, quorum=2, round_timeout=600)
    fid = fed["aggregator_id"]
    parties = []
    for name in ("a", "b"):
        r = httpx.post(f"{url}/v1/join", json={"token": fed["join_token"], "name": name})
        parties.append({"Authorization": f"Bearer {r.json()['party_token']}"})
    r = httpx.post(f"{url}/train", json={"aggregator_id": fid, "wait": False}, timeout=60)
    assert r.status_code == 202
    tasks = []
    for auth in parties:
        task = httpx.get(f"{url}/v1/federations/{fid}/tasks/next?wait=30", headers=auth, timeout=60)
        assert task.status_code == 200
        tasks.append(json.loads(task.headers["X-Fedfuse-Meta"]))
    return fid, parties, tasks


def test_a_slow_reply_holds_up_no_other_party(tmp_path):
    with background_service(_settings(tmp_path, read_timeout=120.0)) as url:
        fid, (slow, fast), (slow_task, fast_task) = _two_remote_parties_with_tasks(url)
        update = {"kind": "update", "num_examples": 4, "metrics": {}}
        body = to_bytes({"w": np.ones((2, 2), np.float32)})
        head = (
            f"POST /v1/federations/{fid}/tasks/{slow_task['task_id']}/reply HTTP/1.1\n"
            f"Host: 127.0.0.1\nAuthorization: {slow['Authorization']}\n"
            f"X-Fedfuse-Meta: {json.dumps(update)}\nContent-Length: {len(body)}\n"
        )
        stalled = _raw(url, head, body[:10])  # and then nothing: it holds no lock
        r = httpx.post(
            f"{url}/v1/federations/{fid}/tasks/{fast_task['task_id']}/reply",
            content=body,
            headers=fast | {"X-Fedfuse-Meta": json.dumps(update)},
            timeout=60,
        )
        assert (r.status_code, r.json()) == (200, {"accepted": True})
        stalled.setblocking(False)
        with pytest.raises(BlockingIOError):  # the slow one is still being waited for
            stalled.recv(1)
        stalled.close()
        assert httpx.get(f"{url}/v1/federations/{fid}").json()["status"] == "training"


def _reply_request(fid: str, party: dict, task: dict) -> tuple[dict, bytes, str, str]:
    """An honest update for ``task``: its metadata, body, path and raw request head."""
    update = {"kind": "update", "num_examples": 4, "metrics": {}}
    body = to_bytes({"w": np.ones((2, 2), np.float32)})
    path = f"/v1/federations/{fid}/tasks/{task['task_id']}/reply"
    head = (
        f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nAuthorization: {party['Authorization']}\n"
        f"X-Fedfuse-Meta: {json.dumps(update)}\nContent-Length: {len(body)}\n"
    )
    return update, body, path, head


def test_a_stalled_reply_gets_408_and_the_party_may_send_it_again(tmp_path):
    with background_service(_settings(tmp_path, read_timeout=1.0)) as url:
        fid, (party, _), (task, _) = _two_remote_parties_with_tasks(url)
        update, body, path, head = _reply_request(fid, party, task)
        status, _, answer = _response(_raw(url, head, body[:10]))
        assert status == 408 and "the read deadline" in answer["detail"]
        r = httpx.post(
            url + path, content=body, headers=party | {"X-Fedfuse-Meta": json.dumps(update)}
        )
        assert (r.status_code, r.json()) == (200, {"accepted": True})


def test_a_second_reply_body_of_the_same_party_is_refused_while_one_arrives(tmp_path):
    with background_service(_settings(tmp_path, read_timeout=120.0)) as url:
        fid, (party, _), (task, _) = _two_remote_parties_with_tasks(url)
        update, body, path, head = _reply_request(fid, party, task)
        first = _raw(url, head, body[:10])
        deadline = time.monotonic() + 60
        while True:  # until the first body is being received
            r = httpx.post(
                url + path, content=body, headers=party | {"X-Fedfuse-Meta": json.dumps(update)}
            )
            if r.status_code == 409 or time.monotonic() > deadline:
                break
        assert r.json()["detail"] == "a reply of 'party_0' is already being received"
        first.sendall(body[10:])
        status, _, answer = _response(first)
        assert (status, answer) == (200, {"accepted": True})


# ---- Host and Origin -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ("Host: evil.example:8080\n", "Host header 'evil.example:8080' does not name this service"),
        (
            "Host: 127.0.0.1\nOrigin: http://evil.example\n",
            "Origin header 'http://evil.example' is not this service",
        ),
        ("Host: 127.0.0.1\nOrigin: null\n", "Origin header 'null' is not this service"),
    ],
)
def test_requests_for_another_host_or_from_another_origin_are_refused(tmp_path, headers, detail):
    with background_service(_settings(tmp_path)) as url:
        status, _, body = _response(_raw(url, f"GET /v1/federations HTTP/1.1\n{headers}"))
        assert status == 403 and body["detail"].startswith(detail), body
        status, _, body = _response(_raw(url, f"POST /stop HTTP/1.1\n{headers}Content-Length: 0\n"))
        assert status == 403
        assert _still_serves(url) == []


def test_loopback_names_same_origin_and_allowed_hosts_pass(tmp_path):
    with background_service(_settings(tmp_path, allowed_hosts=("fl.example.org",))) as url:
        for headers in (
            "Host: localhost:1\n",
            "Host: 127.0.0.1\nOrigin: http://127.0.0.1:1\n",
            "Host: fl.example.org\nOrigin: https://fl.example.org\n",
        ):
            status, _, body = _response(_raw(url, f"GET /v1/federations HTTP/1.1\n{headers}"))
            assert (status, body) == (200, []), headers


# ---- identities ------------------------------------------------------------------------------
def test_failed_joins_are_rate_limited_per_address_without_sleeping(tmp_path):
    now = [0.0]
    limiter = FailureLimiter(max_failures=3, window=60.0, clock=lambda: now[0])
    with background_service(_settings(tmp_path), limiter=limiter) as url:
        fed = _create(url)
        for _ in range(3):
            r = httpx.post(f"{url}/v1/join", json={"token": "guess" * 4})
            assert (r.status_code, r.json()) == (401, {"detail": "invalid join token"})
        now[0] = 10.0
        r = httpx.post(f"{url}/v1/join", json={"token": fed["join_token"]})  # even a right one
        assert r.status_code == 429 and r.headers["retry-after"] == "50"
        assert r.json()["detail"] == "too many failed authentications from 127.0.0.1; retry in 50 s"
        r = httpx.get(
            f"{url}/v1/federations/{fed['aggregator_id']}/tasks/next?wait=0",
            headers={"Authorization": "Bearer guess"},
        )
        assert r.status_code == 429  # a guessed party token waits too
        now[0] = 60.5
        r = httpx.post(f"{url}/v1/join", json={"token": fed["join_token"], "name": "site"})
        assert r.status_code == 200 and r.json()["party_id"] == "party_0"
        assert httpx.get(f"{url}/healthz").status_code == 200


def test_a_rejoin_by_name_must_prove_it_is_the_same_party(tmp_path):
    with background_service(_settings(tmp_path)) as url:
        fed = _create(url, num_parties=2)
        token = fed["join_token"]
        first = httpx.post(f"{url}/v1/join", json={"token": token, "name": "site"}).json()
        other = httpx.post(f"{url}/v1/join", json={"token": token, "name": "other"}).json()
        assert first["party_secret"] != other["party_secret"]
        for proof in (None, "", "wrong", other["party_secret"], other["party_token"]):
            r = httpx.post(
                f"{url}/v1/join", json={"token": token, "name": "site", "party_secret": proof}
            )
            assert r.status_code == 401, proof
            assert r.json()["detail"].startswith("party name 'site' is taken in this federation")
        # the victim's token still works: nothing was taken
        fid = first["federation_id"]
        auth = {"Authorization": f"Bearer {first['party_token']}"}
        assert httpx.get(f"{url}/v1/federations/{fid}/tasks/next?wait=0", headers=auth).is_success
        for proof in (first["party_token"], first["party_secret"]):  # either proves it
            r = httpx.post(
                f"{url}/v1/join", json={"token": token, "name": "site", "party_secret": proof}
            )
            assert r.status_code == 200 and r.json()["party_id"] == first["party_id"]
            assert r.json()["party_secret"] == first["party_secret"]


def test_a_join_retried_after_its_answer_was_lost_is_the_same_party(tmp_path):
    """A first join may choose its own secret; the retry of a join whose answer never arrived
    (a connection reset in a join storm) proves the name with it, and nobody else can."""
    with background_service(_settings(tmp_path)) as url:
        fed = _create(url, num_parties=2)
        token, chosen = fed["join_token"], "a-secret-only-this-party-knows"
        join = {"token": token, "name": "site", "party_secret": chosen}
        first = httpx.post(f"{url}/v1/join", json=join).json()  # its answer "lost"
        again = httpx.post(f"{url}/v1/join", json=join)
        assert again.status_code == 200 and again.json()["party_id"] == first["party_id"]
        assert again.json()["party_token"] != first["party_token"]  # the old one is replaced
        stranger = httpx.post(f"{url}/v1/join", json=join | {"party_secret": "guess"})
        assert stranger.status_code == 401
        # no slot was spent on the retry: a second party still gets in
        other = httpx.post(f"{url}/v1/join", json={"token": token, "name": "other"})
        assert other.status_code == 200 and other.json()["party_id"] == "party_1"


class _LoseFirstAnswer(httpx.HTTPTransport):
    """Sends every request; the answer to the first one is lost (a connection reset)."""

    lost = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not self.lost:
            self.lost = True
            response.read()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_the_party_client_retries_a_lost_join_as_the_same_party(tmp_path):
    from fedfuse.runtime import PartyClient

    with background_service(_settings(tmp_path)) as url:
        fed = _create(url, num_parties=2)
        client = PartyClient(url, fed["join_token"], name="site", transport=_LoseFirstAnswer())
        with client:
            assert client.join()["party_id"] == "party_0"  # the retry proved the name
        parties = httpx.get(f"{url}/v1/federations/{fed['aggregator_id']}").json()["parties"]
        assert [p["name"] for p in parties] == ["site"]


def test_with_an_api_key_reads_need_the_key_or_a_party_token_of_that_federation(tmp_path):
    with background_service(_settings(tmp_path, api_key=KEY)) as url:
        auth = {"Authorization": f"Bearer {KEY}"}
        mine, theirs = _create(url, auth), _create(url, auth)
        joined = httpx.post(f"{url}/v1/join", json={"token": mine["join_token"]}).json()
        party = {"Authorization": f"Bearer {joined['party_token']}"}
        fid, other = mine["aggregator_id"], theirs["aggregator_id"]
        reads = ["", "/history", "/model"]
        for path in reads:
            assert httpx.get(f"{url}/v1/federations/{fid}{path}").status_code == 401
            assert httpx.get(f"{url}/v1/federations/{fid}{path}", headers=auth).status_code == 200
            assert httpx.get(f"{url}/v1/federations/{fid}{path}", headers=party).status_code == 200
            r = httpx.get(f"{url}/v1/federations/{other}{path}", headers=party)
            assert (r.status_code, r.json()) == (401, {"detail": "invalid API key or party token"})
        r = httpx.get(f"{url}/v1/federations", headers=party)
        assert (r.status_code, r.json()) == (401, {"detail": "invalid API key"})
        assert len(httpx.get(f"{url}/v1/federations", headers=auth).json()) == 2
        r = httpx.get(f"{url}/v1/federations")
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"]
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


# ---- responsive under waiting /train calls -------------------------------------------------
def test_fifty_waiting_train_calls_leave_the_service_responsive(tmp_path):
    """50 tutorial-style waiting ``/train`` calls (their parties never come back: liveness is
    tiny) hold no worker thread: /healthz, the listing and /stop still answer at once."""
    settings = _settings(tmp_path, liveness=0.001)
    with background_service(settings) as url:
        fids = []
        for _ in range(50):
            fed = _create(url)
            httpx.post(f"{url}/v1/join", json={"token": fed["join_token"]})
            fids.append(fed["aggregator_id"])
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            waiting = [
                pool.submit(httpx.post, f"{url}/train", json={"aggregator_id": f}, timeout=300)
                for f in fids
            ]
            deadline = time.monotonic() + 120
            while sum(f["status"] == "training" for f in _still_serves(url)) < 50:
                assert time.monotonic() < deadline, "the 50 federations did not start training"
                time.sleep(0.1)
            assert not any(w.done() for w in waiting)
            took = {}
            for name, call in (
                ("healthz", lambda: httpx.get(f"{url}/healthz", timeout=60)),
                ("list", lambda: httpx.get(f"{url}/v1/federations", timeout=60)),
                ("stop", lambda: httpx.post(f"{url}/stop", json={"aggregator_id": fids[0]})),
            ):
                start = time.perf_counter()
                assert call().status_code == 200
                took[name] = time.perf_counter() - start
            print(f"with 50 waiting /train calls: {took}")
            assert max(took.values()) < 10.0, took  # under a second unloaded; generous here
            for fid in fids[1:]:
                httpx.post(f"{url}/stop", json={"aggregator_id": fid}, timeout=60)
            answers = [w.result() for w in waiting]
        assert {(a.status_code, a.json()["status"]) for a in answers} == {(200, "stopped")}


# ---- fedfuse serve refuses to expose itself ----------------------------------------------
def test_serve_refuses_a_public_address_without_tls_or_key(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedfuse",
            "serve",
            "--host",
            "0.0.0.0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=service_helpers.env(),
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve plain HTTP without an API key" in lines[0]
    assert "--insecure" in lines[0]


@pytest.mark.parametrize("where", ["file", "environment"])
def test_serve_reads_the_api_key_from_a_file_or_the_environment(tmp_path, where, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    if where == "file":
        service = service_helpers.Service(
            tmp_path / "data", "--api-key-file", str(key_file), "--allowed-host", "fl.example.org"
        )
    else:
        monkeypatch.setenv("FEDFUSE_API_KEY", KEY)
        service = service_helpers.Service(tmp_path / "data")
    service.start()
    try:
        assert service.get("/v1/federations").status_code == 401
        r = httpx.get(f"{service.url}/v1/federations", headers={"Authorization": f"Bearer {KEY}"})
        assert (r.status_code, r.json()) == (200, [])
        named = {"Authorization": f"Bearer {KEY}", "Host": "fl.example.org"}
        r = httpx.get(f"{service.url}/v1/federations", headers=named)
        assert r.status_code == (200 if where == "file" else 403)  # --allowed-host
    finally:
        service.stop()


def test_the_failure_limiter_forgets_old_failures_and_stays_bounded():
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window=10.0, clock=lambda: now[0], max_addresses=100)
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") == 10.0 and limiter.retry_after("b") == 0.0
    now[0] = 10.0
    assert limiter.retry_after("a") == 0.0  # its failures are a window old
    for i in range(1000):  # an attacker cycling through addresses costs bounded memory
        limiter.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(limiter._failures) == 100


def test_a_party_that_hangs_up_mid_poll_stops_looking_live(tmp_path):
    """A killed party's open long poll must not keep it "connected" (and sampled) until the
    poll would have timed out: the service notices the hang-up."""
    with background_service(_settings(tmp_path, liveness=1.0, max_poll_wait=120.0)) as url:
        fed = _create(url, num_parties=1)
        joined = httpx.post(f"{url}/v1/join", json={"token": fed["join_token"]}).json()
        fid = joined["federation_id"]
        sock = _raw(
            url,
            f"GET /v1/federations/{fid}/tasks/next?wait=60 HTTP/1.1\nHost: 127.0.0.1\n"
            f"Authorization: Bearer {joined['party_token']}\n",
        )

        def connected() -> bool:
            status = httpx.get(f"{url}/v1/federations/{fid}", timeout=60).json()
            return status["parties"][0]["connected"]

        deadline = time.monotonic() + 20
        while not connected():  # the poll has reached the service
            assert time.monotonic() < deadline, "the long poll never arrived"
            time.sleep(0.05)
        sock.close()  # the party goes away with its poll open (60 s to go)
        deadline = time.monotonic() + 30
        while connected():
            assert time.monotonic() < deadline, "a hung-up poll kept the party live"
            time.sleep(0.1)
        assert _still_serves(url)
