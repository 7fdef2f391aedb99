"""A pool of parties reached through mailboxes: remote parties poll for tasks, hosted ones run here.

The service feeds this pool from its HTTP handlers; the pool itself does no I/O, so the same
round loop drives it as drives ``LocalPool``, and it is tested without a network.

* Remote parties call ``next_task(party_id, wait)`` (a long poll) and ``submit(...)``; a
  transport that holds long polls itself marks them with ``polling(party_id)`` (a party in a
  poll is live however long it waits) and checks a reply against ``task_of(...)``.
* Hosted parties (``add_hosted``) are ``Party`` objects run on a worker thread of this pool,
  one task at a time, so hosting many parties costs one model's memory.

Replies flow through a small bounded queue: a reply is handed over only when the round loop is
ready to fold it, which keeps the aggregator's memory O(model) however many parties answer.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fedfuse.party import Party, Reply, Task, TaskError

__all__ = ["PendingTask", "RemotePool", "UnexpectedReplyError"]


class UnexpectedReplyError(ValueError):
    """A reply for a task the party was not asked, or has already answered."""


@dataclass
class PendingTask:
    task_id: int
    task: Task


class RemotePool:
    """Parties that fetch tasks and post replies; see the module docstring.

    Args:
        liveness: seconds since its last poll after which a remote party is considered gone
            and no longer sampled (it comes back as soon as it polls again).
    """

    def __init__(self, liveness: float = 30.0) -> None:
        self.liveness = liveness
        self._lock = threading.Condition()
        self._remote: dict[str, float] = {}  # party id -> last poll time
        self._polling: collections.Counter[str] = collections.Counter()  # long polls open now
        self._hosted: dict[str, Party] = {}
        self._mail: dict[str, PendingTask] = {}
        self._busy: set[str] = set()  # fetched a task of the open dispatch, not answered yet
        self._hosted_work = threading.Lock()
        self._issued: dict[str, int] = {}  # party id -> its task the loop still waits for
        self._tasks: dict[str, Task] = {}  # party id -> that task (the reply is checked by it)
        self._answered: set[int] = set()  # task ids whose reply is on its way to the loop
        # how often the loop came asking for a reply, and the count when it took each task's
        # reply: once it asks again, it is done with that reply (see submit's ``settle``)
        self._asks = 0
        self._taken: dict[int, int] = {}
        self._settling: set[int] = set()  # task ids whose submit waits for the loop to ask again
        self._replies: queue.Queue[tuple[str, int, Reply]] = queue.Queue(maxsize=1)
        self._ids = itertools.count(1)
        self._interrupted = threading.Event()
        # replies that arrived while a dispatch waited for other tasks (buffered training
        # replies during a federated evaluation): next_arrival hands them out first
        self._stash: collections.deque[tuple[str, Reply]] = collections.deque()
        # called with the ids of remote parties that have a new task (e.g. to wake long polls)
        self.on_post: Callable[[list[str]], None] | None = None

    # membership -----------------------------------------------------------------------------
    def add_remote(self, party_id: str) -> None:
        with self._lock:
            self._remote[party_id] = time.monotonic()

    def add_hosted(self, party_id: str, party: Party) -> None:
        with self._lock:
            self._hosted[party_id] = party

    def knows(self, party_id: str) -> bool:
        """Whether ``party_id`` is a member (hosted or remote, live or not)."""
        with self._lock:
            return party_id in self._remote or party_id in self._hosted

    def hosted(self) -> list[Party]:
        """The parties this pool runs itself, in the order they were added."""
        with self._lock:
            return list(self._hosted.values())

    def remove(self, party_id: str) -> None:
        with self._lock:
            self._remote.pop(party_id, None)
            self._hosted.pop(party_id, None)
            self._mail.pop(party_id, None)
            self._issued.pop(party_id, None)
            self._tasks.pop(party_id, None)

    def party_ids(self) -> list[str]:
        """Hosted parties, remote parties working on a task, and remote parties that polled
        within ``liveness`` seconds."""
        now = time.monotonic()
        with self._lock:
            live = [
                p
                for p, seen in self._remote.items()
                if p in self._busy or p in self._polling or now - seen <= self.liveness
            ]
            return [*self._hosted, *live]

    def party_states(self) -> dict[str, dict[str, Any]]:
        """What each member is doing now, for a live view: ``state`` is ``training`` (it
        fetched a task and has not answered), ``assigned`` (a task waits in its mailbox),
        ``idle`` (polling, no task), ``dropped`` (no poll within ``liveness`` seconds) or
        ``hosted`` (run by this pool); ``seen`` is the seconds since its last poll (remote)."""
        now = time.monotonic()
        with self._lock:
            states: dict[str, dict[str, Any]] = {p: {"state": "hosted"} for p in self._hosted}
            for pid, seen in self._remote.items():
                if pid in self._busy:
                    state = "training"
                elif pid in self._mail:
                    state = "assigned"
                elif pid in self._polling or now - seen <= self.liveness:
                    state = "idle"
                else:
                    state = "dropped"
                states[pid] = {"state": state, "seen": round(now - seen, 3)}
            return states

    def wait_for_parties(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` parties are live; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.party_ids()) < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # the round loop's side ------------------------------------------------------------------
    def start(self, party_id: str, task: Task) -> None:
        """Hand ``party_id`` a task (its mailbox, or a worker thread for a hosted party); the
        reply comes out of ``next_arrival``. ``KeyError`` if it is not a member."""
        with self._lock:
            if party_id not in self._remote and party_id not in self._hosted:
                raise KeyError(party_id)
            task_id = next(self._ids)
            self._issued[party_id] = task_id
            self._tasks[party_id] = task
            pending = PendingTask(task_id, task)
            hosted = party_id in self._hosted
            remote = party_id in self._remote
            if remote:
                self._mail[party_id] = pending
                self._lock.notify_all()
        if hosted:
            threading.Thread(target=self._run_hosted, args=(party_id, pending), daemon=True).start()
        elif remote and self.on_post is not None:
            self.on_post([party_id])

    def next_arrival(self, timeout: float | None = None) -> tuple[str, Reply] | None:
        """The next reply to a started task, waiting up to ``timeout`` seconds (``None``:
        until one comes). Replies to cancelled tasks are dropped on the way."""
        if self._stash:
            return self._stash.popleft()
        return self._next_reply(timeout)

    def _next_reply(self, timeout: float | None) -> tuple[str, Reply] | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._asked()
        while not self._interrupted.is_set():
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            try:
                party_id, task_id, reply = self._replies.get(timeout=max(0.0, remaining))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            with self._lock:
                self._answered.discard(task_id)
                if task_id in self._settling:
                    self._taken[task_id] = self._asks
                if self._issued.get(party_id) == task_id:
                    del self._issued[party_id]
                    self._tasks.pop(party_id, None)
                    return party_id, reply
        return None

    def _asked(self) -> None:
        with self._lock:
            self._asks += 1
            self._lock.notify_all()

    def interrupt(self) -> None:
        """End every wait of ``next_arrival`` (and so of ``dispatch``) now and from now on: the
        federation is stopping."""
        self._interrupted.set()

    def cancel(self, party_id: str) -> None:
        """Forget ``party_id``'s task: a reply to it is refused, and its mail is withdrawn."""
        with self._lock:
            task_id = self._issued.pop(party_id, None)
            self._tasks.pop(party_id, None)
            self._busy.discard(party_id)
            self._stash = collections.deque(a for a in self._stash if a[0] != party_id)
            pending = self._mail.get(party_id)
            if pending is not None and pending.task_id == task_id:
                del self._mail[party_id]

    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        """Start ``tasks``; yield replies as they arrive, then a ``TaskError`` for each party
        that did not answer within ``timeout`` seconds (its task is cancelled)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = set()
        for pid, task in tasks.items():
            if not self.knows(pid):
                yield pid, TaskError(f"unknown party {pid!r}")
                continue
            self.start(pid, task)
            waiting.add(pid)
        try:
            while waiting:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                arrival = self._next_reply(remaining)
                if arrival is None:
                    break
                if arrival[0] in waiting:
                    waiting.discard(arrival[0])
                    yield arrival
                else:  # a task started outside this dispatch: kept for next_arrival
                    self._stash.append(arrival)
        finally:
            for pid in waiting:
                self.cancel(pid)
            self._asked()  # the loop is done with every reply it took
        for pid in [p for p in tasks if p in waiting]:
            yield pid, TaskError("no reply before the round's deadline")

    def _run_hosted(self, party_id: str, pending: PendingTask) -> None:
        # one hosted task at a time: hosted parties may share a model
        with self._hosted_work:
            with self._lock:
                party = self._hosted.get(party_id)
                if self._issued.get(party_id) != pending.task_id:
                    return  # cancelled while it waited its turn
            reply = party.handle(pending.task) if party else TaskError("party was removed")
        with contextlib.suppress(UnexpectedReplyError):
            self.submit(party_id, pending.task_id, reply)

    # the parties' side ----------------------------------------------------------------------
    def next_task(self, party_id: str, wait: float = 0.0) -> PendingTask | None:
        """The task waiting for ``party_id``, waiting up to ``wait`` seconds for one."""
        deadline = time.monotonic() + wait
        with self._lock:
            if party_id not in self._remote:
                raise KeyError(party_id)
            while True:
                self._remote[party_id] = time.monotonic()
                pending = self._mail.pop(party_id, None)
                if pending is not None:
                    self._busy.add(party_id)
                    return pending
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._lock.wait(min(remaining, 1.0))

    @contextlib.contextmanager
    def polling(self, party_id: str) -> Iterator[None]:
        """While the ``with`` block runs, ``party_id`` waits in a long poll and counts as live
        (however long the poll lasts), so a waiting poll needs no wake-ups to stay live."""
        with self._lock:
            self._polling[party_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._polling[party_id] -= 1
                if self._polling[party_id] <= 0:
                    del self._polling[party_id]
                if party_id in self._remote:
                    self._remote[party_id] = time.monotonic()

    def expects(self, party_id: str, task_id: int) -> None:
        """Raise ``UnexpectedReplyError`` unless ``party_id`` holds task ``task_id`` and has not
        answered it: checked before a reply's body is read, so only parties the loop waits for
        can make the service receive an update."""
        with self._lock:
            self._check_issued(party_id, task_id)

    def task_of(self, party_id: str, task_id: int) -> Task:
        """The task ``task_id`` that ``party_id`` holds and has not answered (what its reply
        is received against); ``UnexpectedReplyError`` as ``expects``."""
        with self._lock:
            self._check_issued(party_id, task_id)
            return self._tasks[party_id]

    def _check_issued(self, party_id: str, task_id: int) -> None:
        if self._issued.get(party_id) != task_id or task_id in self._answered:
            raise UnexpectedReplyError(
                f"party {party_id!r} was not asked task {task_id} (or already answered it, or "
                "the round is over)"
            )

    def submit(
        self,
        party_id: str,
        task_id: int,
        reply: Reply,
        wait: float = 60.0,
        *,
        settle: float = 0.0,
    ) -> None:
        """Hand a party's reply to the round loop (blocks while the loop folds earlier ones).

        ``settle``: then wait up to that many seconds more, until the loop has taken this reply
        and come back for the next (it has folded it and let it go), so a transport that
        receives replies one at a time holds one update in memory at a time, not three (one
        being received, one in the queue, one being folded).

        Raises ``UnexpectedReplyError`` if ``party_id`` was not asked ``task_id``, has already
        answered it, or its task was cancelled (the round is over).
        """
        with self._lock:
            self._check_issued(party_id, task_id)
            self._answered.add(task_id)
            self._busy.discard(party_id)
            if party_id in self._remote:
                self._remote[party_id] = time.monotonic()
            if settle > 0:
                self._settling.add(task_id)
        deadline = time.monotonic() + wait
        while self._issued.get(party_id) == task_id and time.monotonic() < deadline:
            try:
                self._replies.put((party_id, task_id, reply), timeout=0.2)
            except queue.Full:
                continue
            del reply  # the loop's, now
            if settle > 0:
                with self._lock:
                    self._lock.wait_for(
                        lambda: (
                            self._interrupted.is_set()
                            or self._taken.get(task_id, self._asks) < self._asks
                        ),
                        timeout=settle,
                    )
            with self._lock:
                self._taken.pop(task_id, None)
                self._settling.discard(task_id)
            return
        with self._lock:
            self._answered.discard(task_id)
            self._settling.discard(task_id)
        raise UnexpectedReplyError(f"the round closed before the reply of {party_id!r} was taken")
