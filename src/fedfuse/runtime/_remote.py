"""A pool of parties reached through mailboxes: remote parties poll for tasks, hosted ones run here.

The service feeds this pool from its HTTP handlers; the pool itself does no I/O, so the same
round loop drives it as drives ``LocalPool``, and it is tested without a network.

* Remote parties call ``next_task(party_id, wait)`` (a long poll) and ``submit(...)``.
* Hosted parties (``add_hosted``) are ``Party`` objects run on a worker thread of this pool,
  one task at a time, so hosting many parties costs one model's memory.

Replies flow through a small bounded queue: a reply is handed over only when the round loop is
ready to fold it, which keeps the aggregator's memory O(model) however many parties answer.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from fedfuse.party import Party, Reply, Task, TaskError

__all__ = ["PendingTask", "RemotePool", "UnexpectedReplyError"]


class UnexpectedReplyError(ValueError):
    """A reply for a task the party was not asked, or has already answered."""


@dataclass
class PendingTask:
    task_id: int
    task: Task


@dataclass
class _Dispatch:
    task_ids: dict[str, int]
    replies: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=1))
    answered: set[str] = field(default_factory=set)
    open: bool = True


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
        self._hosted: dict[str, Party] = {}
        self._mail: dict[str, PendingTask] = {}
        self._busy: set[str] = set()  # fetched a task of the open dispatch, not answered yet
        self._hosted_work = threading.Lock()
        self._dispatch: _Dispatch | None = None
        self._ids = itertools.count(1)
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

    def party_ids(self) -> list[str]:
        """Hosted parties, remote parties working on a task, and remote parties that polled
        within ``liveness`` seconds."""
        now = time.monotonic()
        with self._lock:
            live = [
                p
                for p, seen in self._remote.items()
                if p in self._busy or now - seen <= self.liveness
            ]
            return [*self._hosted, *live]

    def wait_for_parties(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` parties are live; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.party_ids()) < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    # the round loop's side ------------------------------------------------------------------
    def dispatch(
        self, tasks: Mapping[str, Task], timeout: float | None = None
    ) -> Iterator[tuple[str, Reply]]:
        """Post ``tasks``; yield replies as they arrive, then a ``TaskError`` for each party
        that did not answer within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        current = _Dispatch({pid: next(self._ids) for pid in tasks})
        hosted: list[tuple[str, PendingTask]] = []
        with self._lock:
            self._dispatch = current
            for pid, task in tasks.items():
                pending = PendingTask(current.task_ids[pid], task)
                if pid in self._hosted:
                    hosted.append((pid, pending))
                elif pid in self._remote:
                    self._mail[pid] = pending
            self._lock.notify_all()
        if hosted:
            threading.Thread(target=self._run_hosted, args=(hosted,), daemon=True).start()
        if self.on_post is not None:
            self.on_post([pid for pid in tasks if pid in self._remote])
        missing = set(tasks)
        unknown = [pid for pid in tasks if pid not in self._hosted and pid not in self._remote]
        try:
            for pid in unknown:
                missing.discard(pid)
                yield pid, TaskError(f"unknown party {pid!r}")
            while missing:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    pid, reply = current.replies.get(timeout=remaining)
                except queue.Empty:
                    break
                missing.discard(pid)
                yield pid, reply
        finally:
            with self._lock:
                current.open = False
                self._dispatch = None
                self._busy.clear()
                for pid in tasks:
                    pending = self._mail.get(pid)
                    if pending is not None and pending.task_id == current.task_ids[pid]:
                        del self._mail[pid]
        for pid in sorted(missing, key=list(tasks).index):
            yield pid, TaskError("no reply before the round's deadline")

    def _run_hosted(self, hosted: list[tuple[str, PendingTask]]) -> None:
        for pid, pending in hosted:
            # one hosted task at a time, across dispatches too: hosted parties may share a model
            with self._hosted_work:
                with self._lock:
                    party = self._hosted.get(pid)
                    if self._dispatch is None or not self._dispatch.open:
                        return
                reply = party.handle(pending.task) if party else TaskError("party was removed")
            try:
                self.submit(pid, pending.task_id, reply)
            except UnexpectedReplyError:
                return

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

    def expects(self, party_id: str, task_id: int) -> None:
        """Raise ``UnexpectedReplyError`` unless ``party_id`` was asked ``task_id`` in the open
        round and has not answered it: checked before a reply's body is read, so only parties
        the round waits for can make the service receive an update."""
        with self._lock:
            self._open_dispatch_for(party_id, task_id)

    def _open_dispatch_for(self, party_id: str, task_id: int) -> _Dispatch:
        current = self._dispatch
        if (
            current is None
            or not current.open
            or current.task_ids.get(party_id) != task_id
            or party_id in current.answered
        ):
            raise UnexpectedReplyError(
                f"party {party_id!r} was not asked task {task_id} in the current round "
                "(or already answered it)"
            )
        return current

    def submit(self, party_id: str, task_id: int, reply: Reply, wait: float = 60.0) -> None:
        """Hand a party's reply to the round loop (blocks while the loop folds earlier ones).

        Raises ``UnexpectedReplyError`` if ``party_id`` was not asked ``task_id``, has already
        answered it, or the round is over.
        """
        with self._lock:
            current = self._open_dispatch_for(party_id, task_id)
            current.answered.add(party_id)
            self._busy.discard(party_id)
            if party_id in self._remote:
                self._remote[party_id] = time.monotonic()
        deadline = time.monotonic() + wait
        while current.open and time.monotonic() < deadline:
            try:
                current.replies.put((party_id, reply), timeout=0.2)
                return
            except queue.Full:
                continue
        raise UnexpectedReplyError(f"the round closed before the reply of {party_id!r} was taken")
