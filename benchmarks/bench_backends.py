"""fedfuse's backends beside the plain PyTorch loop and Flower, on the shared harness's workload.

What is compared
    The harness in ``/work/shared/bench/peers/flower`` (``$FL_BENCH_HARNESS``; copied to a
    scratch folder, never modified) defines one FedAvg workload: a 10-class Gaussian mixture in
    784 dimensions split into unequal partitions, an MLP (784-200-200-10) or a logistic
    regression, one local epoch of SGD (batch 32, lr 0.05) with a per-(round, client) shuffling
    seed, example-weighted averaging, central evaluation after every round. Runners:

    ==================  =================================================================
    plain               ``plain_torch_baseline.py --threads 1``: the sequential floor
    plainmp             the same with ``--workers 2``: a spawned pool of 2 processes
    fedfuse-local       ``peers/fedfuse_runner.py --backend local`` (``LocalPool``)
    fedfuse-processes   ``--backend processes --workers 2`` (``ProcessPool``)
    fedfuse-cohort      ``--backend cohort`` (``CohortPool``, vectorized parties)
    fedfuse-ray         ``--backend ray --workers 2`` (``RayPool``; 100 x 3 only)
    flower              ``flower_fedavg_bench.py`` (flwr 1.42.0, ``run_simulation``, Ray)
    ==================  =================================================================

    on 10 x 5 (mlp), 100 x 3 (mlp) and 1000 x 2 (logreg) clients x rounds. Every fedfuse runner
    trains the harness's exact batches (see ``fedfuse_runner.py``), so its final accuracy must
    equal the plain loop's; the report lists the differences.

    A second matrix, the overhead probe, runs the fedfuse backends on 100 parties of 32 examples
    each (one batch) with a 784-1000-200-10 MLP (987,210 parameters): the framework's cost per
    party update beyond the training, ``(steady round - client training s / parallelism) /
    parties``, for a model of about a million parameters.

How it is measured
    As the harness's ``run_all.sh`` does: every run is a fresh process under the harness's
    ``memwatch.py`` (CPU seconds and peak PSS of the run's process tree, Ray's daemons
    included) and ``/usr/bin/time -v``, with the 1-minute load average before and after.
    Repetitions are interleaved (rep 1 of every runner, then rep 2, ... with the runner order
    rotated each repetition) and the report takes medians. CPU seconds are the larger of the
    tree's sampled CPU time and ``time -v``'s user + sys. "Steady round" is the mean of rounds
    2..R (round 1 includes warm-up), central evaluation excluded.

Run it (results go to ``benchmarks/results/backends.{json,md}``; the raw runs, one JSON, and
the harness's own summary to ``benchmarks/results/peers/``)::

    python benchmarks/bench_backends.py            # 3 repetitions, ~20 minutes on 2 cores
    python benchmarks/bench_backends.py --quick    # tiny sizes, 1 repetition: results/quick/

It creates ``.venv-bench/`` (torch 2.13.0, flwr[simulation] 1.42.0, fedfuse from this
checkout) when it is missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BENCH_PYTHON", "ensure_venv", "main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNNER = ROOT / "benchmarks" / "peers" / "fedfuse_runner.py"
VENV = ROOT / ".venv-bench"
BENCH_PYTHON = VENV / "bin" / "python"
HARNESS = Path(os.environ.get("FL_BENCH_HARNESS", "/work/shared/bench/peers/flower"))
HARNESS_FILES = (
    "fl_bench_common.py",
    "plain_torch_baseline.py",
    "flower_fedavg_bench.py",
    "memwatch.py",
    "summarize.py",
    "run_all.sh",
    "README.md",
)
TORCH = "torch==2.13.0"
FLWR = "flwr[simulation]==1.42.0"
WORKERS = 2
ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}

RUNNERS: dict[str, list[str]] = {
    "plain": ["plain_torch_baseline.py", "--threads", "1"],
    "plainmp": ["plain_torch_baseline.py", "--threads", "1", "--workers", str(WORKERS)],
    "fedfuse-local": [str(RUNNER), "--threads", "1", "--backend", "local"],
    "fedfuse-processes": [
        str(RUNNER),
        "--threads",
        "1",
        "--backend",
        "processes",
        "--workers",
        str(WORKERS),
    ],
    "fedfuse-cohort": [str(RUNNER), "--threads", "1", "--backend", "cohort"],
    "fedfuse-ray": [str(RUNNER), "--threads", "1", "--backend", "ray", "--workers", str(WORKERS)],
    "flower": ["flower_fedavg_bench.py"],
}
FEDFUSE = [r for r in RUNNERS if r.startswith("fedfuse")]
BACKENDS = {r: r.split("-", 1)[1] for r in FEDFUSE}


@dataclass(frozen=True)
class Config:
    """One cell of a matrix: clients x rounds of a model, extra runner arguments, and runners."""

    clients: int
    rounds: int
    model: str
    runners: tuple[str, ...]
    extra: tuple[str, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.clients}x{self.rounds} {self.model}"


@dataclass
class Run:
    """One measured run: what the runner wrote, plus memwatch, time -v and the load average."""

    config: str
    runner: str
    rep: int
    ok: bool
    summary: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    log_tail: str = ""


def ensure_venv() -> Path:
    """The bench venv's python; creates the venv and installs into it what is missing."""
    if not BENCH_PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(BENCH_PYTHON), "-m", "pip", "install", "-q"]
    wanted = [("torch", [TORCH]), ("flwr", [FLWR]), ("fedfuse", ["-e", str(ROOT)])]
    for module, spec in wanted:
        probe = subprocess.run([str(BENCH_PYTHON), "-c", f"import {module}"], capture_output=True)
        if probe.returncode != 0:
            print(f"installing {' '.join(spec)} into {VENV}", flush=True)
            subprocess.run(pip + spec, check=True)
    return BENCH_PYTHON


def _copy_harness(scratch: Path) -> Path:
    missing = [f for f in HARNESS_FILES[:5] if not (HARNESS / f).is_file()]
    if missing:
        raise SystemExit(f"the harness at {HARNESS} lacks {missing}: set FL_BENCH_HARNESS")
    target = scratch / "harness"
    target.mkdir(parents=True)
    for name in HARNESS_FILES:
        if (HARNESS / name).is_file():
            shutil.copy2(HARNESS / name, target / name)
    return target


def _load1() -> float:
    return os.getloadavg()[0]


def _time_v(path: Path) -> dict[str, float]:
    """Wall, user, sys and max RSS from ``/usr/bin/time -v`` (as the harness's summarize.py)."""
    out: dict[str, float] = {}
    if not path.exists():
        return out
    text = path.read_text()
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        out["wall_s"] = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    for key, name in (("User time (seconds)", "user_s"), ("System time (seconds)", "sys_s")):
        m = re.search(re.escape(key) + r": (\S+)", text)
        if m:
            out[name] = float(m.group(1))
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["maxrss_mib"] = int(m.group(1)) / 1024
    return out


def run_one(python: Path, harness: Path, raw: Path, cfg: Config, runner: str, rep: int) -> Run:
    """One run under memwatch.py and time -v, in the harness folder (as run_all.sh runs it)."""
    label = f"_{cfg.label}" if cfg.label else ""
    tag = f"{runner}_c{cfg.clients}_r{cfg.rounds}_{cfg.model}{label}_rep{rep}".replace(" ", "-")
    files = {k: raw / f"{tag}.{k}" for k in ("json", "mem.json", "time.txt", "log", "load.txt")}
    command = [
        str(python), "memwatch.py", "--out", str(files["mem.json"]), "--",
        "/usr/bin/time", "-v", "-o", str(files["time.txt"]),
        str(python), *RUNNERS[runner],
        "--clients", str(cfg.clients), "--rounds", str(cfg.rounds), "--model", cfg.model,
        "--json", str(files["json"]), *cfg.extra,
    ]  # fmt: skip
    env = {**os.environ, **ENV, "FL_BENCH_HARNESS": str(harness)}
    env["PYTHONPATH"] = str(ROOT / "src") + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    load_before, clock = _load1(), datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
    with open(files["log"], "w") as log:
        proc = subprocess.run(command, cwd=harness, stdout=log, stderr=subprocess.STDOUT, env=env)
    load_after = _load1()
    files["load.txt"].write_text(
        f"before {clock} load average: {load_before:.2f}, 0, 0\n"
        f"after {clock} load average: {load_after:.2f}, 0, 0\n"
    )
    lines = files["log"].read_text(errors="replace").splitlines()
    result = Run(cfg.name, runner, rep, proc.returncode == 0 and files["json"].exists())
    result.log_tail = "\n".join(lines[-(2 if result.ok else 30) :])
    if files["json"].exists():
        result.summary = json.loads(files["json"].read_text())
    mem = json.loads(files["mem.json"].read_text()) if files["mem.json"].exists() else {}
    tv = _time_v(files["time.txt"])
    cpu = [v for v in (mem.get("tree_cpu_s"), tv.get("user_s", 0) + tv.get("sys_s", 0)) if v]
    result.measured = {
        "started_utc": clock,
        "wall_s": tv.get("wall_s", mem.get("wall_s")),
        "cpu_s": max(cpu) if cpu else None,
        "cpu_tree_sampled_s": mem.get("tree_cpu_s"),
        "cpu_time_v_s": (tv["user_s"] + tv["sys_s"]) if "user_s" in tv and "sys_s" in tv else None,
        "peak_pss_tree_mib": mem.get("tree_peak_sum_pss_mib"),
        "maxrss_time_v_mib": tv.get("maxrss_mib"),
        "steal_s": mem.get("steal_s"),
        "leftover_processes": len(mem.get("leftover_processes", [])),
        "load1_before": load_before,
        "load1_after": load_after,
    }
    return result


def _brief(run: Run) -> str:
    if not run.ok:
        return f"FAILED:\n{run.log_tail}"
    m, s = run.measured, run.summary
    steady = s.get("mean_steady_round_s")
    return (
        f"wall {m['wall_s']:.1f}s steady {_f(steady)}s cpu {m['cpu_s']:.1f}s "
        f"acc {s['final_accuracy']:.4f} load {m['load1_before']:.2f}"
    )


def run_matrix(
    python: Path,
    harness: Path,
    raw: Path,
    configs: list[Config],
    reps: int,
    on_run: Callable[[list[Run]], None] | None = None,
) -> list[Run]:
    """Every config's runners, ``reps`` interleaved repetitions, runner order rotated per rep."""
    runs = []
    for cfg in configs:
        for rep in range(1, reps + 1):
            shift = (rep - 1) % len(cfg.runners)
            for runner in cfg.runners[shift:] + cfg.runners[:shift]:
                run = run_one(python, harness, raw, cfg, runner, rep)
                print(f"{cfg.name:>22} rep {rep} {runner:<18} {_brief(run)}", flush=True)
                runs.append(run)
                if on_run is not None:
                    on_run(runs)
                # Ray may leave daemons for a moment; let them go before the next run
                time.sleep(3 if runner in ("flower", "fedfuse-ray") else 1)
    return runs


# --- the report ---------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _parallelism(summary: dict[str, Any]) -> int:
    if summary["runner"].startswith("flower"):
        return max(1, int((summary.get("cpu_count") or 1) // (summary.get("client_cpus") or 1)))
    return max(1, int(summary.get("workers") or 1))


def _cell(runs: list[Run]) -> dict[str, Any]:
    """Medians of one (config, runner) over its repetitions."""
    ok = [r for r in runs if r.ok]
    out: dict[str, Any] = {"n": len(ok), "failed": len(runs) - len(ok)}
    if not ok:
        return out

    def med(fn: Any) -> float | None:
        return _median([fn(r) for r in ok])

    def train_s(r: Run) -> float:
        per_round = r.summary["client_train_s_per_round"]
        return statistics.mean(per_round[1:] or per_round)

    def overhead_ms(r: Run) -> float | None:
        steady = r.summary.get("mean_steady_round_s")
        if steady is None:
            return None
        return 1000 * (steady - train_s(r) / _parallelism(r.summary)) / r.summary["clients"]

    out |= {
        "wall_s": med(lambda r: r.measured["wall_s"]),
        "cpu_s": med(lambda r: r.measured["cpu_s"]),
        "peak_pss_mib": med(lambda r: r.measured["peak_pss_tree_mib"]),
        "round1_s": med(lambda r: r.summary["round_s"][0]),
        "steady_round_s": med(lambda r: r.summary.get("mean_steady_round_s")),
        "client_train_s_per_round": med(train_s),
        "overhead_ms_per_party": med(overhead_ms),
        "final_accuracy": med(lambda r: r.summary["final_accuracy"]),
        "accuracies": sorted({r.summary["final_accuracy"] for r in ok}),
        "load1_before": med(lambda r: r.measured["load1_before"]),
        "load1_after": med(lambda r: r.measured["load1_after"]),
        "params": ok[0].summary.get("params"),
        "per_rep": [
            {
                "rep": r.rep,
                "wall_s": r.measured["wall_s"],
                "steady_round_s": r.summary.get("mean_steady_round_s"),
                "cpu_s": r.measured["cpu_s"],
            }
            for r in ok
        ],
    }
    if ok[0].summary.get("pool_paths"):
        out["pool_paths"] = ok[0].summary["pool_paths"]
    if ok[0].summary.get("startup_s") is not None:
        out["startup_s"] = med(lambda r: r.summary.get("startup_s"))
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(runs: list[Run], configs: list[Config]) -> dict[str, Any]:
    """Medians per cell, the ratios the issue asks for, accuracy agreement."""
    table: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        cells = {
            rn: _cell([r for r in runs if r.config == cfg.name and r.runner == rn])
            for rn in cfg.runners
        }
        plain = cells.get("plain", {})
        local = cells.get("fedfuse-local", {})
        ratios: dict[str, dict[str, float | None]] = {}
        for rn, c in cells.items():
            if rn != "plain" and plain.get("n"):
                ratios[f"{rn} / plain"] = {
                    k: _ratio(c.get(k), plain.get(k)) for k in ("wall_s", "steady_round_s", "cpu_s")
                }
        for rn in FEDFUSE:
            if rn != "fedfuse-local" and cells.get(rn, {}).get("n") and local.get("n"):
                ratios[f"fedfuse-local / {rn} (speed-up)"] = {
                    k: _ratio(local.get(k), cells[rn].get(k))
                    for k in ("wall_s", "steady_round_s", "cpu_s")
                }
        fed = {rn: c for rn, c in cells.items() if rn in FEDFUSE and c.get("n")}
        best = {}
        for key in ("wall_s", "steady_round_s"):
            if fed:
                name = min(fed, key=lambda rn, key=key: fed[rn].get(key) or float("inf"))
                best[key] = name
        flower = cells.get("flower", {})
        if flower.get("n") and best:
            ratios["flower / fedfuse-best (speed-up)"] = {
                k: _ratio(flower.get(k), fed[best[k]].get(k)) for k in ("wall_s", "steady_round_s")
            } | {"best_by_wall": best["wall_s"], "best_by_steady_round": best["steady_round_s"]}
        accuracy = {}
        if plain.get("n"):
            reference = plain["accuracies"]
            test_samples = _extra_value(cfg, "--test-samples", 10_000)
            for rn, c in cells.items():
                if c.get("n") and rn != "plain":
                    diff = max(abs(a - b) for a in c["accuracies"] for b in reference)
                    accuracy[rn] = {
                        "max_abs_diff_vs_plain": diff,
                        "test_examples": round(diff * test_samples),
                    }
        table[cfg.name] = {
            "clients": cfg.clients,
            "rounds": cfg.rounds,
            "model": cfg.model,
            "extra": list(cfg.extra),
            "cells": cells,
            "ratios": ratios,
            "best_fedfuse": best,
            "accuracy_vs_plain": accuracy,
        }
    return table


def _extra_value(cfg: Config, flag: str, default: int) -> int:
    extra = list(cfg.extra)
    return int(extra[extra.index(flag) + 1]) if flag in extra else default


def targets(
    table: dict[str, Any], main_names: tuple[str, str], probe: str | None
) -> list[dict[str, Any]]:
    """The issue's speed targets: measured value, met or missed and by how much."""
    mlp100, logreg1000 = main_names
    rows = []

    def add(
        target: str, goal: float, measured: float | None, higher_is_better: bool, basis: str
    ) -> None:
        if measured is None:
            rows.append(
                {
                    "target": target,
                    "goal": goal,
                    "measured": None,
                    "basis": basis,
                    "met": None,
                    "by": "not measured",
                }
            )
            return
        met = measured >= goal if higher_is_better else measured <= goal
        if higher_is_better:
            by = f"{measured:.2f}x against at least {goal:g}x"
            by += (
                ""
                if met
                else f": {1 - measured / goal:.0%} short (needs {goal / measured:.2f}x more)"
            )
        else:
            by = f"{measured:.3g} against at most {goal:g}"
            by += "" if met else f": {measured / goal - 1:.0%} over"
        rows.append(
            {
                "target": target,
                "goal": goal,
                "measured": measured,
                "basis": basis,
                "met": met,
                "by": f"{'met' if met else 'missed'}: {by}",
            }
        )

    def ratio(cfg: str, key: str, metric: str) -> float | None:
        return (table.get(cfg, {}).get("ratios", {}).get(key) or {}).get(metric)

    both = (("steady_round_s", "steady round"), ("wall_s", "wall"))
    for metric, basis in both:
        speedup = ratio(mlp100, "fedfuse-local / fedfuse-processes (speed-up)", metric)
        add(f"processes (2 workers) >= 1.7x local, {mlp100}", 1.7, speedup, True, basis)
    for metric, basis in both:
        speedup = ratio(logreg1000, "fedfuse-local / fedfuse-cohort (speed-up)", metric)
        add(f"cohort >= 5x local, {logreg1000}", 5.0, speedup, True, basis)
    for cfg, goal in ((mlp100, 3.0), (logreg1000, 30.0)):
        for metric, basis in reversed(both):
            best = table.get(cfg, {}).get("best_fedfuse", {}).get(metric, "?")
            speedup = ratio(cfg, "flower / fedfuse-best (speed-up)", metric)
            add(
                f"flower / fedfuse-best >= {goal:g}x, {cfg}",
                goal,
                speedup,
                True,
                f"{basis} ({best})",
            )
    for cfg in main_names:  # the "same accuracy" against Flower, where it is compared
        entry = table.get(cfg, {})
        cells, best = entry.get("cells", {}), entry.get("best_fedfuse", {}).get("wall_s")
        if not (best and cells.get("flower", {}).get("n")):
            continue
        test_samples = _extra_value(
            Config(0, 0, "", (), tuple(entry["extra"])), "--test-samples", 10_000
        )
        diff = max(
            abs(a - b) for a in cells[best]["accuracies"] for b in cells["flower"]["accuracies"]
        )
        examples = round(diff * test_samples)
        rows.append(
            {
                "target": f"same accuracy as flower, {cfg}",
                "goal": 0,
                "measured": examples,
                "basis": f"test examples between {best} and flower",
                "met": examples <= 1,
                "by": f"{'met' if examples <= 1 else 'missed'}: final accuracy "
                f"{cells[best]['final_accuracy']:.4f} against "
                f"{cells['flower']['final_accuracy']:.4f}",
            }
        )
    if probe:
        cells = table.get(probe, {}).get("cells", {})
        cell, local = cells.get("fedfuse-ray", {}), cells.get("fedfuse-local", {})
        params = cell.get("params") or 1_000_000
        ovh = cell.get("overhead_ms_per_party")
        per_million = None if ovh is None else ovh * 1e6 / params
        basis = f"probe: {params:,} parameters, scaled to 1M; beyond the actors' task seconds"
        add("ray: overhead <= 5 ms per 1M-parameter party update", 5.0, per_million, False, basis)
        if cell.get("steady_round_s") and local.get("steady_round_s"):
            # the actors' task seconds include the party's own weight load and delta: this
            # second figure charges Ray for all it costs beyond local's round split 2 ways
            extra = cell["steady_round_s"] - local["steady_round_s"] / WORKERS
            per_million = 1000 * extra / table[probe]["clients"] * 1e6 / params
            basis = f"probe: beyond local's steady round / {WORKERS} (ideal split)"
            add(
                "ray: overhead <= 5 ms per 1M-parameter party update",
                5.0,
                per_million,
                False,
                basis,
            )
    ratio_local = ratio(logreg1000, "fedfuse-local / plain", "steady_round_s")
    target = f"per-party overhead, {logreg1000}: fedfuse-local <= 1.05x plain"
    add(target, 1.05, ratio_local, False, "steady round")
    return rows


def _f(value: Any, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def markdown(report: dict[str, Any]) -> str:
    """backends.md: medians, ratios, accuracy, targets."""
    versions = report["versions"]
    lines = [
        "# fedfuse backends beside the plain loop and Flower",
        "",
        f"Measured {report['date']} on {report['machine']} ({report['cpus']} CPUs, shared "
        f"with other jobs); {report['reps']} interleaved repetitions, medians. Load average "
        f"(1 min) over the matrix: {report['load1_min']:.2f} to {report['load1_max']:.2f} "
        f"(median {report['load1_median']:.2f}). torch {versions.get('torch')}, "
        f"flwr {versions.get('flwr')}, ray {versions.get('ray')}. "
        f"Command: `{report['command']}`.",
        "",
        "CPU s: the run's process tree (memwatch.py; Ray's daemons included), or time -v "
        "user+sys if larger. Steady round: mean of rounds 2..R, evaluation excluded. "
        "Overhead / party: (steady round - client training s / parallelism) / parties.",
        "",
    ]
    for name, entry in report["configs"].items():
        lines += [f"## {name}" + (f" ({' '.join(entry['extra'])})" if entry["extra"] else ""), ""]
        lines += [
            "| runner | n | wall s | round 1 s | steady round s | client train s/round "
            "| overhead / party ms | CPU s | peak PSS MiB | final acc | load before / after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rn, c in entry["cells"].items():
            if not c.get("n"):
                lines.append(f"| {rn} | 0 ({c.get('failed', 0)} failed) |" + " - |" * 9)
                continue
            lines.append(
                f"| {rn} | {c['n']} | {_f(c['wall_s'], '{:.1f}')} | {_f(c['round1_s'])} "
                f"| {_f(c['steady_round_s'], '{:.3f}')} | {_f(c['client_train_s_per_round'])} "
                f"| {_f(c['overhead_ms_per_party'], '{:.1f}')} | {_f(c['cpu_s'], '{:.1f}')} "
                f"| {_f(c['peak_pss_mib'], '{:.0f}')} | {_f(c['final_accuracy'], '{:.4f}')} "
                f"| {_f(c['load1_before'])} / {_f(c['load1_after'])} |"
            )
        lines += ["", "| ratio (of medians) | wall | steady round | CPU s |", "|---|---|---|---|"]
        for key, r in entry["ratios"].items():
            lines.append(
                f"| {key} | {_f(r.get('wall_s'), '{:.2f}x')} "
                f"| {_f(r.get('steady_round_s'), '{:.2f}x')} | {_f(r.get('cpu_s'), '{:.2f}x')} |"
            )
        if "flower / fedfuse-best (speed-up)" in entry["ratios"]:
            r = entry["ratios"]["flower / fedfuse-best (speed-up)"]
            lines.append(
                f"\nfedfuse-best: {r['best_by_wall']} by wall, "
                f"{r['best_by_steady_round']} by steady round."
            )
        if entry["accuracy_vs_plain"]:
            diffs = ", ".join(
                f"{rn} {a['max_abs_diff_vs_plain']:.4f} ({a['test_examples']} test examples)"
                for rn, a in entry["accuracy_vs_plain"].items()
            )
            lines += ["", f"Final accuracy, largest difference from plain: {diffs}."]
        paths = {rn: c["pool_paths"] for rn, c in entry["cells"].items() if c.get("pool_paths")}
        if paths:
            lines += [
                "",
                "Cohort paths (tasks vectorized / fell back): "
                + "; ".join(f"{k}: {v}" for k, v in paths.items()),
            ]
        lines.append("")
    lines += [
        "## Targets (issue 12)",
        "",
        "| target | basis | measured | met? |",
        "|---|---|---|---|",
    ]
    for t in report["targets"]:
        measured = t["measured"]
        if isinstance(measured, dict):
            shown = ", ".join(f"{v}" for v in measured.values()) or "-"
        else:
            shown = "-" if measured is None else f"{measured:.3g}"
        verdict = (
            "not measured" if t["met"] is None else t["by"] or ("met" if t["met"] else "missed")
        )
        lines.append(f"| {t['target']} | {t['basis']} | {shown} | {verdict} |")
    lines.append("")
    return "\n".join(lines)


def _versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "out = {'python': platform.python_version()}\n"
        "for p in ('torch', 'flwr', 'ray', 'fedfuse'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "print(json.dumps(out))"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _configs(quick: bool, ray: bool) -> tuple[list[Config], tuple[str, str], str]:
    """The matrix, the names of the configs the targets are read from (the MLP one with many
    parties, the logistic-regression one), and the overhead probe's name."""
    everyone = ("plain", "plainmp", "fedfuse-local", "fedfuse-processes", "fedfuse-cohort")
    everyone += ("flower",)
    with_ray = everyone + (("fedfuse-ray",) if ray else ())
    probe_runners = ("fedfuse-local", "fedfuse-processes") + (("fedfuse-ray",) if ray else ())
    probe_data = ("--hidden", "1000", "--test-samples", "1000", "--train-samples")
    if quick:  # one mlp and one logreg config, Flower only on the first
        small = ("--train-samples", "6000", "--test-samples", "1000")
        mlp, logreg = (
            Config(20, 2, "mlp", with_ray, small),
            Config(200, 2, "logreg", everyone[:-1], small),
        )
        probe = Config(10, 2, "mlp", probe_runners, (*probe_data, "320"), "probe")
        configs = [mlp, logreg, probe]
    else:  # the configs the targets are read from first, should the matrix be cut short
        mlp, logreg = Config(100, 3, "mlp", with_ray), Config(1000, 2, "logreg", everyone)
        probe = Config(100, 3, "mlp", probe_runners, (*probe_data, "3200"), "probe")
        configs = [mlp, logreg, probe, Config(10, 5, "mlp", everyone)]
    return configs, (mlp.name, logreg.name), probe.name


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, 1 repetition, results/quick/"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these configs (by name)")
    parser.add_argument("--no-ray", action="store_true", help="leave fedfuse-ray out")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild backends.{json,md} from the saved runs (peers/backends_runs.json)",
    )
    args = parser.parse_args()
    reps = args.reps or (1 if args.quick else 3)
    out_dir = RESULTS / "quick" if args.quick else RESULTS
    raw_dir = out_dir / "peers"
    runs_file = raw_dir / "backends_runs.json"
    python = ensure_venv()
    ray = not args.no_ray and (ROOT / "src" / "fedfuse" / "runtime" / "_ray.py").exists()
    configs, main_names, probe = _configs(args.quick, ray)
    versions = _versions(python)
    if args.report_only:
        saved = json.loads(runs_file.read_text())
        runs, elapsed = [Run(**r) for r in saved["runs"]], saved["matrix_seconds"]
        reps = max(r.rep for r in runs)
    else:
        kept: list[Run] = []
        if args.only:  # the other configs' saved runs stay in the report
            configs = [c for c in configs if c.name in args.only]
            if runs_file.exists():
                saved = json.loads(runs_file.read_text())["runs"]
                kept = [Run(**r) for r in saved if r["config"] not in args.only]
        runs, elapsed = _measure(python, configs, reps, ray, raw_dir, runs_file, kept)
        configs = _configs(args.quick, ray)[0]
    loads = [r.measured[k] for r in runs for k in ("load1_before", "load1_after")]
    measured = {r.config for r in runs}
    configs = [c for c in configs if c.name in measured]
    table = summarize(runs, configs)
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
        + f" {runs[0].measured['started_utc']}-{runs[-1].measured['started_utc']} UTC",
        "machine": _cpu_model(),
        "cpus": os.cpu_count(),
        "reps": reps,
        "quick": args.quick,
        "command": "python benchmarks/bench_backends.py" + (" --quick" if args.quick else ""),
        "versions": versions,
        "load1_min": min(loads),
        "load1_max": max(loads),
        "load1_median": statistics.median(loads),
        "matrix_seconds": elapsed,
        "configs": table,
        "targets": targets(table, main_names, probe if probe in measured else None),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "backends.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "backends.md").write_text(markdown(report))
    print(markdown(report))
    print(f"wrote {out_dir / 'backends.md'}, {out_dir / 'backends.json'} and {raw_dir}/")


def _measure(
    python: Path,
    configs: list[Config],
    reps: int,
    ray: bool,
    raw_dir: Path,
    runs_file: Path,
    kept: list[Run],
) -> tuple[list[Run], float]:
    """Run the matrix in a scratch copy of the harness; the runs (after ``kept``, earlier runs
    of other configs) are saved after each one, so a matrix cut short still leaves them for
    ``--report-only``."""
    ray_state = "on" if ray else "off (no RayPool)"
    print(
        f"bench_backends: {len(configs)} configs x {reps} reps; ray backend {ray_state}; "
        f"load {_load1():.2f}",
        flush=True,
    )
    raw_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def save(runs: list[Run]) -> None:
        every = [r.__dict__ for r in kept + runs]
        done = {"matrix_seconds": time.time() - started, "runs": every}
        runs_file.write_text(json.dumps(done, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="fedfuse-bench-") as scratch:
        harness = _copy_harness(Path(scratch))
        raw = Path(scratch) / "runs"
        raw.mkdir()
        runs = kept + run_matrix(python, harness, raw, configs, reps, save)
        summary = subprocess.run(
            [str(python), "summarize.py", str(raw)], cwd=harness, capture_output=True, text=True
        )
        (raw_dir / "harness_summary.md").write_text(summary.stdout)
    return runs, time.time() - started


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    main()
