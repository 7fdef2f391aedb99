"""Differential-privacy fusion transforms: arithmetic by hand, noise scale, seeded resume."""

import json

import numpy as np
import pytest

from fedfuse.federation._checkpoint import _flatten, _unflatten
from fedfuse.fusion import (
    FusionError,
    Update,
    _privacy,
    adaptive_clip,
    add_gaussian_noise,
    chain,
    clip_by_norm,
    dp_mean,
    fuse,
    gaussian_noise,
    iter_avg,
    server_adam,
    tree_aggregation_noise,
    tree_levels,
)
from fedfuse.weights import global_norm


def _update(values, n=1, **info):
    values = np.asarray(values, np.float64)
    return Update({"a": values[:1], "b": values[1:]}, n, {"loss": 1.0}, info=info)


def _ref(width):
    return {"a": np.zeros(1, np.float64), "b": np.zeros(width - 1, np.float64)}


def _flat(w):
    return np.concatenate([w["a"], w["b"]])


def test_clip_by_norm_tags_the_clip_norm():
    t = clip_by_norm(2.0)
    out, _ = t.update([_update([3.0, 4.0], label_counts=[1]), _update([0.0, 1.0])], None, _ref(2))
    out = list(out)
    assert [u.info["clip_norm"] for u in out] == [2.0, 2.0]
    assert out[0].info["label_counts"] == [1]
    np.testing.assert_allclose(_flat(out[0].weights), [1.2, 1.6])


def test_dp_mean_without_noise_is_the_sum_over_the_expected_count():
    ups = [_update([1.0, 2.0], 5), _update([3.0, 0.0], 7), _update([30.0, 40.0], 1)]
    fused, state = fuse(
        chain(clip_by_norm(10.0), dp_mean(0.0, 4)), ups, (None, {"calls": 0}), _ref(2)
    )
    # the third update is clipped to norm 10: (6, 8)
    np.testing.assert_allclose(_flat(fused.weights), [(1 + 3 + 6) / 4, (2 + 0 + 8) / 4])
    assert fused.num_examples == 13 and fused.metrics == {} and fused.is_delta
    assert fused.info == {"clip_norm": 10.0, "noise_stddev": 0.0}
    assert state == (None, {"calls": 1})


def test_dp_mean_needs_one_clip_norm_and_enforces_it():
    with pytest.raises(FusionError, match="put clip_by_norm or adaptive_clip before dp_mean"):
        fuse(dp_mean(1.0, 2), [_update([1.0, 0.0])], {"calls": 0}, _ref(2))
    mixed = [_update([1.0, 0.0], clip_norm=1.0), _update([1.0, 0.0], clip_norm=2.0)]
    with pytest.raises(FusionError, match="one clip norm"):
        fuse(dp_mean(1.0, 2), mixed, {"calls": 0}, _ref(2))
    # a tag that lies about the norm does not raise the sensitivity: the update is scaled to C
    fused, _ = fuse(dp_mean(0.0, 1), [_update([30.0, 40.0], clip_norm=5.0)], {"calls": 0}, _ref(2))
    np.testing.assert_allclose(_flat(fused.weights), [3.0, 4.0])
    with pytest.raises(FusionError, match="no updates"):
        fuse(dp_mean(1.0, 2), [], {"calls": 0}, _ref(2))


def test_dp_mean_noise_has_stddev_z_c_over_n():
    width, z, c, n = 200_000, 2.0, 1.5, 4
    ups = [_update(np.zeros(width), clip_norm=c) for _ in range(3)]
    fused, _ = fuse(dp_mean(z, n, seed=7), ups, {"calls": 0}, _ref(width))
    measured = _flat(fused.weights).std()
    # the sample stddev of 2e5 normals is within 0.5% of the truth by more than 6 sigma
    assert measured == pytest.approx(z * c / n, rel=0.02)
    assert fused.info["noise_stddev"] == pytest.approx(z * c / n)


def _dp_chain():
    return chain(
        adaptive_clip(0.5, 0.5, 0.2, count_stddev=0.5, seed=1),
        dp_mean(1.0, 3, seed=2),
        tree_aggregation_noise(0.1, seed=3),
    )


def _round_updates(r):
    rng = np.random.default_rng(100 + r)
    return [_update(rng.normal(size=6)) for _ in range(3)]


def test_seeded_noise_is_reproducible_and_resumes_through_a_checkpoint():
    t, gw = _dp_chain(), _ref(6)
    state, straight = t.init(gw), []
    for r in range(5):
        fused, state = fuse(t, _round_updates(r), state, gw)
        straight.append(_flat(fused.weights))

    state, resumed = t.init(gw), []
    for r in range(5):
        if r in (2, 3):  # save and reload the state as a checkpoint would
            arrays: dict = {}
            skeleton = json.loads(json.dumps(_flatten(state, "fusion", arrays)))
            state = _unflatten(skeleton, {k: v.copy() for k, v in arrays.items()})
        fused, state = fuse(t, _round_updates(r), state, gw)
        resumed.append(_flat(fused.weights))
    np.testing.assert_array_equal(np.stack(straight), np.stack(resumed))


def test_without_a_seed_every_call_draws_fresh_noise():
    ups = [_update([0.0, 0.0], clip_norm=1.0)]
    a, _ = fuse(dp_mean(1.0, 1), ups, {"calls": 0}, _ref(2))
    b, _ = fuse(dp_mean(1.0, 1), ups, {"calls": 0}, _ref(2))
    assert not np.array_equal(_flat(a.weights), _flat(b.weights))


def _norm_updates(rng, count):
    """Updates whose norms are uniform on [0, 2]: every quantile q sits at 2q."""
    return [_update([rng.uniform(0, 2), 0.0]) for _ in range(count)]


@pytest.mark.parametrize("expected_count", [None, 50])
def test_adaptive_clip_converges_to_the_target_quantile(expected_count):
    t = chain(
        adaptive_clip(0.1, 0.3, 0.2, count_stddev=2.5, seed=0, expected_count=expected_count),
        iter_avg(),
    )
    rng, gw = np.random.default_rng(0), _ref(2)
    state = t.init(gw)
    clips = []
    for _ in range(150):
        _, state = fuse(t, _norm_updates(rng, 50), state, gw)
        clips.append(state[0]["clip_norm"])
    assert np.mean(clips[-50:]) == pytest.approx(0.6, rel=0.2)  # the 0.3 quantile of U(0, 2)


def test_adaptive_clip_clips_tags_and_never_mutates_its_input_state():
    t = adaptive_clip(1.0, 0.5, 0.2, count_stddev=0.0)
    state = t.init(_ref(2))
    out, new_state = t.update([_update([3.0, 4.0]), _update([0.3, 0.4])], state, _ref(2))
    assert new_state == {}  # filled once the updates have streamed through
    out = list(out)
    np.testing.assert_allclose(_flat(out[0].weights), [0.6, 0.8])
    assert [u.info["clip_norm"] for u in out] == [1.0, 1.0]
    assert state == {"clip_norm": 1.0, "calls": 0}
    # one of two below C, target 0.5: C stays; no noise
    assert new_state == {"clip_norm": 1.0, "calls": 1}
    _, s2 = t.update([_update([3.0, 4.0])], new_state, _ref(2))
    assert s2 == {}
    list(_)
    assert s2["clip_norm"] == pytest.approx(np.exp(0.2 * 0.5))


def test_gaussian_noise_composes_into_dp_fedadam():
    ups, gw = [_update([0.3, 0.4]), _update([1.0, 2.0])], _ref(2)
    plain = chain(clip_by_norm(1.0), iter_avg(), server_adam(0.1))
    noisy = chain(clip_by_norm(1.0), iter_avg(), gaussian_noise(0.5, seed=4), server_adam(0.1))
    quiet = chain(clip_by_norm(1.0), iter_avg(), gaussian_noise(0.0), server_adam(0.1))
    want, _ = fuse(plain, ups, plain.init(gw), gw)
    got, state = fuse(quiet, ups, quiet.init(gw), gw)
    np.testing.assert_allclose(_flat(got.weights), _flat(want.weights))
    got, state = fuse(noisy, ups, noisy.init(gw), gw)
    assert state[2] == {"calls": 1}
    mean, _ = fuse(chain(clip_by_norm(1.0), iter_avg()), ups, (None, None), gw)
    noise = _privacy._normal(_privacy._rng(4, _privacy._GAUSSIAN_NOISE, 0), gw, 0.5)
    by_hand = Update({n: mean.weights[n] + noise[n] for n in gw}, 2)
    adam = server_adam(0.1)
    want, _ = fuse(adam, [by_hand], adam.init(gw), gw)
    np.testing.assert_allclose(_flat(got.weights), _flat(want.weights), rtol=1e-6)
    with pytest.raises(FusionError, match="after a reducer"):
        fuse(gaussian_noise(1.0), ups, {"calls": 0}, gw)


def test_tree_noise_is_the_prefix_sum_of_the_tree_nodes():
    stddev, seed, rounds, gw = 0.5, 9, 13, _ref(4)
    t = tree_aggregation_noise(stddev, seed=seed)
    state, total = t.init(gw), np.zeros(4)
    zero = Update({"a": np.zeros(1), "b": np.zeros(3)}, 1)
    for r in range(1, rounds + 1):
        fused, state = fuse(t, [zero], state, gw)
        total += _flat(fused.weights)
        # nodes of prefix r: one per set bit of r, the node ending at s drawn from its seed
        nodes, end = [], 0
        for level in reversed(range(r.bit_length())):
            if r >> level & 1:
                end += 1 << level
                rng = _privacy._rng(seed, _privacy._TREE_NOISE, end)
                nodes.append(_flat(_privacy._normal(rng, gw, stddev)))
        np.testing.assert_allclose(total, np.sum(nodes, axis=0), atol=1e-12)
        assert len(state["nodes"]) == bin(r).count("1") <= tree_levels(r)


def test_tree_prefix_noise_variance_is_at_most_levels_times_stddev_squared():
    width, stddev, rounds = 100_000, 1.0, 7  # 7 = 0b111: three nodes, the most for 7 rounds
    t, gw = tree_aggregation_noise(stddev, seed=1), _ref(width)
    state, total = t.init(gw), np.zeros(width)
    zero = Update(_ref(width), 1)
    for _ in range(rounds):
        fused, state = fuse(t, [zero], state, gw)
        total += _flat(fused.weights)
    assert total.var() == pytest.approx(3 * stddev**2, rel=0.03)
    assert total.var() <= tree_levels(rounds) * stddev**2 * 1.03
    assert [tree_levels(r) for r in (1, 2, 3, 4, 7, 8, 200)] == [1, 2, 2, 3, 3, 4, 8]


def test_add_gaussian_noise_splits_the_central_noise_among_parties():
    k, z, c, width = 16, 1.0, 2.0, 50_000
    w = {"a": np.zeros(width, np.float32)}
    noisy = [add_gaussian_noise(w, z * c / np.sqrt(k), np.random.default_rng(i)) for i in range(k)]
    assert noisy[0]["a"].dtype == np.float32 and noisy[0]["a"].any()
    assert not w["a"].any()  # the input is left alone
    total = np.sum([n["a"].astype(np.float64) for n in noisy], axis=0)
    assert total.std() == pytest.approx(z * c, rel=0.03)


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: dp_mean(-1.0, 3), "noise_multiplier"),
        (lambda: dp_mean(1.0, 0), "expected_count"),
        (lambda: dp_mean(1.0, 3, seed=-1), "seed"),
        (lambda: adaptive_clip(0.0, 0.5, 0.2, 1.0), "initial_clip"),
        (lambda: adaptive_clip(0.1, 1.5, 0.2, 1.0), "target_quantile"),
        (lambda: adaptive_clip(0.1, 0.5, 0.0, 1.0), "learning_rate"),
        (lambda: adaptive_clip(0.1, 0.5, 0.2), "count_stddev"),
        (lambda: gaussian_noise(float("nan")), "stddev"),
        (lambda: tree_aggregation_noise(-0.1), "stddev"),
        (lambda: tree_levels(-1), "rounds"),
        (lambda: add_gaussian_noise({}, 1.0, 3), "rng"),
    ],
)
def test_arguments_are_checked(make, key):
    with pytest.raises(ValueError, match=key):
        make()


def test_clipped_norms_never_exceed_the_tag():
    t = adaptive_clip(0.7, 0.5, 0.2, count_stddev=0.0)
    out, _ = t.update([_update([30.0, 40.0, 5.0])], t.init(_ref(3)), _ref(3))
    (u,) = list(out)
    assert global_norm(u.weights) == pytest.approx(u.info["clip_norm"])
