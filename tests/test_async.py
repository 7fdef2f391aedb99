"""FedBuff: buffered aggregation by the one round loop, on a pool's simulated clock."""

import numpy as np
import pytest
import torch

from fedfuse._settings import SettingsError
from fedfuse.data import federate
from fedfuse.federation import Aggregation, Federation, Sampling, load_checkpoint
from fedfuse.fusion import Update, chain, fedavg, fuse, iter_avg, scale_by_staleness, with_info
from fedfuse.models import TorchAdapter, TrainConfig, build_model
from fedfuse.runtime import LocalPool, MockPool, spread_task_seconds

W0 = {"w": np.zeros(1, np.float32)}


def constant_pool(seconds, broken=()):
    """A ``MockPool`` whose parties take ``seconds[party]`` each and send the delta ``+1`` (NaN
    for the ``broken`` ones); ``pool.started`` lists ``(party, task round, task's w)`` in the
    order tasks were handed out."""
    started = []

    def handler(pid, task):
        started.append((pid, task.round, float(task.weights["w"][0])))
        value = np.nan if pid in broken else 1.0
        return Update({"w": np.full(1, value, np.float32)}, 1)

    pool = MockPool(list(seconds), handler, task_seconds=seconds)
    pool.started = started
    return pool


def buffered(buffer_size, **policy):
    return Aggregation(mode="buffered", buffer_size=buffer_size, **policy)


def test_spread_task_seconds():
    seconds = spread_task_seconds([f"p{i}" for i in range(5)], fastest=2.0, spread=10.0, seed=1)
    values = sorted(seconds.values())
    assert values[0] == pytest.approx(2.0) and values[-1] == pytest.approx(20.0)
    np.testing.assert_allclose(np.diff(np.log(values)), np.log(10) / 4)
    assert seconds == spread_task_seconds(list(seconds), fastest=2.0, spread=10.0, seed=1)
    assert seconds != spread_task_seconds(list(seconds), fastest=2.0, spread=10.0, seed=2)


def test_stale_updates_are_weighted_down_by_hand():
    """fast takes 1 s, slow 3 s, buffer of 1: steps at t = 1, 2, 3, 3.

    t=1: fast (started at v0) -> +1, v1.  t=2: fast (v1) -> +1, v2.
    t=3: slow started at v0, arrives at v2: staleness 2, weight 1/sqrt(3) -> v3;
         then fast (started at v2, now v3): staleness 1, weight 1/sqrt(2) -> v4.
    (fast and slow both finish at t=3; the task started first arrives first.)
    """
    pool = constant_pool({"fast": 1.0, "slow": 3.0})
    fed = Federation(pool, W0, fusion=iter_avg(), aggregation=buffered(1))
    history = fed.run(4)
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert [r["time"] for r in history] == [1.0, 2.0, 3.0, 3.0]
    assert [r["participants"] for r in history] == [["fast"], ["fast"], ["slow"], ["fast"]]
    assert [r["staleness"] for r in history] == [[0], [0], [2], [1]]
    assert all(r["fused"] for r in history)
    np.testing.assert_allclose(fed.weights["w"], [2 + 1 / np.sqrt(3) + 1 / np.sqrt(2)], rtol=1e-6)
    # every task starts from the newest model: its round is the step it was started in
    assert sorted(pool.started[:2]) == [("fast", 1, 0.0), ("slow", 1, 0.0)]
    assert [s[:2] for s in pool.started[2:5]] == [("fast", 2), ("fast", 3), ("slow", 4)]
    np.testing.assert_allclose([s[2] for s in pool.started[2:5]], [1, 2, 2 + 1 / np.sqrt(3)])


def test_buffer_fuses_every_k_arrivals_and_rejects_bad_updates():
    pool = constant_pool({"a": 1.0, "b": 1.5, "c": 2.0}, broken=["c"])
    fed = Federation(pool, W0, fusion=iter_avg(), aggregation=buffered(2, staleness_exponent=0.0))
    history = fed.run(2)
    # a@1, b@1.5 -> v1; c@2 (NaN, rejected), a@2, b@3 -> v2 at t=3
    assert [r["time"] for r in history] == [1.5, 3.0]
    assert history[0]["participants"] == ["a", "b"] and history[0]["rejected"] == {}
    assert history[1]["participants"] == ["a", "b"]
    assert list(history[1]["rejected"]) == ["c"] and "NaN" in history[1]["rejected"]["c"]
    assert history[1]["staleness"] == [1, 0]  # a started at v0 (t=1), b at v1 (t=1.5)
    np.testing.assert_allclose(fed.weights["w"], [2.0])


def test_sampling_count_is_how_many_train_at_a_time():
    pool = constant_pool({"a": 1.0, "b": 1.0, "c": 1.0})
    fed = Federation(pool, W0, aggregation=buffered(1), sampling=Sampling(count=1), seed=5)
    history = fed.run(6)
    assert [r["time"] for r in history] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # one at a time
    assert all(r["staleness"] == [0] for r in history)
    assert len(pool.started) == 6 and {s[0] for s in pool.started} <= {"a", "b", "c"}
    np.testing.assert_allclose(fed.weights["w"], [6.0])
    again = Federation(
        constant_pool({"a": 1.0, "b": 1.0, "c": 1.0}),
        W0,
        aggregation=buffered(1),
        sampling=Sampling(count=1),
        seed=5,
    )
    assert [r["participants"] for r in again.run(6)] == [r["participants"] for r in history]


def test_configuration_errors():
    pool = constant_pool({"a": 1.0})
    with pytest.raises(ValueError, match=r"task_seconds must be finite and > 0; not for \['b'\]"):
        MockPool(["a", "b"], lambda pid, task: None, task_seconds={"a": 1.0, "b": 0.0})
    with pytest.raises(
        SettingsError, match="aggregation.buffer_size must be an integer >= 1, got 0"
    ):
        Federation(pool, W0, aggregation=buffered(0))
    with pytest.raises(
        SettingsError, match="aggregation.staleness_exponent must be a number >= 0, got -1"
    ):
        Federation(pool, W0, aggregation=buffered(1, staleness_exponent=-1))
    with pytest.raises(
        SettingsError, match="aggregation.mode must be one of 'sync', 'buffered', got 'async'"
    ):
        Federation(pool, W0, aggregation=Aggregation(mode="async"))
    with pytest.raises(ValueError, match="krum with num_byzantine=1 needs more than 4 updates"):
        Federation(constant_pool({"a": 1.0, "b": 1.0}), W0, fusion="krum", aggregation=buffered(3))


def test_more_parties_in_flight_than_there_are_is_refused_at_construction():
    # AsyncFederation refused concurrency=2 of 1 party when it was created; a synchronous
    # Federation refuses Sampling(count=2) of 1 party when it is created
    pool = constant_pool({"a": 1.0})
    with pytest.raises(ValueError, match="count=2 exceeds the 1 parties available"):
        Federation(pool, W0, sampling=Sampling(count=2))
    with pytest.raises(ValueError, match="count=2 exceeds the 1 parties available"):
        Federation(pool, W0, sampling=Sampling(count=2), aggregation=buffered(1))


def test_a_buffer_not_filled_within_the_deadline_is_not_fused():
    """One party at a time, 1 s per task, buffer of 2, deadline 1.5 s: the second update of
    each step arrives 2 s after the step began, past the deadline."""
    pool = constant_pool({"a": 1.0, "b": 1.0})
    fed = Federation(pool, W0, aggregation=buffered(2, deadline=1.5), sampling=Sampling(count=1))
    record = fed.run_round()
    assert record["fused"] is False and record["participants"] in (["a"], ["b"])
    assert record["not_fused"] == "1 of 2 updates arrived within the deadline of 1.5 s"
    np.testing.assert_array_equal(fed.weights["w"], W0["w"])


def test_a_step_whose_party_never_answers_in_time_is_not_fused():
    pool = constant_pool({"slow": 5.0})
    fed = Federation(pool, W0, aggregation=buffered(1, deadline=2.0))
    record = fed.run_round()
    assert record["fused"] is False and record["participants"] == []
    assert record["not_fused"] == "0 of 1 updates arrived within the deadline of 2.0 s"
    assert record["time"] == 2.0 and fed.version == 0
    np.testing.assert_array_equal(fed.weights["w"], W0["w"])
    # the task is still running: it arrives at t=5, in the third step (staleness 0: nothing
    # was fused meanwhile)
    assert [fed.run_round()["time"] for _ in range(2)] == [4.0, 5.0]
    record = fed.history[-1]
    assert record["fused"] and record["staleness"] == [0] and not fed.history[1]["fused"]
    assert len(pool.started) == 1  # the same task all along
    np.testing.assert_allclose(fed.weights["w"], [1.0])


def test_scale_by_staleness_by_hand():
    def up(value, n, **info):
        update = Update({"w": np.full(1, value, np.float32)}, n)
        return with_info(update, **info) if info else update

    fresh, old, plain = up(1.0, 1, staleness=0), up(4.0, 1, staleness=3), up(3.0, 2)
    assert old.info == {"staleness": 3} and plain.info == {}
    tagged = with_info(old, label_counts={"0": 4})
    assert tagged.info == {"staleness": 3, "label_counts": {"0": 4}} and old.info == {
        "staleness": 3
    }

    weigh = scale_by_staleness(0.5)
    out, state = weigh.update([fresh, old, plain], weigh.init(W0), W0)
    out = list(out)
    assert state is None
    # (1 + 3) ** -0.5 = 1/2 for the old one; the fresh one and one without info are unchanged
    np.testing.assert_allclose([u.weights["w"][0] for u in out], [1.0, 2.0, 3.0])
    assert out[0] is fresh and out[2] is plain
    assert out[1].info == {"staleness": 3} and out[1].num_examples == 1  # info travels on

    transform = chain(scale_by_staleness(0.5), fedavg())
    fused, _ = fuse(transform, [fresh, old, plain], transform.init(W0), W0)
    np.testing.assert_allclose(fused.weights["w"], [(1 * 1 + 2 * 1 + 3 * 2) / 4])

    no_decay = scale_by_staleness(0.0)
    assert list(no_decay.update([old], None, W0)[0]) == [old]
    with pytest.raises(ValueError, match="exponent must be a number >= 0, got -0.5"):
        scale_by_staleness(-0.5)


def test_sync_and_buffered_records_have_the_same_keys():
    seconds = {"fast": 1.0, "slow": 3.0}
    sync = Federation(constant_pool(seconds), W0, fusion=iter_avg())
    step = Federation(constant_pool(seconds), W0, fusion=iter_avg(), aggregation=buffered(1))
    sync_records, buffered_records = sync.run(2), step.run(2)
    assert set(buffered_records[0]) == set(sync_records[0]) | {"staleness"}
    assert "staleness" not in sync_records[0] and "time" in sync_records[0]
    # a synchronous round lasts as long as its slowest party
    assert [r["time"] for r in sync_records] == [3.0, 6.0]
    assert [r["sampled"] for r in sync_records] == [["fast", "slow"]] * 2
    np.testing.assert_allclose(sync.weights["w"], [2.0])
    assert [r["sampled"] for r in buffered_records] == [["fast"], ["fast"]]


def test_a_buffered_federation_checkpoints_and_resumes(tmp_path):
    seconds = {"fast": 1.0, "slow": 3.0}

    def make():
        return Federation(
            constant_pool(seconds),
            W0,
            fusion="fedadam",
            aggregation=buffered(1),
            checkpoint_dir=tmp_path,
        )

    first = make()
    first.run(2)
    assert load_checkpoint(tmp_path).round == 2
    resumed = make()
    assert resumed.round == 2 and resumed.version == 2
    assert resumed.history == first.history
    np.testing.assert_array_equal(resumed.weights["w"], first.weights["w"])
    (_, (_, adam)), (_, (_, first_adam)) = resumed.fusion_state, first.fusion_state
    for moment in ("m", "v"):  # FedAdam's moments resume exactly
        np.testing.assert_array_equal(adam[moment]["w"], first_adam[moment]["w"])
    history = resumed.run(4)
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert history[:2] == first.history
    # what was in flight at the checkpoint is lost: every party starts again from the resumed
    # model, so fast's two next updates are fresh
    assert [r["participants"] for r in history] == [["fast"]] * 4
    assert [r["staleness"] for r in history] == [[0]] * 4
    assert load_checkpoint(tmp_path).round == 4
    assert load_checkpoint(tmp_path).history == history
    # four fresh +1 updates, as from a lone fast party without a break: FedAdam's moments
    # carried over, or the steps after the resume would differ
    alone = Federation(constant_pool({"fast": 1.0}), W0, fusion="fedadam", aggregation=buffered(1))
    alone.run(4)
    np.testing.assert_array_equal(resumed.weights["w"], alone.weights["w"])
    assert not np.array_equal(alone.weights["w"], first.weights["w"])


def test_the_simulated_clock_goes_on_after_a_resume(tmp_path):
    seconds = {"fast": 1.0, "slow": 3.0}

    def make():
        pool = constant_pool(seconds)
        return Federation(pool, W0, aggregation=buffered(1), checkpoint_dir=tmp_path)

    make().run(2)
    times = [r["time"] for r in make().run(4)]
    assert times == sorted(times) and times[:2] == [1.0, 2.0] and times[2] > 2.0


def test_fedbuff_trains(digits):
    train, test = digits
    fed = federate(train, test, num_parties=8, scheme="iid", seed=0)
    torch.manual_seed(0)
    adapter = TorchAdapter(build_model("mlp", (64,), 10))
    evaluator = TorchAdapter(build_model("mlp", (64,), 10))

    def central_eval(weights):
        evaluator.set_weights(weights)
        return evaluator.evaluate(fed.test)

    pool = LocalPool.from_dataset(
        fed, adapter, task_seconds=spread_task_seconds(fed.party_ids, spread=10.0, seed=0)
    )
    federation = Federation(
        pool,
        adapter.get_weights(),
        config=TrainConfig(epochs=2, batch_size=16, learning_rate=0.1),
        aggregation=buffered(4),
        sampling=Sampling(count=6),
        central_eval=central_eval,
    )
    history = federation.run(12)
    assert history[-1]["central"]["accuracy"] > 0.8
    assert max(max(r["staleness"]) for r in history) >= 1
    assert history[-1]["bytes_up"] == 4 * 4 * 55210 == history[-1]["bytes_dense"]
    # every task started in a step carries the global model: 6 at the first, then refills
    assert history[0]["bytes_down"] >= 6 * 4 * 55210
    assert all(r["bytes_down"] % (4 * 55210) == 0 for r in history)
    times = [r["time"] for r in history]
    assert times == sorted(times) and times[-1] < 12 * 10.0  # nobody waits for the slowest
