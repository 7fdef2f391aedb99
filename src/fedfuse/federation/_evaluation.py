"""Federated evaluation, sent on its own or carried with the next round's training tasks.

Two ways to get the parties' metrics of a global model:

- a broadcast: every idle party gets an ``EvaluateTask`` with the model (``broadcast``);
- piggybacking: round ``r + 1``'s ``TrainTask``\\ s carry round ``r``'s model anyway, so they
  ask for its evaluation too (``TrainTask.evaluate``); a party evaluates before it trains and
  replies ``Evaluated(reply, evaluation)``. ``CarriedEvaluations`` sets the evaluations apart
  from the training replies as they arrive, and asks the parties that answered without one
  (a party or pool that does not know ``evaluate``) separately afterwards.

Either way the metrics are folded by ``fold_evaluations`` in party-id order, so the mean does
not depend on the order replies arrived in: the same parties with the same model give the
same floats whichever way their evaluations travelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from fedfuse.federation._metrics import WeightedMetrics
from fedfuse.federation._validate import check_metrics, check_num_examples
from fedfuse.party import Evaluated, EvaluateTask, Evaluation, Malformed, Reply, TaskError
from fedfuse.runtime import PartyPool
from fedfuse.weights import Weights, num_bytes

__all__ = ["CarriedEvaluations", "broadcast", "fold_evaluations"]


def fold_evaluations(replies: Mapping[str, Reply], failed: dict[str, str]) -> dict[str, float]:
    """The example-weighted mean of the ``Evaluation`` replies (party -> reply), folded in
    party-id order; every other reply, and an evaluation with a bad count or metrics that are
    not finite numbers, is left out with its reason in ``failed`` (party -> reason)."""
    metrics = WeightedMetrics()
    for pid in sorted(replies):
        reply = replies[pid]
        if isinstance(reply, Evaluation):
            reason = check_num_examples(reply.num_examples) or check_metrics(reply.metrics)
            if reason is None:
                metrics.add(reply.metrics, reply.num_examples)
                continue
        elif isinstance(reply, TaskError):
            reason = reply.message
        elif isinstance(reply, Malformed):
            reason = reply.reason
        else:
            reason = f"expected an evaluation, got {type(reply).__name__}"
        failed[pid] = reason
    return metrics.result()


def broadcast(
    pool: PartyPool,
    party_ids: Sequence[str],
    weights: Weights,
    *,
    round_num: int,
    timeout: float | None,
    into: dict[str, Reply],
) -> int:
    """Send ``party_ids`` an ``EvaluateTask`` of ``weights`` and put their replies ``into``
    (party -> reply; a party that did not reply in time gets a ``TaskError`` saying so).
    Returns the bytes of model sent."""
    task = EvaluateTask(round_num, weights, "test")
    for pid, reply in pool.dispatch(dict.fromkeys(party_ids, task), timeout=timeout):
        into[pid] = reply
    for pid in party_ids:
        into.setdefault(pid, TaskError("no reply to the evaluation task in time"))
    return len(party_ids) * num_bytes(weights)


class CarriedEvaluations:
    """The evaluations that come back with one round's training replies.

    ``unwrap(arrivals)`` yields the training replies as they came, each ``Evaluated`` one
    unwrapped, and keeps its evaluation. A party whose reply is a ``TaskError`` or
    ``Malformed`` keeps that as the reason it has no evaluation; a party that replied
    without one is ``unaware`` (asked separately by ``finish``); a party sent a task that
    did not reply in time has no evaluation either.
    """

    def __init__(self, round_num: int) -> None:
        self.round_num = round_num
        self.replies: dict[str, Reply] = {}
        self.unaware: list[str] = []

    def unwrap(self, arrivals: Iterable[tuple[str, Reply]]) -> Iterator[tuple[str, Reply]]:
        for pid, reply in arrivals:
            if isinstance(reply, Evaluated):
                self.replies[pid] = reply.evaluation
                reply = reply.reply
            elif isinstance(reply, TaskError | Malformed):
                self.replies[pid] = reply
            else:
                self.unaware.append(pid)
            yield pid, reply

    def finish(
        self,
        pool: PartyPool,
        party_ids: Sequence[str],
        weights: Weights,
        *,
        timeout: float | None,
        failed: dict[str, str],
    ) -> tuple[dict[str, float], int]:
        """The metrics of ``weights``, the model the tasks to ``party_ids`` carried: the
        evaluations that came with them, plus a broadcast to the parties that replied
        without one. Returns the metrics and the bytes of model that broadcast sent."""
        sent = 0
        if self.unaware:
            sent = broadcast(
                pool,
                self.unaware,
                weights,
                round_num=self.round_num,
                timeout=timeout,
                into=self.replies,
            )
        for pid in party_ids:
            self.replies.setdefault(
                pid, TaskError(f"no reply to round {self.round_num}'s training task in time")
            )
        return fold_evaluations(self.replies, failed), sent
