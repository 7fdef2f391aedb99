"""More than one machine: parties pinned to Ray actors, on a local Ray or an existing cluster.

``RayPool`` makes one actor per shard of parties (see ``ShardedPool``), spread over the nodes of
the cluster. An actor receives its parties once, when it is created (their data and a copy of
the model, pickled with Ray's cloudpickle on Ray's own channel between this process and the
actors it started; nothing from elsewhere is unpickled), sets torch to ``threads`` threads and
answers their tasks one after another. The global model a round sends is put in Ray's object
store once (``ray.put``) and handed to every actor by reference, so a node fetches it once and
its actors read it without a copy (read-only: a party loads it into its model, never writes
it); each task is one remote call, so each reply comes back as soon as its party is done, and
the round loop folds it in the order of the tasks (the same fold, bit for bit, as in one
process).

Without an address the pool starts a Ray of its own on this machine, bound to 127.0.0.1, with
usage statistics and the dashboard off, and shuts it down on ``close()``. With one
(``"auto"``, ``"10.0.0.5:6379"``, ``"ray://head:10001"``) it joins that cluster; a Ray this
process already runs (``ray.init`` done by the caller) is used as it is, and left running.

An actor that dies (its node lost, killed, out of memory) costs the tasks it had: they come
back as ``TaskError`` replies naming the actor, and the next task for its parties makes a fresh
actor from this process's copy of them (state they kept in the dead actor, such as a
compression residual, is lost with it).

Ray's objects reach this process read-only (arrays in a reply are views of Ray's buffers): the
round loop only reads updates (a mean folds them into its own accumulator), so no copy is made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from fedfuse.party import Party, Reply, Task, TaskError
from fedfuse.runtime._local import handle_safely
from fedfuse.runtime._sharded import Arrival, Sent, ShardedPool

__all__ = ["RayPool", "loopback"]

_MISSING_RAY = "the ray backend needs Ray: pip install 'fedfuse[ray]'"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Ray's switch for single-machine mode: every node address stays 127.0.0.1, servers bind it
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(_MISSING_RAY) from exc
    return ray


@contextlib.contextmanager
def loopback() -> Iterator[None]:
    """Ray on 127.0.0.1 only, while a Ray starts or connects within the block.

    Ray replaces a node address of 127.0.0.1 by this machine's network address (so that other
    machines can reach it) and its servers listen there; in its single-machine mode (the
    default on macOS and Windows) addresses stay 127.0.0.1 and servers bind the loopback
    interface alone. The block switches that mode on, for this process and for the Ray
    processes it starts (they inherit the environment), and restores both after.
    """
    from ray._private import ray_constants  # (read when Ray starts, not only on import)

    env, mode = os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = env
        ray_constants.ENABLE_RAY_CLUSTER = mode


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def _connect(address: str, workers: int) -> bool:
    """Make sure this process is connected to a Ray; True when this call started or joined it
    (and ``close`` should disconnect), False when a Ray was already running here."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    if address:
        pinned = loopback() if _is_loopback(address) else contextlib.nullcontext()
        with pinned:
            ray.init(address=address, log_to_driver=False)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with loopback():
        ray.init(
            address="local",  # (None would join a Ray that `ray start` left on this machine)
            num_cpus=workers or None,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
    return True


class _Shard:
    """A Ray actor's body: one shard's parties, answering their tasks one after another."""

    def __init__(self, parties: bytes, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        # pickled by the pool (not handed over by Ray as they are): arrays Ray hands over are
        # read-only views of its store, and a party may train on its data as it likes
        self.parties: dict[str, Party] = _import_ray().cloudpickle.loads(parties)

    def node(self) -> str:
        """The id of the Ray node this actor runs on."""
        return _import_ray().get_runtime_context().get_node_id()

    def handle(self, party_id: str, task: Task, weights: Any) -> tuple[Reply, float]:
        """Party ``party_id``'s reply to ``task`` (given back its ``weights``, which travel as a
        separate argument: Ray hands them over from its object store without a copy) and the
        seconds the party took."""
        if weights is not None:
            task = dataclasses.replace(task, weights=weights)
        start = time.perf_counter()
        reply = handle_safely(self.parties[party_id], task)
        return reply, time.perf_counter() - start


class RayPool(ShardedPool):
    """Parties trained by ``workers`` Ray actors (0: one per CPU of the cluster).

    Use it like ``LocalPool`` and close it when done (``with RayPool(...) as pool``): that
    kills its actors, and shuts Ray down if this pool started it.

    Args:
        parties: party id -> party; they must be serializable by cloudpickle (a ``Party`` with
            a ``TorchAdapter`` is); parties sharing one adapter share it within an actor.
        workers: actors (at most one per party, and one per CPU of the cluster).
        task_seconds: simulated seconds per task, as in ``LocalPool``.
        threads: torch threads in each actor.
        address: the Ray cluster to join (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``);
            empty starts a local Ray on 127.0.0.1 (one CPU per worker).
    """

    def __init__(
        self,
        parties: Mapping[str, Party],
        workers: int = 0,
        task_seconds: Mapping[str, float] | None = None,
        *,
        threads: int = 1,
        address: str = "",
    ) -> None:
        if workers < 0 or threads < 1:
            raise ValueError(f"need workers >= 0 and threads >= 1, got {workers}, {threads}")
        self.threads = threads
        self.actors: list[Any] = []  # one Ray actor handle per shard (None: not started)
        self._dead: dict[int, str] = {}
        self._pending: dict[Any, tuple[int, int, Any]] = {}  # ref -> (sequence, shard, actor)
        self._ready: list[Arrival] = []  # errors decided here, delivered like replies
        self._put: tuple[Any, Any] | None = None  # (weights, object ref) of the last ray.put
        self._ray = _import_ray()
        self._started_ray = _connect(address, workers)
        try:
            cpus = int(self._ray.cluster_resources().get("CPU", 0))
            if workers > cpus:
                raise ValueError(
                    f"workers={workers}, but the Ray cluster has {cpus} CPUs (each actor takes one)"
                )
            super().__init__(parties, workers or max(cpus, 1), task_seconds)
            self._actor_class = self._ray.remote(num_cpus=1)(_Shard)
            self.actors = [self._start_actor(shard) for shard in range(self.parallelism)]
        except BaseException:
            self.close()
            raise

    def nodes(self) -> dict[int, str]:
        """Shard -> the id of the Ray node its actor runs on."""
        live = {shard: actor for shard, actor in enumerate(self.actors) if actor is not None}
        ids = self._ray.get([actor.node.remote() for actor in live.values()])
        return dict(zip(live, ids, strict=True))

    def _start_actor(self, shard: int) -> Any:
        parties = self._ray.cloudpickle.dumps(self.shard_parties(shard))
        return self._actor_class.options(scheduling_strategy="SPREAD").remote(parties, self.threads)

    def _weights_ref(self, weights: Any) -> Any:
        """The object ref of ``weights``, put in the object store once while they are the
        last weights sent (the tasks of one dispatch, and the buffered starts that follow it
        from the same global model, all carry one weights object)."""
        if self._put is None or self._put[0] is not weights:
            self._put = (weights, self._ray.put(weights))
        return self._put[1]

    def _send(self, batches: Mapping[int, list[Sent]]) -> None:
        for shard, batch in batches.items():
            if self.actors[shard] is None or shard in self._dead:
                with contextlib.suppress(Exception):  # a dead actor's handle may be gone
                    if self.actors[shard] is not None:
                        self._ray.kill(self.actors[shard])
                self.actors[shard] = self._start_actor(shard)
                self._dead.pop(shard, None)
            actor = self.actors[shard]
            for seq, party_id, task in batch:
                weights = getattr(task, "weights", None)
                try:
                    if weights is None:
                        ref = actor.handle.remote(party_id, task, None)
                    else:
                        plain = dataclasses.replace(task, weights=None)
                        ref = actor.handle.remote(party_id, plain, self._weights_ref(weights))
                except Exception as exc:  # a task Ray cannot serialize fails its own party
                    error = TaskError(f"cannot send the task to Ray actor {shard}: {exc}")
                    self._ready.append((seq, error, 0.0))
                    continue
                self._pending[ref] = (seq, shard, actor)

    def _receive(self, timeout: float) -> list[Arrival]:
        arrived, self._ready = self._ready, []
        if arrived or not self._pending:
            return arrived
        refs = list(self._pending)
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=max(timeout, 0.0))
        if ready:
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            seq, shard, actor = self._pending.pop(ref)
            arrived.append((seq, *self._result(ref, shard, actor)))
        return arrived

    def _result(self, ref: Any, shard: int, actor: Any) -> tuple[Reply, float]:
        exceptions = self._ray.exceptions
        try:
            return self._ray.get(ref)
        except exceptions.RayActorError as exc:
            reason = f"Ray actor {shard} died before it answered: {str(exc)[:500]}"
            if actor is self.actors[shard]:  # (not an actor already replaced)
                self._dead.setdefault(shard, reason)
            return TaskError(reason), 0.0
        except exceptions.RayError as exc:  # the call failed (a reply Ray cannot serialize)
            return TaskError(f"Ray actor {shard} failed the task: {str(exc)[:500]}"), 0.0

    def _lost(self, shards: set[int]) -> dict[int, str]:
        return {shard: self._dead[shard] for shard in shards if shard in self._dead}

    def close(self) -> None:
        """Kill the actors; disconnect from Ray (shutting down a Ray this pool started)."""
        actors, self.actors = self.actors, [None] * len(self.actors)
        for actor in actors:
            if actor is not None:
                with contextlib.suppress(Exception):
                    self._ray.kill(actor)
        self._pending.clear()
        self._put = None
        self._disconnect()

    def _disconnect(self) -> None:
        if self._started_ray:
            self._started_ray = False
            self._ray.shutdown()
