"""Independent edge models improved by model sharing: per-party models compared.

``compare_personalization`` trains, on the same parties and with the same local compute:

- **local**: each party alone (``rounds * epochs`` local epochs from the same initial model);
- **global**: FedAvg for ``rounds`` rounds, the one global model;
- **finetuned**: the global model fine-tuned by each party for ``finetune_epochs`` epochs;
- **personal**: FedAvg in which the ``personal`` layers (by default the classifier head) never
  leave the parties, so each party ends with the shared body and its own head.

and reports each party's accuracy of each model on the party's own test split.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from fedfuse.data import FederatedDataset
from fedfuse.federation import Federation, Sampling, WeightedMetrics, derive_seed
from fedfuse.models import TorchAdapter, TrainConfig, torch_seed
from fedfuse.party import Party, PersonalAdapter, head_layer
from fedfuse.runtime import LocalPool

__all__ = ["PERSONALIZATION_MODELS", "compare_personalization", "resolve_personal"]

PERSONALIZATION_MODELS = ("local", "global", "finetuned", "personal")


def resolve_personal(spec: str | Sequence[str], weights: dict) -> tuple[str, ...]:
    """``"head"`` -> the last layer's names; ``"a,b"`` or a sequence -> those names/prefixes."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if names == ["head"]:
        return head_layer(weights)
    if not names:
        raise ValueError("personal layers must name at least one parameter (or 'head')")
    for name in names:
        if not any(w == name or w.startswith(name.rstrip(".") + ".") for w in weights):
            raise ValueError(
                f"personal layer {name!r} matches no parameter; parameters: {', '.join(weights)}"
            )
    return tuple(names)


def compare_personalization(
    fed: FederatedDataset,
    model_fn: Callable[[], nn.Module],
    config: TrainConfig,
    rounds: int,
    *,
    personal: str | Sequence[str] = "head",
    finetune_epochs: int = 2,
    sampling: Sampling | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-party test accuracy of local-only, global, fine-tuned and personal-layer models.

    Returns ``{"parties": {party: {model: accuracy, "test_examples": n}}, "mean": {model:
    accuracy weighted by test examples}, "personal_layers": [...], "history": FedAvg's
    per-round records}``. Every party needs a local test split.
    """
    missing = [p for p in fed.party_ids if fed[p].test is None or len(fed[p].test) == 0]
    if missing:
        raise ValueError(f"personalization is measured on each party's test split; none: {missing}")
    if not isinstance(finetune_epochs, int) or finetune_epochs < 1:
        raise ValueError(f"finetune_epochs must be an integer >= 1, got {finetune_epochs!r}")
    with torch_seed(seed):
        adapter = TorchAdapter(model_fn())
    initial = adapter.get_weights()
    names = resolve_personal(personal, initial)
    results: dict[str, dict[str, float]] = {p: {} for p in fed.party_ids}

    def score(model: str, pid: str, evaluator: Any) -> None:
        results[pid][model] = evaluator.evaluate(fed[pid].test)["accuracy"]

    local_config = dataclasses.replace(config, epochs=rounds * config.epochs)
    for pid in fed.party_ids:
        adapter.set_weights(initial)
        adapter.fit(fed[pid].train, local_config.with_seed(derive_seed(seed, 0, pid)))
        score("local", pid, adapter)

    options = {"config": config, "sampling": sampling, "seed": seed}
    fedavg = Federation(LocalPool.from_dataset(fed, adapter), initial, **options)
    history = fedavg.run(rounds)
    finetune = dataclasses.replace(config, epochs=finetune_epochs)
    for pid in fed.party_ids:
        adapter.set_weights(fedavg.weights)
        score("global", pid, adapter)
        tuned = PersonalAdapter(adapter, finetune=finetune, finetune_data=fed[pid].train)
        tuned.set_weights(fedavg.weights)
        score("finetuned", pid, tuned)

    adapter.set_weights(initial)
    views = {pid: PersonalAdapter(adapter, names) for pid in fed.party_ids}
    pool = LocalPool({pid: Party(views[pid], fed[pid], pid) for pid in fed.party_ids})
    first = views[fed.party_ids[0]]
    shared = Federation(pool, first.get_weights(), **options)
    shared.run(rounds)
    for pid in fed.party_ids:
        views[pid].set_weights(shared.weights)
        score("personal", pid, views[pid])

    mean = WeightedMetrics()
    for pid in fed.party_ids:
        results[pid]["test_examples"] = len(fed[pid].test)
        mean.add({m: results[pid][m] for m in PERSONALIZATION_MODELS}, len(fed[pid].test))
    summary = mean.result()
    summary.pop("num_examples", None)
    return {
        "parties": results,
        "mean": summary,
        "personal_layers": list(names),
        "history": history,
    }
