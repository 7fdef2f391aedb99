import numpy as np
import pytest

from fedfuse.fusion import (
    FUSIONS,
    FusionError,
    Update,
    chain,
    fedavg,
    fuse,
    get_fusion,
    iter_avg,
    stateless,
)


def _u(values, n, is_delta=True):
    return Update({"w": np.asarray(values, dtype=np.float32)}, n, is_delta=is_delta)


GLOBAL = {"w": np.zeros(2, dtype=np.float32)}


def test_fedavg_weights_by_examples():
    fused, _ = fuse(fedavg(), [_u([1, 0], 1), _u([4, 3], 3)], None, GLOBAL)
    # (1*[1,0] + 3*[4,3]) / 4 = [13/4, 9/4]
    np.testing.assert_allclose(fused.weights["w"], [3.25, 2.25])
    assert fused.num_examples == 4
    assert fused.weights["w"].dtype == np.float32


def test_iter_avg_is_the_plain_mean():
    fused, _ = fuse(iter_avg(), [_u([1, 0], 1), _u([4, 3], 3)], None, GLOBAL)
    np.testing.assert_allclose(fused.weights["w"], [2.5, 1.5])


def test_fedavg_folds_one_update_at_a_time():
    seen = []

    def stream():
        for i in range(5):
            seen.append(i)
            yield _u([i, i], 1)

    fused, _ = fuse(fedavg(), stream(), None, GLOBAL)
    np.testing.assert_allclose(fused.weights["w"], [2, 2])
    assert seen == [0, 1, 2, 3, 4]


def test_fedavg_in_float64_is_exact_for_many_small_updates():
    updates = [_u([1e-4, 1.0], 1) for _ in range(10_000)]
    fused, _ = fuse(fedavg(), updates, None, GLOBAL)
    np.testing.assert_allclose(fused.weights["w"], [1e-4, 1.0], rtol=1e-6)


def test_chain_composes_left_to_right_and_threads_state():
    def init(w):
        return 0

    def count(updates, state, w):
        updates = list(updates)
        return updates, state + len(updates)

    doubled = stateless(
        lambda ups, w: (Update({"w": u.weights["w"] * 2}, u.num_examples) for u in ups)
    )
    from fedfuse.fusion import FusionTransform

    t = chain(FusionTransform(init, count), doubled, fedavg())
    state = t.init(GLOBAL)
    assert state == (0, None, None)
    fused, state = fuse(t, [_u([1, 1], 1), _u([3, 3], 1)], state, GLOBAL)
    np.testing.assert_allclose(fused.weights["w"], [4, 4])
    assert state[0] == 2


def test_errors():
    with pytest.raises(FusionError, match="no updates"):
        fuse(fedavg(), [], None, GLOBAL)
    with pytest.raises(FusionError, match="exactly one fused update, got 2"):
        passthrough = chain(stateless(lambda u, w: u))
        fuse(passthrough, [_u([1, 1], 1), _u([1, 1], 1)], passthrough.init(GLOBAL), GLOBAL)
    with pytest.raises(FusionError, match="deltas together with full weights"):
        fuse(fedavg(), [_u([1, 1], 1), _u([1, 1], 1, is_delta=False)], None, GLOBAL)
    with pytest.raises(ValueError, match="unknown fusion 'fedsgd'; choose one of: .*fedavg, "):
        get_fusion("fedsgd")
    assert {"fedavg", "iter_avg"} <= set(FUSIONS)
