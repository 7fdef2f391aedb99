"""Speed and memory of the fedfuse aggregator service with 10, 50 and 100 remote parties.

What is measured
    The real service (``python -m fedfuse serve``, its own process, 127.0.0.1 only,
    ``OMP_NUM_THREADS=1``) runs one FedAvg federation per party count, created with
    ``POST /start-aggregator`` from ``initial_weights``: a ~1M-parameter float32 model (an MLP's
    worth of named arrays, 4 MB), ``quorum`` = number of parties, ``auto_start`` (training begins
    when the last party has joined), 5 rounds. Each round is a training dispatch plus the
    federated evaluation the service always runs after it. A fourth run, 10 parties with a 4x
    larger model, shows how the service's memory grows with the model.

    The parties bring their own model: each is a Flower-style client wrapped in
    ``fedfuse.party.ClientParty`` whose ``fit`` returns the parameters plus a tiny constant delta
    and whose ``evaluate`` returns constants, driven by ``fedfuse.runtime.PartyClient`` (join,
    long-poll, post reply). Local work is therefore trivial; it is timed anyway (the thread CPU
    time inside ``fit`` / ``evaluate``: their wall time mostly measures waiting for the GIL of a
    busy client process) and subtracted. Parties are threads in a few client processes
    (one per 25 parties) so the GIL of one client process is not what limits a round.

    (a) Round overhead, per round:
        * *train s*: the round record's ``seconds`` (``GET /v1/federations/{id}/history``): the
          service's ``train_round``, from dispatch until the updates are fused;
        * *round s*: the wall time between the starts of consecutive rounds, seen by the parties
          (the first party to receive round r+1's training task; for the last round, the first
          party told the federation is over). This covers train round + federated evaluation +
          checkpoint + the SQLite record, i.e. the time between round records;
        * *overhead* = round s - (slowest party's ``fit`` + slowest party's ``evaluate``): what a
          round costs beyond the parties' own work (parties work in parallel, so the slowest
          one's time is on the round's critical path). Train overhead likewise from train s.
        Mean, median and max over the rounds are reported.
    (b) The service's memory: ``/proc/<pid>/status`` of the service process sampled every 50 ms
        from this process. The baseline is VmRSS once the federation is created (before any
        party joins); VmHWM is then reset (``/proc/<pid>/clear_refs``), so the peak is the larger
        of the highest sampled VmRSS and VmHWM at the end. Reported as peak - baseline in MB and
        as a multiple of the model's size.

    Also recorded: the service's CPU seconds per round (``/proc/<pid>/stat``; the service is one
    process whose work is mostly under one GIL, so this is a floor for its round time even with
    the parties on other machines), the client processes' CPU, bytes moved per round, the
    service's RSS trace, how long joining took, and the machine (CPU count and load average at
    start and end: the benchmark machine is small and shared, so timings include other people's
    load; parties and service also share its CPUs).

Goals (reported, never asserted): round overhead <= 1 s at 100 parties; peak service memory
grows with the model, not with the number of parties (<= 4 x model size + a constant).

Run it (results go to ``benchmarks/results/service.json`` and ``service.md``)::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py           # about 3 minutes
    PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py --quick   # 10 parties, 2 rounds
    PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py --configs 100x1000000 --rounds 3

``--quick`` writes to ``benchmarks/results/quick/``; ``--out DIR`` anywhere else.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
INPUT_SIZE = 784
NUM_CLASSES = 10
DELTA = 1e-3  # what every party adds to every parameter in fit
PARTIES_PER_CLIENT_PROCESS = 25
SAMPLE_EVERY = 0.05  # seconds between samples of the service's /proc status
POLL_WAIT = 10.0  # seconds each party's long poll may wait at the service
GOAL_OVERHEAD_S = 1.0
GOAL_MEMORY_MODELS = 4.0
GOAL_MEMORY_CONSTANT_MB = 50.0  # the "+ a constant" of the memory goal, for the verdict
MB = 1024 * 1024

Weights = dict[str, np.ndarray]


# --- the model and the parties ------------------------------------------------------------------


def make_weights(num_params: int, seed: int = 0) -> Weights:
    """Named float32 arrays shaped like an MLP 784-h-10 with about ``num_params`` parameters."""
    hidden = max(1, round((num_params - NUM_CLASSES) / (INPUT_SIZE + 1 + NUM_CLASSES)))
    rng = np.random.default_rng(seed)
    shapes = {
        "fc1.weight": (hidden, INPUT_SIZE),
        "fc1.bias": (hidden,),
        "fc2.weight": (NUM_CLASSES, hidden),
        "fc2.bias": (NUM_CLASSES,),
    }
    return {
        name: (rng.standard_normal(shape) * 0.01).astype(np.float32)
        for name, shape in shapes.items()
    }


class TrivialClient:
    """A Flower-style ``NumPyClient`` whose local work is next to nothing, and timed."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        self.log = log

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        start, cpu = time.monotonic(), time.thread_time()
        new = [p + np.float32(DELTA) for p in parameters]
        self._record("fit", config, start, cpu)
        return new, 10, {"loss": 0.5}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        start, cpu = time.monotonic(), time.thread_time()
        self._record("evaluate", config, start, cpu)
        return 0.5, 10, {"accuracy": 0.9}

    def _record(self, kind: str, config: dict[str, Any], start: float, cpu: float) -> None:
        self.log.append(
            {
                "kind": kind,
                "round": int(config["round"]),
                "t0": start,
                "t1": time.monotonic(),
                "cpu": time.thread_time() - cpu,
            }
        )


def _party_thread(
    url: str,
    token: str,
    name: str,
    stop: threading.Event,
    out: dict[str, Any],
) -> None:
    """One party: join, then answer tasks until the federation ends (or ``stop`` is set)."""
    from fedfuse.party import ClientParty
    from fedfuse.runtime import PartyClient, ProtocolError

    requests: list[dict[str, Any]] = []
    compute: list[dict[str, Any]] = []

    class TimedPartyClient(PartyClient):
        """Timestamps every request; refuses to go on once the benchmark says stop."""

        def _request(self, method: str, url: str, **kwargs: Any) -> Any:
            if stop.is_set():
                raise ProtocolError("benchmark stopped this party")
            start = time.monotonic()
            response = super()._request(method, url, **kwargs)
            kind = "poll" if url.endswith("/tasks/next") else url.rsplit("/", 1)[-1]
            requests.append(
                {
                    "kind": kind,
                    "t0": start,
                    "t1": time.monotonic(),
                    "status": response.status_code,
                    "bytes": len(response.content) if kind == "poll" else 0,
                }
            )
            return response

    client = TimedPartyClient(url, token, name=name, poll_wait=POLL_WAIT, reconnect_timeout=15.0)
    try:
        summary = client.serve(ClientParty(TrivialClient(compute), name))
        out["final_status"] = summary.final_status
        out["tasks"] = summary.tasks
    except Exception as exc:  # recorded; the main process reports it
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        client.close()
        out["requests"] = requests
        out["compute"] = compute


def party_worker(config_path: str) -> None:
    """A client process: one thread per party; writes their timings to ``config["out"]``."""
    config = json.loads(Path(config_path).read_text())
    stop = threading.Event()
    results: dict[str, dict[str, Any]] = {name: {} for name in config["names"]}
    threads = [
        threading.Thread(
            target=_party_thread,
            args=(config["url"], config["token"], name, stop, results[name]),
            daemon=True,
            name=f"party-{name}",
        )
        for name in config["names"]
    ]
    cpu0 = time.process_time()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + config["timeout"]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        stop.set()
        for thread in threads:
            thread.join(POLL_WAIT + 5)
    payload = {"cpu_s": time.process_time() - cpu0, "parties": results}
    Path(config["out"]).write_text(json.dumps(payload))
    sys.stdout.flush()
    os._exit(0)  # a party thread stuck in a request must not keep this process alive


# --- the service process ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _child_env() -> dict[str, str]:
    old = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": str(SRC) + (os.pathsep + old if old else ""),
        "OMP_NUM_THREADS": "1",
    }


def _proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes (empty once the process is gone)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return values


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Samples VmRSS, VmHWM and CPU time of a process every ``SAMPLE_EVERY`` seconds."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, int, float]] = []  # t, rss, hwm, cpu
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            status = _proc_status(self.pid)
            if status:
                self.samples.append(
                    (time.monotonic(), status["VmRSS"], status["VmHWM"], _proc_cpu(self.pid))
                )

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def cpu_at(self, t: float) -> float:
        """CPU seconds at the last sample at or before ``t`` (the first sample if none)."""
        best = self.samples[0][3] if self.samples else math.nan
        for when, _, _, cpu in self.samples:
            if when > t:
                break
            best = cpu
        return best


class Service:
    """``python -m fedfuse serve`` on a free 127.0.0.1 port, in its own process."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        self._log_file = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedfuse", "serve", "--host", HOST, "--port", str(self.port),
             "--data-dir", str(data_dir), "--log-level", "warning"],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=_child_env(),
        )  # fmt: skip

    def wait_ready(self, timeout: float = 90.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self._log_file.close()


# --- one configuration ---------------------------------------------------------------------------


@dataclass
class RunResult:
    parties: int
    rounds: int
    num_params: int
    model_mb: float
    client_processes: int
    status: str = ""
    error: str | None = None
    train_seconds: list[float] = field(default_factory=list)
    round_seconds: list[float] = field(default_factory=list)
    max_fit_seconds: list[float] = field(default_factory=list)
    max_evaluate_seconds: list[float] = field(default_factory=list)
    max_fit_wall_seconds: list[float] = field(default_factory=list)
    sum_fit_seconds: list[float] = field(default_factory=list)
    overhead_seconds: list[float] = field(default_factory=list)
    train_overhead_seconds: list[float] = field(default_factory=list)
    bytes_up_per_round: list[int] = field(default_factory=list)
    bytes_down_per_round: list[int] = field(default_factory=list)
    service_cpu_per_round_s: float = math.nan
    client_cpu_s: float = math.nan
    join_seconds: float = math.nan
    baseline_rss_mb: float = math.nan
    peak_rss_mb: float = math.nan
    peak_above_baseline_mb: float = math.nan
    peak_model_multiple: float = math.nan
    hwm_reset: bool = False
    load_start: float = math.nan
    load_end: float = math.nan
    party_errors: list[str] = field(default_factory=list)
    join_request_seconds: dict[str, float] = field(default_factory=dict)
    peak_train_phase_mb: float = math.nan  # peak RSS above baseline while updates come in
    peak_evaluate_phase_mb: float = math.nan  # ... while only the evaluation is sent out
    rss_trace: list[tuple[float, float]] = field(default_factory=list)  # (s from round 1, MB)
    round_starts_s: list[float] = field(default_factory=list)  # ... and the end
    evaluate_starts_s: list[float] = field(default_factory=list)


def _create_federation(url: str, weights: Weights, parties: int, rounds: int) -> dict[str, Any]:
    import httpx

    from fedfuse.weights import to_bytes

    form = {
        "fusion_algorithm": "fedavg",
        "num_parties": parties,
        "rounds": rounds,
        "quorum": parties,
        "round_timeout": 600,
        "auto_start": "true",
    }
    files = {"initial_weights": ("initial.safetensors", to_bytes(weights))}
    response = httpx.post(f"{url}/start-aggregator", data=form, files=files, timeout=60)
    response.raise_for_status()
    return response.json()


@dataclass
class Timeline:
    """What the parties saw, per round (lists indexed by round - 1)."""

    wall: list[float]  # from the first receipt of round r's training task to round r+1's
    fit_cpu: list[float]  # slowest party's fit, thread CPU seconds
    evaluate_cpu: list[float]
    fit_wall: list[float]  # slowest party's fit, wall seconds (inflated by GIL/CPU contention)
    fit_cpu_sum: list[float]  # all parties' fits, CPU seconds
    bytes_down: list[int]
    starts: list[float]  # monotonic time each round started, and the end of the last one
    evaluate_starts: list[float]  # first receipt of each round's evaluation task


def _round_timeline(parties: dict[str, dict[str, Any]], rounds: int) -> Timeline:
    """Round r runs from the first party's receipt of its training task to the first receipt
    of round r+1's (the last round: to the first party told the federation is over)."""
    keys = range(1, rounds + 1)
    first_train = dict.fromkeys(keys, math.inf)
    first_eval = dict.fromkeys(keys, math.inf)
    fit_cpu, eval_cpu = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0)
    fit_wall, fit_sum = dict.fromkeys(keys, 0.0), dict.fromkeys(keys, 0.0)
    end = math.inf
    for party in parties.values():
        for c in party.get("compute", []):
            r = c["round"]
            if r not in first_train:
                continue
            if c["kind"] == "fit":
                first_train[r] = min(first_train[r], c["t0"])
                fit_cpu[r] = max(fit_cpu[r], c["cpu"])
                fit_wall[r] = max(fit_wall[r], c["t1"] - c["t0"])
                fit_sum[r] += c["cpu"]
            else:
                first_eval[r] = min(first_eval[r], c["t0"])
                eval_cpu[r] = max(eval_cpu[r], c["cpu"])
        for req in party.get("requests", []):
            if req["kind"] == "poll" and req["status"] == 410:
                end = min(end, req["t1"])
    starts = [first_train[r] for r in keys] + [end]
    down = [0] * rounds
    for party in parties.values():
        for req in party.get("requests", []):
            if req["kind"] == "poll" and req["status"] == 200:
                for i in range(rounds):
                    if starts[i] - 1.0 <= req["t1"] < starts[i + 1]:
                        down[i] += req["bytes"]
                        break
    return Timeline(
        wall=[starts[i + 1] - starts[i] for i in range(rounds)],
        fit_cpu=[fit_cpu[r] for r in keys],
        evaluate_cpu=[eval_cpu[r] for r in keys],
        fit_wall=[fit_wall[r] for r in keys],
        fit_cpu_sum=[fit_sum[r] for r in keys],
        bytes_down=down,
        starts=starts,
        evaluate_starts=[first_eval[r] for r in keys],
    )


def run_config(
    parties: int, rounds: int, num_params: int, client_processes: int, workdir: Path
) -> RunResult:
    """Start a service, run one federation with ``parties`` parties, measure, tear down."""
    import httpx

    weights = make_weights(num_params)
    n_params = sum(a.size for a in weights.values())
    model_bytes = sum(a.nbytes for a in weights.values())
    result = RunResult(parties, rounds, n_params, model_bytes / MB, client_processes)
    result.load_start = os.getloadavg()[0]
    run_dir = workdir / f"parties{parties}-params{num_params}"
    run_dir.mkdir(parents=True)
    service = Service(run_dir / "state", run_dir / "service.log")
    sampler: Sampler | None = None
    workers: list[subprocess.Popen] = []
    try:
        service.wait_ready()
        sampler = Sampler(service.proc.pid).start()
        fed = _create_federation(service.url, weights, parties, rounds)
        fid = fed["aggregator_id"]
        time.sleep(1.0)
        baseline = _proc_status(service.proc.pid)["VmRSS"]
        try:
            Path(f"/proc/{service.proc.pid}/clear_refs").write_text("5")
            result.hwm_reset = True
        except OSError:
            result.hwm_reset = False
        baseline = min(baseline, _proc_status(service.proc.pid)["VmRSS"])

        names = [f"bench-party-{i:03d}" for i in range(parties)]
        per_worker = math.ceil(parties / client_processes)
        timeout = 60.0 + rounds * (10.0 + 0.5 * parties)
        outs = []
        t_join = time.monotonic()
        for w in range(client_processes):
            chunk = names[w * per_worker : (w + 1) * per_worker]
            if not chunk:
                continue
            out = run_dir / f"worker{w}.json"
            config = run_dir / f"worker{w}.config.json"
            config.write_text(
                json.dumps(
                    {
                        "url": service.url,
                        "token": fed["join_token"],
                        "names": chunk,
                        "timeout": timeout,
                        "out": str(out),
                    }
                )
            )
            log = open(run_dir / f"worker{w}.log", "ab")  # noqa: SIM115 - the child owns it
            workers.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--party-worker", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_child_env(),
                )
            )
            log.close()
            outs.append(out)

        # wait for training to start (all joined), then for it to end
        deadline = time.monotonic() + timeout + 30
        status: dict[str, Any] = {}
        started = False
        while time.monotonic() < deadline:
            status = httpx.get(f"{service.url}/v1/federations/{fid}", timeout=30).json()
            if not started and status["status"] != "registering":
                result.join_seconds = time.monotonic() - t_join
                started = True
            if status["status"] in ("completed", "stopped", "failed"):
                break
            if all(w.poll() is not None for w in workers):
                break
            time.sleep(0.5)
        result.status = status.get("status", "?")
        result.error = status.get("error")
        history = httpx.get(f"{service.url}/v1/federations/{fid}/history", timeout=30).json()
        for w in workers:
            try:
                w.wait(POLL_WAIT + 30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)
        sampler.stop()
        hwm = _proc_status(service.proc.pid).get("VmHWM", 0) if result.hwm_reset else 0

        merged: dict[str, dict[str, Any]] = {}
        result.client_cpu_s = 0.0
        for out in outs:
            if out.exists():
                data = json.loads(out.read_text())
                merged.update(data["parties"])
                result.client_cpu_s += data["cpu_s"]
        result.party_errors = sorted({p["error"] for p in merged.values() if p.get("error")})

        records = history["rounds"]
        result.train_seconds = [float(r["seconds"]) for r in records]
        result.bytes_up_per_round = [int(r.get("bytes_up", 0)) for r in records]
        if len(records) == rounds and len(merged) == parties:
            tl = _round_timeline(merged, rounds)
            walls = tl.wall
            result.round_seconds = walls
            result.max_fit_seconds = tl.fit_cpu
            result.max_evaluate_seconds = tl.evaluate_cpu
            result.max_fit_wall_seconds = tl.fit_wall
            result.sum_fit_seconds = tl.fit_cpu_sum
            result.bytes_down_per_round = tl.bytes_down
            result.overhead_seconds = [
                w - f - e for w, f, e in zip(walls, tl.fit_cpu, tl.evaluate_cpu, strict=True)
            ]
            result.train_overhead_seconds = [
                t - f for t, f in zip(result.train_seconds, tl.fit_cpu, strict=True)
            ]
            first_start, end = tl.starts[0], tl.starts[-1]
            result.service_cpu_per_round_s = (
                sampler.cpu_at(end) - sampler.cpu_at(first_start)
            ) / rounds
            result.round_starts_s = [round(t - first_start, 3) for t in tl.starts]
            result.evaluate_starts_s = [round(t - first_start, 3) for t in tl.evaluate_starts]
            result.rss_trace = [
                (round(t - first_start, 3), round(rss / MB, 1)) for t, rss, _, _ in sampler.samples
            ]
            train_phase = [
                rss
                for t, rss, _, _ in sampler.samples
                for r in range(rounds)
                if tl.starts[r] - 0.5 <= t < tl.evaluate_starts[r]
            ]
            eval_phase = [
                rss
                for t, rss, _, _ in sampler.samples
                for r in range(rounds)
                if tl.evaluate_starts[r] <= t < tl.starts[r + 1]
            ]
            if train_phase:
                result.peak_train_phase_mb = (max(train_phase) - baseline) / MB
            if eval_phase:
                result.peak_evaluate_phase_mb = (max(eval_phase) - baseline) / MB
        joins = [
            q["t1"] - q["t0"]
            for p in merged.values()
            for q in p.get("requests", [])
            if q["kind"] == "join"
        ]
        if joins:
            result.join_request_seconds = _stats(joins)

        peak = max([s[1] for s in sampler.samples] + [hwm])
        result.baseline_rss_mb = baseline / MB
        result.peak_rss_mb = peak / MB
        result.peak_above_baseline_mb = (peak - baseline) / MB
        result.peak_model_multiple = (peak - baseline) / model_bytes
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
        if sampler is not None:
            sampler.stop()
        service.stop()
        result.load_end = os.getloadavg()[0]
    return result


# --- reporting -----------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "median": math.nan, "max": math.nan}
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "max": max(values),
    }


def _fmt3(values: list[float]) -> str:
    s = _stats(values)
    return f"{s['mean']:.2f} / {s['median']:.2f} / {s['max']:.2f}"


def machine_info() -> dict[str, Any]:
    import fastapi
    import uvicorn

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "numpy": np.__version__,
        "uvicorn": uvicorn.__version__,
        "fastapi": fastapi.__version__,
    }


def verdicts(results: list[RunResult]) -> dict[str, str]:
    out = {}
    at100 = [r for r in results if r.parties >= 100 and r.overhead_seconds]
    if at100:
        r = at100[0]
        worst = max(r.overhead_seconds)
        mean = statistics.fmean(r.overhead_seconds)
        met = "met" if worst <= GOAL_OVERHEAD_S else "NOT met"
        out["overhead"] = (
            f"round overhead <= {GOAL_OVERHEAD_S:.0f} s at {r.parties} parties: {met} "
            f"(mean {mean:.2f} s, max {worst:.2f} s; the service alone used "
            f"{r.service_cpu_per_round_s:.2f} CPU s per round, a floor for its round time "
            "even with the parties on other machines)"
        )
    else:
        out["overhead"] = "round overhead at 100 parties: not measured in this run"
    mem = [r for r in results if not math.isnan(r.peak_above_baseline_mb)]
    if mem:
        ok = all(
            r.peak_above_baseline_mb <= GOAL_MEMORY_MODELS * r.model_mb + GOAL_MEMORY_CONSTANT_MB
            for r in mem
        )
        parts = ", ".join(
            f"{r.parties} parties x {r.model_mb:.1f} MB model: {r.peak_above_baseline_mb:.1f} MB"
            f" ({r.peak_model_multiple:.1f} x model)"
            for r in mem
        )
        text = (
            f"peak memory <= {GOAL_MEMORY_MODELS:.0f} x model + {GOAL_MEMORY_CONSTANT_MB:.0f} MB: "
            f"{'met' if ok else 'NOT met'} ({parts})"
        )
        main_size = mem[0].num_params
        same_model = [r for r in mem if r.num_params == main_size]
        if len({r.parties for r in same_model}) > 1:
            x = np.array([r.parties for r in same_model], float)
            y = np.array([r.peak_above_baseline_mb for r in same_model])
            slope, intercept = np.polyfit(x, y, 1)
            text += (
                f"; with the {same_model[0].model_mb:.1f} MB model it grows with the number of "
                f"parties by {slope:.2f} MB per party ({slope / same_model[0].model_mb:.2f} x "
                f"model per party; {intercept:.0f} MB at 0 parties)"
            )
        out["memory"] = text
    return out


def write_report(
    results: list[RunResult], info: dict[str, Any], out_dir: Path, started: str
) -> str:
    goals = verdicts(results)
    rows = []
    for r in results:
        rows.append(
            f"| {r.parties} | {r.model_mb:.2f} | {_fmt3(r.overhead_seconds)} | "
            f"{_fmt3(r.train_overhead_seconds)} | {_fmt3(r.round_seconds)} | "
            f"{_fmt3(r.train_seconds)} | {r.service_cpu_per_round_s:.2f} | "
            f"{r.peak_above_baseline_mb:.1f} | {r.peak_model_multiple:.1f} | {r.status} |"
        )
    busy = (
        info["load_start"] > info["usable_cpus"] / 2 or info["load_end"] > info["usable_cpus"] / 2
    )
    sizes = " or ".join(
        sorted({f"{r.num_params:,} parameters ({r.model_mb:.2f} MB)" for r in results})
    )
    lines = [
        "# fedfuse service: round overhead and memory with many remote parties",
        "",
        f"Measured {started} on {info['platform']} ({info['machine']}), Python {info['python']}, "
        f"{info['usable_cpus']} usable of {info['cpu_count']} CPUs, uvicorn {info['uvicorn']}, "
        f"load average {info['load_start']:.2f} at start, {info['load_end']:.2f} at end. "
        "The service, the party processes and this script share these CPUs with other "
        "people's jobs on the same machine.",
        "",
        f"FedAvg over 127.0.0.1; the model (float32 arrays, sent as `initial_weights`) has "
        f"{sizes}; quorum = all parties, {results[0].rounds} rounds, each a training dispatch "
        "plus the federated evaluation. Parties are `ClientParty` threads (Flower-style `fit` = "
        "params + a constant, `evaluate` = constants) in "
        f"{PARTIES_PER_CLIENT_PROCESS}-party client processes. Overhead = wall time between "
        "round starts minus the slowest party's `fit` and `evaluate` (CPU seconds; a few ms "
        "here); train overhead = the round record's `seconds` (train round only) minus the "
        "slowest `fit`. Seconds as mean / median / max over rounds. Peak memory: the service "
        "process's peak "
        "RSS (sampled every 50 ms, and VmHWM) above its RSS once the federation was created.",
        "",
        "| parties | model MB | round overhead s | train overhead s | round wall s | "
        "train round s | service CPU s/round | peak service memory above baseline MB | "
        "x model size | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Goals (reported, not enforced):",
        "",
        *[f"- {v}" for v in goals.values()],
        "",
        "Details per configuration: client processes; seconds from starting the parties until "
        "training began (process start-up and imports included) and per `POST /v1/join` "
        "(mean / max); slowest party's `fit` per round in CPU and in wall seconds (the wall "
        "time is inflated by contention in the client processes); the client processes' and "
        "the service's CPU per round; MB per round; the service's peak RSS above baseline "
        "while updates come in (train phase) and while only the evaluation goes out; load.",
        "",
        "| parties | client procs | join s | join request s | slowest fit CPU / wall s | "
        "client CPU s/round | service CPU s/round | MB up / down per round | "
        "peak train / eval phase MB | baseline RSS MB | load start / end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        up = statistics.fmean(r.bytes_up_per_round) / MB if r.bytes_up_per_round else math.nan
        down = statistics.fmean(r.bytes_down_per_round) / MB if r.bytes_down_per_round else math.nan
        fit = max(r.max_fit_seconds) if r.max_fit_seconds else math.nan
        fit_wall = max(r.max_fit_wall_seconds) if r.max_fit_wall_seconds else math.nan
        join = r.join_request_seconds or {"mean": math.nan, "max": math.nan}
        lines.append(
            f"| {r.parties} | {r.client_processes} | {r.join_seconds:.1f} | "
            f"{join['mean']:.2f} / {join['max']:.2f} | {fit:.4f} / {fit_wall:.3f} | "
            f"{r.client_cpu_s / r.rounds:.2f} | {r.service_cpu_per_round_s:.2f} | "
            f"{up:.0f} / {down:.0f} | {r.peak_train_phase_mb:.1f} / "
            f"{r.peak_evaluate_phase_mb:.1f} | {r.baseline_rss_mb:.0f} | "
            f"{r.load_start:.2f} / {r.load_end:.2f} |"
        )
    errors = [
        (r.parties, e) for r in results for e in ([r.error] if r.error else []) + r.party_errors
    ]
    if errors:
        lines += ["", "Errors:", "", *[f"- {p} parties: {e}" for p, e in errors]]
    if busy:
        lines += [
            "",
            "**Other work shared the CPUs during this run (load average above half the CPU "
            "count): treat the timings as rough and re-run on a quiet machine.**",
        ]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "service.md").write_text(text)
    payload = {
        "measured": started,
        "machine": info,
        "goals": goals,
        "settings": {
            "sample_every_s": SAMPLE_EVERY,
            "poll_wait_s": POLL_WAIT,
            "parties_per_client_process": PARTIES_PER_CLIENT_PROCESS,
            "delta": DELTA,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "results": [r.__dict__ for r in results],
    }
    (out_dir / "service.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return text


def _configs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """``(parties, parameters)`` of each run."""
    if args.configs:
        pairs = [c.split("x") for c in args.configs.split(",")]
        return [(int(parties), int(params)) for parties, params in pairs]
    counts = [int(c) for c in (args.parties or ("10" if args.quick else "10,50,100")).split(",")]
    configs = [(n, args.params) for n in counts]
    if not args.quick and not args.parties:
        configs.append((10, 4 * args.params))  # does the peak grow with the model?
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Round overhead and memory of the fedfuse service with many parties."
    )
    parser.add_argument("--quick", action="store_true", help="10 parties, 2 rounds (smoke test)")
    parser.add_argument("--parties", default=None, help="comma-separated party counts")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--params", type=int, default=1_000_000, help="model size (parameters)")
    parser.add_argument(
        "--configs",
        default=None,
        help="runs as PARTIESxPARAMS,... (default: 10, 50, 100 parties with --params, and 10 "
        "parties with 4 x --params)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes (0: one per 25 parties)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--party-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.party_worker:
        party_worker(args.party_worker)
        return 0
    configs = _configs(args)
    rounds = args.rounds or (2 if args.quick else 5)
    out_dir = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    info = machine_info() | {"load_start": os.getloadavg()[0]}
    print(
        f"{info['platform']}, {info['usable_cpus']} usable of {info['cpu_count']} CPUs "
        f"(shared with other people's jobs), load average {info['load_start']:.2f} at start",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="fedfuse-bench-service-") as tmp:
        for n, params in configs:
            procs = args.client_procs or math.ceil(n / PARTIES_PER_CLIENT_PROCESS)
            t0 = time.monotonic()
            r = run_config(n, rounds, params, procs, Path(tmp))
            results.append(r)
            print(
                f"{n:4d} parties, {r.model_mb:5.1f} MB model: {r.status}, round overhead "
                f"{_fmt3(r.overhead_seconds)} s (train {_fmt3(r.train_overhead_seconds)} s), "
                f"peak +{r.peak_above_baseline_mb:.1f} MB = {r.peak_model_multiple:.1f} x model "
                f"[{time.monotonic() - t0:.0f} s]",
                flush=True,
            )
            if r.error or r.party_errors:
                print(f"     errors: {r.error} {r.party_errors[:3]}", flush=True)
    info["load_end"] = os.getloadavg()[0]
    print()
    print(write_report(results, info, out_dir, started))
    print(f"results written to {out_dir / 'service.md'} and service.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
