"""One federation, three backends: in-process, worker processes, and vectorized cohorts.

Run it:  .venv/bin/python examples/backends.py

100 parties hold scikit-learn's digits; FedAvg trains a logistic regression for 10 rounds. The
spec is the same each time but for ``backend``:

- ``local``: every party in this process, one after another;
- ``processes``: one worker process per core, each holding its shard of parties and a copy of
  the model; the replies are folded in the same order, so the weights are the same bit for bit
  (torch runs one thread per worker, and here too, for the comparison);
- ``cohort``: many parties' copies of the model trained at once with ``torch.func.vmap``; close
  to the others, not bit-exact (summation order).

``backend="ray"`` runs the same over Ray actors (``pip install 'fedfuse[ray]'``); see the README.
"""

import time

import numpy as np
import torch

import fedfuse


def main(num_parties: int = 100, rounds: int = 10) -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each worker uses: the processes backend matches bit for bit
    try:
        return _compare(num_parties, rounds)
    finally:
        torch.set_num_threads(threads)


def _compare(num_parties: int, rounds: int) -> dict[str, dict]:
    settings = {
        "dataset": "digits",
        "model": "logreg",
        "num_parties": num_parties,
        "partition": "iid",
        "rounds": rounds,
        "batch_size": 8,
        "learning_rate": 0.1,
        "centralized": False,
        "federated_eval": False,
    }
    fedfuse.simulate(**{**settings, "rounds": 1})  # warm-up: torch's first steps are slow
    runs: dict[str, dict] = {}
    for backend in ("local", "processes", "cohort"):
        start = time.perf_counter()
        result = fedfuse.simulate(**settings, backend=backend)
        seconds = time.perf_counter() - start
        runs[backend] = {
            "seconds": seconds,
            "accuracy": result.history[-1]["central"]["accuracy"],
            "weights": result.weights,
        }
    reference = runs["local"]["weights"]
    for backend, run in runs.items():
        gap = max(float(np.abs(run["weights"][k] - reference[k]).max()) for k in reference)
        run["max_weight_gap"] = gap
        print(
            f"{backend:>9}: {run['seconds']:5.1f} s, test accuracy {run['accuracy']:.3f}, "
            f"largest weight difference to local {gap:.2g}"
        )
    return runs


if __name__ == "__main__":
    main()
