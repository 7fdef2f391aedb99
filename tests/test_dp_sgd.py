"""DP-SGD in TorchAdapter.fit (through Opacus) and its privacy accounting."""

import sys

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from opacus.accountants import RDPAccountant
from torch import nn

from fedfuse.data import ArrayDataset
from fedfuse.models import TorchAdapter, TrainConfig, dp_sgd_epsilon, dp_sgd_steps
from helpers import blobs


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def _dp(**changes) -> TrainConfig:
    settings = {
        "epochs": 1,
        "batch_size": 16,
        "learning_rate": 0.1,
        "seed": 7,
        "dp_sgd_noise_multiplier": 1.0,
        "dp_sgd_seeded_noise": True,
    }
    return TrainConfig(**{**settings, **changes})


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _clipped_mean_gradient(module: nn.Module, data: ArrayDataset, c: float) -> list[torch.Tensor]:
    """``(1/n) sum_i g_i min(1, C / ||g_i||)`` with each example's gradient from its own
    backward pass (Opacus divides by ``||g_i|| + 1e-6``)."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    total = [torch.zeros_like(p) for p in module.parameters()]
    for i in range(len(y)):
        module.zero_grad()
        nn.functional.cross_entropy(module(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.detach().clone() for p in module.parameters()]
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        factor = min(1.0, c / (float(norm) + 1e-6))
        total = [t + factor * g for t, g in zip(total, grads, strict=True)]
    module.zero_grad()
    return [t / len(y) for t in total]


def _no_opacus_left(module: nn.Module) -> bool:
    hooks = all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)
        and not getattr(m, "_backward_pre_hooks", None)
        for m in module.modules()
    )
    return hooks and all(vars(p) == {} for p in module.parameters())


def test_dp_sgd_learns_with_small_noise():
    data = blobs(160)
    adapter = TorchAdapter(_mlp())
    before = adapter.evaluate(data)
    metrics = adapter.fit(
        data,
        _dp(epochs=6, learning_rate=0.5, dp_sgd_noise_multiplier=0.3, dp_sgd_max_grad_norm=1.0),
    )
    after = adapter.evaluate(data)
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] >= 0.9
    assert set(metrics) == {"loss", "accuracy"} and 0 < metrics["loss"] < before["loss"]


def test_one_step_clips_each_examples_gradient_by_hand():
    """batch_size = n samples every example (rate 1), one step: the update is -lr times the
    mean of the clipped per-example gradients, so its norm is at most lr * C (noise ~1e-9)."""
    data, lr, c = blobs(12), 0.5, 1e-3
    module = _mlp()
    start = _params(module)
    want = _clipped_mean_gradient(_mlp(), data, c)
    config = _dp(
        batch_size=12, learning_rate=lr, dp_sgd_noise_multiplier=1e-6, dp_sgd_max_grad_norm=c
    )
    TorchAdapter(module).fit(data, config)
    moved = [p.detach() - s for p, s in zip(module.parameters(), start, strict=True)]
    for got, g in zip(moved, want, strict=True):
        torch.testing.assert_close(got, -lr * g, atol=1e-7, rtol=1e-4)  # float32 w - w0
    step = float(torch.sqrt(sum((m**2).sum() for m in moved)))
    assert 0.5 * lr * c < step <= lr * c * (1 + 1e-4)

    plain = _mlp()
    TorchAdapter(plain).fit(data, TrainConfig(batch_size=12, learning_rate=lr))
    unclipped = torch.sqrt(
        sum(((p.detach() - s) ** 2).sum() for p, s in zip(plain.parameters(), start, strict=True))
    )
    assert float(unclipped) > 50 * lr * c


def test_fedprox_pull_is_added_after_the_noise():
    """Two steps at rate 1: w2 = w1 - lr (clipped mean at w1 + mu (w1 - w0))."""
    data, lr, c, mu = blobs(10), 0.5, 1e-2, 4.0
    module = _mlp()
    w0 = _params(module)
    config = _dp(
        epochs=2,
        batch_size=10,
        learning_rate=lr,
        proximal_mu=mu,
        dp_sgd_noise_multiplier=1e-6,
        dp_sgd_max_grad_norm=c,
    )
    TorchAdapter(module).fit(data, config)

    reference = _mlp()
    g0 = _clipped_mean_gradient(reference, data, c)
    with torch.no_grad():
        for p, g in zip(reference.parameters(), g0, strict=True):
            p -= lr * g
    w1 = _params(reference)
    g1 = _clipped_mean_gradient(reference, data, c)
    with torch.no_grad():
        for p, g, a, b in zip(reference.parameters(), g1, w1, w0, strict=True):
            p -= lr * (g + mu * (a - b))
    for got, want in zip(module.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), atol=1e-7, rtol=1e-4)


def test_takes_dp_sgd_steps_steps():
    """n = 60, batch 20: 3 Poisson batches an epoch (none empty: (2/3)^60 ~ 3e-11)."""
    calls = []

    def loss(out, target):
        calls.append(len(target))
        return nn.functional.cross_entropy(out, target)

    config = _dp(epochs=2, batch_size=20)
    TorchAdapter(_mlp(), loss=loss).fit(blobs(60), config)
    assert len(calls) == dp_sgd_steps(60, config) == 6
    assert sum(calls) != 120  # Poisson batches: their sizes vary, unlike 3 x 20 slices


def test_empty_poisson_batches_still_add_noise():
    """n = 2, batch 1: each of the 2 steps takes no example with probability 1/4. A fit that
    took none reports no metrics, yet its weights moved: every step adds noise."""
    data = blobs(2)
    for seed in range(64):
        module = _mlp()
        start = _params(module)
        metrics = TorchAdapter(module).fit(data, _dp(batch_size=1, seed=seed))
        if metrics == {}:
            break
    else:
        pytest.fail("no seed drew two empty batches")
    assert all(not torch.equal(p, s) for p, s in zip(module.parameters(), start, strict=True))


def test_seeded_noise_is_reproducible_and_unseeded_noise_is_fresh():
    data = blobs(64)

    def run(**changes) -> list[torch.Tensor]:
        module = _mlp()
        TorchAdapter(module).fit(data, _dp(epochs=2, **changes))
        return _params(module)

    rng = torch.random.get_rng_state()
    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, run(seed=8), strict=True))
    fresh_a, fresh_b = run(dp_sgd_seeded_noise=False), run(dp_sgd_seeded_noise=False)
    assert not any(torch.equal(a, b) for a, b in zip(fresh_a, fresh_b, strict=True))
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_names_stay_and_a_plain_fit_afterwards_is_unaffected():
    data = blobs(64)
    module = _mlp()
    adapter = TorchAdapter(module)
    names, start = list(module.state_dict()), adapter.get_weights()
    adapter.fit(data, _dp(epochs=2, dp_sgd_noise_multiplier=0.5))
    assert list(module.state_dict()) == names and list(adapter.get_weights()) == sorted(names)
    assert _no_opacus_left(module)
    adapter.fit(data, _dp())  # a second DP fit wraps the module again

    adapter.set_weights(start)
    plain = TrainConfig(epochs=2, batch_size=16, learning_rate=0.1, seed=3)
    adapter.fit(data, plain)
    never_private = TorchAdapter(_mlp())
    never_private.fit(data, plain)
    got, want = adapter.get_weights(), never_private.get_weights()
    assert all(np.array_equal(got[n], want[n]) for n in want)


def test_epsilon_is_dp_accountings_and_within_1_percent_of_opacus():
    points = [(0.01, 1.1, 10_000, 1e-5), (256 / 60_000, 1.0, 3516, 1e-5), (1.0, 2.0, 3, 1e-6)]
    for q, sigma, steps, delta in points:
        accountant = rdp.RdpAccountant()
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        eps = dp_sgd_epsilon(q, sigma, steps, delta)
        assert eps == accountant.get_epsilon(delta)
        opacus = RDPAccountant()
        for _ in range(steps):
            opacus.step(noise_multiplier=sigma, sample_rate=q)
        assert eps == pytest.approx(opacus.get_epsilon(delta), rel=0.01)
    assert dp_sgd_epsilon(0.01, 1.1, 20_000, 1e-5) > dp_sgd_epsilon(0.01, 1.1, 10_000, 1e-5)
    assert dp_sgd_epsilon(0.01, 1.1, 0, 1e-5) == 0.0
    assert dp_sgd_epsilon(0.01, 0.0, 10, 1e-5) == float("inf")


def test_steps_per_fit():
    assert dp_sgd_steps(100, TrainConfig(epochs=2, batch_size=32)) == 6  # round(3.125) = 3
    assert dp_sgd_steps(10, TrainConfig(batch_size=32)) == 1  # never fewer than one
    assert dp_sgd_steps(112, TrainConfig(batch_size=32)) == 4  # round(3.5) = 4


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dp_sgd_noise_multiplier": -0.5}, "dp_sgd_noise_multiplier must be a number >= 0"),
        ({"dp_sgd_max_grad_norm": 0.0}, "dp_sgd_max_grad_norm must be a number > 0"),
        ({"dp_sgd_seeded_noise": "yes"}, "dp_sgd_seeded_noise must be true or false"),
        ({"share_label_counts": True}, "share_label_counts must be false with dp_sgd_noise"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        TorchAdapter(_mlp()).fit(blobs(16), _dp(**changes))


def test_modules_and_losses_opacus_cannot_train_are_refused():
    data = blobs(16)
    batch_norm = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="Opacus's validators say: .*BatchNorm"):
        TorchAdapter(batch_norm).fit(data, _dp())
    assert _no_opacus_left(batch_norm)

    class Scaled(nn.Module):  # a trainable layer with a buffer: GradSampleModule refuses it
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(5, 3))
            self.register_buffer("scale", torch.ones(1))

        def forward(self, x):
            return x @ self.weight * self.scale

    scaled = Scaled()
    with pytest.raises(ValueError, match="Opacus's validators say: .*buffers"):
        TorchAdapter(scaled).fit(data, _dp())
    assert _no_opacus_left(scaled)

    summed = TorchAdapter(_mlp(), loss=nn.CrossEntropyLoss(reduction="sum"))
    with pytest.raises(ValueError, match="reduction='mean'.*got reduction='sum'"):
        summed.fit(data, _dp())


def test_missing_opacus_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)
    with pytest.raises(ImportError, match=r"pip install 'fedfuse\[dpsgd\]'"):
        TorchAdapter(_mlp()).fit(blobs(16), _dp())
    TorchAdapter(_mlp()).fit(blobs(16), TrainConfig())  # the plain path never imports it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1.0, 10, 1e-5), "sample_rate must be a number > 0 and <= 1"),
        ((1.5, 1.0, 10, 1e-5), "sample_rate must be a number > 0 and <= 1"),
        ((0.1, -1.0, 10, 1e-5), "noise_multiplier must be a number >= 0"),
        ((0.1, 1.0, -1, 1e-5), "steps must be an integer >= 0"),
        ((0.1, 1.0, 2.5, 1e-5), "steps must be an integer >= 0"),
        ((0.1, 1.0, 10, 0.0), "delta must be a number > 0 and < 1"),
    ],
)
def test_bad_accounting_arguments_are_refused_naming_them(args, message):
    with pytest.raises(ValueError, match=message):
        dp_sgd_epsilon(*args)
