"""The report of ``bench_consensus.py``: consensus.md, consensus.json and the PNG curves, built
from the recorded runs (``consensus_runs.jsonl``) alone, so it can be rebuilt at any time."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PARTITION_NAMES = {
    "a": "(a) 5 of 10 classes, ring neighbours share 3-4",
    "b": "(b) 5 of 10 classes, ring neighbours complementary",
    "c": "(c) 8 of 10 classes shifted by 4, imbalance 0.2",
}
ORDER = ("ECL (ADMM)", "ECL (PDMM)", "gossip", "D-PSGD")
TOPOLOGY_ORDER = ("ring", "multiplex ring", "random 3-regular")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _stat(values: Sequence[float]) -> str:
    """``mean`` (one seed) or ``mean ± std`` over seeds, in percent."""
    if len(values) == 1:
        return _pct(values[0])
    return f"{100 * np.mean(values):.2f} ± {100 * np.std(values):.2f}"


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return [_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)]


class Report:
    def __init__(self, done: dict[str, dict[str, Any]], chosen: Callable, converged: Callable):
        self.done = done
        self.chosen_run = chosen
        self.converged = converged
        self.runs = list(done.values())
        self.seeds = sorted({r["run"]["seed"] for r in self.runs})

    # --- the reference ---------------------------------------------------------------------
    def references(self, seed: int) -> list[dict[str, Any]]:
        return sorted(
            (
                r
                for r in self.runs
                if r["run"]["method"] == "reference" and r["run"]["seed"] == seed
            ),
            key=lambda r: r["run"]["lr"],
        )

    def reference(self, seed: int) -> dict[str, Any] | None:
        refs = self.references(seed)
        return max(refs, key=lambda r: r["validation_accuracy"]) if refs else None

    def reference_at(self, seed: int, epoch: int) -> dict[str, Any] | None:
        """The chosen reference's per-epoch record at ``epoch`` (test subset, validation)."""
        ref = self.reference(seed)
        if ref is None:
            return None
        return next((c for c in ref["curve"] if c["epoch"] == epoch), ref["curve"][-1])

    # --- the decentralized runs ------------------------------------------------------------
    def chosen(self, budget, partition, topology, method, seed, variant=""):
        try:
            return self.chosen_run(self.done, budget, partition, topology, method, seed, variant)
        except LookupError:
            return None

    def group(self, budget, partition, topology, method, variant="") -> list[dict[str, Any]]:
        """Seed 0's chosen run (validation), and the other seeds' runs at its step (their best
        on validation where they have none at that step)."""
        first = self.chosen(budget, partition, topology, method, 0, variant)
        found = [first]
        for seed in self.seeds:
            if seed == 0:
                continue
            same = [
                r
                for r in self.runs
                if first is not None
                and r["run"] == {**first["run"], "seed": seed, "epochs": r["run"]["epochs"]}
            ]
            found.append(
                same[0] if same else self.chosen(budget, partition, topology, method, seed, variant)
            )
        return [r for r in found if r is not None]


def _method_rows(rep: Report, budget: str, partition: str, topology: str) -> list[list[Any]]:
    rows = []
    ref_final = [rep.reference(s) for s in rep.seeds]
    for method in ORDER:
        runs = rep.group(budget, partition, topology, method)
        if not runs:
            continue
        seeds = [r["run"]["seed"] for r in runs]
        refs = [ref_final[rep.seeds.index(s)]["accuracy"] for s in seeds]
        gaps = [r["mean_accuracy"] - a for r, a in zip(runs, refs, strict=True)]
        rows.append(
            [
                method,
                "/".join(f"{r['run']['lr']:g}" for r in runs),
                f"**{_stat([r['mean_accuracy'] for r in runs])}**"
                + (
                    f" ({sum(r.get('refused', 0) for r in runs)} messages refused)"
                    if any(r.get("refused") for r in runs)
                    else ""
                ),
                _stat([r["min_accuracy"] for r in runs]),
                f"{np.mean([r['test_loss'] for r in runs]):.3f}",
                _stat([r["average_model_accuracy"] for r in runs]),
                f"{np.mean([r['consensus_distance'] for r in runs]):.3f}",
                f"{np.mean([r['bytes_sent'] for r in runs]) / 1e6:.0f}",
                f"{np.mean([r['wall_s'] for r in runs]):.0f}",
                f"{100 * np.mean(gaps):+.2f}",
                len(runs),
            ]
        )
    return rows


_HEADER = [
    "method", "step (per seed)", "mean node acc %", "worst node %", "test loss",
    "average model %", "consensus dist", "MB sent", "wall s", "vs reference (pts)", "seeds",
]  # fmt: skip


def _targets(rep: Report) -> list[str]:
    lines = []
    for budget, within, method in (
        ("P1", 0.01, "ECL (ADMM)"),
        ("P1", 0.01, "ECL (PDMM)"),
        ("P2", 0.03, "ECL (ADMM)"),
        ("P2", 0.03, "ECL (PDMM)"),
    ):
        ecl = rep.group(budget, "a", "ring", method)
        if not ecl:
            continue
        seeds = [r["run"]["seed"] for r in ecl]
        ref = np.mean([rep.reference(s)["accuracy"] for s in seeds])
        acc = np.mean([r["mean_accuracy"] for r in ecl])
        met = acc >= ref - within
        lines.append(
            f"- {budget}, partition (a), ring: {method}'s mean node accuracy {_pct(acc)}% against "
            f"the reference's {_pct(ref)}% ({100 * (acc - ref):+.2f} points; target within "
            f"{100 * within:.0f}): **{'met' if met else 'missed'}**."
        )
        if budget == "P1":
            for other in ("gossip", "D-PSGD"):
                runs = rep.group(budget, "a", "ring", other)
                if not runs:
                    continue
                theirs = np.mean([r["mean_accuracy"] for r in runs])
                lead = acc - theirs
                lines.append(
                    f"- P1, partition (a), ring: {method} {100 * lead:+.2f} points against {other} "
                    f"({_pct(theirs)}%; target >= +3): **{'met' if lead >= 0.03 else 'missed'}**."
                )
    return lines


def _reference_section(rep: Report, base: dict[str, Any]) -> list[str]:
    lines = ["## The reference (one model on the pooled data)", ""]
    rows = []
    for seed in rep.seeds:
        best = rep.reference(seed)
        for r in rep.references(seed):
            plain = r["plain_loop"]
            rows.append(
                [
                    seed,
                    f"{r['run']['lr']:g}" + (" (chosen)" if r is best else ""),
                    _pct(r["accuracy"]),
                    _pct(r["validation_accuracy"]),
                    f"{r['loss']:.3f}",
                    rep.converged(r["curve"]),
                    r["steps"],
                    f"{r['wall_s']:.0f}",
                    f"{_pct(plain['accuracy'])} in {plain['wall_s']:.0f} s",
                ]
            )
    header = [
        "seed", "step", "test acc %", "validation acc %", "test loss", "converged at epoch",
        "steps", "wall s", "plain PyTorch loop (SGD + MultiStepLR)",
    ]  # fmt: skip
    lines += _table(header, rows)
    lines += [
        "",
        f"The reference trains {base['epochs']} epochs at most, the step size x{base['lr_decay']}"
        f" at epochs {', '.join(str(e) for e in base['lr_decay_epochs'])}. 'Converged at epoch' "
        "is the first epoch at which its validation accuracy moved less than 0.1 point over the "
        "last 10% of its epochs (at least three evaluations); every decentralized run of that "
        "seed trains that many epochs. The plain loop is torch.optim.SGD over the same pooled "
        "data (its own batch order), the check that the reference is ordinary SGD.",
        "",
    ]
    return lines


def _ten_minutes(rep: Report) -> list[str]:
    runs = {m: rep.chosen("P1", "a", "ring", m, 0) for m in ORDER}
    runs = {m: r for m, r in runs.items() if r is not None}
    ref = rep.reference(0)
    if not runs or ref is None:
        return []
    lines = [
        "## The 10-minute variant: P1, partition (a), ring, seed 0",
        "",
        "`.venv/bin/python benchmarks/bench_consensus.py --suite ten-minutes` (the reference at "
        "both steps, then ECL and gossip at both steps, two runs at a time).",
        "",
    ]
    rows = [row[:-1] for row in _method_rows(rep, "P1", "a", "ring")]
    loss, wall = f"{ref['loss']:.3f}", f"{ref['wall_s']:.0f}"
    rows.append(
        ["reference", f"{ref['run']['lr']:g}", f"**{_pct(ref['accuracy'])}**", "", loss, "", "",
         "", wall, "0"]
    )  # fmt: skip
    lines += _table(_HEADER[:-1], rows)
    lines.append("")
    return lines


def _budget_sections(rep: Report) -> list[str]:
    lines = []
    for budget, title in (
        ("P1", "P1: every node computes the reference's gradients (NTT's budget)"),
        ("P2", "P2: the nodes together compute the reference's gradients (equal compute)"),
    ):
        lines += [f"## {title}", ""]
        for partition in "abc":
            for topology in TOPOLOGY_ORDER:
                rows = _method_rows(rep, budget, partition, topology)
                if not rows:
                    continue
                lines += [f"### {PARTITION_NAMES[partition]}; {topology}", ""]
                lines += _table(_HEADER, rows)
                lines.append("")
    return lines


def _reached(curve: Sequence[dict[str, Any]], target: float) -> dict[str, Any] | None:
    return next((c for c in curve if c["mean_accuracy"] >= target), None)


def _ablations(rep: Report, names: Sequence[str]) -> list[str]:
    rows = []
    for method in ("ECL (ADMM)", "gossip"):
        base = rep.chosen("P1", "a", "ring", method, 0)
        if base is None:
            continue
        found = [(n, rep.chosen("P1", "a", "ring", method, 0, n)) for n in names]
        for name, run in [("as chosen", base), *((n, r) for n, r in found if r is not None)]:
            rows.append(
                [
                    method,
                    name,
                    f"{run['run']['lr']:g}",
                    f"**{_pct(run['mean_accuracy'])}**",
                    _pct(run["min_accuracy"]),
                    f"{run['test_loss']:.3f}",
                    _pct(run["average_model_accuracy"]),
                    f"{run['consensus_distance']:.3f}",
                    f"{100 * (run['mean_accuracy'] - base['mean_accuracy']):+.2f}",
                ]
            )
    if len(rows) <= 2:
        return []
    header = [
        "method", "changed", "step", "mean node acc %", "worst node %", "test loss",
        "average model %", "consensus dist", "vs as chosen (pts)",
    ]  # fmt: skip
    return [
        "## One setting changed at a time (P1, partition (a), ring, seed 0)",
        "",
        "Each method at its chosen step with one setting changed: K (steps between exchanges, "
        "4 as chosen), ECL's per-layer eta (sqrt of the fan-in, as NTT's code scales it), PDMM "
        "instead of ADMM exchanges, all nodes at the same rate, no step decay, and ECL's duals "
        "starting at zero (NTT's code) instead of at agreement.",
        "",
        *_table(header, rows),
        "",
    ]


def _compression(rep: Report, names: Sequence[str]) -> list[str]:
    ecl = rep.chosen("P1", "a", "ring", "ECL (ADMM)", 0)
    variants = [n for n in names if any(r["run"]["variant"] == n for r in rep.runs)]
    if ecl is None or not variants:
        return []
    target = ecl["curve"][-1]["mean_accuracy"] - 0.005
    lines = [
        "## Compressed exchanges: C-ECL and compressed gossip (P1, partition (a), ring, seed 0)",
        "",
        f"Bytes every node sent together until the nodes' mean accuracy on the per-epoch test "
        f"subset first reached {_pct(target)}% (uncompressed ECL's last value there, less half a "
        "point), and where each ends. Each variant runs at its uncompressed method's chosen step.",
        "",
    ]
    rows = []
    candidates = [("ECL (ADMM)", ecl), ("gossip", rep.chosen("P1", "a", "ring", "gossip", 0))]
    for variant in variants:
        found = [r for r in rep.runs if r["run"]["variant"] == variant and r["run"]["seed"] == 0]
        if found:
            candidates.append((variant, found[0]))
    for name, run in candidates:
        if run is None:
            continue
        hit = _reached(run["curve"], target)
        rows.append(
            [
                name,
                f"{hit['bytes_sent'] / 1e6:.0f} MB at epoch {hit['epoch']}"
                if hit
                else "not reached",
                f"{hit['bytes_sent'] / ecl['bytes_sent']:.3f}" if hit else "",
                f"{run['bytes_sent'] / 1e6:.0f}",
                _pct(run["mean_accuracy"]),
                _pct(run["min_accuracy"]),
                f"{run['consensus_distance']:.3f}",
            ]
        )
    header = [
        "exchange", "bytes to reach target", "of ECL's whole run", "MB whole run",
        "final mean node acc %", "worst %", "consensus dist",
    ]  # fmt: skip
    lines += _table(header, rows)
    lines.append("")
    return lines


def _processes(rep: Report) -> list[str]:
    rows = []
    for run in rep.runs:
        if run["run"]["variant"] != "processes":
            continue
        twin = next(
            (
                r
                for r in rep.runs
                if r["run"]["variant"] == "" and {**r["run"], "variant": "processes"} == run["run"]
            ),
            None,
        )
        rows.append(
            [
                run["run"]["method"],
                f"{run['run']['lr']:g}",
                _pct(run["mean_accuracy"]),
                _pct(twin["mean_accuracy"]) if twin else "",
                f"{100 * (run['mean_accuracy'] - twin['mean_accuracy']):+.2f}" if twin else "",
                _pct(run["min_accuracy"]),
                f"{run['consensus_distance']:.3f}",
                f"{run['steps_per_node']:.0f}",
                run["exchanges"],
                run["refused"],
                f"{run['wall_s']:.0f}",
            ]
        )
    if not rows:
        return []
    header = [
        "method", "step", "processes: mean node acc %", "simulator %", "difference (pts)",
        "worst node %", "consensus dist", "steps per node", "exchanges", "refused", "wall s",
    ]  # fmt: skip
    return [
        "## The same run as real processes (`fedfuse consensus --processes`)",
        "",
        "P1, partition (a), ring, seed 0: one `fedfuse node` process per node, each given its "
        "own `.npz` (its share of the split plus the whole test set) and talking HTTP on "
        "127.0.0.1; message orders are whatever the processes produce. Simulator: the same "
        "settings on the simulated clock.",
        "",
        *_table(header, rows),
        "",
    ]


def _plot(rep: Report, out_dir: Path, compressed: Sequence[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for budget in ("P1", "P2"):
        runs = {m: rep.chosen(budget, "a", "ring", m, 0) for m in ORDER}
        runs = {m: r for m, r in runs.items() if r is not None}
        ref = rep.reference(0)
        if not runs or ref is None:
            continue
        fig, (by_steps, by_wall) = plt.subplots(1, 2, figsize=(12, 4.4))
        for method, run in runs.items():
            curve = run["curve"]
            for ax, key in ((by_steps, "steps"), (by_wall, "wall_s")):
                (line,) = ax.plot(
                    [c[key] for c in curve], [c["mean_accuracy"] for c in curve], "o-", ms=3,
                    label=f"{method} (step {run['run']['lr']:g})",
                )  # fmt: skip
                ax.plot(
                    [c[key] for c in curve], [c["min_accuracy"] for c in curve], ":",
                    color=line.get_color(), lw=1,
                )  # fmt: skip
        epochs = max(r["run"]["epochs"] for r in runs.values())
        curve = [c for c in ref["curve"] if c["epoch"] <= epochs]
        for ax, key in ((by_steps, "steps"), (by_wall, "wall_s")):
            ax.plot([c[key] for c in curve], [c["accuracy"] for c in curve], "k--", lw=2,
                    label=f"reference (step {ref['run']['lr']:g})")  # fmt: skip
            ax.grid(alpha=0.3)
            ax.set_ylabel("test accuracy (solid: mean node, dotted: worst)")
        by_steps.set_xlabel("SGD steps per node (reference: its own steps)")
        by_wall.set_xlabel("wall seconds (simulation of all 8 nodes on one core)")
        by_steps.legend(loc="lower right", fontsize=8)
        fig.suptitle(f"{budget}, partition (a), ring, 8 nodes, Fashion-MNIST MLP, seed 0")
        fig.tight_layout()
        name = f"consensus_{budget.lower()}.png"
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        files.append(name)
    variants = [n for n in compressed if any(r["run"]["variant"] == n for r in rep.runs)]
    ecl = rep.chosen("P1", "a", "ring", "ECL (ADMM)", 0)
    if variants and ecl is not None:
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        named = [("ECL (ADMM)", ecl), ("gossip", rep.chosen("P1", "a", "ring", "gossip", 0))]
        named += [
            (v, next(r for r in rep.runs if r["run"]["variant"] == v and r["run"]["seed"] == 0))
            for v in variants
        ]
        for name, run in named:
            if run is None:
                continue
            curve = run["curve"]
            ax.plot([c["bytes_sent"] / 1e6 for c in curve], [c["mean_accuracy"] for c in curve],
                    "o-", ms=3, label=name)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("MB sent by all nodes (log)")
        ax.set_ylabel("mean node test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("P1, partition (a), ring: accuracy against bytes sent")
        fig.tight_layout()
        fig.savefig(out_dir / "consensus_compression.png", dpi=110)
        plt.close(fig)
        files.append("consensus_compression.png")
    return files


def write(
    done: dict[str, dict[str, Any]],
    out_dir: Path,
    base: dict[str, Any],
    machine: str,
    *,
    chosen: Callable,
    converged_epoch: Callable,
    compressed: Sequence[str] = (),
    ablations: Sequence[str] = (),
    grid: Sequence[float] = (),
    wider: float | None = None,
) -> None:
    rep = Report(done, chosen, converged_epoch)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    lines = [
        "# Decentralized learning: does ECL reach the single-node reference?",
        "",
        f"Built {now} from {len(rep.runs)} recorded runs on {machine}.",
        "",
        f"Fashion-MNIST: {base['train_size'] - base['validation_size']} training images (a "
        f"seeded subset) split among {base['num_nodes']} nodes, {base['validation_size']} more "
        "held out as the validation split (step sizes are chosen on it, never on test), the "
        f"10k test set reported at the end ({base['test_size']} of it for the per-epoch curves). "
        f"Model `{base['model']}`; SGD, batch {base['batch_size']}; an exchange after every "
        f"{base['local_steps']} of a node's own steps; node rates U[{1 - base['speed_spread']:g}, "
        f"{1 + base['speed_spread']:g}]. Every row is its method at the step size of the grid "
        "with the best validation accuracy: the grid is "
        + ", ".join(f"{g:g}" for g in grid)
        + (f" (P2 on partition (a), ring, and the reference also {wider:g})" if wider else "")
        + ". Seeds 1 and 2 run at the steps seed 0 chose.",
        "",
        "## Targets",
        "",
        *_targets(rep),
        "",
        *_reference_section(rep, base),
        *_ten_minutes(rep),
        *_budget_sections(rep),
        *_ablations(rep, ablations),
        *_compression(rep, compressed),
        *_processes(rep),
    ]
    files = _plot(rep, out_dir, compressed)
    if files:
        lines += ["## Curves", ""] + [f"![{f}]({f})" for f in files] + [""]
    (out_dir / "consensus.md").write_text("\n".join(lines))
    summary = {
        "built": now,
        "machine": machine,
        "settings": base,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in rep.runs],
    }
    (out_dir / "consensus.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out_dir / 'consensus.md'} and {', '.join(files) or 'no plots'}")
