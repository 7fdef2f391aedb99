"""Reproducible under concurrency: a seeded run depends on its seed alone.

Threat: two federations train at the same time on threads of one process (the service does
this). If library code seeded torch's process-wide generator, one federation's draws (batch
order, dropout) would land in the other's stream, and neither would be reproducible; a library
call would also change the caller's own RNG state.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse.data import federate
from fedfuse.federation import Federation
from fedfuse.models import TorchAdapter, TrainConfig, torch_seed, train_centralized
from fedfuse.recipes import build_fedavg_process, simulate
from fedfuse.runtime import LocalPool
from helpers import blobs


def _model(seed: int) -> TorchAdapter:
    with torch_seed(seed):
        return TorchAdapter(
            nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        )


def _federation(seed: int) -> Federation:
    fed = federate(blobs(240, seed=seed), blobs(60, seed=seed + 1), 3, "iid", seed=seed)
    adapter = _model(seed)
    config = TrainConfig(epochs=2, batch_size=8, learning_rate=0.1)
    return Federation(
        LocalPool.from_dataset(fed, adapter), adapter.get_weights(), config=config, seed=seed
    )


def _train(seed: int, rounds: int = 4, start: threading.Barrier | None = None) -> dict:
    federation = _federation(seed)
    if start is not None:
        start.wait(timeout=120)
    federation.run(rounds)
    return federation.weights


def _train_together(seeds: tuple[int, ...]) -> dict[int, dict]:
    """Train one federation per seed, each on its own thread, all starting at once."""
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(seeds))

    def run(seed: int) -> None:
        try:
            results[seed] = _train(seed, start=start)
        except BaseException as exc:  # surfaced below, with the thread's error
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and not any(t.is_alive() for t in threads), errors
    return results


def test_two_federations_in_two_threads_give_what_each_gives_alone():
    alone = {seed: _train(seed) for seed in (1, 2)}
    assert any(not np.array_equal(alone[1][k], alone[2][k]) for k in alone[1])
    for _attempt in range(3):  # several interleavings; each must match exactly
        together = _train_together((1, 2))
        for seed in (1, 2):
            for name, value in alone[seed].items():
                np.testing.assert_array_equal(together[seed][name], value, err_msg=name)


def test_a_seeded_fit_does_not_depend_on_the_global_generator():
    data = blobs(64, seed=3)
    results = []
    for global_seed in (0, 99):
        torch.manual_seed(global_seed)
        adapter = _model(5)
        adapter.fit(data, TrainConfig(epochs=2, batch_size=8, seed=7))
        results.append(adapter.get_weights())
    for name in results[0]:
        np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)


@pytest.mark.parametrize(
    "call",
    [
        lambda: _model(1).fit(blobs(32), TrainConfig(batch_size=8, seed=3)),
        functools.partial(TorchAdapter(nn.Linear(5, 3)).fit, blobs(32), TrainConfig(seed=3)),
        lambda: _federation(1).run(1),
        lambda: train_centralized(
            lambda: nn.Sequential(nn.Linear(5, 3)), blobs(32), blobs(16), TrainConfig(), 1, seed=4
        ),
        lambda: build_fedavg_process(lambda: nn.Linear(5, 3), seed=4).initialize(),
        lambda: simulate(
            rounds=1, num_parties=2, partition="iid", centralized=False, federated_eval=False
        ),
    ],
    ids=["fit-dropout", "fit", "federation", "centralized", "process", "simulate"],
)
def test_library_calls_leave_the_callers_rng_state_alone(call):
    torch.manual_seed(2024)
    before = torch.random.get_rng_state()
    call()
    assert torch.equal(torch.random.get_rng_state(), before)


def test_torch_seed_seeds_the_block_and_restores_the_state():
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    with torch_seed(5):
        inside = torch.rand(3)
    with torch_seed(5):
        assert torch.equal(torch.rand(3), inside)
    assert torch.equal(torch.rand(3), expected_next)
