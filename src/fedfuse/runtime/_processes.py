"""Every core of one machine: parties pinned to worker processes, each with its own model.

``ProcessPool`` forks one worker per shard of parties (see ``ShardedPool``). A worker holds a
copy of the model and its parties' data (shared with this process, copy-on-write, not copied
per round), sets torch to ``threads`` threads, and trains the parties of each batch it is sent
in turn. Tasks and replies cross a pipe between this process and its own children, pickled
(nothing from the network is ever unpickled: the parties are this process's own objects).

A worker that dies (killed, out of memory) costs the tasks it had: they come back as
``TaskError`` replies, and the next task for its parties forks a fresh worker from this
process's copy of them (state they kept in the dead worker, such as a compression residual,
is lost with it).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from multiprocessing.connection import Connection, wait
from typing import Any

from fedfuse.party import Party, TaskError
from fedfuse.runtime._local import handle_safely
from fedfuse.runtime._sharded import Arrival, Sent, ShardedPool

__all__ = ["ProcessPool", "available_cores"]

_STOP = b""  # the message that ends a worker
_JOIN_SECONDS = 5.0


def available_cores() -> int:
    """How many CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ProcessPool(ShardedPool):
    """Parties trained by ``workers`` worker processes (0: one per available core).

    Use it like ``LocalPool`` and close it when done (``with ProcessPool(...) as pool``); the
    workers also end with this process. Workers start by ``fork`` where the platform has it
    (any party object works); elsewhere by ``spawn`` (parties must be picklable).

    Args:
        parties: party id -> party; parties sharing one adapter share it within a worker.
        workers: worker processes (at most one per party).
        task_seconds: simulated seconds per task, as in ``LocalPool``.
        threads: torch threads in each worker.
    """

    def __init__(
        self,
        parties: Mapping[str, Party],
        workers: int = 0,
        task_seconds: Mapping[str, float] | None = None,
        *,
        threads: int = 1,
    ) -> None:
        if workers < 0 or threads < 1:
            raise ValueError(f"need workers >= 0 and threads >= 1, got {workers}, {threads}")
        super().__init__(parties, workers or available_cores(), task_seconds)
        self.threads = threads
        methods = multiprocessing.get_all_start_methods()
        self._context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._workers: list[_Worker | None] = [None] * self.parallelism
        self._dead: dict[int, str] = {}
        # a pool dropped without close() still stops its workers (the list changes in place)
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        for shard in range(self.parallelism):
            self._workers[shard] = self._start_worker(shard)

    def _start_worker(self, shard: int) -> _Worker:
        task_read, task_write = self._context.Pipe(duplex=False)
        reply_read, reply_write = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_serve,
            args=(self.shard_parties(shard), task_read, reply_write, self.threads),
            name=f"fedfuse-worker-{shard}",
            daemon=True,
        )
        process.start()
        task_read.close()
        reply_write.close()
        return _Worker(process, task_write, reply_read)

    def _send(self, batches: Mapping[int, list[Sent]]) -> None:
        if not self._finalizer.alive:
            raise RuntimeError("this ProcessPool is closed: its workers are gone")
        for shard, batch in batches.items():
            worker = self._workers[shard]
            if worker is None or not worker.process.is_alive():
                if worker is not None:
                    worker.close()
                worker = self._workers[shard] = self._start_worker(shard)
                self._dead.pop(shard, None)
            try:
                message = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # a task that cannot be pickled fails its own parties
                error = TaskError(f"cannot send the task to a worker: {exc}")
                worker.ready.extend((seq, error, 0.0) for seq, _, _ in batch)
                continue
            try:
                worker.tasks.send_bytes(message)
            except OSError as exc:
                self._dead[shard] = f"worker process {shard} is gone: {exc}"

    def _receive(self, timeout: float) -> list[Arrival]:
        live = [w for w in self._workers if w is not None]
        arrived = [item for w in live for item in w.ready]
        for w in live:
            w.ready.clear()
        if arrived:
            return arrived
        handles: dict[Any, tuple[int, _Worker]] = {}
        for shard, w in enumerate(self._workers):
            if w is not None and shard not in self._dead:
                handles[w.replies] = (shard, w)
        for ready in wait(list(handles), timeout=max(timeout, 0.0)):
            shard, w = handles[ready]
            try:
                arrived.append(w.replies.recv())
            except (EOFError, OSError):  # it died: the pipe closed under the read
                w.process.join(timeout=_JOIN_SECONDS)
                self._dead[shard] = _death(shard, w.process.exitcode)
        return arrived

    def _lost(self, shards: set[int]) -> dict[int, str]:
        for shard in shards:
            w = self._workers[shard]
            if shard not in self._dead and (w is None or not w.process.is_alive()):
                # its last replies may still be in the pipe: read them before calling it lost
                if w is not None and w.replies.poll():
                    continue
                self._dead[shard] = _death(shard, None if w is None else w.process.exitcode)
        return {shard: self._dead[shard] for shard in shards if shard in self._dead}

    def close(self) -> None:
        """Stop the workers (those that do not stop within a few seconds are terminated)."""
        self._finalizer()


class _Worker:
    def __init__(self, process: Any, tasks: Connection, replies: Connection) -> None:
        self.process, self.tasks, self.replies = process, tasks, replies
        self.ready: list[Arrival] = []  # errors decided here, delivered like replies

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.tasks.send_bytes(_STOP)

    def close(self) -> None:
        self.process.join(timeout=_JOIN_SECONDS)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=_JOIN_SECONDS)
        self.tasks.close()
        self.replies.close()


def _stop_workers(workers: list[_Worker | None]) -> None:
    for w in workers:
        if w is not None:
            w.stop()
    for shard, w in enumerate(workers):
        if w is not None:
            w.close()
            workers[shard] = None


def _death(shard: int, exitcode: int | None) -> str:
    return f"worker process {shard} exited (exit code {exitcode}) before it answered"


def _serve(parties: dict[str, Party], tasks: Connection, replies: Connection, threads: int) -> None:
    """A worker's life: read batches of tasks, answer each task as its party finishes it.

    A thread reads the task pipe into a queue, so this process always takes what it is sent
    (the pool never blocks writing to a busy worker) while its main thread trains."""
    import torch

    torch.set_num_threads(threads)
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                inbox.put(tasks.recv_bytes())
        except (EOFError, OSError):
            inbox.put(_STOP)

    threading.Thread(target=read, name="fedfuse-worker-inbox", daemon=True).start()
    while (message := inbox.get()) != _STOP:
        for seq, party_id, task in pickle.loads(message):
            start = time.perf_counter()
            reply = handle_safely(parties[party_id], task)
            seconds = time.perf_counter() - start
            try:
                replies.send((seq, reply, seconds))
            except (EOFError, OSError):
                return  # the pool is gone
            except Exception as exc:  # the reply could not be pickled: the party's failure
                replies.send((seq, TaskError(f"cannot send the reply back: {exc}"), seconds))
