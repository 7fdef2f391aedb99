"""The spec's parts checked from their constraints tables, settings files, and the pools'
arrival interface (``LocalPool.start`` / ``next_arrival`` / ``cancel``, ``MockPool``)."""

import json

import numpy as np
import pytest

from fedfuse import FederationSpec
from fedfuse._settings import Settings, SettingsError
from fedfuse.data import DataSpec
from fedfuse.federation import Aggregation, Sampling
from fedfuse.fusion import FusionSpec, Update
from fedfuse.models import ModelSpec, TrainConfig
from fedfuse.party import TaskError, TrainTask
from fedfuse.runtime import LocalPool, MockPool

FUSION_NAMES = (
    "'classwise_avg', 'doc2vec', 'fedadagrad', 'fedadam', 'fedavg', 'fedavgm', 'fedyogi', "
    "'iter_avg', 'krum', 'matched_avg', 'median', 'multi_krum', 'trimmed_mean'"
)
DATASETS = "'breast_cancer', 'cifar10', 'digits', 'fashion_mnist', 'iris', 'mnist', 'wine', "
DATASETS += "'emnist', 'femnist'"
PARTITIONS = "'iid', 'dirichlet', 'classes', 'shards', 'group', 'quantity', 'class_window'"

# (part, field, bad value, what the message says is allowed); the message is
# "<part>.<field> must be <allowed>, got <value!r>"
BAD_VALUES = [
    (Sampling, "fraction", 0, "None or a number > 0 and <= 1"),
    (Sampling, "fraction", 1.01, "None or a number > 0 and <= 1"),
    (Sampling, "fraction", float("nan"), "None or a number > 0 and <= 1"),
    (Sampling, "fraction", True, "None or a number > 0 and <= 1"),
    (Sampling, "count", 0, "None or an integer >= 1"),
    (Sampling, "count", 2.0, "None or an integer >= 1"),
    (Aggregation, "mode", "async", "one of 'sync', 'buffered'"),
    (Aggregation, "quorum", 0, "an integer >= 1"),
    (Aggregation, "deadline", 0, "None or a number > 0 and <= 86400"),
    (Aggregation, "deadline", 86401, "None or a number > 0 and <= 86400"),
    (Aggregation, "buffer_size", 0, "an integer >= 1"),
    (Aggregation, "staleness_exponent", -1, "a number >= 0"),
    (Aggregation, "max_update_norm", -1, "None or a number >= 0"),
    (Aggregation, "max_update_ratio", float("inf"), "None or a number >= 0"),
    (TrainConfig, "epochs", 0, "an integer >= 1"),
    (TrainConfig, "batch_size", 1.5, "an integer >= 1"),
    (TrainConfig, "optimizer", 3, "a string"),
    (TrainConfig, "learning_rate", 0, "a number > 0"),
    (TrainConfig, "learning_rate", -1, "a number > 0"),
    (TrainConfig, "seed", -1, "None or an integer >= 0"),
    (TrainConfig, "proximal_mu", -0.1, "a number >= 0"),
    (TrainConfig, "compression", "zip", "one of 'none', 'fp16', 'int8', 'topk'"),
    (TrainConfig, "topk_fraction", 0, "a number > 0 and <= 1"),
    (TrainConfig, "error_feedback", "yes", "true or false"),
    (TrainConfig, "skip_relative_norm", -1, "a number >= 0"),
    (TrainConfig, "skip_cosine", 2, "None or a number >= -1 and <= 1"),
    (TrainConfig, "skip_cosine_to", "best", "one of 'last_sent', 'global'"),
    (TrainConfig, "max_consecutive_skips", -1, "an integer >= 0"),
    (TrainConfig, "count_examples", "all", "one of 'dataset', 'processed'"),
    (FusionSpec, "name", "avg", f"one of {FUSION_NAMES}"),
    (FusionSpec, "params", [1], "a table (mapping)"),
    (DataSpec, "dataset", "imagenet", f"one of {DATASETS}"),
    (DataSpec, "data_dir", 3, "None or a string"),
    (DataSpec, "partition", "random", f"one of {PARTITIONS}"),
    (DataSpec, "partition_params", "alpha", "a table (mapping)"),
    (DataSpec, "local_test_fraction", 1, "a number >= 0 and < 1"),
    (ModelSpec, "name", "resnet", "None or one of 'cifar_cnn', 'logreg', 'mlp', 'mnist_cnn'"),
    pytest.param(
        ModelSpec,
        "model_type",
        "onnx",
        "one of 'doc2vec', 'keras', 'pytorch'",
    ),
    (ModelSpec, "input_shape", (0,), "None or a list of 1 to 8 positive integers"),
    (ModelSpec, "input_shape", [], "None or a list of 1 to 8 positive integers"),
    (ModelSpec, "num_classes", 1, "None or an integer >= 2"),
]


@pytest.mark.parametrize(("part", "name", "value", "allowed"), BAD_VALUES)
def test_each_bad_value_is_named_with_what_is_allowed(part, name, value, allowed):
    message = f"{part.kind}.{name} must be {allowed}, got {value!r}"
    spec = part(**{name: value})  # stored as given, checked when used
    assert getattr(spec, name) is value
    with pytest.raises(SettingsError) as error:
        spec.check(f"{part.kind}.")
    assert str(error.value) == message
    # nested in the federation's spec, the error names the same full path
    with pytest.raises(SettingsError) as nested:
        FederationSpec(**{part.kind: spec}).check()
    assert str(nested.value) == message


def test_the_defaults_pass_their_tables():
    for part in (Sampling, Aggregation, TrainConfig, FusionSpec, DataSpec, ModelSpec):
        part().check()
    FederationSpec().check()
    assert isinstance(SettingsError("x"), ValueError)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (Sampling(0.5, 2), "sampling.fraction and count: give either fraction or count per round"),
        (
            FusionSpec("fedadam", {"trim_fraction": 0.1}),
            "fusion.params: bad parameters for fusion 'fedadam': unknown ['trim_fraction']; "
            "it takes: server_learning_rate, b1, b2, eps, clip_norm",
        ),
        (
            FusionSpec("trimmed_mean", {"trim_fraction": 0.9}),
            "fusion.params: trimmed_mean: trim_fraction must be in [0, 0.5), got 0.9",
        ),
        (
            DataSpec(partition="dirichlet", partition_params={"k": 2}),
            "data.partition_params: 'dirichlet' takes alpha, min_size; not ['k']",
        ),
    ],
)
def test_rules_across_fields_name_the_part(spec, message):
    with pytest.raises(SettingsError) as error:
        spec.check(f"{spec.kind}.")
    assert str(error.value).startswith(message)


def test_server_optimizer_parameters_are_checked():
    with pytest.raises(SettingsError, match=r"fusion\.params: .*server_learning_rate"):
        FusionSpec("fedadam", {"server_learning_rate": "fast"}).check("fusion.")


def test_spec_wide_rules_name_the_full_path():
    with pytest.raises(SettingsError, match="^aggregation.quorum=5 exceeds num_parties=2$"):
        FederationSpec(num_parties=2, aggregation=Aggregation(quorum=5)).check()
    with pytest.raises(SettingsError, match="^fusion: krum with num_byzantine=1 needs more than 4"):
        FederationSpec(num_parties=3, fusion=FusionSpec("krum")).check()
    # buffered: the fusion sees buffer_size updates, however many parties there are
    buffered = Aggregation(mode="buffered", buffer_size=5)
    FederationSpec(num_parties=3, fusion=FusionSpec("krum"), aggregation=buffered).check()
    with pytest.raises(
        SettingsError, match=r"^rounds must be an integer >= 1 and <= 100000, got 0"
    ):
        FederationSpec(rounds=0).check()
    with pytest.raises(SettingsError, match="^training.learning_rate must be a number > 0, got 0"):
        FederationSpec().replace(training={"learning_rate": 0}).check()


def test_from_dict_refuses_unknown_keys_and_lists_the_known_ones():
    with pytest.raises(SettingsError) as error:
        Aggregation.from_dict({"mode": "sync", "quorom": 2})
    assert str(error.value) == (
        "unknown aggregation setting(s) ['quorom']; known: mode, quorum, deadline, "
        "buffer_size, staleness_exponent, max_update_norm, max_update_ratio"
    )
    with pytest.raises(SettingsError, match=r"unknown federation setting\(s\) \['trainin'\]"):
        FederationSpec.from_dict({"trainin": {}})
    # nested: the path of the part (see bugs.md on the stray dot after it)
    with pytest.raises(SettingsError) as nested:
        FederationSpec.from_dict({"training": {"learning_rat": 1}})
    assert str(nested.value).startswith("unknown training")
    assert "setting(s) ['learning_rat']; known: epochs, batch_size, optimizer" in str(nested.value)
    with pytest.raises(SettingsError, match=r"^training\.? must be a table \(mapping\), got int"):
        FederationSpec.from_dict({"training": 3})
    with pytest.raises(SettingsError, match="^sampling must be a table"):
        Sampling.from_dict(["fraction", 0.5])


def test_nested_from_dict_errors_name_the_part_cleanly():
    with pytest.raises(SettingsError, match=r"^unknown training setting\(s\) \['learning_rat'\]"):
        FederationSpec.from_dict({"training": {"learning_rat": 1}})
    with pytest.raises(SettingsError, match=r"^training must be a table \(mapping\), got int"):
        FederationSpec.from_dict({"training": 3})


def test_from_dict_to_dict_round_trip_and_replace():
    spec = FederationSpec.from_dict(
        {
            "rounds": 3,
            "training": {"learning_rate": 0.1, "epochs": 2},
            "fusion": {"name": "fedadam", "params": {"server_learning_rate": 0.01}},
            "sampling": {"count": 2},
            "aggregation": {"mode": "buffered", "buffer_size": 2},
        }
    )
    assert spec.training == TrainConfig(learning_rate=0.1, epochs=2)
    assert spec.fusion == FusionSpec("fedadam", {"server_learning_rate": 0.01})
    assert spec.aggregation.mode == "buffered" and spec.aggregation.quorum == 1
    assert FederationSpec.from_dict(spec.to_dict()) == spec
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()  # plain data
    changed = spec.replace(training={"learning_rate": 0.5}, rounds=4)
    assert changed.training.learning_rate == 0.5 and changed.training.epochs == 2
    assert changed.rounds == 4 and spec.training.learning_rate == 0.1  # frozen: a copy


def test_from_file_reads_toml_and_json(tmp_path):
    toml = tmp_path / "spec.toml"
    toml.write_text(
        'rounds = 3\n[training]\nlearning_rate = 0.05\n[fusion]\nname = "fedadam"\n'
        'params = { server_learning_rate = 0.01 }\n[aggregation]\nmode = "buffered"\n'
        "buffer_size = 4\n"
    )
    spec = FederationSpec.from_file(toml)
    assert spec.rounds == 3 and spec.training.learning_rate == 0.05
    assert spec.fusion == FusionSpec("fedadam", {"server_learning_rate": 0.01})
    assert spec.aggregation == Aggregation(mode="buffered", buffer_size=4)
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(spec.to_dict()))
    assert FederationSpec.from_file(as_json) == spec
    # a part reads its own table of a bigger file, or the whole file
    assert Aggregation.from_file(toml) == spec.aggregation
    assert TrainConfig.from_file(toml) == TrainConfig(learning_rate=0.05)
    only = tmp_path / "sampling.json"
    only.write_text('{"fraction": 0.5}')
    assert Sampling.from_file(only) == Sampling(fraction=0.5)


def test_from_file_errors_say_what_is_wrong_and_where(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError, match=f"^no settings file at {missing}$"):
        FederationSpec.from_file(missing)
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("rounds = = 3\n")
    with pytest.raises(SettingsError, match=f"^{bad_toml} is not valid toml: "):
        FederationSpec.from_file(bad_toml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"rounds": ')
    with pytest.raises(SettingsError, match=f"^{bad_json} is not valid json: "):
        FederationSpec.from_file(bad_json)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(SettingsError, match="must hold a table \\(mapping\\) at its top level"):
        FederationSpec.from_file(listed)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((1 << 20) + 1))
    with pytest.raises(SettingsError, match="is larger than 1 MiB"):
        FederationSpec.from_file(big)
    typo = tmp_path / "typo.toml"
    typo.write_text("[aggregation]\nquorom = 2\n")
    with pytest.raises(SettingsError, match=r"unknown aggregation\.? setting\(s\) \['quorom'\]"):
        FederationSpec.from_file(typo)
    assert issubclass(FederationSpec, Settings)


# ---- the pools' arrivals ---------------------------------------------------------------------
def recording_pool(seconds, party_ids=None):
    """A ``MockPool`` whose reply is the task's round as a one-entry delta; ``pool.calls``
    lists the parties in the order their tasks ran."""
    calls = []

    def handler(pid, task):
        calls.append(pid)
        if pid == "boom":
            raise RuntimeError("disk on fire")
        return Update({"w": np.full(1, task.round, np.float32)}, 1)

    pool = MockPool(party_ids or list(seconds), handler, task_seconds=seconds)
    pool.calls = calls
    return pool


def task(round_num=1):
    return TrainTask(round_num, {"w": np.zeros(1, np.float32)}, TrainConfig())


def test_arrivals_come_in_simulated_clock_order():
    pool = recording_pool({"a": 3.0, "b": 1.0, "c": 2.0})
    assert pool.clock == 0.0 and pool.next_arrival() is None  # nothing in flight
    for i, pid in enumerate(["a", "b", "c"], start=1):
        pool.start(pid, task(i))
    assert pool.calls == ["a", "b", "c"]  # each task runs when it is started
    arrivals = []
    while (arrival := pool.next_arrival()) is not None:
        arrivals.append((arrival[0], float(arrival[1].weights["w"][0]), pool.clock))
    assert arrivals == [("b", 2.0, 1.0), ("c", 3.0, 2.0), ("a", 1.0, 3.0)]
    pool.start("b", task(4))  # a task started now finishes its seconds from now
    pid, _ = pool.next_arrival()
    assert pid == "b" and pool.clock == 4.0


def test_ties_arrive_in_start_order_and_unlisted_parties_take_one_second():
    pool = recording_pool({"x": 1.0}, party_ids=["x", "y", "z"])
    assert pool.seconds("y") == 1.0
    for pid in ["z", "x", "y"]:
        pool.start(pid, task())
    assert [pool.next_arrival()[0] for _ in range(3)] == ["z", "x", "y"]
    assert pool.clock == 1.0


def test_next_arrival_waits_at_most_timeout_simulated_seconds():
    pool = recording_pool({"slow": 2.0})
    pool.start("slow", task())
    assert pool.next_arrival(timeout=0.5) is None and pool.clock == 0.5
    assert pool.next_arrival(timeout=1.0) is None and pool.clock == 1.5
    pid, reply = pool.next_arrival(timeout=0.5)  # finishes exactly at the deadline: in time
    assert pid == "slow" and isinstance(reply, Update) and pool.clock == 2.0
    assert pool.next_arrival(timeout=5.0) is None and pool.clock == 2.0  # nothing in flight


def test_cancel_drops_a_reply():
    pool = recording_pool({"a": 1.0, "b": 2.0, "c": 3.0})
    for pid in "abc":
        pool.start(pid, task())
    pool.cancel("b")
    pool.cancel("nobody")  # cancelling what is not in flight is harmless
    assert [pool.next_arrival()[0] for _ in range(2)] == ["a", "c"]
    assert pool.next_arrival() is None and pool.clock == 3.0


def test_failures_arrive_as_task_errors():
    pool = recording_pool({"boom": 1.0})
    pool.start("boom", task())
    pool.start("ghost", task())
    arrivals = dict([pool.next_arrival(), pool.next_arrival()])
    assert arrivals["boom"] == TaskError("RuntimeError: disk on fire")
    assert arrivals["ghost"] == TaskError("unknown party 'ghost'")


def test_dispatch_lasts_as_long_as_the_slowest_party():
    pool = recording_pool({"a": 1.0, "b": 4.0})
    replies = dict(pool.dispatch({"a": task(1), "b": task(1), "ghost": task(1)}))
    assert pool.clock == 4.0 and pool.calls == ["a", "b"]
    assert replies["ghost"] == TaskError("unknown party 'ghost'")
    dict(pool.dispatch({"a": task(2)}))
    assert pool.clock == 5.0


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_task_seconds_must_be_finite_and_positive(bad):
    with pytest.raises(ValueError, match=r"task_seconds must be finite and > 0; not for \['a'\]"):
        LocalPool({}, task_seconds={"a": bad, "b": 1.0})
