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
