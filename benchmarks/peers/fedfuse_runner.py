"""The shared harness's FedAvg workload, trained through fedfuse (a runner for ``run_all.sh``).

Same command line and the same ``--json`` fields as the harness's ``plain_torch_baseline.py``,
so its ``summarize.py`` reads the results. The data, the partitions, the model and its
initialisation come from the harness's ``fl_bench_common`` (found through ``FL_BENCH_HARNESS``,
the current directory, or ``/work/shared/bench/peers/flower``); the training goes through
fedfuse's public API: a ``FederatedDataset`` of the harness's partitions, a ``TorchAdapter``,
the pool ``--backend`` names (``make_pool(Backend(...))``), and a ``Federation`` running FedAvg
with every party in every round and the global model evaluated centrally after each round
(before the first one too, outside the timed rounds, as the plain loop does). No federated
evaluation.

Seeds: fedfuse derives each party's training seed from the federation's seed
(``derive_seed(seed, round, party)``), the harness uses ``client_seed(seed, round, party)``.
``HarnessSeeds`` wraps the pool and rewrites each task's seed to the harness's before the pool
sees it (one ``dataclasses.replace`` per task), so every party draws exactly the harness's batch
order and the final accuracy equals the plain loop's up to the order floats are summed in
(fedfuse averages deltas, the plain loop averages weights). The cohort backend trains the same
batches but sums within each batched matrix product in another order (see ``CohortPool``).

``--hidden H`` replaces the harness's model by a 784-H-200-10 MLP (same seed): the
framework-overhead probe of ``bench_backends.py`` uses it to get a model of about a million
parameters (``--hidden 1000``: 987,210). The plain loop has no such model; only fedfuse
backends run it.

Examples::

    python fedfuse_runner.py --clients 100 --rounds 3 --model mlp --backend processes --workers 2
    python fedfuse_runner.py --clients 1000 --rounds 2 --model logreg --backend cohort
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

T_START = time.perf_counter()

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["HarnessSeeds", "main"]

DEFAULT_HARNESS = Path("/work/shared/bench/peers/flower")


def _harness_dir() -> Path:
    """Where ``fl_bench_common.py`` is: ``$FL_BENCH_HARNESS``, the current directory (run_all.sh
    runs from the harness folder), or the shared harness."""
    env = os.environ.get("FL_BENCH_HARNESS")
    for candidate in [Path(env)] if env else [Path.cwd(), DEFAULT_HARNESS]:
        if (candidate / "fl_bench_common.py").is_file():
            return candidate
    raise SystemExit(
        f"fl_bench_common.py not found in {env or f'{Path.cwd()} or {DEFAULT_HARNESS}'}: "
        "set FL_BENCH_HARNESS to the harness folder"
    )


sys.path.insert(0, str(_harness_dir()))
import fl_bench_common as common  # noqa: E402

import fedfuse  # noqa: E402
from fedfuse.data import FederatedDataset  # noqa: E402
from fedfuse.federation import Aggregation, Federation  # noqa: E402
from fedfuse.models import TorchAdapter, TrainConfig  # noqa: E402
from fedfuse.party import TrainTask  # noqa: E402
from fedfuse.runtime import Backend, make_pool  # noqa: E402

T_IMPORTED = time.perf_counter()


class HarnessSeeds:
    """A pool that gives each train task the harness's seed for its (round, party) first.

    Everything else (party ids, the clock, ``train_seconds``, ``close``) is the wrapped pool's.
    Party ids must be the harness's partition ids as strings (``"0"``, ``"1"``, ...).
    """

    def __init__(self, pool: Any, seed: int) -> None:
        self.pool, self.seed = pool, seed

    def dispatch(self, tasks: Mapping[str, Any], timeout: float | None = None) -> Iterator:
        return self.pool.dispatch({pid: self._reseed(pid, t) for pid, t in tasks.items()}, timeout)

    def start(self, party_id: str, task: Any) -> None:
        self.pool.start(party_id, self._reseed(party_id, task))

    def _reseed(self, party_id: str, task: Any) -> Any:
        if not isinstance(task, TrainTask):
            return task
        seed = common.client_seed(self.seed, task.round, int(party_id))
        return dataclasses.replace(task, config=task.config.with_seed(seed))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)


def _model(args: argparse.Namespace, cfg: common.DataConfig) -> nn.Module:
    if not args.hidden:
        return common.build_model(args.model, cfg)
    f, c = cfg.num_features, cfg.num_classes
    return nn.Sequential(
        nn.Linear(f, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 200), nn.ReLU(),
        nn.Linear(200, c),
    )  # fmt: skip


def _backend(args: argparse.Namespace) -> Backend:
    parallel = args.backend in ("processes", "ray")
    return Backend(
        name=args.backend,
        workers=args.workers if parallel else 0,
        threads=args.threads,
        cohort_size=args.cohort_size if args.backend == "cohort" else 0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_common_args(parser)
    parser.add_argument(
        "--backend", choices=["local", "processes", "cohort", "ray"], default="local"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="processes / ray: workers (0: one per core)"
    )
    parser.add_argument(
        "--cohort-size", type=int, default=0, help="cohort: parties at once (0: auto)"
    )
    parser.add_argument("--hidden", type=int, default=0, help="784-H-200-10 MLP instead of --model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = common.data_config_from_args(args)

    t_setup = time.perf_counter()
    torch.manual_seed(args.seed)  # what common.initial_model does, for --hidden too
    global_model = _model(args, cfg)
    x_test, y_test = common.load_test(cfg)
    parts = {}
    for pid in range(args.clients):
        x, y = common.load_partition(cfg, pid, args.clients)
        parts[str(pid)] = (x.numpy(), y.numpy())
    dataset = FederatedDataset.from_dict(parts, num_classes=cfg.num_classes)
    adapter = TorchAdapter(_model(args, cfg))
    eval_adapter = TorchAdapter(global_model)
    initial = eval_adapter.get_weights()
    eval_seconds = [0.0]

    def central_eval(weights: Mapping[str, Any]) -> dict[str, float]:
        start = time.perf_counter()
        eval_adapter.set_weights(weights)
        loss, acc = common.evaluate(global_model, x_test, y_test)
        eval_seconds[0] += time.perf_counter() - start
        return {"loss": loss, "accuracy": acc}

    backend = _backend(args)
    config = TrainConfig(
        epochs=args.local_epochs, batch_size=args.batch_size, optimizer="sgd", learning_rate=args.lr
    )
    history = []
    round_times, client_compute = [], []
    with make_pool(backend, dataset, adapter) as pool:
        federation = Federation(
            HarnessSeeds(pool, args.seed),
            initial,
            fusion="fedavg",
            config=config,
            aggregation=Aggregation(max_update_ratio=None),  # the plain loop screens nothing
            seed=args.seed,
            central_eval=central_eval,
        )
        t_rounds = time.perf_counter()
        history.append({"round": 0, "accuracy": central_eval(initial)["accuracy"]})
        rejected = 0
        for rnd in range(1, args.rounds + 1):
            t0, e0, c0 = time.perf_counter(), eval_seconds[0], pool.train_seconds
            record = federation.run_round()
            round_times.append(time.perf_counter() - t0 - (eval_seconds[0] - e0))
            client_compute.append(pool.train_seconds - c0)
            rejected += len(record["rejected"]) + len(record["failed"])
            acc, loss = record["central"]["accuracy"], record["central"]["loss"]
            history.append({"round": rnd, "accuracy": acc, "loss": loss})
            print(
                f"[fedfuse-{args.backend}] round {rnd}/{args.rounds}: {round_times[-1]:.2f}s "
                f"(client train {client_compute[-1]:.2f}s) acc={acc:.4f}",
                flush=True,
            )
        parallelism = getattr(pool, "parallelism", 1)
        paths = {k: getattr(pool, k) for k in ("vectorized", "fell_back") if hasattr(pool, k)}
        if getattr(pool, "fallback_reason", ""):
            paths["fallback_reason"] = pool.fallback_reason
    t_end = time.perf_counter()

    summary = {
        "runner": f"fedfuse-{args.backend}",
        "backend": args.backend,
        "workers": parallelism if args.backend in ("processes", "ray") else 0,
        "model": args.model if not args.hidden else f"mlp{args.hidden}",
        "params": common.num_params(global_model),
        "clients": args.clients,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "threads": args.threads,
        "final_accuracy": history[-1]["accuracy"],
        "accuracy_per_round": [h["accuracy"] for h in history],
        "import_s": T_IMPORTED - T_START,
        "setup_s": t_rounds - t_setup,
        "fl_loop_s": t_end - t_rounds,
        "total_in_script_s": t_end - T_START,
        "round_s": round_times,
        "mean_round_s": sum(round_times) / len(round_times),
        "mean_steady_round_s": (sum(round_times[1:]) / len(round_times[1:]))
        if len(round_times) > 1
        else None,
        "client_train_s_per_round": client_compute,
        "rejected_or_failed": rejected,
        "pool_paths": paths,
        "maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "fedfuse": fedfuse.__version__,
        },
        "cpu_count": os.cpu_count(),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    steady = summary["mean_steady_round_s"]
    print(
        f"[fedfuse-{args.backend}] final accuracy {summary['final_accuracy']:.4f} | "
        f"FL loop {summary['fl_loop_s']:.2f}s | round1 {round_times[0]:.2f}s | "
        f"mean round 2..R {steady if steady is not None else float('nan'):.2f}s | "
        f"total in-script {summary['total_in_script_s']:.2f}s",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    sys.exit(main())
