"""DP-SGD at a party: Opacus's per-example clipping and noise in ``TorchAdapter.fit``, and the
privacy it spends.

One step of DP-SGD on ``n`` examples takes a Poisson sample ``B`` (each example independently,
with rate ``q``), clips each example's gradient to norm ``C`` and adds Gaussian noise to the sum:
``g = (sum_{i in B} g_i min(1, C / ||g_i||) + N(0, sigma^2 C^2 I)) / (q n)``. Opacus computes the
per-example gradients (``GradSampleModule``'s hooks, put on the module for one fit and taken off
after it, so its ``state_dict`` names never change) and does the clipping and noise
(``DPOptimizer`` around the optimizer the config names). The batches are drawn here, as Opacus's
``UniformWithReplacementSampler`` draws them, from a generator the fit chooses
(``TrainConfig.dp_sgd_seeded_noise``): an empty batch still takes a step, of noise alone, since
the privacy analysis counts every step.

Each step is a Poisson-subsampled Gaussian mechanism; ``dp_sgd_epsilon`` composes ``steps`` of
them with dp-accounting's Rényi DP accountant (the analysis Opacus's ``RDPAccountant`` does too).

References:
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
    Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
    2019.
    Yousefpour et al., "Opacus: User-Friendly Differential Privacy Library in PyTorch", 2021.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from numbers import Integral, Real
from typing import Any

import torch
from torch import nn

from fedfuse._extras import import_extra
from fedfuse._quiet import quiet_rdp
from fedfuse.models._config import TrainConfig

__all__ = ["dp_sgd_epsilon", "dp_sgd_steps"]

_FEATURE = "DP-SGD (dp_sgd_noise_multiplier > 0)"


def dp_sgd_sample_rate(num_examples: int, batch_size: int) -> float:
    """The Poisson sampling rate of one step: ``q = min(1, batch_size / num_examples)``."""
    return min(1.0, batch_size / num_examples)


def dp_sgd_steps(num_examples: int, config: TrainConfig) -> int:
    """The DP-SGD steps one ``fit`` on ``num_examples`` takes with ``config``:
    ``epochs * max(1, round(num_examples / batch_size))``.

    Each step samples with rate ``min(1, batch_size / num_examples)``; give both to
    ``dp_sgd_epsilon`` (summing the steps over rounds) for the privacy spent.
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, Integral):
        raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}")
    config.validate()
    return config.epochs * _steps_per_epoch(num_examples, config.batch_size)


def _steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, round(num_examples / batch_size))


def dp_sgd_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    """The ``epsilon`` of ``(epsilon, delta)``-DP that ``steps`` DP-SGD steps spend.

    Each step is the sampled Gaussian mechanism: a Poisson sample with rate ``sample_rate``,
    noise of standard deviation ``noise_multiplier`` times the clipping norm. The steps are
    composed with dp-accounting's ``RdpAccountant`` (add-or-remove-one neighbours, its default
    orders) and converted to ``epsilon`` at ``delta``. No steps spend nothing (``0.0``); no
    noise spends everything (``inf``).

    References:
        Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian
        Mechanism", 2019.
    """
    _check_number("sample_rate", sample_rate, "a number > 0 and <= 1", lambda v: 0 < v <= 1)
    _check_number("noise_multiplier", noise_multiplier, "a number >= 0", lambda v: v >= 0)
    _check_number("delta", delta, "a number > 0 and < 1", lambda v: 0 < v < 1)
    if isinstance(steps, bool) or not isinstance(steps, Integral) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if steps == 0:
        return 0.0
    # imported here: dp-accounting pulls in scipy, about a second that only accounting needs
    import dp_accounting
    from dp_accounting import rdp

    step = dp_accounting.PoissonSampledDpEvent(
        sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(step, int(steps)))
    with quiet_rdp():
        return float(accountant.get_epsilon(delta))


def _check_number(name: str, value: Any, allowed: str, test: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not test(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


@contextlib.contextmanager
def dp_sgd_training(
    module: nn.Module,
    loss: Callable[..., torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    num_examples: int,
    seeded: torch.Generator | None,
    after_noise: Callable[[], None] | None,
) -> Iterator[tuple[torch.optim.Optimizer, Callable[[], Iterator[torch.Tensor]]]]:
    """Opacus's ``DPOptimizer`` around ``optimizer`` and the Poisson batches of one epoch, with
    per-example gradient hooks on ``module`` while the block runs and nothing of Opacus's left
    on it after. ``module`` must be in training mode (Opacus's validator checks it).

    ``seeded``, the fit's generator, draws the batches and noise with ``dp_sgd_seeded_noise``;
    otherwise a generator seeded from the operating system's entropy does. ``after_noise`` runs
    after the noise is added, before each optimizer step (FedProx's pull towards the start).
    """
    opacus = import_extra("opacus", "dpsgd", _FEATURE)
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    reduction = getattr(loss, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(
            f"{_FEATURE} needs a loss that averages over the batch (reduction='mean'), "
            f"got reduction={reduction!r}"
        )
    problems = [
        *ModuleValidator.validate(module, strict=False),
        *opacus.GradSampleModule.validate(module, strict=False),
    ]
    if problems:
        raise ValueError(
            f"{_FEATURE} cannot train this module; Opacus's validators say: "
            + "; ".join(str(p) for p in problems)
            + " (opacus.validators.ModuleValidator.fix replaces the layers it can)"
        )
    if seeded is not None and config.dp_sgd_seeded_noise:
        generator = seeded
    else:
        generator = torch.Generator().manual_seed(secrets.randbits(64))
    rate = dp_sgd_sample_rate(num_examples, config.batch_size)
    steps = _steps_per_epoch(num_examples, config.batch_size)

    def epoch_batches() -> Iterator[torch.Tensor]:
        for _ in range(steps):
            taken = torch.rand(num_examples, generator=generator) < rate
            yield taken.nonzero().flatten()

    # the hooks sit on ``module``'s layers, so calling ``module`` itself records per-example
    # gradients; ``to_standard_module`` takes them off again
    wrapped = opacus.GradSampleModule(module, loss_reduction="mean")
    try:
        dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=config.dp_sgd_noise_multiplier,
            max_grad_norm=config.dp_sgd_max_grad_norm,
            expected_batch_size=min(config.batch_size, num_examples),
            generator=generator,
        )
        if after_noise is not None:
            dp_optimizer.attach_step_hook(lambda _: after_noise())
        yield dp_optimizer, epoch_batches
    finally:
        wrapped.to_standard_module()
        for p in module.parameters():
            if hasattr(p, "summed_grad"):
                del p.summed_grad


def noise_only_step(optimizer: torch.optim.Optimizer) -> None:
    """A DP-SGD step on an empty Poisson batch: no gradients, only the noise.

    Opacus reads per-example gradients from ``p.grad_sample``; an empty batch has zero rows."""
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()
