"""The service benchmark's workload through Flower's deployment runtime, measured.

What runs (all on 127.0.0.1, ``--insecure``, offline)
    ``flower-superlink`` (Fleet, Control and Runtime HTTP APIs on one port; it starts its own
    ``flower-superexec``, which starts the ``ServerApp`` process of each run), N
    ``flower-supernode`` processes (each starts its own ``flower-superexec``, which starts one
    ``flwr-clientapp`` process per message: a training and an evaluation message per round), and
    ``flwr run`` to submit this folder's app (``pyproject.toml``, ``fedfuse_bench_flower``).
    Runtime dependency installation is off (nothing downloads).

    The ServerApp runs FedAvg over all N nodes for R rounds on a float32 model of the chosen size;
    the ClientApp calls ``fedfuse_bench_flower.workload``'s ``fit`` / ``evaluate``, the same
    functions fedfuse's parties call in ``benchmarks/bench_service.py``. The ServerApp writes
    per-round timestamps, the slowest node's fit and evaluation (CPU seconds), and bytes, to a
    JSON file this launcher reads.

What is measured
    * round wall s: from the training messages built to the updates fused (and, with federated
      evaluation, to the evaluation replies aggregated); overhead = round wall - slowest fit -
      slowest evaluation (CPU seconds of the ClientApp's work);
    * where the time goes: when the first and the last node's fit started after the round
      started (the SuperNodes poll the SuperLink every 3 s when idle, then start a ClientApp
      process per message);
    * CPU (``/proc/<pid>/stat``, children included once they are reaped): the SuperLink process,
      the ServerApp (its own ``process_time``), and all node-side processes together;
    * memory: the SuperLink's RSS once the nodes are connected (baseline) and its peak (VmHWM,
      reset after the baseline, and 0.5 s samples); the ServerApp's peak; each SuperNode's idle
      RSS (supernode + its superexec) and the peak of all node-side processes together.

Every process started here carries an environment tag; on exit (normal, exception, Ctrl-C or
SIGTERM) every process with the tag is sent SIGTERM, then SIGKILL, by its PID. SuperNodes are
started in batches while the machine's available memory stays above a reserve; if not all fit,
the run uses those that started and says so.

Standalone::

    .venv/bin/python benchmarks/peers/flower_deployment/launch.py --nodes 5 --params 100000 \
        --rounds 2 --flower-venv .venv-bench
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

APP_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
TAG_VAR = "FEDFUSE_BENCH_TAG"
MB = 1024 * 1024
SAMPLE_EVERY = 0.5  # seconds between samples of the SuperLink and ServerApp
NODE_SAMPLE_EVERY = 4  # ... and of the node-side processes, every this many samples
NODE_BATCH = 5  # SuperNodes started together before memory is checked again
IDLE_NODE_MB_GUESS = 250.0  # per SuperNode (+ its superexec) until one is measured
LOW_MEMORY_MB = 500.0  # below this much available memory a run is stopped (not the machine)
CLIENTAPP_MB = 160.0  # a ClientApp process besides its copies of the model (measured ~150)
_CLK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class FlowerResult:
    """One deployment run; seconds and MB unless named otherwise; lists are per round."""

    nodes_asked: int
    rounds: int
    num_params: int
    federated_eval: bool
    nodes: int = 0
    model_mb: float = math.nan
    status: str = "not run"
    note: str = ""
    error: str | None = None
    start_nodes_s: float = math.nan  # first SuperNode started -> all activated at the SuperLink
    round_seconds: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)  # start -> updates fused
    overhead_seconds: list[float] = field(default_factory=list)
    max_fit_seconds: list[float] = field(default_factory=list)
    max_fit_wall_seconds: list[float] = field(default_factory=list)
    max_evaluate_seconds: list[float] = field(default_factory=list)
    first_fit_after_s: list[float] = field(default_factory=list)
    last_fit_after_s: list[float] = field(default_factory=list)
    bytes_up_per_round: list[float] = field(default_factory=list)
    bytes_down_per_round: list[float] = field(default_factory=list)
    superlink_cpu_per_round_s: float = math.nan
    serverapp_cpu_per_round_s: float = math.nan
    node_cpu_per_round_s: float = math.nan  # all node-side processes together
    superlink_baseline_mb: float = math.nan
    superlink_peak_mb: float = math.nan
    serverapp_peak_mb: float = math.nan
    node_idle_mb: float = math.nan  # one SuperNode + its superexec, before the run
    nodes_peak_mb: float = math.nan  # all node-side processes together, during the run
    mem_available_start_mb: float = math.nan
    load_start: float = math.nan
    load_end: float = math.nan


# --- the processes -------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float, float, int] | None:
    """``(ppid, own CPU s, own + reaped children's CPU s, RSS bytes)`` of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / _CLK
    children = (int(fields[13]) + int(fields[14])) / _CLK
    return int(fields[1]), own, own + children, int(fields[21]) * _PAGE


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _kind(pid: int) -> str:
    """The Flower program ``pid`` runs (``flower-supernode``, ``flwr-clientapp``...)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    for arg in argv[:3]:
        name = os.path.basename(arg.decode(errors="replace"))
        if name.startswith(("flower-", "flwr")):
            return name
    return os.path.basename(argv[0].decode(errors="replace"))


class Tagged:
    """The processes this run started, found by the environment tag they all inherit."""

    def __init__(self) -> None:
        self.tag = f"fedfuse-bench-{uuid.uuid4().hex}"
        self._marker = f"{TAG_VAR}={self.tag}".encode()
        self._known: dict[int, bool] = {}

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**os.environ, **extra, TAG_VAR: self.tag}

    def pids(self) -> list[int]:
        alive = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        present = set(alive)
        self._known = {p: t for p, t in self._known.items() if p in present}
        out = []
        for pid in alive:
            tagged = self._known.get(pid)
            if tagged is None:
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        tagged = self._marker in f.read().split(b"\0")
                except OSError:
                    tagged = False
                self._known[pid] = tagged
            if tagged:
                out.append(pid)
        return out

    def stop_all(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL, every tagged process by its PID; how many there were."""
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                pids = [p for p in pids if _stat(p) is not None and not _zombie(p)]
                if not pids:
                    return 0
                time.sleep(0.2)
        return len(pids)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class Sampler:
    """CPU and RSS of the SuperLink, the ServerApp side and the node side, sampled."""

    def __init__(self, tagged: Tagged, superlink: int) -> None:
        self.tagged, self.superlink = tagged, superlink
        self.link_rss_max = 0
        self.serverapp_rss_max = 0
        self.nodes_rss_max = 0
        self.samples: list[tuple[float, float, float]] = []  # t, superlink CPU, nodes CPU
        self._nodes_cpu = 0.0
        self.low_memory = threading.Event()  # the machine nearly ran out: the run is stopped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="flower-sampler")

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(SAMPLE_EVERY):
            stats = {p: s for p in self.tagged.pids() if (s := _stat(p)) is not None}
            link = stats.get(self.superlink)
            if link is None:
                continue
            serverapp_side = {p for p, s in stats.items() if s[0] == self.superlink}
            serverapp_side |= {p for p, s in stats.items() if s[0] in serverapp_side}
            self.link_rss_max = max(self.link_rss_max, link[3])
            for pid in serverapp_side:
                if _kind(pid) == "flwr-serverapp":
                    self.serverapp_rss_max = max(self.serverapp_rss_max, stats[pid][3])
            if tick % NODE_SAMPLE_EVERY == 0:
                nodes = [
                    s for p, s in stats.items() if p != self.superlink and p not in serverapp_side
                ]
                self.nodes_rss_max = max(self.nodes_rss_max, sum(s[3] for s in nodes))
                self._nodes_cpu = sum(s[2] for s in nodes)
                if _mem_available_mb() < LOW_MEMORY_MB:
                    self.low_memory.set()
            self.samples.append((time.time(), link[1], self._nodes_cpu))
            tick += 1

    def at(self, when: float) -> tuple[float, float]:
        """(SuperLink CPU, node-side CPU) at the last sample at or before ``when``."""
        best = self.samples[0][1:] if self.samples else (math.nan, math.nan)
        for t, link, nodes in self.samples:
            if t > when:
                break
            best = (link, nodes)
        return best


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return math.nan


def _wait_for(predicate: Any, timeout: float, what: str, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise TimeoutError(f"{what} (waited {timeout:.0f} s)")


class LogWatch:
    """Counts lines of a growing log that contain some text, reading only what is new."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.counts: dict[str, int] = {}

    def count(self, text: str) -> int:
        self.counts.setdefault(text, 0)
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = self._partial + f.read()
                self._offset = f.tell()
        except OSError:
            return self.counts[text]
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            for key in self.counts:
                if key.encode() in line:
                    self.counts[key] += 1
        return self.counts[text]


# --- one run -------------------------------------------------------------------------------------


def run_flower(
    nodes: int,
    rounds: int,
    num_params: int,
    federated_eval: bool,
    flower_bin: Path,
    workdir: Path,
    reserve_mb: float = 2000.0,
) -> FlowerResult:
    """Start a SuperLink and up to ``nodes`` SuperNodes, run the app, measure, stop them all."""
    result = FlowerResult(nodes, rounds, num_params, federated_eval)
    result.load_start = os.getloadavg()[0]
    result.mem_available_start_mb = _mem_available_mb()
    run_dir = workdir / f"flower-nodes{nodes}-params{num_params}-eval{int(federated_eval)}"
    home = run_dir / "flwr-home"
    home.mkdir(parents=True)
    port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
        f'address = "{HOST}:{port}"\ninsecure = true\n'
    )
    tagged = Tagged()
    env = tagged.env(
        {
            "PATH": f"{flower_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
    )
    logs: list[Any] = []
    children: list[subprocess.Popen] = []

    def start(argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(run_dir / log_name, "ab")  # noqa: SIM115 - closed in the finally below
        logs.append(log)
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
        children.append(child)
        return child

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_exit)
    sampler: Sampler | None = None
    link_log = LogWatch(run_dir / "superlink.log")
    for text in ("Uvicorn running", "Activated node_id", "Finished task"):
        link_log.count(text)
    try:
        link = start(
            [str(flower_bin / "flower-superlink"), "--insecure", "--host", HOST,
             "--port", str(port), "--disable-runtime-dependency-installation"],
            "superlink.log",
        )  # fmt: skip
        _wait_for(lambda: link_log.count("Uvicorn running") > 0, 120, "the SuperLink start")
        t_nodes = time.monotonic()
        started = 0
        idle_mb = IDLE_NODE_MB_GUESS
        model_mb = num_params * 4 / MB
        while started < nodes:
            batch = min(NODE_BATCH, nodes - started)
            need = reserve_mb + batch * (idle_mb + CLIENTAPP_MB + 3 * model_mb)
            need += started * (CLIENTAPP_MB + 3 * model_mb)
            if _mem_available_mb() < need:
                result.note = (
                    f"only {started} of {nodes} SuperNodes fit: {_mem_available_mb():.0f} MB "
                    f"available, {need:.0f} MB needed for {batch} more and every node's "
                    f"ClientApp ({idle_mb:.0f} MB per idle SuperNode, {reserve_mb:.0f} MB kept)"
                )
                break
            for i in range(started, started + batch):
                start(
                    [str(flower_bin / "flower-supernode"), "--insecure",
                     "--superlink", f"{HOST}:{port}", "--port", str(_free_port()),
                     "--node-config", f"partition-id={i} num-partitions={nodes}"],
                    f"supernode{i}.log",
                )  # fmt: skip
            started += batch
            _wait_for(
                lambda n=started: link_log.count("Activated node_id") >= n,
                60 + 10 * batch,
                f"{started} SuperNodes to connect",
            )
            per_node = _node_rss(tagged, link.pid) / started
            idle_mb = max(per_node / MB, 1.0)
        result.nodes = started
        result.start_nodes_s = time.monotonic() - t_nodes
        time.sleep(1.0)  # let the superexecs settle before the baseline
        result.node_idle_mb = _node_rss(tagged, link.pid) / max(started, 1) / MB
        baseline = _stat(link.pid)
        result.superlink_baseline_mb = (baseline[3] if baseline else 0) / MB
        with contextlib.suppress(OSError):
            Path(f"/proc/{link.pid}/clear_refs").write_text("5")
        sampler = Sampler(tagged, link.pid).start()
        out_file = run_dir / "timings.json"
        overrides = (
            f"num-params={num_params} rounds={rounds} nodes={started} "
            f"federated-eval={'true' if federated_eval else 'false'} "
            f'round-timeout=3600.0 out-file="{out_file}"'
        )
        submit = subprocess.run(
            [str(flower_bin / "flwr"), "run", str(APP_DIR), "bench", "--run-config", overrides],
            env=env, cwd=run_dir, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if submit.returncode != 0:
            raise RuntimeError(f"flwr run failed: {submit.stdout[-2000:]} {submit.stderr[-2000:]}")
        per_round = 30.0 + 2 * (6.0 + 3.0 * started)  # generous: process start-up per message
        _wait_for(
            lambda: (
                out_file.exists()
                or link_log.count("Finished task") > 0
                or sampler.low_memory.is_set()
            ),
            120 + rounds * per_round,
            "the ServerApp to finish",
            step=1.0,
        )
        if sampler.low_memory.is_set():
            raise MemoryError(f"under {LOW_MEMORY_MB:.0f} MB available: the run was stopped")
        _wait_for(out_file.exists, 10, "the ServerApp's timings file")
        result.serverapp_peak_mb = sampler.serverapp_rss_max / MB
        hwm = _hwm(link.pid)
        sampler.stop()
        _fill(result, json.loads(out_file.read_text()), sampler)
        result.superlink_peak_mb = max(hwm, sampler.link_rss_max) / MB
        result.nodes_peak_mb = sampler.nodes_rss_max / MB
        result.status = "completed" if result.nodes == nodes else "completed (fewer nodes)"
    except Exception as exc:  # recorded; the caller reports it
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if sampler is not None:
            sampler.stop()
        left = tagged.stop_all()
        if left:
            result.error = (result.error or "") + f" ({left} processes would not stop)"
        for child in children:  # reap them (the detached grandchildren init reaps)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(5)
        for log in logs:
            log.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        result.load_end = os.getloadavg()[0]
    return result


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _node_rss(tagged: Tagged, superlink: int) -> int:
    """RSS of every tagged process outside the SuperLink's own tree, in bytes."""
    stats = {p: s for p in tagged.pids() if (s := _stat(p)) is not None}
    link_side = {superlink} | {p for p, s in stats.items() if s[0] == superlink}
    link_side |= {p for p, s in stats.items() if s[0] in link_side}
    return sum(s[3] for p, s in stats.items() if p not in link_side)


def _fill(result: FlowerResult, timings: dict[str, Any], sampler: Sampler) -> None:
    rounds = [timings["rounds"][str(r)] for r in range(1, result.rounds + 1)]
    result.model_mb = timings["model_bytes"] / MB
    result.num_params = timings["num_params"]  # the model's own count (as fedfuse's results)
    end_key = "evaluated" if result.federated_eval else "fused"
    result.round_seconds = [r[end_key] - r["start"] for r in rounds]
    result.train_seconds = [r["fused"] - r["start"] for r in rounds]
    result.max_fit_seconds = [r["max_fit_cpu"] for r in rounds]
    result.max_fit_wall_seconds = [r["max_fit_wall"] for r in rounds]
    result.max_evaluate_seconds = [r.get("max_eval_cpu", 0.0) for r in rounds]
    result.overhead_seconds = [
        w - f - e
        for w, f, e in zip(
            result.round_seconds, result.max_fit_seconds, result.max_evaluate_seconds, strict=True
        )
    ]
    result.first_fit_after_s = [r["first_fit_after"] for r in rounds]
    result.last_fit_after_s = [r["last_fit_after"] for r in rounds]
    result.bytes_up_per_round = [r["bytes_up"] for r in rounds]
    result.bytes_down_per_round = [r["bytes_down"] for r in rounds]
    first, last = rounds[0]["start"], rounds[-1][end_key]
    (link0, nodes0), (link1, nodes1) = sampler.at(first), sampler.at(last)
    result.superlink_cpu_per_round_s = (link1 - link0) / result.rounds
    result.node_cpu_per_round_s = (nodes1 - nodes0) / result.rounds
    result.serverapp_cpu_per_round_s = timings["serverapp_cpu_s"] / result.rounds
    errors = sum(r["errors"] for r in rounds)
    if errors:
        result.error = f"{errors:.0f} training replies were errors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--no-eval", action="store_true", help="no federated evaluation")
    parser.add_argument("--flower-venv", type=Path, default=APP_DIR.parents[2] / ".venv-bench")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedfuse-bench-flower-") as tmp:
        result = run_flower(
            args.nodes,
            args.rounds,
            args.params,
            not args.no_eval,
            args.flower_venv.resolve() / "bin",
            args.workdir or Path(tmp),
        )
    print(json.dumps(asdict(result), indent=1))
    if result.round_seconds:
        print(f"round wall s: mean {statistics.fmean(result.round_seconds):.2f}")
    return 0 if result.status.startswith("completed") else 1


if __name__ == "__main__":
    sys.exit(main())
