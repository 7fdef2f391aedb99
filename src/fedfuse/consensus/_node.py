"""A node (sans-I/O): its model, its local data, its side of the algorithm, its edges.

A ``ConsensusNode`` never opens a socket and never reads a clock. The simulator and the HTTP
peer drive the same object: ``step()`` trains on one minibatch; after every ``local_steps``
steps (``round_done``) the driver asks for ``partners()`` and, for each, carries ``message(j)``
to neighbour j, whose ``answer(i, ...)`` applies it and, for two-way algorithms (gossip,
D-PSGD), returns j's own message, which the driver carries back into ``receive(j, ...)``.
A driver that cannot reach a neighbour calls ``exchange_failed(j)``; after ``max_failures``
failures in a row the edge is dropped and training goes on with the others. A dropped
neighbour that calls again is admitted again (its edge restarts from agreement).

Every message a node takes is checked first (``check``): the names, shapes and dtypes of its
variables, finite values, and a magnitude bound relative to what this node holds on that edge,
``||m_ji|| <= max_message_ratio * max(||m_ij||, ||w_i||, MESSAGE_NORM_FLOOR)``, where ``m_ij`` is
the message node i would send j now. Both ends of an edge send the same kind of variables (the
weights for gossip and D-PSGD, ECL's dual ``y``), so an honest message is of the size of the
receiver's own: at most 1.2x in the digits runs measured here, 4.4x in the least-squares tests
(ECL with ``rho = 0.5``), 8.5x in a PDMM run that diverges. The receiver's weights alone are no
reference: ECL's dual variables carry the disagreement between nodes and reach 15x ``||w||``
while a model is still near its (small) initialisation. The default of 10x refuses a neighbour
sending 1e30 in every entry, or its variables scaled up a hundredfold. A refused message changes
nothing and is counted (``refused``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fedfuse.consensus._algorithms import DPSGD, ECL, Gossip, _l2_norm
from fedfuse.data import ArrayDataset
from fedfuse.models import LossFn, TorchAdapter
from fedfuse.weights import Weights, WeightsMismatchError, num_bytes

__all__ = ["DEFAULT_MAX_MESSAGE_RATIO", "MESSAGE_NORM_FLOOR", "ConsensusNode"]

DEFAULT_MAX_MESSAGE_RATIO = 10.0
"""Default ``max_message_ratio``: a message may be at most 10x the norm of the node's model."""

MESSAGE_NORM_FLOOR = 1.0
"""The model norm used in the magnitude bound when the node's own norm is smaller."""

# More steps than any run takes.
_FAR_STEP = float(2**62)


class ConsensusNode:
    """One peer of a decentralized training run.

    Args:
        node_id: an integer id; ids order the edge signs of ECL (``A_ij = +I`` if ``i < j``).
        peers: the neighbours' ids.
        module: the node's own model (not shared with any other node).
        data: the node's local training data; it never leaves the node.
        algorithm: ``ECL(...)``, ``Gossip()`` or ``DPSGD()``.
        learning_rate: the step size ``s``.
        batch_size: minibatch size; batches walk a fresh seeded permutation each local epoch
            and are all full (the remainder of a permutation is skipped: a one-example batch
            would take a step as large as a full one with far more noise).
        local_steps: K, the number of minibatch steps per local round (exchanges follow rounds).
        exchange_prob: the chance that a round ends with an exchange on a given edge (gossip:
            with its one chosen neighbour).
        max_failures: consecutive failed exchanges after which an edge is dropped.
        seed: seeds batch order and partner choice (with ``node_id``).
        loss: ``loss(output, target)``; cross-entropy by default.
        max_message_ratio: refuse a message whose norm exceeds this times that of this node's own
            message on the edge (see the module docstring); 0 or None: no bound.
        epoch_steps: how many of this node's steps make one epoch of the run (what
            ``lr_decay_epochs`` and a driver's ``epochs`` count in); None: one pass over the
            local data (``steps_per_epoch``).
        lr_decay_epochs: step decay: the step size is multiplied by ``lr_decay`` once this node
            has taken ``epoch * epoch_steps`` steps, for each epoch listed (the same schedule a
            reference model follows).
        lr_decay: the factor of each decay.
    """

    def __init__(
        self,
        node_id: int,
        peers: Sequence[int],
        module: nn.Module,
        data: ArrayDataset,
        algorithm: ECL | Gossip | DPSGD,
        *,
        learning_rate: float,
        batch_size: int = 32,
        local_steps: int = 1,
        exchange_prob: float = 1.0,
        max_failures: int = 3,
        seed: int = 0,
        loss: LossFn | None = None,
        max_message_ratio: float | None = DEFAULT_MAX_MESSAGE_RATIO,
        epoch_steps: float | None = None,
        lr_decay_epochs: Sequence[float] = (),
        lr_decay: float = 0.1,
    ) -> None:
        if len(data) == 0:
            raise ValueError(f"node {node_id} has no training data")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        if batch_size < 1 or local_steps < 1 or max_failures < 1:
            raise ValueError(
                "batch_size, local_steps and max_failures must be >= 1, got "
                f"{batch_size}, {local_steps}, {max_failures}"
            )
        if not 0 <= exchange_prob <= 1:
            raise ValueError(f"exchange_prob must be in [0, 1], got {exchange_prob}")
        if max_message_ratio is not None and not max_message_ratio >= 0:
            raise ValueError(f"max_message_ratio must be >= 0 or None, got {max_message_ratio}")
        if epoch_steps is not None and not (math.isfinite(epoch_steps) and epoch_steps > 0):
            raise ValueError(f"epoch_steps must be > 0 or None, got {epoch_steps}")
        if not all(math.isfinite(e) and e > 0 for e in lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs must be epochs > 0, got {list(lr_decay_epochs)}")
        if not 0 < lr_decay <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.node_id = int(node_id)
        self.configured_peers = tuple(sorted(int(p) for p in peers))
        self.adapter = TorchAdapter(module, loss)
        self.algorithm = algorithm
        self.learning_rate = float(learning_rate)
        self.batch_size = int(batch_size)
        self.local_steps = int(local_steps)
        self.exchange_prob = float(exchange_prob)
        self.max_failures = int(max_failures)
        self.max_message_ratio = max_message_ratio
        self.rng = np.random.default_rng([seed, 7, self.node_id])
        self._x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
        # Class labels become int64 (what cross-entropy wants); regression targets stay float.
        target_dtype = np.float32 if np.asarray(data.y).dtype.kind == "f" else np.int64
        self._y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=target_dtype))
        self._order = np.empty(0, dtype=np.int64)
        self._cursor = 0
        self.steps = 0
        self.failures: dict[int, int] = {}
        self.dropped: set[int] = set()
        self.exchanges = 0
        self.bytes_sent = 0
        self.refused = 0
        self.epoch_steps = float(epoch_steps) if epoch_steps is not None else self.steps_per_epoch
        self.lr_decay = float(lr_decay)
        # The step counts at which the step size decays (one entry per decay); an epoch too far
        # to reach (1e300) stays a finite count.
        self._decay_at = sorted(
            math.ceil(min(e * self.epoch_steps, _FAR_STEP)) for e in lr_decay_epochs
        )
        self.learner = self._new_learner(self.configured_peers)

    def _new_learner(self, peers: Sequence[int]):
        named = [(n, p) for n, p in self.adapter.module.named_parameters() if p.requires_grad]
        return self.algorithm.learner(self.node_id, named, peers, self.local_steps)

    # --- training -----------------------------------------------------------------------------

    @property
    def num_examples(self) -> int:
        return len(self._y)

    @property
    def steps_per_epoch(self) -> int:
        """Full minibatches in one pass over the local data."""
        return max(self.num_examples // self.batch_size, 1)

    @property
    def epochs_done(self) -> float:
        """Epochs of the run (``epoch_steps`` steps each) this node has trained."""
        return self.steps / self.epoch_steps

    @property
    def current_lr(self) -> float:
        """The step size of the next step: ``learning_rate`` after the decays passed so far."""
        passed = bisect.bisect_right(self._decay_at, self.steps)
        return self.learning_rate * self.lr_decay**passed

    def _next_batch(self) -> torch.Tensor:
        size = min(self.batch_size, self.num_examples)
        if self._cursor + size > len(self._order):
            self._order = self.rng.permutation(self.num_examples)
            self._cursor = 0
        idx = self._order[self._cursor : self._cursor + size]
        self._cursor += size
        return torch.from_numpy(idx)

    def step(self) -> float:
        """One minibatch step of the algorithm; returns the minibatch loss."""
        module = self.adapter.module
        module.train()
        idx = self._next_batch()
        params = self.learner.params
        for p in params:
            p.grad = None
        loss = self.adapter.loss(module(self._x[idx]), self._y[idx])
        grads = torch.autograd.grad(loss, params)
        self.learner.step(grads, self.current_lr)
        self.steps += 1
        return float(loss.detach())

    @property
    def round_done(self) -> bool:
        """True right after the last step of a local round (every ``local_steps`` steps)."""
        return self.steps > 0 and self.steps % self.local_steps == 0

    # --- exchanges ----------------------------------------------------------------------------

    @property
    def peers(self) -> list[int]:
        """The neighbours this node currently exchanges with."""
        return list(self.learner.peers)

    @property
    def degree(self) -> int:
        return len(self.learner.peers)

    def partners(self) -> list[int]:
        """Whom to exchange with at the end of this round (seeded draw)."""
        return self.learner.partners(self.rng, self.exchange_prob)

    def message_template(self) -> Weights:
        """Arrays (zero memory) with the names, shapes and dtypes every message has."""
        return self.learner.message_template()

    def message(self, peer: int) -> Weights:
        """The variables for neighbour ``peer`` (a fresh copy, safe to send or keep)."""
        message = self.learner.message(peer)
        self.bytes_sent += num_bytes(message)
        return message

    def delivered(self, peer: int, message: Mapping[str, np.ndarray]) -> None:
        """Tell the node that ``message`` (from ``message(peer)``) reached ``peer`` and was taken:
        a compressed exchange updates its copy of what the neighbour holds."""
        self.learner.delivered(peer, message)

    def check(self, peer: int, message: Mapping[str, np.ndarray]) -> None:
        """Raise ``WeightsMismatchError`` (a ``ValueError``) unless ``peer``'s ``message`` holds
        finite arrays shaped like this node's variables within the magnitude bound; counts what
        it refuses."""
        try:
            self.learner.check(message)
            if self.max_message_ratio:
                bound = self.max_message_ratio * self._edge_norm(peer)
                norm = self.learner.magnitude(message)
                if not norm <= bound:
                    raise WeightsMismatchError(
                        f"message norm {norm:.3g} exceeds max_message_ratio "
                        f"{self.max_message_ratio:g} x this node's own on the edge "
                        f"(bound {bound:.3g})"
                    )
        except ValueError:
            self.refused += 1
            raise

    def _edge_norm(self, peer: int) -> float:
        """``max(||m_ij||, ||w_i||, MESSAGE_NORM_FLOOR)``: the scale an honest message has."""
        weights = _l2_norm([p.detach().numpy() for p in self.learner.params])
        learner = self.learner
        own = learner.magnitude(learner.message(peer)) if peer in learner.peers else 0.0
        return max(own, weights, MESSAGE_NORM_FLOOR)

    def receive(self, peer: int, message: Mapping[str, np.ndarray], peer_degree: int) -> None:
        """Apply neighbour ``peer``'s variables. Raises ``WeightsMismatchError`` (a ``ValueError``)
        for anything ``check`` refuses, changing nothing."""
        self.check(peer, message)
        self._apply(peer, message, peer_degree)

    def _apply(self, peer: int, message: Mapping[str, np.ndarray], peer_degree: int) -> None:
        """Apply a message that ``check`` has passed."""
        self.learner.receive(peer, message, peer_degree)
        self.dropped.discard(peer)
        self.failures[peer] = 0
        self.exchanges += 1

    def answer(
        self, peer: int, message: Mapping[str, np.ndarray], peer_degree: int
    ) -> tuple[Weights | None, int]:
        """Take a message that ``peer`` sent; returns ``(reply, degree)``.

        The reply is None for one-way algorithms (ECL). For two-way ones it is computed before
        ``message`` is applied, so both ends exchange what they held when the exchange began.
        A bad message raises and changes nothing.
        """
        self.check(peer, message)
        self.learner.add_peer(peer)
        self.dropped.discard(peer)
        reply = self.message(peer) if self.learner.replies else None
        self._apply(peer, message, peer_degree)
        return reply, self.degree

    def exchange_failed(self, peer: int) -> bool:
        """Count a failed exchange with ``peer``; returns True if the edge was just dropped."""
        self.failures[peer] = self.failures.get(peer, 0) + 1
        if self.failures[peer] >= self.max_failures and peer in self.learner.peers:
            self.learner.remove_peer(peer)
            self.dropped.add(peer)
            return True
        return False

    def start_from(self, weights: Mapping[str, np.ndarray]) -> None:
        """Take ``weights`` (a neighbour's model) as this node's model: how a late node joins.

        Every edge's state restarts from agreement with the new model. Raises
        ``WeightsMismatchError`` for weights that do not fit the model or are not finite,
        changing nothing.
        """
        for name, arr in weights.items():
            if not np.isfinite(arr).all():
                raise WeightsMismatchError(f"parameter {name!r} holds non-finite values")
        self.adapter.set_weights(weights)
        self.learner = self._new_learner(self.learner.peers or self.configured_peers)

    # --- inspection ---------------------------------------------------------------------------

    def weights(self) -> Weights:
        """A copy of the node's model weights (name -> array)."""
        return self.adapter.get_weights()

    def evaluate(self, data: ArrayDataset) -> dict[str, float]:
        return self.adapter.evaluate(data)
