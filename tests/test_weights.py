import numpy as np
import pytest

from fedfuse import weights as W


def _w(**arrays):
    return W.as_weights({k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})


def test_as_weights_sorts_names():
    w = W.as_weights({"b": np.zeros(1), "a": np.ones(2)})
    assert list(w) == ["a", "b"]


def test_arithmetic_and_delta_round_trip():
    old = _w(a=[1.0, 2.0], b=[[3.0]])
    new = _w(a=[1.5, 1.0], b=[[5.0]])
    delta = W.subtract(new, old)
    np.testing.assert_allclose(delta["a"], [0.5, -1.0])
    back = W.add(old, delta)
    for k in new:
        np.testing.assert_array_equal(back[k], new[k])
        assert back[k].dtype == np.float32
    np.testing.assert_allclose(W.scale(old, 2.0)["b"], [[6.0]])
    acc = W.zeros_like(old, dtype=np.float64)
    W.add_scaled_(acc, old, 0.5)
    np.testing.assert_allclose(acc["a"], [0.5, 1.0])
    assert W.global_norm(_w(a=[3.0], b=[[4.0]])) == pytest.approx(5.0)
    assert W.num_bytes(old) == 12


def test_check_compatible_names_the_parameter():
    ref = _w(a=[1.0, 2.0], b=[1.0])
    with pytest.raises(W.WeightsMismatchError, match=r"'a' has shape \(3,\), expected \(2,\)"):
        W.check_compatible(ref, _w(a=[1.0, 2.0, 3.0], b=[1.0]))
    with pytest.raises(W.WeightsMismatchError, match="'b' has dtype float64"):
        W.check_compatible(ref, {"a": ref["a"], "b": np.zeros(1)})
    with pytest.raises(W.WeightsMismatchError, match=r"missing \['b'\]"):
        W.check_compatible(ref, {"a": ref["a"]})


def test_safetensors_bytes_and_files_round_trip(tmp_path):
    w = {"layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "layer.bias": np.ones(2)}
    back = W.from_bytes(W.to_bytes(w))
    assert list(back) == ["layer.bias", "layer.weight"]
    np.testing.assert_array_equal(back["layer.weight"], w["layer.weight"])
    assert back["layer.bias"].dtype == np.float64
    path = tmp_path / "w.safetensors"
    W.save_weights(path, w, metadata={"round": "3"})
    np.testing.assert_array_equal(W.load_weights(path)["layer.weight"], w["layer.weight"])
    assert not (tmp_path / "w.safetensors.tmp").exists()


@pytest.mark.parametrize("junk", [b"", b"not safetensors at all", b"\x80\x04\x95pickle"])
def test_from_bytes_rejects_junk(junk):
    with pytest.raises(W.WeightsFormatError, match="not valid safetensors"):
        W.from_bytes(junk)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "w.safetensors"
    W.save_weights(path, {"a": np.ones(100, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(W.WeightsFormatError, match=r"w\.safetensors"):
        W.load_weights(path)


def test_from_buffer_is_zero_copy_and_agrees_with_safetensors():
    w = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1, -2], dtype=np.int64),
        "c": np.zeros((0, 3), dtype=np.float16),
        "d": np.array(2.5, dtype=np.float64),
    }
    data = bytearray(W.to_bytes(w, metadata={"round": "1"}))
    views = W.from_buffer(data)
    copies = W.from_bytes(bytes(data))
    assert list(views) == list(copies) == ["a", "b", "c", "d"]
    for name in w:
        np.testing.assert_array_equal(views[name], w[name])
        assert views[name].dtype == w[name].dtype and views[name].shape == w[name].shape
    assert np.shares_memory(views["a"], np.frombuffer(data, np.uint8))


def _st(header: dict, data: bytes = b"") -> bytes:
    import json

    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x02", "shorter than"),
        ((10**12).to_bytes(8, "little") + b"{}", "header size"),
        (_st([1, 2]), "not a JSON object"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00{{{{", "bad header"),
        (_st({"a": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "'a'"),
        (_st({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "4 bytes"),
        (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 4), "range"),
        (_st({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), "range"),
        (_st({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8), "trailing"),
        (
            _st(
                {
                    "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                b"\0" * 4,
            ),
            "overlap",
        ),
    ],
)
def test_from_buffer_rejects_malformed_data(payload, message):
    with pytest.raises(W.WeightsFormatError, match=message):
        W.from_buffer(payload)
