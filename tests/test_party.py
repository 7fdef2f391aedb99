import numpy as np
import torch
from torch import nn

from fedfuse.data import PartyData
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.party import EvaluateTask, Evaluation, Party, TaskError, TrainTask, Update
from fedfuse.runtime import LocalPool
from helpers import blobs


def _party(pid="p0", test=True):
    torch.manual_seed(0)
    data = blobs(120)
    return Party(
        TorchAdapter(nn.Linear(5, 3)), PartyData(data, blobs(30, seed=1) if test else None), pid
    )


def test_train_task_returns_a_delta_that_reproduces_local_weights():
    party = _party()
    start = party.adapter.get_weights()
    reply = party.handle(TrainTask(1, start, TrainConfig(learning_rate=0.1, seed=3)))
    assert isinstance(reply, Update)
    assert reply.is_delta and reply.num_examples == 120 and reply.party_id == "p0"
    local = party.adapter.get_weights()
    for k in start:
        np.testing.assert_allclose(start[k] + reply.weights[k], local[k], atol=1e-6)
    assert {"loss", "accuracy"} <= set(reply.metrics)


def test_train_task_can_send_full_weights():
    party = _party()
    start = party.adapter.get_weights()
    reply = party.handle(TrainTask(1, start, TrainConfig(seed=3), send_delta=False))
    np.testing.assert_array_equal(reply.weights["weight"], party.adapter.get_weights()["weight"])
    assert not reply.is_delta


def test_evaluate_task_and_missing_split():
    party = _party()
    reply = party.handle(EvaluateTask(0, party.adapter.get_weights()))
    assert isinstance(reply, Evaluation) and reply.num_examples == 30
    assert 0.0 <= reply.metrics["accuracy"] <= 1.0
    reply = _party(test=False).handle(EvaluateTask(0, party.adapter.get_weights()))
    assert isinstance(reply, TaskError) and "no test data" in reply.message


def test_bad_task_becomes_an_error_reply_not_an_exception():
    party = _party()
    bad = {"weight": np.zeros((9, 9), dtype=np.float32), "bias": np.zeros(3, dtype=np.float32)}
    reply = party.handle(TrainTask(1, bad))
    assert isinstance(reply, TaskError) and "'weight' has shape" in reply.message
    reply = party.handle(TrainTask(1, party.adapter.get_weights(), TrainConfig(optimizer="x")))
    assert isinstance(reply, TaskError) and "unknown optimizer" in reply.message


def test_parties_sharing_an_adapter_do_not_leak_state():
    torch.manual_seed(0)
    adapter = TorchAdapter(nn.Linear(5, 3))
    start = adapter.get_weights()
    a = Party(adapter, PartyData(blobs(50, seed=1)), "a")
    b = Party(adapter, PartyData(blobs(50, seed=2)), "b")
    task = TrainTask(1, start, TrainConfig(seed=0, learning_rate=0.1))
    first_b = b.handle(task).weights
    a.handle(task)
    again_b = b.handle(task).weights
    for k in start:
        np.testing.assert_array_equal(first_b[k], again_b[k])


def test_local_pool_dispatch_unknown_party_and_deadline():
    party = _party()
    pool = LocalPool({"p0": party})
    task = EvaluateTask(0, party.adapter.get_weights())
    replies = dict(pool.dispatch({"p0": task, "ghost": task}))
    assert isinstance(replies["p0"], Evaluation)
    assert (
        isinstance(replies["ghost"], TaskError)
        and "unknown party 'ghost'" in replies["ghost"].message
    )
    late = dict(pool.dispatch({"p0": task}, timeout=-1))
    assert "deadline" in late["p0"].message
