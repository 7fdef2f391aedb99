"""Compressed deltas: codec arithmetic, malformed uploads, error feedback, bytes in the history."""

import numpy as np
import pytest
import torch

from fedfuse import simulate
from fedfuse.data import federate
from fedfuse.federation import Federation
from fedfuse.fusion import Update
from fedfuse.models import TorchAdapter, TrainConfig
from fedfuse.runtime import MockPool
from fedfuse.weights import CodecError, encode_with_feedback, from_bytes, get_codec, to_bytes

DELTA = {"b": np.array([0.5, -1.27, 0.0, 0.3], np.float32), "w": np.full((2, 3), 2.0, np.float32)}


def test_int8_quantizes_with_a_per_tensor_scale():
    codec = get_codec("int8")
    enc = codec.encode(DELTA)
    assert sorted(enc) == ["b/q", "b/scale", "w/q", "w/scale"]
    # max |b| = 1.27 -> scale 0.01 -> q = [50, -127, 0, 30]
    np.testing.assert_allclose(enc["b/scale"], [0.01], rtol=1e-6)
    np.testing.assert_array_equal(enc["b/q"], [50, -127, 0, 30])
    assert enc["b/q"].dtype == np.int8 and enc["w/q"].shape == (2, 3)
    out = codec.decode(enc, DELTA)
    np.testing.assert_allclose(out["b"], DELTA["b"], atol=1e-6)
    np.testing.assert_allclose(out["w"], DELTA["w"], atol=1e-6)
    assert out["w"].dtype == np.float32
    # 4 + 6 one-byte values and two 4-byte scales, against 10 four-byte floats
    assert sum(a.nbytes for a in enc.values()) == 10 + 8


def test_fp16_halves_the_bytes():
    codec = get_codec("fp16")
    enc = codec.encode(DELTA)
    assert enc["b"].dtype == np.float16 and enc["b"].nbytes == DELTA["b"].nbytes // 2
    np.testing.assert_allclose(codec.decode(enc, DELTA)["b"], DELTA["b"], rtol=1e-3)


def test_topk_keeps_the_largest_entries_of_each_tensor():
    codec = get_codec("topk", topk_fraction=0.5)
    enc = codec.encode({"b": np.array([0.1, -3.0, 2.0, 0.5], np.float32)})
    np.testing.assert_array_equal(enc["b/idx"], [1, 2])
    np.testing.assert_array_equal(enc["b/val"], [-3.0, 2.0])
    out = codec.decode(enc, {"b": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(out["b"], [0, -3, 2, 0])
    # at least one entry per tensor, ceil(fraction * n) in general
    enc = get_codec("topk", topk_fraction=0.01).encode(DELTA)
    assert enc["b/idx"].size == 1 and enc["w/idx"].size == 1


def test_error_feedback_keeps_what_compression_dropped():
    codec = get_codec("topk", topk_fraction=0.5)
    delta = {"b": np.array([0.1, -3.0, 2.0, 0.5], np.float32)}
    enc, residual = encode_with_feedback(codec, delta, None)
    np.testing.assert_allclose(residual["b"], [0.1, 0, 0, 0.5])
    # next round: delta + residual = [0.2, 0, 0.1, 0.5] -> sends entries 0 and 3
    enc, residual = encode_with_feedback(
        codec, {"b": np.array([0.1, 0, 0.1, 0], np.float32)}, residual
    )
    np.testing.assert_array_equal(enc["b/idx"], [0, 3])
    np.testing.assert_allclose(enc["b/val"], [0.2, 0.5], rtol=1e-6)
    np.testing.assert_allclose(residual["b"], [0, 0, 0.1, 0], atol=1e-7)


def test_encoded_arrays_travel_as_safetensors():
    for name in ("fp16", "int8", "topk"):
        codec = get_codec(name, topk_fraction=0.3)
        enc = codec.encode(DELTA)
        back = codec.decode(from_bytes(to_bytes(enc)), DELTA)
        np.testing.assert_array_equal(back["b"], codec.decode(enc, DELTA)["b"])


@pytest.mark.parametrize(
    ("name", "encoded", "message"),
    [
        ("int8", {"b/q": np.zeros(4, np.int8)}, "missing encoded array 'b/scale'"),
        ("int8", {"b/q": np.zeros(4, np.int16), "b/scale": np.ones(1, np.float32)}, "dtype int16"),
        ("int8", {"b/q": np.zeros(5, np.int8), "b/scale": np.ones(1, np.float32)}, "5 values"),
        ("fp16", {"b": np.zeros(4, np.float16), "x": np.zeros(1)}, r"unexpected encoded .*'x'"),
        (
            "topk",
            {"b/idx": np.array([0, 1], np.int32), "b/val": np.ones(2, np.float32)},
            "at most 1",
        ),
        (
            "topk",
            {"b/idx": np.array([9], np.int32), "b/val": np.ones(1, np.float32)},
            "out of range",
        ),
    ],
)
def test_malformed_uploads_raise(name, encoded, message):
    with pytest.raises(CodecError, match=message):
        get_codec(name, topk_fraction=0.25).decode(encoded, {"b": np.zeros(4, np.float32)})


def test_unknown_codec_and_bad_fraction():
    with pytest.raises(ValueError, match="unknown compression 'zip'; choose one of: none, fp16"):
        get_codec("zip")
    with pytest.raises(ValueError, match=r"topk_fraction must be a number > 0 and <= 1, got 0"):
        TrainConfig(compression="topk", topk_fraction=0).validate()


def dense_reply(party_id, task):
    """A party that ignores the federation's codec and sends a plain float delta."""
    return Update({k: np.zeros_like(v) for k, v in task.weights.items()}, 5)


def test_round_loop_rejects_an_update_that_does_not_decode():
    torch.manual_seed(0)
    weights = TorchAdapter(torch.nn.Linear(5, 3)).get_weights()
    federation = Federation(
        MockPool(["rogue"], dense_reply), weights, config=TrainConfig(compression="int8")
    )
    record = federation.run_round()
    assert not record["fused"] and record["participants"] == []
    assert "cannot decode the int8 update: unexpected encoded arrays" in record["rejected"]["rogue"]


@pytest.mark.parametrize(
    ("compression", "params", "ratio"),
    [
        ("int8", {}, (0.25, 0.26)),
        ("topk", {"topk_fraction": 0.1}, (0.19, 0.21)),
    ],
)
def test_compressed_federations_train_and_count_bytes(digits, compression, params, ratio):
    train, test = digits
    fed = federate(train, test, num_parties=5, scheme="iid", seed=0)
    common = dict(
        federated_data=fed,
        rounds=5,
        epochs=2,
        batch_size=16,
        learning_rate=0.1,
        centralized=False,
        federated_eval=False,
    )
    result = simulate(compression=compression, **params, **common)
    last = result.history[-1]
    # MLP 64-200-200-10: an fp32 delta of 55210 floats per party
    assert last["bytes_dense"] == 5 * 4 * (64 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10)
    assert ratio[0] < last["bytes_up"] / last["bytes_dense"] < ratio[1]
    assert last["bytes_down"] == last["bytes_dense"]  # the global model to each, uncompressed
    # uncompressed FedAvg and int8 reach 0.89 here, top-k 10% with error feedback 0.84
    assert last["central"]["accuracy"] > 0.75
