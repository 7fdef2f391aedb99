"""The fedfuse aggregator service at scale, and the same workload through Flower's deployment.

What is measured
    The real service (``python -m fedfuse serve``, its own process, 127.0.0.1 only,
    ``OMP_NUM_THREADS=1``) runs one FedAvg federation per configuration, created with
    ``POST /start-aggregator`` from ``initial_weights``: a ~1M-parameter float32 model (an MLP's
    worth of named arrays, 4 MB), ``quorum`` = number of parties, ``auto_start``, 5 rounds, with
    federated evaluation ``off`` (training only), ``on`` (a second broadcast after each training
    round, the service's default) or ``piggyback`` (carried with the next round's training task;
    skipped with a note when this fedfuse's spec has no ``piggyback`` setting: the spec is built
    as the service builds it from the form). Default plan: 10, 50, 100 parties in each mode; 10
    parties with a 4x larger model (does the peak follow the model?); 1000 parties (evaluation
    on); then 10,000 idle parties; then Flower.

    The parties bring their own model: each is a Flower-style client wrapped in
    ``fedfuse.party.ClientParty`` whose ``fit`` / ``evaluate`` are the shared
    ``workload.fit`` (params + a constant) and ``workload.evaluate`` (constants) of
    ``benchmarks/peers/flower_deployment/fedfuse_bench_flower/workload.py``, the functions
    Flower's ClientApp calls too. They are driven by ``fedfuse.runtime.PartyClient`` (join with
    the join token, long-poll and reply with the party's own token), as threads in client
    processes (25 parties each, at most 10 processes: 1000 parties are 10 x 100 threads; the
    machine has 2 CPUs, so the parties' own CPU is reported apart from the service's).

    (a) Round overhead per round: *round s* is the wall time between the first party's receipt
        of round r's and round r+1's training tasks (the last round: until the first party is
        told the federation is over), so it covers training, evaluation, checkpoint and the
        SQLite record; *train s* is the round record's ``seconds`` (dispatch until fused);
        *overhead* = round s - (slowest ``fit`` + slowest ``evaluate``, thread CPU seconds: their
        wall time mostly measures a busy client process's GIL). Mean / median / max.
    (b) Service CPU per MB moved: the service process's CPU seconds (``/proc/<pid>/stat``, 50 ms
        samples) over the rounds / (MB up, from the round records, + MB down, what the parties
        received), in ms per MB.
    (c) Memory: the service's RSS once the federation is created is the baseline; VmHWM is then
        reset (``clear_refs``), so the peak is the larger of the sampled VmRSS and VmHWM; peak -
        baseline against 2 x model + 50 MB, and its growth per party (a least-squares line over
        the party counts of one model size and mode).
    (d) 1000 parties x 1M: as (a)-(c), with the parties' processes' CPU and summed peak RSS.
    (e) Idle: 10,000 parties join (httpx, 4 client processes, 8 joins in flight each)
        a federation whose quorum is one more, so no round starts, and each holds one long poll
        (``wait`` = 30 s; the service caps a poll at ``max_poll_wait``, 30 s; written as plain
        HTTP/1.1 on asyncio streams, uvloop, so the clients stay light) for 60 s: service
        RSS and CPU % of one core over that window, answered polls per second (the request
        rate), how long joining took and what it cost the service. The benchmark raises its
        open-file limit to the hard limit first (the service holds a socket per poll).

    Flower (``peers/flower_deployment/launch.py``): flower-superlink + N flower-supernode
    processes + ``flwr run`` of the app in that folder, the same workload (FedAvg, every node
    every round, fit = the shared ``workload.fit``), evaluation on by default; round wall from
    the ServerApp's strategy callbacks minus the slowest fit / evaluation, SuperLink and
    ServerApp CPU and RSS, each SuperNode's RSS. SuperNodes are started while memory lasts (a
    SuperNode is a supernode + a superexec process, and one ClientApp process per message); the
    report says when fewer than asked ran. Every process either side starts is stopped by PID.

    Also recorded: bytes per round, how long joining took, the service's RSS trace, the machine
    (CPUs, memory, load average at start and end: the benchmark machine is small and shared).

Goals (issue 13; reported, never asserted): round overhead <= 0.5 s at 100 x 1M (<= 0.75 s
with federated evaluation); service CPU <= 0.8 ms per MB moved; peak service memory <= 2 x
model + 50 MB, flat in the number of parties; 1000 x 1M <= 5 s per round; 10,000 idle parties
<= 1 GB RSS and <= 5% of one core; Flower's deployment runtime recorded beside fedfuse.

Run it (results go to ``benchmarks/results/service.json`` and ``service.md``)::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py          # everything (~1 h)
    PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py --quick  # ~1.5 min smoke test
    PYTHONPATH=src .venv/bin/python benchmarks/bench_service.py --configs 100x1000000 \
        --evals off,on --idle 0 --flower-nodes 0 --rounds 3

``--quick`` writes to ``benchmarks/results/quick/``; ``--out DIR`` anywhere else. Flower needs
the bench venv (``--flower-venv``, default ``.venv-bench``, made by ``bench_backends.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
FLOWER_APP = Path(__file__).resolve().parent / "peers" / "flower_deployment"
sys.path.insert(0, str(FLOWER_APP))  # the shared party code, and the Flower launcher

from fedfuse_bench_flower import workload  # noqa: E402 - found through FLOWER_APP
from launch import FlowerResult, run_flower  # noqa: E402

HOST = "127.0.0.1"
PARTIES_PER_CLIENT_PROCESS = 25
MAX_CLIENT_PROCESSES = 10  # 1000 parties: 10 x 100 party threads (each process ~270 MB idle)
SAMPLE_EVERY = 0.05  # seconds between samples of the service's /proc status
POLL_WAIT = 10.0  # seconds each party's long poll may wait at the service
IDLE_POLL_WAIT = 30.0  # an idle party's long poll (the service caps it at max_poll_wait, 30 s)
IDLE_JOINS_IN_FLIGHT = 8  # per idle client process
EVAL_MODES = ("off", "on", "piggyback")
GOAL_OVERHEAD_S = {"off": 0.5, "on": 0.75, "piggyback": 0.75}  # at 100 parties x 1M
GOAL_CPU_MS_PER_MB = 0.8
GOAL_MEMORY_MODELS = 2.0
GOAL_MEMORY_CONSTANT_MB = 50.0
GOAL_LARGE_ROUND_S = 5.0  # 1000 parties x 1M
GOAL_IDLE_RSS_MB = 1024.0
GOAL_IDLE_CPU_PERCENT = 5.0
MB = 1024 * 1024

Weights = dict[str, np.ndarray]


# --- the model and the parties ------------------------------------------------------------------


def make_weights(num_params: int, seed: int = 0) -> Weights:
    """Named float32 arrays shaped like an MLP 784-h-10 with about ``num_params`` parameters
    (the same model Flower's run gets: ``workload.make_weights``)."""
    return workload.make_weights(num_params, seed)


class TrivialClient:
    """A Flower-style ``NumPyClient`` around the shared ``workload.fit`` / ``evaluate`` (the
    code Flower's ClientApp runs too), timed."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        self.log = log

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, float]]:
        start = time.monotonic()
        new, cpu = workload.fit(parameters)
        self._record("fit", config, start, cpu)
        return new, workload.NUM_EXAMPLES, {"loss": workload.LOSS}

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, float]]:
        start = time.monotonic()
        loss, accuracy, cpu = workload.evaluate(parameters)
        self._record("evaluate", config, start, cpu)
        return loss, workload.NUM_EXAMPLES, {"accuracy": accuracy}

    def _record(self, kind: str, config: dict[str, Any], start: float, cpu: float) -> None:
        self.log.append(
            {
                "kind": kind,
                "round": int(config.get("round", 0)),
                "t0": start,
                "t1": time.monotonic(),
                "cpu": cpu,
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

    # reconnect_timeout: the client's default (120 s), as `fedfuse party` retries: in a
    # 1000-party storm on 2 cores a connection may be reset for longer than 15 s
    client = TimedPartyClient(url, token, name=name, poll_wait=POLL_WAIT)
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
    payload = {
        "cpu_s": time.process_time() - cpu0,
        "hwm_mb": _proc_status(os.getpid()).get("VmHWM", 0) / MB,
        "parties": results,
    }
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


def _worker(flag: str, config: Path, log_path: Path) -> subprocess.Popen:
    """This script as a client process (``--party-worker`` or ``--idle-worker``) on ``config``,
    its output appended to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, __file__, flag, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
        )


def _stop_run(workers: list[subprocess.Popen], sampler: Any, service: Any) -> None:
    """Kill the client processes still running, stop the sampler (if any) and the service."""
    for w in workers:
        if w.poll() is None:
            w.kill()
            w.wait(10)
    if sampler is not None:
        sampler.stop()
    service.stop()


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
    evaluation: str = "on"  # off | on | piggyback (federated evaluation)
    status: str = ""
    tasks_per_party: float = math.nan  # tasks each party received, mean over parties
    note: str = ""
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
    service_cpu_ms_per_mb: float = math.nan  # service CPU / (MB up + MB down)
    client_cpu_s: float = math.nan
    client_peak_mb: float = math.nan  # the client processes' peak RSS, summed
    join_seconds: float = math.nan
    baseline_rss_mb: float = math.nan
    peak_rss_mb: float = math.nan
    peak_above_baseline_mb: float = math.nan
    peak_model_multiple: float = math.nan
    hwm_reset: bool = False
    load_start: float = math.nan
    load_end: float = math.nan
    party_errors: list[str] = field(default_factory=list)
    slow_status_polls: int = 0  # status requests the service did not answer within 30 s
    join_request_seconds: dict[str, float] = field(default_factory=dict)
    peak_train_phase_mb: float = math.nan  # peak RSS above baseline while updates come in
    peak_evaluate_phase_mb: float = math.nan  # ... while only the evaluation is sent out
    rss_trace: list[tuple[float, float]] = field(default_factory=list)  # (s from round 1, MB)
    round_starts_s: list[float] = field(default_factory=list)  # ... and the end
    evaluate_starts_s: list[float] = field(default_factory=list)


def evaluation_fields(mode: str) -> dict[str, str]:
    """The form fields that choose federated evaluation ``mode`` (off, on, piggyback)."""
    fields = {"federated_eval": "false" if mode == "off" else "true"}
    if mode == "piggyback":
        fields["piggyback"] = "true"
    return fields


def evaluation_problem(mode: str) -> str | None:
    """Why the service cannot run ``mode`` (None if it can): the spec is built, as the service
    builds it from the form, so a setting this fedfuse does not have yet is found here."""
    from fedfuse.recipes import FederationSpec, coerce_flat

    fields = {"fusion_algorithm": "fedavg", **evaluation_fields(mode)}
    try:
        FederationSpec.from_flat(coerce_flat(fields)).validate()
    except Exception as exc:  # a SettingsError naming the unknown or bad setting
        return f"{type(exc).__name__}: {exc}"
    return None


def _create_federation(
    url: str, weights: Weights, parties: int, rounds: int, extra: dict[str, str]
) -> dict[str, Any]:
    import httpx

    from fedfuse.weights import to_bytes

    form = {
        "fusion_algorithm": "fedavg",
        "num_parties": parties,
        "rounds": rounds,
        "quorum": parties,
        "round_timeout": 3600,
        "auto_start": "true",
        **extra,
    }
    files = {"initial_weights": ("initial.safetensors", to_bytes(weights))}
    response = httpx.post(f"{url}/start-aggregator", data=form, files=files, timeout=60)
    if response.status_code >= 400:
        raise RuntimeError(f"start-aggregator: {response.status_code} {response.text[:500]}")
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
    parties: int,
    rounds: int,
    num_params: int,
    client_processes: int,
    workdir: Path,
    evaluation: str = "on",
) -> RunResult:
    """Start a service, run one federation with ``parties`` parties, measure, tear down."""
    import httpx

    weights = make_weights(num_params)
    n_params = sum(a.size for a in weights.values())
    model_bytes = sum(a.nbytes for a in weights.values())
    result = RunResult(parties, rounds, n_params, model_bytes / MB, client_processes, evaluation)
    result.load_start = os.getloadavg()[0]
    run_dir = workdir / f"parties{parties}-params{num_params}-eval-{evaluation}"
    run_dir.mkdir(parents=True)
    service = Service(run_dir / "state", run_dir / "service.log")
    sampler: Sampler | None = None
    workers: list[subprocess.Popen] = []
    try:
        service.wait_ready()
        sampler = Sampler(service.proc.pid).start()
        fed = _create_federation(
            service.url, weights, parties, rounds, evaluation_fields(evaluation)
        )
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
            workers.append(_worker("--party-worker", config, run_dir / f"worker{w}.log"))
            outs.append(out)

        # wait for training to start (all joined), then for it to end
        deadline = time.monotonic() + timeout + 30
        status: dict[str, Any] = {}
        started = False
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{service.url}/v1/federations/{fid}", timeout=30).json()
            except httpx.TimeoutException:  # a service saturated by its parties: ask again
                result.slow_status_polls += 1
                continue
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
        history = httpx.get(f"{service.url}/v1/federations/{fid}/history", timeout=300).json()
        for w in workers:
            try:
                w.wait(POLL_WAIT + 30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)
        sampler.stop()
        hwm = _proc_status(service.proc.pid).get("VmHWM", 0) if result.hwm_reset else 0

        merged: dict[str, dict[str, Any]] = {}
        result.client_cpu_s = result.client_peak_mb = 0.0
        for out in outs:
            if out.exists():
                data = json.loads(out.read_text())
                merged.update(data["parties"])
                result.client_cpu_s += data["cpu_s"]
                result.client_peak_mb += data["hwm_mb"]
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
            moved_mb = (sum(result.bytes_up_per_round) + sum(tl.bytes_down)) / rounds / MB
            if moved_mb > 0:
                result.service_cpu_ms_per_mb = 1000 * result.service_cpu_per_round_s / moved_mb
            result.round_starts_s = [round(t - first_start, 3) for t in tl.starts]
            result.evaluate_starts_s = [round(t - first_start, 3) for t in tl.evaluate_starts]
            result.rss_trace = [
                (round(t - first_start, 3), round(rss / MB, 1)) for t, rss, _, _ in sampler.samples
            ]
            train_phase = [
                rss
                for t, rss, _, _ in sampler.samples
                for r in range(rounds)
                if tl.starts[r] - 0.5 <= t < min(tl.evaluate_starts[r], tl.starts[r + 1])
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
        tasks = sum(
            1
            for p in merged.values()
            for q in p.get("requests", [])
            if q["kind"] == "poll" and q["status"] == 200
        )
        result.tasks_per_party = tasks / max(len(merged), 1)
        if evaluation == "piggyback" and result.tasks_per_party > rounds + 1.5:
            result.note = (
                f"the service did not piggyback: {result.tasks_per_party:.1f} tasks per party "
                f"over {rounds} rounds (a separate evaluation broadcast: {2 * rounds}; "
                f"piggybacked: {rounds + 1})"
            )
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
        _stop_run(workers, sampler, service)
        result.load_end = os.getloadavg()[0]
    return result


# --- idle parties: many joined, long-polling, no round running ----------------------------------


@dataclass
class IdleResult:
    parties: int
    client_processes: int
    poll_wait_s: float
    window_s: float
    joined: int = 0
    join_seconds: float = math.nan  # first join sent -> every process done joining
    rss_before_join_mb: float = math.nan
    rss_joined_mb: float = math.nan  # when the window starts
    rss_peak_mb: float = math.nan  # over joins and the window
    rss_window_peak_mb: float = math.nan
    service_cpu_percent: float = math.nan  # of one core, over the window
    join_cpu_s: float = math.nan  # the service's CPU while the parties joined
    polls_per_s: float = math.nan  # answered polls per second in the window
    statuses: dict[str, int] = field(default_factory=dict)
    client_cpu_percent: float = math.nan  # all idle client processes, of one core
    client_peak_mb: float = math.nan
    errors: list[str] = field(default_factory=list)
    status: str = ""
    load_start: float = math.nan
    load_end: float = math.nan


def idle_worker(config_path: str) -> None:
    """An idle client process: joins its parties, then holds one long poll per party until
    the stop file appears; writes what it saw to ``config["out"]``."""
    config = json.loads(Path(config_path).read_text())
    try:
        import uvloop  # what the service runs on too (uvicorn[standard])

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        payload = runner.run(_idle_parties(config))
    payload["hwm_mb"] = _proc_status(os.getpid()).get("VmHWM", 0) / MB
    Path(config["out"]).write_text(json.dumps(payload))
    os._exit(0)


async def _idle_parties(config: dict[str, Any]) -> dict[str, Any]:
    import httpx

    wait = float(config["wait"])
    host, port = config["url"].removeprefix("http://").rsplit(":", 1)
    statuses: dict[str, int] = {}
    answered: list[float] = []  # when each poll was answered (time.time())
    errors: list[str] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=config["url"], limits=limits, timeout=wait + 60) as http:
        joins = asyncio.Semaphore(IDLE_JOINS_IN_FLIGHT)

        async def join(name: str) -> dict[str, Any]:
            async with joins:
                response = await http.post(
                    "/v1/join", json={"token": config["token"], "name": name}, timeout=600
                )
                if response.status_code != 200:
                    raise RuntimeError(f"join {response.status_code}: {response.text[:200]}")
                return response.json()

        async def poll(party: dict[str, Any]) -> None:
            request = (
                f"GET /v1/federations/{party['federation_id']}/tasks/next?wait={wait:g} "
                f"HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {party['party_token']}\r\n\r\n"
            ).encode()
            reader = writer = None
            while not stop.is_set():
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, port)
                    writer.write(request)
                    key, keep = await _read_response(reader)
                    if not keep:
                        writer.close()
                        reader = writer = None
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    key = type(exc).__name__
                    if len(errors) < 5:
                        errors.append(f"poll: {key}: {exc}")
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                statuses[key] = statuses.get(key, 0) + 1
                answered.append(time.time())
                if key == "410":
                    return
                if key not in ("200", "204"):
                    await asyncio.sleep(1.0)  # an error: do not spin

        cpu0, t0 = time.process_time(), time.time()
        outcomes = await asyncio.gather(*(join(n) for n in config["names"]), return_exceptions=True)
        parties = [o for o in outcomes if isinstance(o, dict)]
        errors += [f"join: {o}" for o in outcomes if not isinstance(o, dict)][:5]
        Path(config["joined"]).write_text(
            json.dumps({"joined": len(parties), "seconds": time.time() - t0})
        )
        pollers = [asyncio.create_task(poll(p)) for p in parties]
        cpu_polling, t_polling = time.process_time(), time.time()
        while not Path(config["stop"]).exists():
            await asyncio.sleep(0.2)
        polling_cpu, polling_s = time.process_time() - cpu_polling, time.time() - t_polling
        stop.set()
        for task in pollers:
            task.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    return {
        "joined": len(parties),
        "cpu_s": time.process_time() - cpu0,
        "polling_cpu_s": polling_cpu,
        "polling_s": polling_s,
        "statuses": statuses,
        "answered": answered,
        "errors": errors,
    }


async def _read_response(reader: asyncio.StreamReader) -> tuple[str, bool]:
    """One HTTP/1.1 response off ``reader``: its status code, and whether the connection stays
    open (the body, if any, is read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)[1]
    headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    length = int(headers.get("content-length", "0"))
    if length:
        await reader.readexactly(length)
    return status, headers.get("connection", "").lower() != "close"


def run_idle(
    parties: int, window_s: float, client_processes: int, workdir: Path, wait: float
) -> IdleResult:
    """Service RSS and CPU with ``parties`` joined parties long-polling and no round running:
    the federation waits for one more party than ever joins (its quorum is never reached)."""
    import httpx

    result = IdleResult(parties, client_processes, wait, window_s)
    result.load_start = os.getloadavg()[0]
    run_dir = workdir / f"idle{parties}"
    run_dir.mkdir(parents=True)
    service = Service(run_dir / "state", run_dir / "service.log")
    sampler: Sampler | None = None
    workers: list[subprocess.Popen] = []
    stop_file = run_dir / "stop"
    try:
        service.wait_ready()
        sampler = Sampler(service.proc.pid).start()
        fed = _create_federation(
            service.url, make_weights(1000), parties + 1, 1, evaluation_fields("off")
        )
        time.sleep(1.0)
        result.rss_before_join_mb = _proc_status(service.proc.pid)["VmRSS"] / MB
        names = [f"idle-party-{i:05d}" for i in range(parties)]
        per_worker = math.ceil(parties / client_processes)
        outs, joined_files = [], []
        t_join = time.monotonic()
        cpu_join = _proc_cpu(service.proc.pid)
        for w in range(client_processes):
            chunk = names[w * per_worker : (w + 1) * per_worker]
            if not chunk:
                continue
            out, joined = run_dir / f"idle{w}.json", run_dir / f"idle{w}.joined"
            config = run_dir / f"idle{w}.config.json"
            config.write_text(
                json.dumps(
                    {
                        "url": service.url,
                        "token": fed["join_token"],
                        "names": chunk,
                        "wait": wait,
                        "out": str(out),
                        "joined": str(joined),
                        "stop": str(stop_file),
                    }
                )
            )
            workers.append(_worker("--idle-worker", config, run_dir / f"idle{w}.log"))
            outs.append(out)
            joined_files.append(joined)
        deadline = time.monotonic() + 120 + parties * 0.2  # joins cost O(parties) each
        while time.monotonic() < deadline and not all(f.exists() for f in joined_files):
            if all(w.poll() is not None for w in workers):
                break
            time.sleep(0.5)
        result.join_seconds = time.monotonic() - t_join
        result.join_cpu_s = _proc_cpu(service.proc.pid) - cpu_join
        result.joined = sum(json.loads(f.read_text())["joined"] for f in joined_files if f.exists())
        status = httpx.get(f"{service.url}/v1/federations/{fed['aggregator_id']}", timeout=60)
        result.status = status.json().get("status", "?")
        time.sleep(min(5.0, wait))  # every party's first poll is in
        status0 = _proc_status(service.proc.pid)
        result.rss_joined_mb = status0["VmRSS"] / MB
        t0, cpu0 = time.monotonic(), _proc_cpu(service.proc.pid)
        wall0 = time.time()
        window_rss = [status0["VmRSS"]]
        while time.monotonic() - t0 < window_s:
            time.sleep(1.0)
            window_rss.append(_proc_status(service.proc.pid).get("VmRSS", 0))
        elapsed = time.monotonic() - t0
        result.service_cpu_percent = 100 * (_proc_cpu(service.proc.pid) - cpu0) / elapsed
        wall1 = time.time()
        result.rss_window_peak_mb = max(window_rss) / MB
        stop_file.write_text("stop")
        for w in workers:
            try:
                w.wait(wait + 60)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(10)
        answered, client_cores, peak = 0, 0.0, 0.0
        for out in outs:
            if not out.exists():
                result.errors.append(f"{out.name}: no results (the client process failed)")
                continue
            data = json.loads(out.read_text())
            answered += sum(1 for t in data["answered"] if wall0 <= t < wall1)
            client_cores += data["polling_cpu_s"] / max(data["polling_s"], 1e-9)
            peak += data["hwm_mb"]
            for key, n in data["statuses"].items():
                result.statuses[key] = result.statuses.get(key, 0) + n
            result.errors += data["errors"]
        result.polls_per_s = answered / (wall1 - wall0)
        result.client_cpu_percent = 100 * client_cores
        result.client_peak_mb = peak
        result.rss_peak_mb = max(s[1] for s in sampler.samples) / MB
    except Exception as exc:  # recorded; the report says so
        result.status = "failed"
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop_file.write_text("stop")
        _stop_run(workers, sampler, service)
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


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def machine_info() -> dict[str, Any]:
    import fastapi
    import uvicorn

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3,
        "numpy": np.__version__,
        "uvicorn": uvicorn.__version__,
        "fastapi": fastapi.__version__,
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _where_overhead_goes(r: RunResult) -> str:
    """One line on where a round's time goes, for a missed target."""
    train = _mean(r.train_seconds)
    rest = _mean(r.round_seconds) - train
    return (
        f"of the {_mean(r.round_seconds):.2f} s round, the train round (dispatch to fused) took "
        f"{train:.2f} s and evaluation + checkpoint + record {rest:.2f} s; the service used "
        f"{r.service_cpu_per_round_s:.2f} CPU s per round ({r.service_cpu_ms_per_mb:.2f} ms per "
        f"MB moved), the parties' processes {r.client_cpu_s / r.rounds:.2f} CPU s on the same "
        "CPUs"
    )


def verdicts(
    results: list[RunResult], idle: list[IdleResult], flower: list[FlowerResult]
) -> list[str]:
    out = []
    for mode, goal in GOAL_OVERHEAD_S.items():
        at100 = [
            r for r in results if r.parties == 100 and r.evaluation == mode and r.overhead_seconds
        ]
        if not at100:
            continue
        r = at100[0]
        worst = max(r.overhead_seconds)
        line = (
            f"round overhead <= {goal} s at 100 parties x {r.model_mb:.1f} MB, federated "
            f"evaluation {mode}: {_met(worst <= goal)} (mean {_mean(r.overhead_seconds):.2f} s, "
            f"max {worst:.2f} s)"
        )
        if worst > goal:
            line += f"; {_where_overhead_goes(r)}"
        out.append(line)
    if not any(line.startswith("round overhead") for line in out):
        out.append("round overhead at 100 parties: not measured in this run")
    cpu = [r for r in results if not math.isnan(r.service_cpu_ms_per_mb)]
    if cpu:
        worst = max(cpu, key=lambda r: r.service_cpu_ms_per_mb)
        parts = ", ".join(f"{r.parties}/{r.evaluation}: {r.service_cpu_ms_per_mb:.2f}" for r in cpu)
        out.append(
            f"service CPU <= {GOAL_CPU_MS_PER_MB} ms per MB moved: "
            f"{_met(worst.service_cpu_ms_per_mb <= GOAL_CPU_MS_PER_MB)} (ms per MB, parties/"
            f"evaluation: {parts})"
        )
    mem = [r for r in results if not math.isnan(r.peak_above_baseline_mb)]
    if mem:
        bad = [
            r
            for r in mem
            if r.peak_above_baseline_mb > GOAL_MEMORY_MODELS * r.model_mb + GOAL_MEMORY_CONSTANT_MB
        ]
        worst = max(mem, key=lambda r: r.peak_above_baseline_mb - 2 * r.model_mb)
        text = (
            f"peak service memory <= {GOAL_MEMORY_MODELS:.0f} x model + "
            f"{GOAL_MEMORY_CONSTANT_MB:.0f} MB: {_met(not bad)} (worst: {worst.parties} parties "
            f"x {worst.model_mb:.1f} MB, evaluation {worst.evaluation}: "
            f"{worst.peak_above_baseline_mb:.1f} MB = {worst.peak_model_multiple:.1f} x model)"
        )
        text += "; " + _growth(mem)
        out.append(text)
    large = [r for r in results if r.parties >= 1000 and r.round_seconds]
    for r in large:
        worst = max(r.round_seconds)
        line = (
            f"{r.parties} parties x {r.model_mb:.1f} MB <= {GOAL_LARGE_ROUND_S:.0f} s per round "
            f"(evaluation {r.evaluation}): {_met(worst <= GOAL_LARGE_ROUND_S)} (mean "
            f"{_mean(r.round_seconds):.2f} s, max {worst:.2f} s; the parties' own processes "
            f"used {r.client_cpu_s / r.rounds:.1f} CPU s per round on the same CPUs)"
        )
        if worst > GOAL_LARGE_ROUND_S:
            line += f"; {_where_overhead_goes(r)}"
        out.append(line)
    if not large:
        out.append("1000 parties: not measured in this run")
    for i in idle:
        if math.isnan(i.service_cpu_percent):
            out.append(f"{i.parties} idle parties: failed ({'; '.join(i.errors[:2])})")
            continue
        rss = i.rss_window_peak_mb
        out.append(
            f"{i.parties} idle long-polling parties <= {GOAL_IDLE_RSS_MB:.0f} MB RSS and <= "
            f"{GOAL_IDLE_CPU_PERCENT:.0f}% of one core: "
            f"{_met(rss <= GOAL_IDLE_RSS_MB and i.service_cpu_percent <= GOAL_IDLE_CPU_PERCENT)}"
            f" ({i.joined} joined; service RSS {rss:.0f} MB, CPU {i.service_cpu_percent:.1f}% "
            f"of one core at {i.polls_per_s:.0f} answered polls/s, wait={i.poll_wait_s:.0f} s)"
        )
    if not idle:
        out.append("idle parties: not measured in this run")
    for f in flower:
        twin = _twin(results, f)
        if twin is None or not f.round_seconds:
            continue
        out.append(
            f"Flower deployment beside fedfuse, {f.nodes} nodes x {f.model_mb:.1f} MB, "
            f"evaluation {'on' if f.federated_eval else 'off'}: round wall "
            f"{_mean(f.round_seconds):.2f} s vs fedfuse {_mean(twin.round_seconds):.2f} s "
            f"({_mean(f.round_seconds) / _mean(twin.round_seconds):.1f}x); service CPU per round "
            f"{f.superlink_cpu_per_round_s + f.serverapp_cpu_per_round_s:.2f} s (SuperLink + "
            f"ServerApp) vs {twin.service_cpu_per_round_s:.2f} s"
        )
    return out


def _growth(mem: list[RunResult]) -> str:
    """How the peak grows with the number of parties, for the model size and evaluation mode
    measured with the most party counts."""
    groups: dict[tuple[int, str], list[RunResult]] = {}
    for r in mem:
        groups.setdefault((r.num_params, r.evaluation), []).append(r)
    best = max(groups.values(), key=lambda g: len({r.parties for r in g}))
    if len({r.parties for r in best}) < 2:
        return "growth per party: one party count only"
    x = np.array([r.parties for r in best], float)
    y = np.array([r.peak_above_baseline_mb for r in best])
    slope, intercept = np.polyfit(x, y, 1)
    return (
        f"growth with the number of parties ({best[0].model_mb:.1f} MB model, evaluation "
        f"{best[0].evaluation}, {int(x.min())}-{int(x.max())} parties): {slope:.3f} MB per party "
        f"({slope / best[0].model_mb:.3f} x model per party; {intercept:.0f} MB at 0 parties)"
    )


def _twin(results: list[RunResult], f: FlowerResult) -> RunResult | None:
    """fedfuse's run of the same workload as Flower's ``f`` (parties, model, evaluation)."""
    mode = "on" if f.federated_eval else "off"
    for r in results:
        if (r.parties, r.num_params, r.evaluation) == (f.nodes, f.num_params, mode):
            return r
    return None


def write_report(
    results: list[RunResult],
    idle: list[IdleResult],
    flower: list[FlowerResult],
    skipped: list[str],
    info: dict[str, Any],
    out_dir: Path,
    started: str,
) -> str:
    goals = verdicts(results, idle, flower)
    busy = (
        info["load_start"] > info["usable_cpus"] / 2 or info["load_end"] > info["usable_cpus"] / 2
    )
    sizes = " or ".join(
        sorted({f"{r.num_params:,} parameters ({r.model_mb:.2f} MB)" for r in results})
    )
    lines = [
        "# fedfuse service at scale: round overhead, CPU, memory, idle parties, and Flower's "
        "deployment runtime beside it",
        "",
        f"Measured {started} on {info['platform']} ({info['machine']}), Python {info['python']}, "
        f"{info['usable_cpus']} usable of {info['cpu_count']} CPUs, "
        f"{info['memory_gib']:.0f} GiB, uvicorn {info['uvicorn']}, load average "
        f"{info['load_start']:.2f} at start, {info['load_end']:.2f} at end. The service, the "
        "party processes and this script share these CPUs (and other people's jobs may too).",
        "",
        "## fedfuse",
        "",
        f"FedAvg over 127.0.0.1; the model (float32 arrays, sent as `initial_weights`) has "
        f"{sizes or '-'}; quorum = all parties, {results[0].rounds if results else '-'} rounds; "
        "federated evaluation off (training only), on (a second broadcast after each round, the "
        "service's default) or piggyback (carried with the next round's training task). Parties "
        "are `ClientParty` threads around the shared `workload.fit` (params + a constant) and "
        f"`workload.evaluate` (constants), {PARTIES_PER_CLIENT_PROCESS} per client process (at "
        f"most {MAX_CLIENT_PROCESSES} processes). Round wall = between the first party's "
        "receipt of consecutive rounds' training tasks; overhead = round wall minus the "
        "slowest party's `fit` and `evaluate` (CPU seconds; microseconds here); train overhead "
        "= the round record's `seconds` (dispatch to fused) minus the slowest `fit`. Seconds as "
        "mean / median / max over rounds. Service CPU per MB = its CPU seconds per round / (MB "
        "up + MB down per round). Peak memory: the service's peak RSS (50 ms samples and "
        "VmHWM) above its RSS once the federation was created.",
        "",
        "| parties | model MB | evaluation | round overhead s | train overhead s | round wall s "
        "| train round s | service CPU s/round | service CPU ms/MB | peak memory above "
        "baseline MB | x model | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.parties} | {r.model_mb:.2f} | {r.evaluation} | {_fmt3(r.overhead_seconds)} | "
            f"{_fmt3(r.train_overhead_seconds)} | {_fmt3(r.round_seconds)} | "
            f"{_fmt3(r.train_seconds)} | {r.service_cpu_per_round_s:.2f} | "
            f"{r.service_cpu_ms_per_mb:.2f} | {r.peak_above_baseline_mb:.1f} | "
            f"{r.peak_model_multiple:.1f} | {r.status} |"
        )
    lines += [
        "",
        "Details: client processes; seconds from starting the parties until training began "
        "(start-up and imports included) and per `POST /v1/join` (mean / max); the slowest "
        "`fit` per round in CPU and wall seconds (the wall time is inflated by contention in "
        "the client processes); the parties' own CPU per round (their processes, reported "
        "apart from the service's) and their processes' peak RSS summed; MB per round; the "
        "service's peak above baseline while updates come in / while only the evaluation goes "
        "out.",
        "",
        "| parties | evaluation | tasks per party | client procs | join s | join request s | "
        "slowest fit CPU / "
        "wall s | parties' CPU s/round | parties' peak RSS MB | MB up / down per round | peak "
        "train / eval phase MB | baseline RSS MB | load start / end |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        up = _mean(r.bytes_up_per_round) / MB
        down = _mean(r.bytes_down_per_round) / MB
        fit = max(r.max_fit_seconds) if r.max_fit_seconds else math.nan
        fit_wall = max(r.max_fit_wall_seconds) if r.max_fit_wall_seconds else math.nan
        join = r.join_request_seconds or {"mean": math.nan, "max": math.nan}
        lines.append(
            f"| {r.parties} | {r.evaluation} | {r.tasks_per_party:.1f} | {r.client_processes} | "
            f"{r.join_seconds:.1f} | "
            f"{join['mean']:.2f} / {join['max']:.2f} | {fit:.4f} / {fit_wall:.3f} | "
            f"{r.client_cpu_s / r.rounds:.2f} | {r.client_peak_mb:.0f} | {up:.0f} / {down:.0f} | "
            f"{r.peak_train_phase_mb:.1f} / {r.peak_evaluate_phase_mb:.1f} | "
            f"{r.baseline_rss_mb:.0f} | {r.load_start:.2f} / {r.load_end:.2f} |"
        )
    if idle:
        lines += [
            "",
            "## fedfuse: idle parties",
            "",
            "Parties joined (join token, then each its own party token) to a federation whose "
            "quorum is one more than join, so no round ever starts; each then holds one long "
            "poll `GET /v1/federations/{id}/tasks/next?wait=W` at a time (plain HTTP/1.1 on "
            "asyncio streams, keep-alive, in a few client processes; joins with httpx), "
            "answered 204 after min(W, the service's `max_poll_wait`, 30 s). "
            "The window starts once every party has joined and polled; service CPU is its "
            "CPU seconds over the window, RSS sampled each second (and every 50 ms throughout).",
            "",
            "| parties joined | client procs | poll wait s | joining s (service CPU s) | window s "
            "| answered polls/s | statuses | service RSS MB before join / joined / window peak "
            "| service CPU % of one core | clients' CPU % of one core | clients' peak RSS MB | "
            "status |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i in idle:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(i.statuses.items()))
            lines.append(
                f"| {i.joined} of {i.parties} | {i.client_processes} | {i.poll_wait_s:.0f} | "
                f"{i.join_seconds:.0f} ({i.join_cpu_s:.0f}) | {i.window_s:.0f} | "
                f"{i.polls_per_s:.0f} | {statuses} | {i.rss_before_join_mb:.0f} / "
                f"{i.rss_joined_mb:.0f} / {i.rss_window_peak_mb:.0f} | "
                f"{i.service_cpu_percent:.1f} | {i.client_cpu_percent:.1f} | "
                f"{i.client_peak_mb:.0f} | {i.status} |"
            )
    if flower:
        lines += [
            "",
            "## Flower's deployment runtime, same workload",
            "",
            "flwr's `flower-superlink` + N `flower-supernode` processes (each with its own "
            "`flower-superexec`, which starts one `flwr-clientapp` process per message) and "
            "`flwr run` of `benchmarks/peers/flower_deployment` (ServerApp: FedAvg, every node "
            "every round; ClientApp: the same `workload.fit` / `workload.evaluate` as fedfuse's "
            "parties), all on 127.0.0.1, `--insecure`, no runtime dependency installation. Round "
            "wall = training messages built to updates fused (with evaluation: to evaluation "
            "replies aggregated), from the ServerApp's strategy callbacks; overhead = round wall "
            "minus the slowest node's fit and evaluation (CPU s). First / last fit after = when "
            "the first / last node's fit began after the round started (an idle SuperNode polls "
            "every 3 s, then starts a ClientApp process). CPU: SuperLink process, ServerApp "
            "process, and every node-side process together (sampled, children counted once "
            "reaped). Memory: SuperLink RSS with the nodes connected / its peak; ServerApp "
            "peak; one idle SuperNode (+ its superexec); all node-side processes at their peak.",
            "",
            "| nodes | model MB | evaluation | round overhead s | round wall s | train s | "
            "first / last fit after s | SuperLink CPU s/round | ServerApp CPU s/round | "
            "Flower service CPU ms/MB | node-side CPU s/round | SuperLink baseline / peak MB | "
            "ServerApp peak MB | idle SuperNode MB | node-side peak MB | nodes started in s | "
            "status |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
            "| --- | --- | --- |",
        ]
        for f in flower:
            moved = (_mean(f.bytes_up_per_round) + _mean(f.bytes_down_per_round)) / MB
            service_cpu = f.superlink_cpu_per_round_s + f.serverapp_cpu_per_round_s
            per_mb = 1000 * service_cpu / moved if moved else math.nan
            nodes = f"{f.nodes}" if f.nodes == f.nodes_asked else f"{f.nodes} of {f.nodes_asked}"
            lines.append(
                f"| {nodes} | {f.model_mb:.2f} | {'on' if f.federated_eval else 'off'} | "
                f"{_fmt3(f.overhead_seconds)} | {_fmt3(f.round_seconds)} | "
                f"{_fmt3(f.train_seconds)} | {_mean(f.first_fit_after_s):.2f} / "
                f"{_mean(f.last_fit_after_s):.2f} | {f.superlink_cpu_per_round_s:.2f} | "
                f"{f.serverapp_cpu_per_round_s:.2f} | {per_mb:.2f} | "
                f"{f.node_cpu_per_round_s:.1f} | {f.superlink_baseline_mb:.0f} / "
                f"{f.superlink_peak_mb:.0f} | {f.serverapp_peak_mb:.0f} | "
                f"{f.node_idle_mb:.0f} | {f.nodes_peak_mb:.0f} | {f.start_nodes_s:.0f} | "
                f"{f.status} |"
            )
        lines += ["", "Beside fedfuse (same parties, model and evaluation):", ""]
        lines += [
            "| parties | evaluation | round wall s fedfuse / Flower | overhead s fedfuse / "
            "Flower | service CPU s/round fedfuse / Flower (SuperLink + ServerApp) | service "
            "memory MB: fedfuse's peak above baseline / Flower's SuperLink peak above baseline "
            "+ the ServerApp process's whole peak RSS (a process per run) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for f in flower:
            twin = _twin(results, f)
            if twin is None:
                continue
            flower_mem = (f.superlink_peak_mb - f.superlink_baseline_mb) + f.serverapp_peak_mb
            lines.append(
                f"| {f.nodes} | {twin.evaluation} | {_mean(twin.round_seconds):.2f} / "
                f"{_mean(f.round_seconds):.2f} | {_mean(twin.overhead_seconds):.2f} / "
                f"{_mean(f.overhead_seconds):.2f} | {twin.service_cpu_per_round_s:.2f} / "
                f"{f.superlink_cpu_per_round_s + f.serverapp_cpu_per_round_s:.2f} | "
                f"{twin.peak_above_baseline_mb:.0f} / {flower_mem:.0f} |"
            )
    lines += ["", "## Goals (issue 13; reported, not enforced)", "", *[f"- {g}" for g in goals]]
    notes = list(skipped)
    notes += [
        f"{r.parties} parties, evaluation {r.evaluation}: {r.note}" for r in results if r.note
    ]
    notes += [f"Flower, {f.nodes_asked} nodes: {f.note}" for f in flower if f.note]
    notes += [
        f"{r.parties} parties, evaluation {r.evaluation}: {r.slow_status_polls} status requests "
        "got no answer within 30 s (the service was saturated)"
        for r in results
        if r.slow_status_polls
    ]
    if notes:
        lines += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    errors = [
        f"{r.parties} parties, evaluation {r.evaluation}: {e}"
        for r in results
        for e in ([r.error] if r.error else []) + r.party_errors
    ]
    errors += [f"{i.parties} idle parties: {e}" for i in idle for e in i.errors]
    errors += [f"Flower, {f.nodes_asked} nodes: {f.error}" for f in flower if f.error]
    if errors:
        lines += ["", "Errors:", "", *[f"- {e}" for e in errors]]
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
        "notes": notes,
        "settings": {
            "sample_every_s": SAMPLE_EVERY,
            "poll_wait_s": POLL_WAIT,
            "parties_per_client_process": PARTIES_PER_CLIENT_PROCESS,
            "delta": workload.DELTA,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "results": [asdict(r) for r in results],
        "idle": [asdict(i) for i in idle],
        "flower": [asdict(f) for f in flower],
    }
    (out_dir / "service.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return text


# --- the command line ----------------------------------------------------------------------------


def _pairs(text: str) -> list[tuple[int, int]]:
    """``PARTIESxPARAMS,...`` as ``(parties, parameters)`` pairs."""
    return [(int(p), int(q)) for p, q in (c.split("x") for c in text.split(",") if c)]


def _plan(args: argparse.Namespace) -> list[tuple[int, int, str]]:
    """``(parties, parameters, evaluation)`` of each fedfuse round-trip run."""
    evals = args.evals.split(",")
    if args.configs:
        return [(n, p, e) for n, p in _pairs(args.configs) for e in evals]
    counts = [int(c) for c in args.parties.split(",")] if args.parties else [10, 50, 100]
    plan = [(n, args.params, e) for n in counts for e in evals]
    if not args.parties:
        plan.append((10, 4 * args.params, "on"))  # does the peak grow with the model?
    plan += [(n, p, e) for n, p in _pairs(args.large) for e in args.large_evals.split(",")]
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The fedfuse service at scale (round overhead, CPU per MB, memory, 1000 "
        "parties, 10,000 idle parties), and the same workload through Flower's deployment "
        "runtime.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 5 parties x 100k parameters, 2 rounds, evaluation off/on(/piggyback), "
        "200 idle parties polling with wait=5 s for 10 s, no Flower unless --flower-nodes; "
        "writes results/quick/",
    )
    parser.add_argument("--parties", default=None, help="comma-separated party counts")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (--quick: 2)")
    parser.add_argument("--params", type=int, default=1_000_000, help="model size (parameters)")
    parser.add_argument(
        "--configs",
        default=None,
        help="fedfuse runs as PARTIESxPARAMS,... (replaces the default plan: 10, 50, 100 "
        "parties with --params, 10 parties with 4 x --params, and --large)",
    )
    parser.add_argument(
        "--evals",
        default=None,
        help="federated evaluation modes to run each size with: off, on, piggyback "
        "(default: all three; piggyback is skipped, with a note, if this fedfuse lacks it)",
    )
    parser.add_argument("--large", default="1000x1000000", help="large runs, PARTIESxPARAMS")
    parser.add_argument("--large-evals", default="on", help="evaluation modes of --large")
    parser.add_argument(
        "--idle", type=int, default=None, help="idle long-polling parties (default 10000; 0: none)"
    )
    parser.add_argument("--idle-seconds", type=float, default=None, help="default 60")
    parser.add_argument("--idle-procs", type=int, default=4, help="idle client processes")
    parser.add_argument("--idle-wait", type=float, default=IDLE_POLL_WAIT, help="poll wait s")
    parser.add_argument(
        "--flower-nodes",
        default=None,
        help="Flower deployment runs with these SuperNode counts (default 10,50,100; --quick: "
        "none; 0: none)",
    )
    parser.add_argument("--flower-evals", default="on", help="off, on: Flower's evaluation")
    parser.add_argument("--flower-rounds", type=int, default=None, help="default: --rounds")
    parser.add_argument(
        "--flower-params", type=int, default=None, help="default: the first fedfuse run's"
    )
    parser.add_argument(
        "--flower-venv",
        type=Path,
        default=ROOT / ".venv-bench",
        help="the venv with flwr (flower-superlink, flower-supernode, flwr in its bin/)",
    )
    parser.add_argument(
        "--flower-reserve-mb",
        type=float,
        default=2000.0,
        help="memory to keep available while starting SuperNodes (and their ClientApps)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes (0: one per 25 parties)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--party-worker", help=argparse.SUPPRESS)
    parser.add_argument("--idle-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.party_worker:
        party_worker(args.party_worker)
        return 0
    if args.idle_worker:
        idle_worker(args.idle_worker)
        return 0
    if args.quick:
        args.parties = args.parties or "5"
        args.params = 100_000 if args.params == 1_000_000 else args.params
        args.large = ""
        args.idle = 200 if args.idle is None else args.idle
        args.idle_seconds = args.idle_seconds or 10.0
        args.idle_wait = 5.0 if args.idle_wait == IDLE_POLL_WAIT else args.idle_wait
        args.flower_nodes = args.flower_nodes or "0"
    args.evals = args.evals or ",".join(EVAL_MODES)
    args.idle = 10_000 if args.idle is None else args.idle
    args.idle_seconds = args.idle_seconds or 60.0
    args.flower_nodes = args.flower_nodes or "10,50,100"
    rounds = args.rounds or (2 if args.quick else 5)
    out_dir = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    # SIGTERM as Ctrl-C: the finally blocks stop the service, the parties and Flower's processes
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 polls: 10,000 sockets
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    info = machine_info() | {"load_start": os.getloadavg()[0]}
    print(
        f"{info['platform']}, {info['usable_cpus']} usable of {info['cpu_count']} CPUs "
        f"(shared with other people's jobs), load average {info['load_start']:.2f} at start",
        flush=True,
    )
    skipped: list[str] = []
    plan = []
    for n, params, mode in _plan(args):
        problem = evaluation_problem(mode)
        if problem is None:
            plan.append((n, params, mode))
        elif f"evaluation {mode}" not in " ".join(skipped):
            skipped.append(f"evaluation {mode} skipped: this fedfuse's spec refuses it ({problem})")
    for note in skipped:
        print(note, flush=True)
    results: list[RunResult] = []
    idle: list[IdleResult] = []
    flower: list[FlowerResult] = []
    with tempfile.TemporaryDirectory(prefix="fedfuse-bench-service-") as tmp:
        for n, params, mode in plan:
            procs = args.client_procs or min(
                MAX_CLIENT_PROCESSES, math.ceil(n / PARTIES_PER_CLIENT_PROCESS)
            )
            t0 = time.monotonic()
            try:
                r = run_config(n, rounds, params, procs, Path(tmp), mode)
            except Exception as exc:  # one configuration that cannot finish ends no other
                skipped.append(
                    f"{n} x {params} parameters, evaluation {mode}: did not finish "
                    f"({type(exc).__name__}: {str(exc)[:200]})"
                )
                print(skipped[-1], flush=True)
                continue
            results.append(r)
            print(
                f"{n:5d} parties, {r.model_mb:5.1f} MB model, evaluation {mode:9s}: {r.status}, "
                f"round overhead {_fmt3(r.overhead_seconds)} s, service "
                f"{r.service_cpu_ms_per_mb:.2f} ms/MB, peak +{r.peak_above_baseline_mb:.1f} MB "
                f"= {r.peak_model_multiple:.1f} x model [{time.monotonic() - t0:.0f} s]",
                flush=True,
            )
            if r.error or r.party_errors:
                print(f"      errors: {r.error} {r.party_errors[:3]}", flush=True)
        if args.idle:
            t0 = time.monotonic()
            i = run_idle(args.idle, args.idle_seconds, args.idle_procs, Path(tmp), args.idle_wait)
            idle.append(i)
            print(
                f"{i.joined} of {i.parties} idle parties (joined in {i.join_seconds:.0f} s): "
                f"service RSS {i.rss_window_peak_mb:.0f} MB, CPU {i.service_cpu_percent:.1f}% of "
                f"one core, {i.polls_per_s:.0f} polls/s [{time.monotonic() - t0:.0f} s] "
                f"{i.errors[:2]}",
                flush=True,
            )
        flower_bin = args.flower_venv.resolve() / "bin"
        nodes = [int(c) for c in args.flower_nodes.split(",") if int(c) > 0]
        if nodes and not (flower_bin / "flower-superlink").exists():
            skipped.append(f"Flower skipped: no flower-superlink in {flower_bin}")
            nodes = []
        flower_params = args.flower_params or (plan[0][1] if plan else args.params)
        for n in nodes:
            for mode in args.flower_evals.split(","):
                t0 = time.monotonic()
                f = run_flower(
                    n,
                    args.flower_rounds or rounds,
                    flower_params,
                    mode == "on",
                    flower_bin,
                    Path(tmp),
                    args.flower_reserve_mb,
                )
                flower.append(f)
                print(
                    f"Flower {f.nodes} of {n} nodes, evaluation {mode}: {f.status}, round wall "
                    f"{_fmt3(f.round_seconds)} s, overhead {_fmt3(f.overhead_seconds)} s "
                    f"[{time.monotonic() - t0:.0f} s] {f.note} {f.error or ''}",
                    flush=True,
                )
    info["load_end"] = os.getloadavg()[0]
    print()
    print(write_report(results, idle, flower, skipped, info, out_dir, started))
    print(f"results written to {out_dir / 'service.md'} and service.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
