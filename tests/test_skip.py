"""Aggregation only when necessary: parties skip updates that say little new."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from fedfuse import simulate
from fedfuse.data import PartyData, federate
from fedfuse.federation import Federation
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.party import Party, Skipped, TrainTask, Update
from fedfuse.runtime import LocalPool
from helpers import blobs


def _party():
    torch.manual_seed(0)
    return Party(TorchAdapter(nn.Linear(5, 3)), PartyData(blobs(120)), "p0")


def test_relative_norm_below_the_threshold_is_skipped():
    party = _party()
    start = party.adapter.get_weights()
    config = TrainConfig(learning_rate=0.1, seed=1)
    sent = party.handle(TrainTask(1, start, config))
    assert isinstance(sent, Update)
    norm = np.sqrt(sum(float(np.sum(v**2)) for v in sent.weights.values()))
    relative = norm / np.sqrt(sum(float(np.sum(v**2)) for v in start.values()))
    reply = party.handle(TrainTask(1, start, replace(config, skip_relative_norm=relative * 1.01)))
    assert isinstance(reply, Skipped) and reply.num_examples == 120
    assert reply.reason.startswith("relative update norm") and "loss" in reply.metrics
    reply = party.handle(TrainTask(1, start, replace(config, skip_relative_norm=relative * 0.99)))
    assert isinstance(reply, Update)


def test_cosine_to_the_last_update_sent():
    party = _party()
    start = party.adapter.get_weights()
    config = TrainConfig(learning_rate=0.1, seed=1, skip_cosine=0.99)
    assert isinstance(party.handle(TrainTask(1, start, config)), Update)  # nothing sent yet
    again = party.handle(TrainTask(2, start, config))  # the same training: cosine 1
    assert isinstance(again, Skipped) and again.reason.startswith("cosine to the last update")
    other = {k: v + 0.5 for k, v in start.items()}
    assert isinstance(
        party.handle(TrainTask(3, other, TrainConfig(seed=2, skip_cosine=1.0))), Update
    )


class StepAdapter:
    """A model whose training always moves the weights by ``step``: the delta is ``step``."""

    def __init__(self, step):
        self.step, self.w = np.asarray(step, np.float32), None

    def get_weights(self):
        return {"w": self.w.copy()}

    def set_weights(self, weights):
        self.w = np.array(weights["w"])

    def fit(self, data, config):
        self.w = self.w + self.step
        return {"loss": 0.0}


def test_cosine_to_how_the_global_model_moved_by_hand():
    party = Party(StepAdapter([1.0, 0.0]), PartyData(blobs(10)), "p0")
    config = TrainConfig(skip_cosine=0.9, skip_cosine_to="global", max_consecutive_skips=5)
    w0 = {"w": np.zeros(2, np.float32)}
    assert isinstance(party.handle(TrainTask(1, w0, config)), Update)  # no reference yet
    # the global model moved by [2, 0]: cosine([1, 0], [2, 0]) = 1 > 0.9
    w1 = {"w": np.array([2.0, 0.0], np.float32)}
    reply = party.handle(TrainTask(2, w1, config))
    assert isinstance(reply, Skipped) and "cosine to how the global model moved 1 > 0.9" in (
        reply.reason
    )
    # nothing fused since: no direction to compare with, so the party sends
    assert isinstance(party.handle(TrainTask(3, w1, config)), Update)
    # moved by [1, 1]: cosine 0.707 < 0.9
    w2 = {"w": np.array([3.0, 1.0], np.float32)}
    assert isinstance(party.handle(TrainTask(4, w2, config)), Update)


def test_a_round_where_everyone_skips_is_not_fused_and_counts_what_was_saved():
    fed = federate(blobs(300), blobs(60, seed=1), num_parties=3, scheme="iid", seed=0)
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Linear(5, 3))
    initial = adapter.get_weights()
    federation = Federation(
        LocalPool.from_dataset(fed, adapter),
        initial,
        config=TrainConfig(learning_rate=0.1, skip_relative_norm=100.0),
    )
    record = federation.run_round()
    assert not record["fused"] and record["participants"] == []
    assert record["skipped"] == fed.party_ids
    assert record["bytes_up"] == 0 and record["bytes_dense"] == 3 * (15 + 3) * 4
    assert record["train"]["num_examples"] == sum(len(d) for d in fed.train_data())
    for name in initial:
        np.testing.assert_array_equal(federation.weights[name], initial[name])


def test_a_party_skips_at_most_max_consecutive_skips_rounds_in_a_row():
    """Otherwise a federation where everyone skips would stand still for ever."""
    fed = federate(blobs(300), blobs(60, seed=1), num_parties=3, scheme="iid", seed=0)
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Linear(5, 3))
    config = TrainConfig(learning_rate=0.1, skip_relative_norm=100.0, max_consecutive_skips=2)
    federation = Federation(
        LocalPool.from_dataset(fed, adapter), adapter.get_weights(), config=config
    )
    history = federation.run(6)
    assert [r["fused"] for r in history] == [False, False, True, False, False, True]
    assert [len(r["skipped"]) for r in history] == [3, 3, 0, 3, 3, 0]


@pytest.mark.parametrize(
    ("skip", "rounds_with_skips"),
    [({"skip_relative_norm": 0.055}, [1]), ({"skip_cosine": 0.93}, [3, 5])],
)
def test_skipping_saves_messages_and_still_trains(digits, skip, rounds_with_skips):
    train, test = digits
    fed = federate(train, test, num_parties=5, scheme="iid", seed=0)
    result = simulate(
        federated_data=fed,
        rounds=6,
        epochs=2,
        batch_size=16,
        learning_rate=0.1,
        centralized=False,
        federated_eval=False,
        **skip,
    )
    assert [r["round"] for r in result.history if r["skipped"]] == rounds_with_skips
    skipped = sum(len(r["skipped"]) for r in result.history)
    sent = sum(len(r["participants"]) for r in result.history)
    assert skipped > 0 and skipped + sent == 30
    assert sum(r["bytes_up"] for r in result.history) == sent * 4 * 55210
    assert result.history[-1]["central"]["accuracy"] > 0.85  # FedAvg without skipping: 0.91
