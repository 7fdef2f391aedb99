"""Shared set-up of the fusion and communication benchmarks (bench_robust, bench_skip,
bench_compression, bench_fedbuff): data, model, federation, where and how results are written.

All of them use the same workload unless a script says otherwise: Fashion-MNIST (Debian's
``dataset-fashion-mnist``), a seeded random subset of the 60k training images split among the
parties, the whole 10k test set held by the aggregator, an MLP 784-128-10, plain SGD.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfuse.data import FederatedDataset, federate, load_dataset
from fedfuse.federation import Federation
from fedfuse.models import TorchAdapter, TrainConfig, mlp
from fedfuse.weights import Weights

RESULTS = Path(__file__).resolve().parent / "results"
HIDDEN = (128,)


def machine() -> str:
    load = os.getloadavg()[0]
    return (
        f"{platform.platform()} ({platform.machine()}), {len(os.sched_getaffinity(0))} usable "
        f"CPU(s), torch {torch.__version__} with {torch.get_num_threads()} thread(s), "
        f"load average at start {load:.2f}"
    )


def fashion_parties(
    num_parties: int, per_party: int, scheme: str = "iid", seed: int = 0, **params: Any
) -> FederatedDataset:
    """``num_parties`` x ``per_party`` Fashion-MNIST training images (seeded subset)."""
    train, test = load_dataset("fashion_mnist")
    rng = np.random.default_rng(seed)
    subset = train.subset(rng.permutation(len(train))[: num_parties * per_party])
    return federate(subset, test, num_parties, scheme, seed=seed, local_test_fraction=0, **params)


def model_fn(fed: FederatedDataset) -> Callable[[], torch.nn.Module]:
    shape = fed[fed.party_ids[0]].train.x.shape[1:]
    return lambda: mlp(shape, fed.num_classes, hidden=HIDDEN)


def central_evaluator(fed: FederatedDataset) -> Callable[[Weights], dict[str, float]]:
    evaluator = TorchAdapter(model_fn(fed)())

    def central_eval(weights: Weights) -> dict[str, float]:
        evaluator.set_weights(weights)
        return evaluator.evaluate(fed.test)

    return central_eval


def federation(
    fed: FederatedDataset,
    config: TrainConfig,
    *,
    seed: int = 0,
    wrap_pool: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Federation:
    """A federation over ``fed`` with central evaluation after each round (same init per seed)."""
    from fedfuse.runtime import LocalPool

    torch.manual_seed(seed)
    adapter = TorchAdapter(model_fn(fed)())
    pool = LocalPool.from_dataset(fed, adapter)
    return Federation(
        wrap_pool(pool) if wrap_pool else pool,
        adapter.get_weights(),
        config=config,
        seed=seed,
        central_eval=central_evaluator(fed),
        **kwargs,
    )


def write(name: str, doc: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md``; returns both paths."""
    doc = {"measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **doc}
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=1))
    md_path.write_text(markdown)
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path
