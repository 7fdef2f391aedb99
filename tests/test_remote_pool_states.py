"""RemotePool.party_states: what each member is doing, for the dashboard."""

import time

from fedfuse.models import TrainConfig
from fedfuse.party import TrainTask
from fedfuse.runtime import RemotePool


def test_states_follow_a_task_through_its_life() -> None:
    pool = RemotePool(liveness=30.0)
    pool.add_remote("a")
    pool.add_remote("b")
    assert {p: s["state"] for p, s in pool.party_states().items()} == {"a": "idle", "b": "idle"}
    pool.start("a", TrainTask(1, {}, TrainConfig()))
    assert pool.party_states()["a"]["state"] == "assigned"
    pending = pool.next_task("a")
    assert pending is not None
    assert pool.party_states()["a"]["state"] == "training"
    pool.cancel("a")
    assert pool.party_states()["a"]["state"] == "idle"


def test_a_party_that_stopped_polling_is_dropped() -> None:
    pool = RemotePool(liveness=0.0)
    pool.add_remote("a")
    time.sleep(0.01)
    states = pool.party_states()
    assert states["a"]["state"] == "dropped"
    assert states["a"]["seen"] >= 0
