"""``fedfuse dashboard DIR`` over a simulation's and a consensus run's out_dir, and the
``events.jsonl`` those runs append to as they go."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from dashboard_helpers import sse_events
from fedfuse import simulate
from fedfuse.cli import main
from fedfuse.consensus import run_consensus
from service_helpers import fedfuse_process, free_port, stop_all

pytestmark = pytest.mark.timeout(240)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def simulation_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    seen = []
    simulate(
        rounds=2, num_parties=3, centralized=False, out_dir=out, on_round=seen.append
    )  # fmt: skip
    assert [r["round"] for r in lines(out / "events.jsonl")] == [1, 2]
    assert lines(out / "events.jsonl") == json.loads(json.dumps(seen))  # the records as given
    return out


@pytest.fixture(scope="module")
def consensus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("consensus")
    run_consensus(
        num_nodes=3, model="logreg", epochs=2, centralized=False, batch_size=16, out_dir=out
    )
    assert [r["epoch"] for r in lines(out / "events.jsonl")] == [1, 2]
    return out


class Dashboard:
    """``fedfuse dashboard PATH`` as a child process on a free port."""

    def __init__(self, path: Path, tmp_path: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.log = tmp_path / "dashboard.log"
        self.proc = fedfuse_process("dashboard", str(path), "--port", port, log=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # polling until it answers
            try:
                if httpx.get(self.url + "/dashboard", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"fedfuse dashboard did not start: {self.log.read_text()}")

    def events(self, stop_at: str = "end") -> list[tuple]:
        found = []
        with httpx.stream("GET", f"{self.url}/v1/federations/run/events", timeout=60) as r:
            assert r.status_code == 200
            for event in sse_events(r):
                found.append(event)
                if event[0] == stop_at:
                    break
        return found


@pytest.fixture
def dashboard(tmp_path):
    started: list[Dashboard] = []

    def start(path: Path) -> Dashboard:
        started.append(Dashboard(path, tmp_path))
        return started[-1]

    yield start
    stop_all([d.proc for d in started])


def test_a_finished_simulation_is_served_like_a_federation(simulation_dir, dashboard):
    dash = dashboard(simulation_dir)
    index = httpx.get(dash.url + "/").text
    assert 'href="/dashboard/federations/run"' in index and simulation_dir.name in index
    page = httpx.get(dash.url + "/dashboard/federations/run")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert len(re.findall(r"<tr><td>\d+</td>", page.text)) == 2  # two rounds, no JavaScript
    (snapshot, end) = dash.events()
    view = snapshot[2]
    assert (snapshot[0], snapshot[1], end[0]) == ("snapshot", 2, "end")
    assert view["kind"] == "federation" and view["finished"]
    history = json.loads((simulation_dir / "history.json").read_text())["rounds"]
    assert [p["central_accuracy"] for p in view["points"]] == [
        r["central"]["accuracy"] for r in history
    ]
    assert all(p["bytes_up"] > 0 and p["bytes_down"] > 0 for p in view["points"])
    assert {p["party"] for p in view["parties"]} == set(history[0]["sampled"])


def test_a_finished_consensus_run_shows_the_nodes_and_the_consensus_distance(
    consensus_dir, dashboard
):
    dash = dashboard(consensus_dir)
    page = httpx.get(dash.url + "/dashboard/federations/run").text
    assert 'data-kind="consensus"' in page and 'data-key="consensus_distance"' in page
    (snapshot, end) = dash.events()
    view = snapshot[2]
    assert view["kind"] == "consensus" and end[0] == "end"
    epochs = json.loads((consensus_dir / "history.json").read_text())["epochs"]
    assert [p["consensus_distance"] for p in view["points"]] == [
        e["consensus_distance"] for e in epochs
    ]
    assert sorted(view["points"][0]["nodes"]) == ["0", "1", "2"]


def test_a_run_still_going_is_followed_from_its_events_file(tmp_path, dashboard):
    run = tmp_path / "out"
    run.mkdir()
    dash = dashboard(run)
    with httpx.stream("GET", f"{dash.url}/v1/federations/run/events", timeout=60) as r:
        stream = sse_events(r)
        event, _, view = next(stream)
        assert event == "snapshot" and view["status"] == "waiting"
        with (run / "events.jsonl").open("a") as f:
            f.write(json.dumps({"round": 1, "central": {"accuracy": 0.25}}) + "\n")
        event, event_id, point = next(e for e in stream if e[0] == "round")
        assert event_id == 1 and point["central_accuracy"] == 0.25
        (run / "history.json").write_text(json.dumps({"rounds": [{"round": 1}]}))
        assert [e[0] for e in stream][-1] == "end"


def test_the_command_refuses_what_it_cannot_serve_safely(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "without authentication" in capsys.readouterr().err
