"""The dashboard over HTTP: pages without JavaScript, the event stream, headers, auth and
hostile input (the browser test is test_dashboard_browser.py)."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import httpx
import pytest

from dashboard_helpers import (
    WRONG_SHAPE,
    create_federation,
    run_parties,
    serve,
    sse_events,
    stop,
)
from fedfuse.service import ServiceSettings, background_service
from fedfuse.service._dashboard import dashboard_app
from fedfuse.service._dashboard_feed import Feeds
from fedfuse.service._dashboard_page import ASSET_DIR
from fedfuse.service._dashboard_view import FolderSource, party_rows, round_point

pytestmark = pytest.mark.timeout(180)

API_KEY = "a-long-enough-api-key-for-the-tests"
PAGE_BUDGET = 120 * 1024


@pytest.fixture
def service(tmp_path):
    with background_service(ServiceSettings(data_dir=str(tmp_path / "state"))) as url:
        yield url


@pytest.fixture
def locked(tmp_path):
    settings = ServiceSettings(data_dir=str(tmp_path / "state"), api_key=API_KEY)
    with background_service(settings) as url:
        yield url


def finished_federation(url: str, rounds: int = 2, api_key: str | None = None) -> str:
    fid, token = create_federation(url, rounds, api_key=api_key)
    parties = run_parties(url, token)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.stream(
            "GET", f"{url}/v1/federations/{fid}/events", headers=headers, timeout=60
        ) as r:
            assert r.status_code == 200, r.read()
            for event, _, _ in sse_events(r):
                if event == "end":
                    break
    finally:
        stop(parties)
    return fid


def events_until_end(url: str, fid: str, **headers: str) -> list[tuple]:
    with httpx.stream(
        "GET", f"{url}/v1/federations/{fid}/events", headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        events = []
        for event in sse_events(r):
            events.append(event)
            if event[0] == "end":
                return events
    raise AssertionError(f"the stream closed without an end event: {events}")


def stream_status(url: str, headers: dict[str, str]) -> int:
    """The status of an event stream that may never end (it is closed unread)."""
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        return r.status_code


def table_rows(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body)]


def test_the_page_with_its_assets_fits_the_budget_and_runs_only_this_origins_files(service):
    fid = finished_federation(service)
    page = httpx.get(f"{service}/dashboard/federations/{fid}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [u for u in urls if u.startswith("/dashboard/assets/")]
    assert len(assets) == 4  # uPlot's script and styles, the dashboard's script and styles
    assert all(u.startswith("/") for u in urls)  # nothing from another origin, no CDN
    assert "<script>" not in html and " style=" not in html  # nothing inline: the CSP forbids it
    total = len(page.content)
    for url in assets:
        answer = httpx.get(service + url)
        assert answer.status_code == 200
        assert "max-age=31536000" in answer.headers["cache-control"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
        total += len(answer.content)
    on_disk = sum(p.stat().st_size for p in ASSET_DIR.iterdir() if p.suffix in (".js", ".css"))
    assert total <= PAGE_BUDGET and on_disk + len(page.content) <= PAGE_BUDGET, total
    for path in ("/", "/dashboard", f"/dashboard/federations/{fid}"):
        r = httpx.get(service + path)
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
        assert r.headers["x-content-type-options"] == "nosniff"
    with httpx.stream("GET", f"{service}/v1/federations/{fid}/events") as r:
        assert r.headers["content-security-policy"].startswith("default-src 'self'")


def test_without_javascript_the_page_lists_federations_and_tables_rounds_and_parties(service):
    fid = finished_federation(service, rounds=2)
    index = httpx.get(f"{service}/").text
    assert f'href="/dashboard/federations/{fid}"' in index
    assert table_rows(index, "runs")[0][1:] == ["completed", "2 / 2"]
    html = httpx.get(f"{service}/dashboard/federations/{fid}").text
    rounds = table_rows(html, "rounds")
    assert [row[0] for row in rounds] == ["1", "2"]
    header = re.findall(r'<th data-key="([a-z_]+)">', html)
    assert {"central_accuracy", "federated_loss", "bytes_up", "bytes_down", "epsilon"} <= set(
        header
    )
    first = dict(zip(header, rounds[0], strict=True))
    assert first["federated_accuracy"] == "0.5" and first["rejected"] == "1"
    assert int(first["bytes_up"]) > 0 and int(first["bytes_down"]) > 0
    parties = {row[1]: row for row in table_rows(html, "parties")}
    assert parties["bad"][2] == "rejected"
    assert parties["bad"][3] == f"round 2: {WRONG_SHAPE}".replace("'", "&#x27;")
    assert parties["good"][2] == "idle" and parties["good"][3] == "&ndash;"


def test_a_finished_federation_streams_a_snapshot_then_ends(service):
    fid = finished_federation(service, rounds=2)
    events = events_until_end(service, fid)
    assert [e[0] for e in events] == ["snapshot", "end"]
    _, event_id, view = events[0]
    assert event_id == 2 and view["finished"] and view["status"] == "completed"
    assert [p["x"] for p in view["points"]] == [1, 2]
    assert {p["name"]: p["state"] for p in view["parties"]} == {"good": "idle", "bad": "rejected"}


def test_live_events_follow_each_round_and_a_reconnect_resumes_after_last_event_id(service):
    fid, token = create_federation(service, rounds=3)
    gate = threading.Semaphore(0)
    parties = run_parties(service, token, gate=gate)
    seen: list[tuple] = []
    try:
        with httpx.stream("GET", f"{service}/v1/federations/{fid}/events", timeout=60) as r:
            stream = sse_events(r)
            event, event_id, view = next(stream)
            assert (event, event_id, view["points"]) == ("snapshot", 0, [])
            assert {p["state"] for p in view["parties"]} <= {"joined", "idle", "training"}
            for round_num in (1, 2, 3):
                gate.release()  # the good party may answer: round `round_num` ends
                for event in stream:
                    seen.append(event)
                    if event[0] == "round":
                        break
                assert event[1] == round_num and event[2]["x"] == round_num
            rest = [e[0] for e in stream]
    finally:
        stop(parties)
    assert rest[-1] == "end" and "status" in rest
    assert "parties" in [e[0] for e in seen] + rest  # states changed as the rounds went
    resumed = events_until_end(service, fid, **{"Last-Event-ID": "1"})
    assert [(e[0], e[1]) for e in resumed[:2]] == [("round", 2), ("round", 3)]
    assert [e[0] for e in resumed[2:]] == ["parties", "status", "end"]
    assert resumed[3][2] == {"status": "completed", "finished": True, "error": None}
    # an id from the future (a rewound federation): the whole snapshot again
    assert events_until_end(service, fid, **{"Last-Event-ID": "9"})[0][0] == "snapshot"


@pytest.mark.parametrize("bad", ["abc", "-1", "1" * 20, "1.5", "\u0663".encode()])
def test_a_bad_last_event_id_is_a_400_naming_it(service, bad):
    fid, _ = create_federation(service, rounds=1)
    r = httpx.get(f"{service}/v1/federations/{fid}/events", headers={"Last-Event-ID": bad})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"]


def test_hostile_and_unknown_requests_get_4xx_answers(service):
    r = httpx.get(f"{service}/v1/federations/{'0' * 32}/events")
    assert r.status_code == 404 and "unknown aggregator id" in r.json()["detail"]
    r = httpx.get(f"{service}/dashboard/federations/nope")
    assert r.status_code == 404 and "unknown aggregator id" in r.text
    assert httpx.get(f"{service}/dashboard/assets/..%2F_dashboard.py").status_code == 404
    assert httpx.get(f"{service}/dashboard/assets/secret.txt").status_code == 404
    r = httpx.post(f"{service}/dashboard/login", content=b"key=" + b"x" * 10_000)
    assert r.status_code == 413
    r = httpx.post(f"{service}/dashboard/login", data={"key": "k", "federation": "../x"})
    assert r.status_code == 400 and "32 hexadecimal" in r.text
    r = httpx.post(f"{service}/dashboard/login", content=b"\xff\xfe")
    assert r.status_code == 400
    r = httpx.get(f"{service}/", headers={"Origin": "http://evil.example"})
    assert r.status_code == 403  # the service's boundary covers the dashboard too


def test_the_dashboard_asks_what_the_read_api_asks(locked):
    fid = finished_federation(locked, rounds=1, api_key=API_KEY)
    events = f"{locked}/v1/federations/{fid}/events"
    page = httpx.get(f"{locked}/")
    assert page.status_code == 401 and 'action="/dashboard/login"' in page.text
    assert httpx.get(events).status_code == 401
    assert httpx.get(events, headers={"Authorization": "Bearer wrong"}).status_code == 401
    key = {"Authorization": f"Bearer {API_KEY}"}
    assert events_until_end(locked, fid, **key)[0][0] == "snapshot"
    # a party token reads its own federation, not the list
    other_fid, token = create_federation(locked, rounds=1, api_key=API_KEY)
    joined = httpx.post(f"{locked}/v1/join", json={"token": token, "name": "p"}).json()
    party = {"Authorization": f"Bearer {joined['party_token']}"}
    assert stream_status(f"{locked}/v1/federations/{other_fid}/events", party) == 200
    assert httpx.get(f"{locked}/dashboard/federations/{other_fid}", headers=party).is_success
    assert httpx.get(f"{locked}/dashboard", headers=party).status_code == 401
    assert httpx.get(events, headers=party).status_code == 401  # another federation's
    assert httpx.get(f"{locked}/dashboard/federations/{fid}", headers=party).status_code == 401


def test_the_login_form_sets_an_httponly_strict_cookie_that_the_dashboard_accepts(locked):
    fid = finished_federation(locked, rounds=1, api_key=API_KEY)
    with httpx.Client(base_url=locked) as browser:
        assert browser.get("/dashboard/login").status_code == 200
        wrong = browser.post("/dashboard/login", data={"key": "nope"})
        assert wrong.status_code == 401 and "invalid API key" in wrong.text
        assert "set-cookie" not in wrong.headers
        ok = browser.post("/dashboard/login", data={"key": API_KEY})
        assert ok.status_code == 303 and ok.headers["location"] == "/dashboard"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert API_KEY not in cookie  # encoded, not as typed
        assert browser.get("/dashboard").status_code == 200
        assert events_until_end(locked, fid, Cookie=ok.headers["set-cookie"].split(";")[0])
        browser.cookies.set("fedfuse_dashboard", "not base64 !")
        assert browser.get("/dashboard").status_code == 401
        out = browser.post("/dashboard/logout")
        assert out.status_code == 303 and "fedfuse_dashboard=" in out.headers["set-cookie"]


def test_a_party_token_logs_in_to_its_own_federation(locked):
    fid, token = create_federation(locked, rounds=1, api_key=API_KEY)
    joined = httpx.post(f"{locked}/v1/join", json={"token": token, "name": "p"}).json()
    with httpx.Client(base_url=locked) as browser:
        form = {"key": joined["party_token"], "federation": fid}
        ok = browser.post("/dashboard/login", data=form)
        assert ok.status_code == 303 and ok.headers["location"] == f"/dashboard/federations/{fid}"
        assert browser.get(f"/dashboard/federations/{fid}").status_code == 200
        assert browser.get("/dashboard").status_code == 401  # the list needs the API key
        bad = browser.post("/dashboard/login", data={"key": joined["party_token"]})
        assert bad.status_code == 401


class CountingSource:
    """A run whose view is read in a worker thread: counts the reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.points: list[dict] = []
        self.finished = False

    def runs(self):
        return []

    def view(self, run_id: str) -> dict:
        self.reads += 1
        return {
            "id": run_id, "title": run_id, "kind": "federation", "status": "training",
            "error": None, "finished": self.finished, "points": list(self.points), "parties": [],
        }  # fmt: skip


def test_many_viewers_share_one_producer_and_each_gets_every_round():
    async def scenario() -> tuple[int, list[list[int]]]:
        source = CountingSource()
        feeds = Feeds(source, interval=0.01, heartbeat=60)
        streams = [feeds.stream(source.view("r"), None) for _ in range(100)]
        assert {await s.__anext__() for s in streams} == {b"retry: 1000\n\n"}
        first = [await s.__anext__() for s in streams]
        assert all(chunk.startswith(b"event: snapshot") for chunk in first)
        source.reads = 0
        for x in (1, 2, 3):
            source.points.append({"x": x})
        source.finished = True

        async def ids(stream) -> list[int]:
            found = []
            async for chunk in stream:
                found += [int(m) for m in re.findall(rb"id: (\d+)", chunk)]
            return found

        got = await asyncio.wait_for(asyncio.gather(*(ids(s) for s in streams)), 30)
        return source.reads, got

    reads, got = asyncio.run(scenario())
    assert reads <= 3  # one producer polled the run, not one per viewer
    assert got == [[1, 2, 3]] * 100


def test_a_viewer_that_falls_behind_is_disconnected_and_the_others_are_not():
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        source = CountingSource()
        feeds = Feeds(source, interval=0.01, heartbeat=60, queue_size=3)
        slow, fast = (feeds.stream(source.view("r"), None) for _ in range(2))
        for stream in (slow, fast):
            await stream.__anext__(), await stream.__anext__()  # retry, snapshot
        got_fast = []
        for x in range(1, 6):
            source.points.append({"x": x})
            got_fast.append(await asyncio.wait_for(fast.__anext__(), 30))
        got_slow = [chunk async for chunk in slow]  # what it had queued, then the end
        return got_slow, got_fast

    slow, fast = asyncio.run(scenario())
    assert len(fast) == 5 and len(slow) < 5


def test_an_idle_stream_gets_heartbeats(tmp_path):
    app = dashboard_app(FolderSource(tmp_path), heartbeat=0.1)
    with serve(app) as url, httpx.stream("GET", f"{url}/v1/federations/run/events") as r:
        stream = sse_events(r)
        event, _, view = next(stream)
        assert event == "snapshot" and view["status"] == "waiting"
        assert next(stream)[0] == "comment"


def test_a_stream_ends_after_its_lifetime_and_the_reconnect_resumes(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"round": 1}\n')
    app = dashboard_app(FolderSource(tmp_path), heartbeat=60, max_stream_seconds=0.5)
    with serve(app) as url:
        with httpx.stream("GET", f"{url}/v1/federations/run/events") as r:
            lines = list(r.iter_lines())  # the server closes it: no end, the run goes on
        assert lines[0] == "retry: 1000"  # the browser reconnects after 1 s
        assert [line for line in lines if line.startswith(("event", "id"))] == [
            "event: snapshot",
            "id: 1",
        ]
        (tmp_path / "events.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
        # Reconnect as a browser does, with the last id seen, until round 2 came. (Whether it
        # comes in the resumed stream's first events or a poll later depends on whether the
        # first stream's producer is still up: either is right.)
        events: list = []
        last_id = 1
        for _ in range(40):
            headers = {"Last-Event-ID": str(last_id)}
            with httpx.stream("GET", f"{url}/v1/federations/run/events", headers=headers) as r:
                events += [e for e in sse_events(r) if e[0] != "comment"]
            rounds = [e[1] for e in events if e[0] == "round"]
            last_id = max([last_id, *rounds])
            if rounds:
                break
        assert [e[1] for e in events if e[0] == "round"] == [2]  # round 1 is not sent again
        assert "snapshot" not in [e[0] for e in events]  # resumed, not started over
        assert {"parties", "status"} <= {e[0] for e in events}


def test_the_folder_source_reads_events_as_they_are_appended(tmp_path: Path):
    source = FolderSource(tmp_path)
    assert source.view("run")["status"] == "waiting"
    events = tmp_path / "events.jsonl"
    events.write_text('{"round": 1, "central": {"accuracy": NaN, "loss": 2.0}}\n{"round": 2')
    view = source.view("run")
    assert [p["x"] for p in view["points"]] == [1] and view["status"] == "running"
    assert view["points"][0]["central_accuracy"] is None  # NaN is not JSON
    with events.open("a") as f:
        f.write(', "rejected": {"p1": "NaN in the update"}, "sampled": ["p1"]}\nnot json\n')
    view = source.view("run")
    assert [p["x"] for p in view["points"]] == [1, 2]
    assert view["parties"] == [
        {"party": "p1", "name": None, "state": "rejected", "reason": "round 2: NaN in the update"}
    ]
    events.write_text('{"epoch": 1, "mean_accuracy": 0.5}\n')  # a new run in the same folder
    view = source.view("run")
    assert view["kind"] == "consensus" and [p["x"] for p in view["points"]] == [1]
    with pytest.raises(LookupError):
        source.view("other")


def test_login_on_a_service_without_a_key_sets_no_cookie(service):
    r = httpx.post(f"{service}/dashboard/login", data={"key": "anything"})
    assert r.status_code == 303 and "set-cookie" not in r.headers


def test_party_states_say_what_each_party_does_and_why_it_last_failed():
    parties = [(p, None) for p in ("new", "busy", "gone", "bad", "slow", "broke", "fine")]
    live = {
        "new": {"state": "idle"}, "busy": {"state": "training"}, "gone": {"state": "dropped"},
        "bad": {"state": "idle"}, "slow": {"state": "idle"}, "broke": {"state": "idle"},
        "fine": {"state": "hosted"},
    }  # fmt: skip
    records = [
        {"round": 1, "sampled": ["busy", "gone", "bad", "slow", "broke", "fine"],
         "rejected": {"gone": "update has NaN"}},
        {"round": 2, "sampled": ["busy", "gone", "bad", "slow", "broke", "fine"],
         "rejected": {"bad": "norm 1e9 exceeds the bound"},
         "failed": {"slow": "no reply before the round's deadline", "broke": "party error: OOM",
                    "busy": "no reply before the round's deadline"}},
    ]  # fmt: skip
    rows = {r["party"]: (r["state"], r["reason"]) for r in party_rows(parties, live, records)}
    assert rows == {
        "new": ("joined", None),  # never sampled
        "busy": ("training", "round 2: no reply before the round's deadline"),  # busy again now
        "gone": ("dropped", "round 1: update has NaN"),
        "bad": ("rejected", "round 2: norm 1e9 exceeds the bound"),
        "slow": ("late", "round 2: no reply before the round's deadline"),
        "broke": ("failed", "round 2: party error: OOM"),
        "fine": ("hosted", None),
    }


def test_round_points_carry_the_privacy_budget_and_only_finite_numbers():
    point = round_point(
        {"round": 3, "epsilon": 1.25, "delta": 1e-5, "central": {"accuracy": float("inf")},
         "train": {"loss": 0.5, "accuracy": True}, "bytes_up": 10, "bytes_down": 20,
         "rejected": {"p": "why"}}
    )  # fmt: skip
    assert point["x"] == 3 and point["epsilon"] == 1.25 and point["rejected"] == 1
    assert point["central_accuracy"] is None and point["train_accuracy"] is None
    assert (point["train_loss"], point["bytes_up"], point["bytes_down"]) == (0.5, 10, 20)
