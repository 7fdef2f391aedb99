"""Federated averaging round by round, the TensorFlow Federated way (flow 3 of DESIGN.md).

Run it:  .venv/bin/python examples/tff_style_process.py

Parties are grouped by a natural key, as EMNIST groups by writer: here each digit image of
scikit-learn's bundled set is given to one of 12 "writers" (a seeded Dirichlet label skew), and
8 writers train while 4 are held out for federated evaluation on parties never seen in training.
"""

from torch import nn

import fedfuse
from fedfuse.data import federate, load_dataset

ROUNDS = 10


def model_fn() -> nn.Module:
    """A fresh model each call; any nn.Module works."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def main() -> dict:
    train, test = load_dataset("digits")
    writers = federate(train, test, num_parties=12, scheme="dirichlet", alpha=1.0, seed=1)
    train_ids, test_ids = writers.party_ids[:8], writers.party_ids[8:]
    federated_train_data = writers.train_data(train_ids)  # one ArrayDataset per party
    federated_test_data = writers.train_data(test_ids)

    process = fedfuse.build_fedavg_process(
        model_fn, optimizer="sgd", learning_rate=0.1, epochs=2, batch_size=16
    )
    state = process.initialize()
    for _ in range(ROUNDS):
        state, metrics = process.next(state, federated_train_data)
        print(f"round {state.round:2d}, metrics={metrics}")

    evaluation = fedfuse.build_federated_evaluation(model_fn)
    train_metrics = evaluation(state.weights, federated_train_data)
    test_metrics = evaluation(state.weights, federated_test_data)
    print("train parties:", train_metrics)
    print("held-out parties:", test_metrics)
    return {"last_round": metrics, "train": train_metrics, "test": test_metrics}


if __name__ == "__main__":
    main()
