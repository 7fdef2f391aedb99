"""The PyTorch model adapter: any ``nn.Module`` behind the ``ModelAdapter`` contract.

Weights are the module's floating-point ``state_dict`` entries (parameters and float buffers
such as BatchNorm statistics). Integer buffers (``num_batches_tracked``) stay local: averaging
a counter means nothing.

Training holds the whole local dataset as tensors and walks it in shuffled index batches, so
the hot path is tensor indexing, forward, backward and step, with no per-sample Python. DP-SGD
walks Poisson-sampled index batches instead, through Opacus (``fedfuse.models._dpsgd``).

Randomness is never a process-wide seed set from library code: parties of two federations may
train at the same time on threads of one service. A seeded fit shuffles with its own
``torch.Generator``; a module with stochastic layers (dropout, RReLU), which can only draw from
torch's global generator, trains inside ``torch_seed``: a lock and ``torch.random.fork_rng``
give the fit the global generator alone, seeded, and hand the caller's state back unchanged.
Models are built the same way by the recipes (``with torch_seed(seed): build_model(...)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import threading
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from fedfuse.data import ArrayDataset
from fedfuse.models._config import TrainConfig
from fedfuse.models._dpsgd import dp_sgd_training, noise_only_step
from fedfuse.models._optim import make_optimizer, resolve_optimizer
from fedfuse.weights import Weights, check_compatible

__all__ = ["LossFn", "TorchAdapter", "torch_seed"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_STOCHASTIC_LAYERS = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.RReLU,
)
_SEED_FIELD = [f.name for f in dataclasses.fields(TrainConfig)].index("seed")
_GLOBAL_RNG = threading.RLock()  # re-entrant: a recipe may train inside its own torch_seed


@contextlib.contextmanager
def torch_seed(seed: int) -> Iterator[None]:
    """Run the block with torch's global CPU generator seeded to ``seed``, then restore it.

    Use it instead of ``torch.manual_seed`` wherever library code must draw from the global
    generator (weight initializers, dropout): the caller's RNG state is the same afterwards,
    and a process-wide lock keeps blocks on other threads from drawing in between, so what the
    block draws depends on ``seed`` alone. Blocks on other threads wait for the lock.
    """
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _as_tensors(data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.int64))
    return x, y


def _direct(loss: LossFn) -> LossFn:
    """``loss``, or for a ``nn.CrossEntropyLoss`` that no hook watches, its ``forward``: what
    calling the module runs then (the same test as ``nn.Module._call_impl``), without the two
    frames and checks of a module call (about 2% of a small party's fit)."""
    if type(loss) is not nn.CrossEntropyLoss:
        return loss
    hooks = torch.nn.modules.module
    try:
        watched = (
            loss._forward_hooks
            or loss._forward_pre_hooks
            or loss._backward_hooks
            or loss._backward_pre_hooks
            or hooks._global_forward_hooks
            or hooks._global_forward_pre_hooks
            or hooks._global_backward_hooks
            or hooks._global_backward_pre_hooks
            or torch._C._get_tracing_state()
        )
    except AttributeError:  # a torch that keeps its hooks elsewhere: call the module
        return loss
    return loss if watched else loss.forward


def _joined(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _proximal_pull(module: nn.Module, mu: float) -> Callable[[], None] | None:
    """FedProx's pull towards the module's weights now, to run after each backward pass."""
    if mu == 0:
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params]
    return lambda: _add_proximal_gradient(params, anchor, mu)


@torch.no_grad()
def _add_proximal_gradient(
    params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float
) -> None:
    """``grad += mu (w - w_global)``: the gradient of FedProx's ``mu/2 ||w - w_global||^2``."""
    with_grad = [(p, a) for p, a in zip(params, anchor, strict=True) if p.grad is not None]
    if with_grad:
        ps, anchors = zip(*with_grad, strict=True)
        torch._foreach_add_(
            [p.grad for p in ps], torch._foreach_sub(list(ps), list(anchors)), alpha=mu
        )


class TorchAdapter:
    """Wraps an ``nn.Module`` with get/set weights, local training and evaluation.

    Args:
        module: any PyTorch module mapping a float batch to class scores (logits or
            log-probabilities; cross-entropy works with either).
        loss: ``loss(output, target) -> scalar``; cross-entropy by default.
    """

    #: ``fit`` honours ``TrainConfig.dp_sgd_*`` (parties refuse DP-SGD on adapters without it)
    supports_dp_sgd = True

    def __init__(self, module: nn.Module, loss: LossFn | None = None) -> None:
        self.module = module
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()
        state = module.state_dict(keep_vars=True)
        self._float_state = {name: t for name, t in state.items() if t.is_floating_point()}
        self._checked: list[object] = []  # the last config that passed, but its seed
        self._sgd: tuple[tuple, torch.optim.SGD] | None = None  # see _optimizer

    def parameter_order(self) -> list[str]:
        """The names of its weights in the module's own order (``state_dict()`` order), which
        is how Flower-style clients list their parameters."""
        return list(self._float_state)

    def get_weights(self) -> Weights:
        """A copy of the current weights as named numpy arrays, sorted by name."""
        return {name: arr.copy() for name, arr in sorted(self._arrays().items())}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Load ``weights`` into the module; names, shapes and dtypes must match exactly."""
        arrays = self._arrays()
        check_compatible(arrays, weights)
        for name, arr in arrays.items():
            np.copyto(arr, weights[name])

    def _arrays(self) -> dict[str, np.ndarray]:
        """The weights as numpy views of the module's tensors (taken afresh: ``module.to()``
        may have given a parameter new storage since the last call)."""
        return {name: t.detach().numpy() for name, t in self._float_state.items()}

    def fit(self, data: ArrayDataset, config: TrainConfig) -> dict[str, float]:
        """Train for ``config.epochs`` over ``data``; returns mean loss and accuracy seen.

        With ``config.proximal_mu > 0`` (FedProx) every step also pulls the weights towards
        those the module had when ``fit`` started: ``mu (w - w_start)`` is added to the
        gradients (the reported loss is the data loss alone).

        With ``config.dp_sgd_noise_multiplier > 0`` it trains with DP-SGD (see ``TrainConfig``
        and ``fedfuse.models._dpsgd``): Poisson batches, each example's gradient clipped, noise
        on their sum. The loss must average over the batch, and the module be one Opacus can
        compute per-example gradients for (no BatchNorm); the FedProx pull is added after the
        noise. The metrics are over the examples the batches took.

        With ``config.seed`` set, the batch order (and dropout) depend on that seed alone, not
        on other threads, and torch's global RNG state is left as it was (see the module
        docstring); DP-SGD's batches and noise do too only with ``dp_sgd_seeded_noise``.
        """
        self._check_config(config)
        if len(data) == 0:
            raise ValueError("cannot train on an empty dataset")
        if config.seed is None:
            return self._fit(data, config, None)
        generator = torch.Generator().manual_seed(config.seed)
        if not any(isinstance(m, _STOCHASTIC_LAYERS) for m in self.module.modules()):
            return self._fit(data, config, generator)
        with torch_seed(config.seed):
            return self._fit(data, config, generator)

    def _check_config(self, config: TrainConfig) -> None:
        """``config.validate()`` and the optimizer's name, unless ``config`` holds the very
        objects of the last config that passed, but for a valid seed: the round loop sends
        every party the same config with its own seed, and checking the table again took
        about 3% of a small party's task."""
        if type(config) is not TrainConfig:
            config.validate()
            resolve_optimizer(config.optimizer)
            return
        values = list(vars(config).values())  # (a dataclass: always in the fields' order)
        seed, values[_SEED_FIELD] = values[_SEED_FIELD], None
        if (
            (seed is None or (type(seed) is int and seed >= 0))
            and len(values) == len(self._checked)
            and all(map(operator.is_, values, self._checked))
        ):
            return
        config.validate()
        resolve_optimizer(config.optimizer)
        self._checked = values

    def _optimizer(self, config: TrainConfig) -> torch.optim.Optimizer:
        """A new optimizer for this fit (an optimizer's state, Adam's moments, never carries
        over from one fit to the next), except plain SGD: without momentum it keeps no state
        at all, so one is kept while the parameters and the learning rate stay the same
        (building it was about 3% of a small party's task). DP-SGD always gets a new one."""
        if resolve_optimizer(config.optimizer) is not torch.optim.SGD or (
            config.dp_sgd_noise_multiplier > 0
        ):
            return make_optimizer(config.optimizer, self.module.parameters(), config.learning_rate)
        params = list(self.module.parameters())
        key = (config.learning_rate, *map(id, params))  # (ids stay unique: the SGD holds them)
        if self._sgd is None or self._sgd[0] != key:
            self._sgd = (key, torch.optim.SGD(params, lr=config.learning_rate))
        return self._sgd[1]

    def _fit(
        self, data: ArrayDataset, config: TrainConfig, generator: torch.Generator | None
    ) -> dict[str, float]:
        x, y = _as_tensors(data)
        n = len(y)
        optimizer = self._optimizer(config)
        pull = _proximal_pull(self.module, config.proximal_mu)
        self.module.train()
        if config.dp_sgd_noise_multiplier == 0:

            def shuffled() -> Iterator[torch.Tensor]:
                order = torch.randperm(n, generator=generator)
                return (order[s : s + config.batch_size] for s in range(0, n, config.batch_size))

            return self._train(x, y, config.epochs, optimizer, shuffled, pull)
        private = dp_sgd_training(self.module, self.loss, optimizer, config, n, generator, pull)
        with private as (dp_optimizer, poisson):
            return self._train(x, y, config.epochs, dp_optimizer, poisson, None)

    def _train(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int,
        optimizer: torch.optim.Optimizer,
        epoch_batches: Callable[[], Iterator[torch.Tensor]],
        pull: Callable[[], None] | None,
    ) -> dict[str, float]:
        # Metrics cost little per batch: the loss is read as a number (cheap on CPU, where
        # training runs), the outputs and labels are kept and compared once per epoch. Every
        # tensor call here costs a few microseconds, a fit of a small party a few hundred.
        loss_sum, correct, seen, classified = 0.0, 0, 0, y.ndim == 1
        loss_fn = _direct(self.loss)
        for _ in range(epochs):
            logits, targets = [], []
            for idx in epoch_batches():
                optimizer.zero_grad(set_to_none=True)
                size = idx.numel()  # (a tensor's len() is Python code, numel() is not)
                if size == 0:  # only DP-SGD's Poisson sampling draws empty batches
                    noise_only_step(optimizer)
                    continue
                out, target = self.module(x[idx]), y[idx]
                loss = loss_fn(out, target)
                loss.backward()
                if pull is not None:
                    pull()
                optimizer.step()
                loss_sum += loss.item() * size
                seen += size
                logits.append(out.detach())
                targets.append(target)
            classified = classified and (not logits or logits[0].ndim == 2)
            if classified and logits:
                predicted = _joined(logits).argmax(dim=1).numpy()
                correct += int(np.count_nonzero(predicted == _joined(targets).numpy()))
        if seen == 0:
            return {}
        metrics = {"loss": loss_sum / seen}
        if classified:
            metrics["accuracy"] = correct / seen
        return metrics

    @torch.no_grad()
    def evaluate(self, data: ArrayDataset, batch_size: int = 1024) -> dict[str, float]:
        """Mean loss and accuracy of the current weights on ``data``."""
        if len(data) == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        x, y = _as_tensors(data)
        self.module.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(y), batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            out = self.module(xb)
            loss_sum += float(self.loss(out, yb)) * len(yb)
            correct += int((out.argmax(dim=1) == yb).sum())
        return {"loss": loss_sum / len(y), "accuracy": correct / len(y)}

    @torch.no_grad()
    def predict(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Model outputs for ``x`` as a numpy array."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.module.eval()
        return torch.cat(
            [self.module(xt[s : s + batch_size]) for s in range(0, len(xt), batch_size)]
        ).numpy()
