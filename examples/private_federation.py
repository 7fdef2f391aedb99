"""Privacy built in: differential privacy with a budget, and secure aggregation.

Run it:  .venv/bin/python examples/private_federation.py

1. DP-FedAvg: each round samples parties by Poisson sampling (q = 0.3), clips every update to
   norm 1, adds Gaussian noise of 0.5 x the clip to the sum, and the accountant (dp-accounting's
   PLD) reports epsilon at delta = 1e-5 after every round; a round that would take epsilon past
   ``max_epsilon`` is not run. With only 100 parties the noise costs accuracy and epsilon is
   large: user-level DP needs many parties (see benchmarks/results/privacy.md for 1000).
2. SecAgg+: the aggregator learns only the sum of the parties' updates, yet the fused model is
   plain FedAvg's, to within the quantization step.
"""

import numpy as np

from fedfuse import simulate

QUIET = {"evaluation": {"centralized": False, "federated": False}}


def main():
    private = simulate(
        dataset="digits",
        num_parties=100,
        rounds=25,
        fraction=0.3,
        poisson=True,  # the sampler the accountant's amplification assumes
        noise_multiplier=0.5,
        l2_norm_clip=1.0,
        max_epsilon=30.0,
        learning_rate=0.1,
        epochs=2,
        batch_size=8,
        **QUIET,
    )
    for r in private.history[::5]:
        print(f"round {r['round']}: accuracy {r['central']['accuracy']:.3f}, "
              f"epsilon {r['epsilon']:.2f} at delta {r['delta']:g}")  # fmt: skip
    print(private.stop_reason or "the budget lasted all rounds")

    common = {"dataset": "digits", "num_parties": 8, "rounds": 5, "learning_rate": 0.1, **QUIET}
    plain = simulate(**common)
    secure = simulate(**common, secagg=True, clip_range=2.0)
    gap = max(float(np.abs(secure.weights[n] - plain.weights[n]).max()) for n in plain.weights)
    print(f"secure aggregation: accuracy {secure.history[-1]['central']['accuracy']:.3f}, "
          f"largest weight difference to plain FedAvg {gap:.2e}")  # fmt: skip
    return private, plain, secure


if __name__ == "__main__":
    main()
