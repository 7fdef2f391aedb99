"""The round loop by hand: your own model, parties, fusion chain and checkpoints.

Run it:  .venv/bin/python examples/federation_loop.py

This is what ``simulate`` does inside, and what the service does with remote parties: a
``Federation`` drives a pool of parties; only the pool (the transport) would change.
"""

import tempfile

import torch
from torch import nn

from fedfuse import Federation, LocalPool, TorchAdapter, TrainConfig, federate, load_dataset


def main(checkpoint_dir: str | None = None) -> Federation:
    train, test = load_dataset("breast_cancer")  # 30 features, 2 classes, 4 "hospitals"
    hospitals = federate(train, test, num_parties=4, scheme="quantity", alpha=2.0, seed=0)

    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2)))

    def central_eval(weights):
        adapter.set_weights(weights)
        return adapter.evaluate(hospitals.test)

    federation = Federation(
        LocalPool.from_dataset(hospitals, adapter),
        adapter.get_weights(),
        fusion="fedavg",
        config=TrainConfig(epochs=1, batch_size=16, optimizer="adam", learning_rate=0.01),
        central_eval=central_eval,
        checkpoint_dir=checkpoint_dir or tempfile.mkdtemp(),
    )
    for record in federation.run(rounds=8):
        print(record["round"], record["participants"], f"{record['central']['accuracy']:.3f}")
    return federation


if __name__ == "__main__":
    main()
