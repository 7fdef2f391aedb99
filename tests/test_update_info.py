"""Side information on updates (``Update.info``): what parties share, how it crosses the wire,
and the transforms that read it instead of going around the fusion contract."""

import json

import numpy as np
import pytest

from fedfuse.data import ArrayDataset, PartyData
from fedfuse.fusion import FusionError, Update, classwise_fusion, fuse, get_fusion
from fedfuse.models import TrainConfig
from fedfuse.party import Malformed, Party, TrainTask
from fedfuse.runtime import reply_from_wire, reply_to_wire
from fedfuse.weights import to_bytes


class Counting:
    """A model adapter that does not train: enough to see what a party sends."""

    def __init__(self):
        self.w = {"1.weight": np.zeros((3, 2), np.float32), "1.bias": np.zeros(3, np.float32)}

    def get_weights(self):
        return {k: v.copy() for k, v in self.w.items()}

    def set_weights(self, weights):
        self.w = {k: np.array(v) for k, v in weights.items()}

    def fit(self, data, config):
        return {"loss": 1.0}


def _party():
    data = ArrayDataset(np.zeros((5, 2), np.float32), np.array([0, 0, 2, 2, 2]))
    return Party(Counting(), PartyData(data), "p")


def test_a_party_shares_its_label_counts_only_when_asked():
    task = TrainTask(1, Counting().get_weights(), TrainConfig())
    assert _party().handle(task).info == {}
    shared = TrainTask(1, Counting().get_weights(), TrainConfig(share_label_counts=True))
    assert _party().handle(shared).info == {"label_counts": [2, 0, 3]}


def test_info_crosses_the_wire_and_hostile_info_is_malformed():
    update = _party().handle(
        TrainTask(1, Counting().get_weights(), TrainConfig(share_label_counts=True))
    )
    meta, weights = reply_to_wire(update)
    meta = json.loads(json.dumps(meta))  # what the header carries
    back = reply_from_wire(meta, to_bytes(weights), "p")
    assert back.info == {"label_counts": [2, 0, 3]}
    for info in ({"label_counts": [1, "x"]}, {"n": float("nan")}, [1, 2], {"big": [0] * 100_001}):
        hostile = reply_from_wire({**meta, "info": info}, to_bytes(weights), "p")
        assert isinstance(hostile, Malformed) and "'info'" in hostile.reason


def _up(last_row_value, counts, n=1):
    weights = {
        "0.weight": np.ones((2, 2), np.float32),
        "0.bias": np.zeros(2, np.float32),
        "1.weight": np.full((3, 2), last_row_value, np.float32),
        "1.bias": np.zeros(3, np.float32),
    }
    return Update(weights, n, {}, False, info={"label_counts": counts} if counts else {})


def test_classwise_fusion_averages_each_class_over_the_parties_that_saw_it():
    reference = _up(0.0, None).weights
    a, b = _up(1.0, [4, 0, 0]), _up(3.0, [0, 0, 4])
    fused = fuse(classwise_fusion(), [a, b], None, reference)[0].weights["1.weight"]
    np.testing.assert_allclose(fused[0], 1.0, rtol=1e-6)  # class 0: only a saw it
    np.testing.assert_allclose(fused[2], 3.0, rtol=1e-6)  # class 2: only b
    np.testing.assert_allclose(fused[1], 2.0, rtol=1e-6)  # nobody: the plain mean
    # without label counts on every update it is the example-weighted mean
    plain = fuse(get_fusion("classwise_avg"), [a, _up(3.0, None)], None, reference)[0]
    np.testing.assert_allclose(plain.weights["1.weight"], 2.0)
    with pytest.raises(FusionError, match="label_counts of '' must be 3 or fewer counts >= 0"):
        fuse(classwise_fusion(), [a, _up(3.0, [1, 2, 3, 4])], None, reference)
