"""Which transport a simulation's parties run on: one setting of the spec, one factory.

``Backend`` is the spec's ``backend`` part (flat names ``backend``, ``workers``, ``threads``,
``ray_address``, ``cohort_size``)::

    local      every party in this process, one after another (the default)
    processes  worker processes on this machine, each holding its shard of parties
    ray        Ray actors holding party shards, on a local Ray or an existing cluster
    cohort     many parties' copies of a small model trained at once (torch.func + vmap)

``make_pool(backend, dataset, adapter)`` builds the pool; the round loop is the same for all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar

from fedfuse._settings import Interval, Options, Settings

__all__ = ["BACKENDS", "Backend", "make_pool"]

BACKENDS = ("local", "processes", "ray", "cohort")


@dataclass(frozen=True)
class Backend(Settings):
    """Where the parties of a simulation train.

    ``workers``: worker processes (``processes``) or actors (``ray``); 0 is one per CPU core this
    process may use (``processes``) or per CPU of the Ray cluster (``ray``). ``threads``: torch
    threads in each worker (1: the workers share the cores between them); ``fedfuse simulate``
    also runs its own process's torch with that many. ``ray_address``: an
    existing cluster to join (``"auto"``, ``"10.0.0.5:6379"``, ``"ray://head:10001"``); empty
    starts a local Ray bound to 127.0.0.1. ``cohort_size``: parties trained at once by the
    cohort backend (0: chosen from the model's size).

    The ``processes`` and ``ray`` backends give the same weights as ``local``, bit for bit, when
    ``local`` runs torch with as many threads as each worker (``torch.set_num_threads(threads)``):
    matrix products split over a different number of threads round differently. ``cohort`` is
    close, not bit-exact (see ``fedfuse.runtime.CohortPool``).
    """

    kind: ClassVar[str] = "backend"
    constraints: ClassVar[dict[str, list[Any]]] = {
        "name": [Options(BACKENDS)],
        "workers": [Interval(Integral, 0, 4096)],
        "threads": [Interval(Integral, 1, 256)],
        "ray_address": [str],
        "cohort_size": [Interval(Integral, 0, 1_000_000)],
    }

    name: str = "local"
    workers: int = 0
    threads: int = 1
    ray_address: str = ""
    cohort_size: int = 0

    def check_together(self) -> list[str]:
        problems = []
        if self.workers and self.name not in ("processes", "ray"):
            problems.append(
                f"workers: the {self.name} backend trains in this process; workers are for "
                "backend 'processes' or 'ray'"
            )
        if self.ray_address and self.name != "ray":
            problems.append(f"ray_address: only the ray backend joins a cluster, not {self.name}")
        if self.cohort_size and self.name != "cohort":
            problems.append(f"cohort_size: only the cohort backend trains cohorts, not {self.name}")
        return problems


def make_pool(
    backend: Backend,
    dataset: Any,
    adapter: Any,
    task_seconds: Mapping[str, float] | None = None,
) -> Any:
    """The pool ``backend`` names, with one party per entry of ``dataset`` and a copy of
    ``adapter``'s model in each worker. Close it when done (``with make_pool(...) as pool``)."""
    backend.check()
    if backend.name == "processes":
        from fedfuse.runtime._processes import ProcessPool

        return ProcessPool.from_dataset(
            dataset, adapter, task_seconds, workers=backend.workers, threads=backend.threads
        )
    if backend.name == "ray":
        from fedfuse.runtime._ray import RayPool

        return RayPool.from_dataset(
            dataset,
            adapter,
            task_seconds,
            workers=backend.workers,
            threads=backend.threads,
            address=backend.ray_address,
        )
    if backend.name == "cohort":
        from fedfuse.runtime._cohort import CohortPool

        return CohortPool.from_dataset(
            dataset, adapter, task_seconds, cohort_size=backend.cohort_size
        )
    from fedfuse.runtime._local import LocalPool

    return LocalPool.from_dataset(dataset, adapter, task_seconds)
