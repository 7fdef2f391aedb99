"""The Model Fusion API's three uses on one label-skewed federation, offline.

scikit-learn's digits split among parties with a Dirichlet label skew, then, with
``fedfuse.simulate(use=...)`` (or ``fedfuse simulate --use ...``):

1. **aggregate** (the default): one global model by FedAvg;
2. **personalize**: each party's accuracy on its own test split with a model trained alone,
   the global model, the global model fine-tuned locally, and the global body with a
   classifier head that never left the party;
3. **ensemble**: FedAvg against an ensemble of the parties' own models (uniform, validation-
   weighted, class-wise) and one model distilled from it on unlabeled data the aggregator holds;
4. **oneshot**: models trained independently from different random initializations, fused once
   by plain averaging or by neuron matching.

Run: ``python examples/three_uses.py``.
"""

from __future__ import annotations

import fedfuse
from fedfuse.recipes import format_use_report

COMMON = {"dataset": "digits", "model": "mlp", "partition": "dirichlet", "seed": 0}


def main() -> dict:
    out = {}
    out["aggregate"] = fedfuse.simulate(
        **COMMON, alpha=0.5, num_parties=5, rounds=10, epochs=2, batch_size=16,
        learning_rate=0.1, centralized=False,
    ).history[-1]["central"]  # fmt: skip
    out["personalize"] = fedfuse.simulate(
        **COMMON, use="personalize", alpha=0.3, num_parties=10, rounds=15, epochs=1,
        batch_size=16, learning_rate=0.1, finetune_epochs=5,
    ).report  # fmt: skip
    out["ensemble"] = fedfuse.simulate(
        **COMMON, use="ensemble", alpha=0.5, num_parties=5, rounds=10, epochs=1, batch_size=16,
        optimizer="adam", learning_rate=0.003, ensemble_weighting="classwise", distill_epochs=40,
    ).report  # fmt: skip
    out["oneshot"] = fedfuse.simulate(
        **COMMON, use="oneshot", alpha=0.5, num_parties=3, rounds=1, epochs=20,
        optimizer="adam", learning_rate=0.003,
    ).report  # fmt: skip
    return out


if __name__ == "__main__":
    reports = main()
    print(f"aggregate: FedAvg central accuracy {100 * reports['aggregate']['accuracy']:.1f}%")
    for use in ("personalize", "ensemble", "oneshot"):
        print(f"\n== {use}\n{format_use_report(use, reports[use])}")
