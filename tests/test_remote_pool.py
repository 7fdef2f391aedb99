"""``RemotePool`` driven from threads, without HTTP: the service's mailboxes on their own.

The round loop's side (``dispatch``, ``start``, ``next_arrival``, ``cancel``, ``interrupt``) runs
on the test's thread; remote parties are threads calling ``next_task`` and ``submit`` as the
service's handlers do, hosted parties are ``Party``-like objects the pool runs itself. Threads
are ordered with events and joins (generous timeouts, never sleeps); the only short wall-clock
deadlines are ones that must expire, for a party that never answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fedfuse.fusion import Update
from fedfuse.party import TaskError, TrainTask
from fedfuse.runtime import PendingTask, RemotePool, UnexpectedReplyError

LONG = 60.0  # seconds a thread may wait for its turn: generous for a busy 2-core machine


def _task(round_: int = 1) -> TrainTask:
    return TrainTask(round_, {"w": np.zeros(2, np.float32)})


def _update(value: float, num_examples: int = 5) -> Update:
    return Update({"w": np.full(2, value, np.float32)}, num_examples, {"loss": value})


def _value(reply: Any) -> float:
    assert isinstance(reply, Update), reply
    return float(reply.weights["w"][0])


class Remote:
    """A remote party on its own thread: polls for a task, then does ``act(pending)``.

    ``fetched`` is set once it holds its task; ``done`` once ``act`` returned (``result`` holds
    what it returned, ``error`` what it raised).
    """

    def __init__(self, pool: RemotePool, party_id: str, act: Callable[[PendingTask], Any]):
        self.pool, self.party_id, self.act = pool, party_id, act
        self.fetched = threading.Event()
        self.pending: PendingTask | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        pool.add_remote(party_id)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.pending = self.pool.next_task(self.party_id, wait=LONG)
            assert self.pending is not None, f"{self.party_id} got no task"
            self.fetched.set()
            self.result = self.act(self.pending)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self) -> Any:
        self.thread.join(LONG)
        assert not self.thread.is_alive(), f"{self.party_id} is still running"
        if self.error is not None:
            raise self.error
        return self.result


def _answers(pool: RemotePool, party_id: str, value: float) -> Callable[[PendingTask], None]:
    return lambda pending: pool.submit(party_id, pending.task_id, _update(value))


class Hosted:
    """A hosted party: answers every task with its own value, and counts the tasks."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.rounds: list[int] = []

    def handle(self, task: TrainTask) -> Update:
        self.rounds.append(task.round)
        return _update(self.value)


# ---- synchronous rounds ----------------------------------------------------------------------
def test_dispatch_gathers_hosted_and_remote_parties_replies():
    pool = RemotePool(liveness=3600)
    hosted = Hosted(1.0)
    pool.add_hosted("h", hosted)
    seen: list[TrainTask] = []

    def answer(pending: PendingTask) -> None:
        seen.append(pending.task)
        pool.submit("r", pending.task_id, _update(2.0))

    remote = Remote(pool, "r", answer)
    task_h, task_r = _task(7), _task(7)
    replies = dict(pool.dispatch({"h": task_h, "r": task_r}, timeout=LONG))
    remote.join()
    assert {pid: _value(reply) for pid, reply in replies.items()} == {"h": 1.0, "r": 2.0}
    assert seen == [task_r] and seen[0] is task_r  # the remote party got its own task object
    assert hosted.rounds == [7]
    assert sorted(pool.party_ids()) == ["h", "r"]


def test_dispatch_to_an_unknown_party_is_its_task_error():
    pool = RemotePool()
    assert list(pool.dispatch({"ghost": _task()}, timeout=LONG)) == [
        ("ghost", TaskError("unknown party 'ghost'"))
    ]
    with pytest.raises(KeyError):
        pool.start("ghost", _task())
    with pytest.raises(KeyError):
        pool.next_task("ghost")


def test_a_silent_party_misses_the_deadline_and_its_late_reply_is_refused():
    pool = RemotePool(liveness=3600)
    pool.add_hosted("h", Hosted(1.0))
    round_over = threading.Event()

    def late(pending: PendingTask) -> str:
        assert round_over.wait(LONG)
        with pytest.raises(UnexpectedReplyError, match="was not asked task"):
            pool.expects("silent", pending.task_id)
        with pytest.raises(UnexpectedReplyError, match="was not asked task"):
            pool.submit("silent", pending.task_id, _update(99.0))
        return "refused"

    silent = Remote(pool, "silent", late)
    # the deadline must expire for the silent party; the hosted one answers at once
    replies = list(pool.dispatch({"h": _task(), "silent": _task()}, timeout=3.0))
    round_over.set()
    assert silent.join() == "refused"
    assert silent.fetched.is_set()  # it took its task, and never answered in time
    assert [pid for pid, _ in replies] == ["h", "silent"]
    assert _value(replies[0][1]) == 1.0
    assert replies[1][1] == TaskError("no reply before the round's deadline")
    assert pool.next_arrival(timeout=0.2) is None  # nothing of the late reply got through


def test_a_late_reply_is_never_the_answer_to_a_later_task():
    pool = RemotePool(liveness=3600)
    first = Remote(pool, "a", lambda pending: pending)  # takes task 1, does not answer yet
    (only,) = pool.dispatch({"a": _task(1)}, timeout=0.5)
    assert only == ("a", TaskError("no reply before the round's deadline"))
    old = first.join()

    new_fetched = threading.Event()

    def answer_old_then_new(pending: PendingTask) -> None:
        new_fetched.set()
        assert pending.task_id != old.task_id and pending.task.round == 2
        with pytest.raises(UnexpectedReplyError):
            pool.submit("a", old.task_id, _update(-1.0))  # round 1's answer, sent late
        pool.submit("a", pending.task_id, _update(2.0))

    second = Remote(pool, "a", answer_old_then_new)
    replies = list(pool.dispatch({"a": _task(2)}, timeout=LONG))
    second.join()
    assert new_fetched.is_set()
    assert [(pid, _value(reply)) for pid, reply in replies] == [("a", 2.0)]


def test_a_reply_queued_before_its_task_was_cancelled_is_dropped_not_reused():
    pool = RemotePool(liveness=3600)
    pool.add_remote("a")
    pool.start("a", _task(1))
    old = pool.next_task("a", wait=0)
    assert old is not None
    pool.submit("a", old.task_id, _update(-1.0))  # in the queue, not yet taken by the loop
    pool.cancel("a")
    remote = Remote(pool, "a", _answers(pool, "a", 2.0))
    replies = list(pool.dispatch({"a": _task(2)}, timeout=LONG))
    remote.join()
    assert [(pid, _value(reply)) for pid, reply in replies] == [("a", 2.0)]
    assert pool.next_arrival(timeout=0.2) is None


# ---- buffered aggregation: start / next_arrival / cancel ---------------------------------------
def test_start_and_next_arrival_hand_out_replies_in_the_order_they_come():
    pool = RemotePool(liveness=3600)
    a_sent = threading.Event()

    def a_answers(pending: PendingTask) -> None:
        pool.submit("a", pending.task_id, _update(1.0))
        a_sent.set()

    def b_answers_after_a(pending: PendingTask) -> None:
        assert a_sent.wait(LONG)
        pool.submit("b", pending.task_id, _update(2.0))

    b = Remote(pool, "b", b_answers_after_a)
    a = Remote(pool, "a", a_answers)
    pool.start("b", _task())
    pool.start("a", _task())
    first = pool.next_arrival(timeout=LONG)
    second = pool.next_arrival(timeout=LONG)
    a.join()
    b.join()
    assert [(pid, _value(reply)) for pid, reply in (first, second)] == [("a", 1.0), ("b", 2.0)]
    assert pool.next_arrival(timeout=0.2) is None  # nothing else is in flight


def test_a_cancelled_task_is_withdrawn_and_its_reply_refused():
    pool = RemotePool(liveness=3600)
    # mail not yet fetched is withdrawn
    pool.add_remote("idle")
    pool.start("idle", _task())
    pool.cancel("idle")
    assert pool.next_task("idle", wait=0) is None
    # a task fetched, then cancelled: its reply is refused
    cancelled = threading.Event()

    def answers_after_cancel(pending: PendingTask) -> str:
        assert cancelled.wait(LONG)
        with pytest.raises(UnexpectedReplyError, match="was not asked task"):
            pool.submit("busy", pending.task_id, _update(1.0))
        return "refused"

    busy = Remote(pool, "busy", answers_after_cancel)
    pool.start("busy", _task())
    assert busy.fetched.wait(LONG)
    pool.cancel("busy")
    cancelled.set()
    assert busy.join() == "refused"
    assert pool.next_arrival(timeout=0.2) is None


def test_expects_admits_only_the_open_task_of_that_party():
    pool = RemotePool(liveness=3600)
    pool.add_remote("a")
    pool.add_remote("b")
    with pytest.raises(UnexpectedReplyError, match="party 'a' was not asked task 1"):
        pool.expects("a", 1)  # nothing was started
    pool.start("a", _task())
    pending = pool.next_task("a", wait=0)
    assert pending is not None
    pool.expects("a", pending.task_id)  # the open task: admitted
    with pytest.raises(UnexpectedReplyError):
        pool.expects("a", pending.task_id + 1)  # a task it was not asked
    with pytest.raises(UnexpectedReplyError):
        pool.expects("b", pending.task_id)  # another party's task
    pool.submit("a", pending.task_id, _update(1.0))
    with pytest.raises(UnexpectedReplyError, match="already answered"):
        pool.expects("a", pending.task_id)  # answered, the reply not yet taken by the loop
    with pytest.raises(UnexpectedReplyError):
        pool.submit("a", pending.task_id, _update(2.0))  # a second answer to the same task
    arrival = pool.next_arrival(timeout=LONG)
    assert arrival is not None and arrival[0] == "a" and _value(arrival[1]) == 1.0
    with pytest.raises(UnexpectedReplyError):
        pool.expects("a", pending.task_id)  # taken: the task is closed


def test_a_training_reply_arriving_during_a_dispatch_waits_for_next_arrival():
    """Buffered training goes on while a federated evaluation (a dispatch) waits for others."""
    pool = RemotePool(liveness=3600)
    trainer_sent = threading.Event()

    def trainer_answers(pending: PendingTask) -> None:
        pool.submit("trainer", pending.task_id, _update(1.0))
        trainer_sent.set()

    def evaluator_answers_after(pending: PendingTask) -> None:
        assert trainer_sent.wait(LONG)
        pool.submit("evaluator", pending.task_id, _update(2.0))

    trainer = Remote(pool, "trainer", trainer_answers)
    evaluator = Remote(pool, "evaluator", evaluator_answers_after)
    pool.start("trainer", _task(1))
    assert trainer.fetched.wait(LONG)
    replies = list(pool.dispatch({"evaluator": _task(1)}, timeout=LONG))
    trainer.join()
    evaluator.join()
    assert [(pid, _value(reply)) for pid, reply in replies] == [("evaluator", 2.0)]
    arrival = pool.next_arrival(timeout=LONG)  # kept, not lost
    assert arrival is not None and arrival[0] == "trainer" and _value(arrival[1]) == 1.0


def test_cancel_drops_a_reply_kept_during_a_dispatch():
    pool = RemotePool(liveness=3600)
    pool.add_hosted("evaluator", Hosted(2.0))
    pool.add_remote("trainer")
    pool.start("trainer", _task(1))
    pending = pool.next_task("trainer", wait=0)
    assert pending is not None
    pool.submit("trainer", pending.task_id, _update(1.0))  # queued ahead of the evaluation
    replies = list(pool.dispatch({"evaluator": _task(1)}, timeout=LONG))
    assert [(pid, _value(reply)) for pid, reply in replies] == [("evaluator", 2.0)]
    pool.cancel("trainer")
    assert pool.next_arrival(timeout=0.2) is None


# ---- stopping --------------------------------------------------------------------------------
def test_interrupt_ends_a_waiting_next_arrival_and_every_later_wait():
    pool = RemotePool(liveness=3600)
    pool.add_remote("a")
    pool.start("a", _task())  # never answered
    waiting = threading.Event()
    result: list[Any] = []

    def wait_forever() -> None:
        waiting.set()
        result.append(pool.next_arrival(timeout=None))

    thread = threading.Thread(target=wait_forever, daemon=True)
    thread.start()
    assert waiting.wait(LONG)
    pool.interrupt()
    thread.join(LONG)
    assert not thread.is_alive() and result == [None]
    # from now on nothing waits: a dispatch without a deadline ends with its parties' errors
    assert pool.next_arrival(timeout=None) is None
    pool.add_remote("b")
    assert list(pool.dispatch({"b": _task()}, timeout=None)) == [
        ("b", TaskError("no reply before the round's deadline"))
    ]
    assert pool.next_task("b", wait=0) is None  # its task was withdrawn with the dispatch
