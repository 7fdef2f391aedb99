"""How long fedfuse takes to start, beside torch and Flower's command line.

What is measured
    The wall time (and the CPU time, user + sys, from ``os.wait4``) of fresh processes of the
    bench venv (``.venv-bench/``, made by ``bench_backends.py``: torch 2.13.0, flwr 1.42.0,
    fedfuse installed editable from this checkout)::

        python -c "import fedfuse"
        fedfuse --help
        python -c "import torch"
        flwr --help
        python -c "pass"           (the interpreter alone)

    Each command runs once unmeasured (so every file is in the page cache), then ``--reps``
    times (default 9, at least 7), the commands interleaved; the report gives median and best.
    Targets (fedfuse issue 12): ``import fedfuse`` and ``fedfuse --help`` each under 1 s.
    ``python -X importtime`` of ``fedfuse --help`` lists the slowest imports (cumulative), to
    show where the time goes.

Run it (results go to ``benchmarks/results/startup.{json,md}``)::

    python benchmarks/bench_startup.py
    python benchmarks/bench_startup.py --quick     # 3 repetitions, results/quick/
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backends import ENV, RESULTS, VENV, ensure_venv

__all__ = ["main"]

GOAL_S = 1.0


def commands(python: Path) -> dict[str, list[str]]:
    bin_dir = python.parent
    return {
        "import fedfuse": [str(python), "-c", "import fedfuse"],
        "fedfuse --help": [str(bin_dir / "fedfuse"), "--help"],
        "import torch": [str(python), "-c", "import torch"],
        "flwr --help": [str(bin_dir / "flwr"), "--help"],
        "python (nothing)": [str(python), "-c", "pass"],
    }


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one fresh process running ``command``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def slowest_imports(python: Path, env: dict[str, str], top: int = 12) -> list[dict[str, object]]:
    """The imports of ``fedfuse --help`` with the largest cumulative time (``-X importtime``)."""
    done = subprocess.run(
        [str(python), "-X", "importtime", "-m", "fedfuse", "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    rows = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue  # the header line, or other output
        self_us, cumulative_us, name = (p.strip() for p in line[len("import time:") :].split("|"))
        rows.append(
            {
                "module": name,
                "cumulative_ms": int(cumulative_us) / 1000,
                "self_ms": int(self_us) / 1000,
            }
        )
    return sorted(rows, key=lambda r: -r["cumulative_ms"])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 repetitions, results/quick/")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 9; 3 with --quick)"
    )
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 9)
    python = ensure_venv()
    env = {**os.environ, **ENV}
    env.pop("PYTHONPATH", None)  # the editable install points at this checkout's src/
    cmds = commands(python)
    for command in cmds.values():
        timed(command, env)  # warm the page cache
    walls: dict[str, list[float]] = {name: [] for name in cmds}
    cpus: dict[str, list[float]] = {name: [] for name in cmds}
    loads = [os.getloadavg()[0]]
    for rep in range(reps):
        names = list(cmds)
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = timed(cmds[name], env)
            walls[name].append(wall)
            cpus[name].append(cpu)
        loads.append(os.getloadavg()[0])
    rows = {
        name: {
            "median_wall_s": statistics.median(walls[name]),
            "best_wall_s": min(walls[name]),
            "median_cpu_s": statistics.median(cpus[name]),
            "wall_s": walls[name],
        }
        for name in cmds
    }
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; "
            "print(m.version('fedfuse'), m.version('torch'), m.version('flwr'))",
        ],
        capture_output=True,
        text=True,
    ).stdout.split()
    targets = []
    flwr_s = rows["flwr --help"]["median_wall_s"]
    for name in ("import fedfuse", "fedfuse --help"):
        measured = rows[name]["median_wall_s"]
        targets.append(
            {
                "target": f"{name} under {GOAL_S:g} s",
                "measured_s": measured,
                "met": measured < GOAL_S,
                "by": f"{'met' if measured < GOAL_S else 'missed'}: {measured:.2f} s "
                f"({measured / GOAL_S:.2f}x the goal; flwr --help {flwr_s:.2f} s)",
            }
        )
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "python": platform.python_version(),
        "versions": dict(zip(("fedfuse", "torch", "flwr"), versions, strict=False)),
        "venv": str(VENV.name),
        "reps": reps,
        "load1_min": min(loads),
        "load1_max": max(loads),
        "commands": rows,
        "targets": targets,
        "slowest_imports_of_fedfuse_help": slowest_imports(python, env),
    }
    lines = [
        "# Start-up time",
        "",
        f"Measured {report['date']} on {report['machine']}, load average (1 min) "
        f"{report['load1_min']:.2f} to {report['load1_max']:.2f}; {reps} fresh processes per "
        "command, interleaved, after one unmeasured warm-up run each (page cache warm). "
        f"Python {report['python']}, "
        f"fedfuse {report['versions'].get('fedfuse')}, torch {report['versions'].get('torch')}, "
        f"flwr {report['versions'].get('flwr')}, all in `{report['venv']}/`. "
        f"Command: `python benchmarks/bench_startup.py{' --quick' if args.quick else ''}`.",
        "",
        "| command | median wall s | best wall s | median CPU s |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| `{name}` | {row['median_wall_s']:.3f} | {row['best_wall_s']:.3f} "
            f"| {row['median_cpu_s']:.3f} |"
        )
    lines += ["", "| target | measured (median) | met? |", "|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['measured_s']:.3f} s | {t['by']} |")
    lines += [
        "",
        "Slowest imports of `fedfuse --help` (`-X importtime`, one run, cumulative ms):",
        "",
    ]
    lines += ["| module | cumulative ms | self ms |", "|---|---|---|"]
    for r in report["slowest_imports_of_fedfuse_help"]:
        lines.append(f"| `{r['module']}` | {r['cumulative_ms']:.0f} | {r['self_ms']:.1f} |")
    lines.append("")
    out_dir = RESULTS / "quick" if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "startup.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "startup.md").write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out_dir / 'startup.md'} and {out_dir / 'startup.json'}")


if __name__ == "__main__":
    main()
