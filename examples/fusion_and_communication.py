"""Fusion algorithms and communication in one federation.

Run it:  .venv/bin/python examples/fusion_and_communication.py

Clipped updates fused by FedAvg and then a server-side Adam step (FedAdam), parties training
with FedProx's proximal term, deltas sent as int8 (about a quarter of the fp32 bytes), and
parties skipping a round when their update points where their last one did.
"""

import torch
from torch import nn

from fedfuse import (
    Aggregation,
    Federation,
    LocalPool,
    TorchAdapter,
    TrainConfig,
    federate,
    load_dataset,
)
from fedfuse.fusion import chain, clip_by_norm, fedavg, server_adam


def main() -> Federation:
    train, test = load_dataset("digits")
    parties = federate(train, test, num_parties=10, scheme="dirichlet", alpha=1.0, seed=0)

    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))

    def central_eval(weights):
        adapter.set_weights(weights)
        return adapter.evaluate(parties.test)

    federation = Federation(
        LocalPool.from_dataset(parties, adapter),
        adapter.get_weights(),
        fusion=chain(clip_by_norm(2.0), fedavg(), server_adam(server_learning_rate=0.03)),
        config=TrainConfig(
            epochs=2,
            batch_size=16,
            learning_rate=0.1,
            proximal_mu=0.01,  # FedProx
            compression="int8",  # int8 deltas with a per-tensor scale
            skip_cosine=0.95,  # skip when the update repeats the last one sent
        ),
        central_eval=central_eval,
        aggregation=Aggregation(max_update_norm=50.0),  # reject anything larger first
    )
    for r in federation.run(rounds=8):
        print(
            f"round {r['round']}: accuracy {r['central']['accuracy']:.3f}, "
            f"sent {len(r['participants'])}, skipped {len(r['skipped'])}, "
            f"{r['bytes_up']:,} of {r['bytes_dense']:,} bytes"
        )
    return federation


if __name__ == "__main__":
    main()
