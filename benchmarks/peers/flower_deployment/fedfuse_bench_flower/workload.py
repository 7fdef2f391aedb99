"""The party training code both frameworks run in the service benchmark (numpy only).

``bench_service.py``'s fedfuse parties (``ClientParty`` wrapping a Flower-style client) and the
Flower ``ClientApp`` of this app call these same functions, so the two runtimes carry exactly
the same local work: ``fit`` adds a constant to every parameter, ``evaluate`` answers constants.
Both are timed in CPU seconds of the calling thread (their wall time mostly measures waiting for
a busy machine), so the benchmark can subtract the parties' own work from a round's time.
"""

from __future__ import annotations

import time

import numpy as np

INPUT_SIZE = 784
NUM_CLASSES = 10
DELTA = 1e-3  # what every party adds to every parameter in fit
NUM_EXAMPLES = 10  # what every party reports (FedAvg then weights all parties alike)
LOSS, ACCURACY = 0.5, 0.9  # what every party's evaluation answers


def make_weights(num_params: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Named float32 arrays shaped like an MLP 784-h-10 with about ``num_params`` parameters."""
    hidden = max(1, round((num_params - NUM_CLASSES) / (INPUT_SIZE + 1 + NUM_CLASSES)))
    rng = np.random.default_rng(seed)
    shapes = {
        "fc1.weight": (hidden, INPUT_SIZE),
        "fc1.bias": (hidden,),
        "fc2.weight": (NUM_CLASSES, hidden),
        "fc2.bias": (NUM_CLASSES,),
    }
    return {
        name: (rng.standard_normal(shape) * 0.01).astype(np.float32)
        for name, shape in shapes.items()
    }


def fit(parameters: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """The new parameters (each + ``DELTA``) and the thread CPU seconds it took."""
    cpu = time.thread_time()
    new = [p + np.float32(DELTA) for p in parameters]
    return new, time.thread_time() - cpu


def evaluate(parameters: list[np.ndarray]) -> tuple[float, float, float]:
    """``(loss, accuracy, CPU seconds)`` of the global model: constants, at no cost."""
    cpu = time.thread_time()
    return LOSS, ACCURACY, time.thread_time() - cpu
