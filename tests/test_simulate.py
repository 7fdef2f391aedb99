import argparse
import json

import numpy as np
import pytest

from fedfuse import FederatedDataset, FederationSpec, TrainConfig, simulate
from fedfuse._settings import SettingsError
from fedfuse.cli._spec_flags import add_spec_flags, spec_from_args
from fedfuse.federation import Aggregation, Sampling
from fedfuse.fusion import FusionSpec
from fedfuse.recipes import SIMULATION_DEFAULTS, flat_names

QUIET = {"centralized": False, "federated_eval": False}


def test_simulate_end_to_end_writes_history_and_plot(tmp_path):
    result = simulate(
        rounds=4,
        num_parties=5,
        epochs=2,
        batch_size=16,
        learning_rate=0.1,
        fraction=0.6,
        out_dir=tmp_path,
    )
    assert [r["round"] for r in result.history] == [1, 2, 3, 4]
    assert all(len(r["sampled"]) == 3 for r in result.history)
    last = result.history[-1]
    assert last["central"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert last["federated"]["num_examples"] == sum(len(d) for d in result.dataset.test_data())
    assert len(result.centralized) == 8 and result.centralized[-1]["accuracy"] > 0.8
    assert result.spec.training.learning_rate == 0.1 and result.spec.sampling.fraction == 0.6
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["config"] == result.spec.to_dict()  # the nested spec
    assert doc["config"]["rounds"] == 4 and doc["config"]["training"]["epochs"] == 2
    assert len(doc["rounds"]) == 4
    assert sum(sum(v) for v in doc["label_counts"].values()) == sum(
        len(d) for d in result.dataset.train_data()
    )
    png = (tmp_path / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_simulate_is_reproducible():
    a = simulate(rounds=2, num_parties=3, **QUIET)
    b = simulate(rounds=2, num_parties=3, **QUIET)
    assert a.history[-1]["train"] == b.history[-1]["train"]


def test_simulate_takes_a_spec_and_flat_names_on_top():
    spec = FederationSpec(
        rounds=2,
        num_parties=4,
        training=TrainConfig(learning_rate=0.1, epochs=1),
        fusion=FusionSpec("fedadam", {"server_learning_rate": 0.02}),
        sampling=Sampling(count=2),
    )
    result = simulate(spec, seed=3, **QUIET)
    assert result.spec == spec.replace(
        seed=3, evaluation={"federated": False, "centralized": False}
    )
    assert result.spec.fusion == FusionSpec("fedadam", {"server_learning_rate": 0.02})
    assert [len(r["sampled"]) for r in result.history] == [2, 2]
    # the same run from flat names only
    flat = simulate(
        rounds=2,
        num_parties=4,
        learning_rate=0.1,
        epochs=1,
        fusion_algorithm="fedadam",
        server_learning_rate=0.02,
        count=2,
        seed=3,
        **QUIET,
    )
    assert flat.spec == result.spec
    assert flat.history[-1]["train"] == result.history[-1]["train"]


def test_simulate_defaults_are_the_spec_defaults_with_the_zoo_learning_rate():
    assert FederationSpec(training=TrainConfig(learning_rate=0.05)) == SIMULATION_DEFAULTS
    assert FederationSpec().training.learning_rate != 0.05  # the spec's own default differs
    result = simulate(rounds=1, num_parties=3, **QUIET)
    assert result.spec.training.learning_rate == 0.05
    assert (
        result.spec.replace(rounds=20, num_parties=10, evaluation=SIMULATION_DEFAULTS.evaluation)
        == SIMULATION_DEFAULTS
    )


NESTED_TOML = """\
rounds = 2
num_parties = 4
[training]
learning_rate = 0.1
epochs = 1
[fusion]
name = "fedavgm"
params = { server_learning_rate = 0.5, momentum = 0.8 }
[data]
partition = "classes"
partition_params = { classes_per_party = 3 }
[evaluation]
centralized = false
federated = false
"""


def test_simulate_reads_a_nested_toml_spec_file(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(NESTED_TOML)
    result = simulate(str(path))
    spec = result.spec
    assert (spec.rounds, spec.num_parties, spec.training.learning_rate) == (2, 4, 0.1)
    assert spec.fusion == FusionSpec("fedavgm", {"server_learning_rate": 0.5, "momentum": 0.8})
    assert spec.data.partition == "classes"
    assert spec.data.partition_params == {"classes_per_party": 3}
    # the file's spec sits on SIMULATION_DEFAULTS: what it leaves out keeps those values
    assert spec.training.batch_size == SIMULATION_DEFAULTS.training.batch_size
    assert all(len(np.unique(p.train.y)) == 3 for p in result.dataset.values())
    assert len(result.history) == 2 and result.centralized == []
    # flat names given beside the file override it
    assert simulate(path, rounds=1).spec.rounds == 1


def test_simulate_reads_a_json_spec_file_nested_or_flat(tmp_path):
    nested = tmp_path / "spec.json"
    nested.write_text(
        json.dumps(
            {
                "rounds": 1,
                "num_parties": 3,
                "training": {"learning_rate": 0.2},
                "fusion": {"name": "iter_avg"},
                "evaluation": {"centralized": False, "federated": False},
            }
        )
    )
    flat = tmp_path / "flat.json"
    flat.write_text(
        json.dumps(
            {
                "rounds": 1,
                "num_parties": 3,
                "learning_rate": 0.2,
                "fusion_algorithm": "iter_avg",
                "centralized": False,
                "federated_eval": False,
            }
        )
    )
    a, b = simulate(str(nested)), simulate(flat)
    assert a.spec == b.spec
    assert a.spec.training.learning_rate == 0.2 and a.spec.fusion.name == "iter_avg"
    assert a.history[-1]["train"] == b.history[-1]["train"]


def test_spec_file_errors_name_the_file_and_the_setting(tmp_path):
    with pytest.raises(SettingsError, match="no spec file at .*missing.toml"):
        simulate(tmp_path / "missing.toml")
    path = tmp_path / "typo.toml"
    path.write_text("rounds = 3\nlearning_rte = 0.1\n")
    with pytest.raises(SettingsError, match="unknown setting 'learning_rte'"):
        simulate(path)
    path.write_text("[training]\nlearning_rate = -1\n")
    with pytest.raises(SettingsError, match="training.learning_rate must be a number > 0, got -1"):
        simulate(path)


def test_from_flat_maps_flat_names_onto_the_parts():
    spec = FederationSpec.from_flat(
        {
            "learning_rate": 0.1,
            "epochs": 3,
            "fraction": 0.5,
            "quorum": 2,
            "round_timeout": 30.0,
            "fusion_algorithm": "fedadam",
            "server_learning_rate": 0.01,
            "model": "logreg",
            "partition": "dirichlet",
            "alpha": 0.3,
            "federated_eval": False,
        }
    )
    assert spec.training == TrainConfig(learning_rate=0.1, epochs=3)
    assert spec.sampling == Sampling(fraction=0.5)
    assert spec.aggregation == Aggregation(quorum=2, deadline=30.0)
    assert spec.fusion == FusionSpec("fedadam", {"server_learning_rate": 0.01})
    assert spec.model.name == "logreg"
    assert spec.data.partition_params == {"alpha": 0.3}
    assert spec.evaluation.federated is False and spec.evaluation.centralized is True
    assert {"learning_rate", "fusion_algorithm", "round_timeout", "quorum"} <= set(flat_names())
    assert "fusion" not in flat_names()
    use = FederationSpec.from_flat(
        {"use": "personalize", "finetune_epochs": 4, "personal_layers": "head"}
    )
    assert use.use.name == "personalize"
    assert use.use.params == {"finetune_epochs": 4, "personal": "head"}


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"fusion": "fedavg"}, "unknown setting 'fusion'"),  # the flat name is fusion_algorithm
        ({"learning_rte": 0.1}, "unknown setting 'learning_rte'"),
        # a parameter the chosen fusion/partition/use does not take is an error (was ignored)
        ({"server_learning_rate": 0.1}, "unknown setting 'server_learning_rate'"),
        ({"partition": "iid", "alpha": 0.5}, "unknown setting 'alpha'"),
        ({"train_options": 3}, "train_options must be a table"),
        ({"train_options": {"seed": 1}}, "train_options: seed is derived per party and round"),
    ],
)
def test_from_flat_errors(flat, message):
    with pytest.raises(SettingsError, match=message):
        FederationSpec.from_flat(flat)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "cifar100"}, "data.dataset must be one of .*got 'cifar100'"),
        ({"model": "vgg"}, "model.name must be None or one of .*got 'vgg'"),
        ({"partition": "random"}, "data.partition must be one of .*got 'random'"),
        ({"fusion_algorithm": "fedsum"}, "fusion.name must be one of .*got 'fedsum'"),
        ({"optimizer": "adamx"}, "training.optimizer: unknown optimizer 'adamx'"),
        ({"fraction": 0}, r"sampling.fraction must be None or a number > 0 and <= 1, got 0"),
        ({"fraction": 1.5}, r"sampling.fraction must be None or a number > 0 and <= 1, got 1.5"),
        ({"learning_rate": 0}, "training.learning_rate must be a number > 0, got 0"),
        ({"epochs": 0}, "training.epochs must be an integer >= 1, got 0"),
        ({"compression": "zip"}, "training.compression must be one of 'none', 'fp16'"),
        ({"quorum": 5, "num_parties": 2}, "aggregation.quorum=5 exceeds num_parties=2"),
        ({"mode": "bogus"}, "aggregation.mode must be one of 'sync', 'buffered'"),
        ({"mode": "buffered", "buffer_size": 0}, "aggregation.buffer_size must be an integer >= 1"),
        ({"num_parties": 5000}, "num_parties=5000 exceeds"),
        ({"rounds": 0}, "rounds must be"),
        ({"partition": "dirichlet", "alpha": -1.0}, "alpha must be > 0"),
        (
            {"fusion_algorithm": "krum", "num_parties": 4},
            "krum with num_byzantine=1 needs more than 4",
        ),
        ({"fusion_algorithm": "multi_krum", "count": 3}, "at most 3 parties take part in a round"),
        ({"max_update_ratio": -1.0}, "aggregation.max_update_ratio must be None or a number >= 0"),
        (
            {"max_update_norm": float("nan")},
            "aggregation.max_update_norm must be None or a number >= 0",
        ),
    ],
)
def test_simulate_bad_input_names_the_parameter(overrides, message):
    with pytest.raises(ValueError, match=message):
        simulate(centralized=False, **overrides)


def test_max_update_ratio_is_set_from_python_and_the_command_line():
    result = simulate(rounds=1, num_parties=3, max_update_ratio=1e-6, **QUIET)
    record = result.history[0]
    assert not record["fused"] and sorted(record["rejected"]) == result.dataset.party_ids
    assert all("exceeds the limit" in reason for reason in record["rejected"].values())
    assert record["not_fused"] == "no update was accepted"
    assert SIMULATION_DEFAULTS.aggregation.max_update_ratio == 10.0
    parser = argparse.ArgumentParser()
    add_spec_flags(parser, SIMULATION_DEFAULTS)
    args = parser.parse_args(["--max-update-ratio", "0", "--max-update-norm", "5"])
    aggregation = spec_from_args(args, SIMULATION_DEFAULTS).aggregation
    assert (aggregation.max_update_ratio, aggregation.max_update_norm) == (0.0, 5.0)


SLOW_LAST = {"party_0": 1.0, "party_1": 1.0, "party_2": 1.0, "party_3": 4.0}


def test_buffered_simulation_fuses_every_k_arrivals_without_waiting_for_the_slow_party():
    result = simulate(
        rounds=4,
        num_parties=4,
        mode="buffered",
        buffer_size=2,
        task_seconds=SLOW_LAST,
        **QUIET,
    )
    assert result.spec.aggregation == Aggregation(mode="buffered", buffer_size=2)
    history = result.history
    assert [r["round"] for r in history] == [1, 2, 3, 4]
    assert all(r["fused"] and len(r["participants"]) == 2 for r in history)
    assert all(len(r["staleness"]) == 2 and min(r["staleness"]) >= 0 for r in history)
    times = [r["time"] for r in history]
    assert times == sorted(times) and times[0] == 1.0 and times[-1] < 4.0
    # four steps are done before the 4-second party first arrives
    assert all("party_3" not in r["participants"] for r in history)
    again = simulate(
        rounds=4, num_parties=4, mode="buffered", buffer_size=2, task_seconds=SLOW_LAST, **QUIET
    )
    assert [r["participants"] for r in again.history] == [r["participants"] for r in history]
    # a synchronous round waits for every sampled party: its simulated clock is the slowest
    sync = simulate(rounds=2, num_parties=4, task_seconds=SLOW_LAST, **QUIET)
    assert [r["time"] for r in sync.history] == [4.0, 8.0]
    assert all(len(r["participants"]) == 4 for r in sync.history)


def _client_arrays(rng, n):
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def test_simulate_on_federated_data_from_dict_keeps_the_client_ids():
    rng = np.random.default_rng(0)
    clients = {
        "clinic_a": _client_arrays(rng, 60),
        "clinic_b": _client_arrays(rng, 40),
        "clinic_c": _client_arrays(rng, 50),
    }
    test = _client_arrays(rng, 80)
    fed = FederatedDataset.from_dict(clients, test=test, num_classes=2)
    result = simulate(rounds=5, federated_data=fed, learning_rate=0.5, model="logreg", **QUIET)
    assert result.dataset is fed
    assert result.spec.num_parties == 3  # as many parties as the user brought
    assert result.dataset.party_ids == ["clinic_a", "clinic_b", "clinic_c"]
    assert all(r["sampled"] == ["clinic_a", "clinic_b", "clinic_c"] for r in result.history)
    assert sorted(result.history[-1]["participants"]) == ["clinic_a", "clinic_b", "clinic_c"]
    assert result.history[-1]["train"]["num_examples"] == 150
    assert result.history[-1]["central"]["accuracy"] > 0.8  # a linear rule on feature 0
    without_test = FederatedDataset.from_dict(clients)
    with pytest.raises(
        ValueError, match="the federated dataset has no test data: give it a central test set"
    ):
        simulate(rounds=1, federated_data=without_test, **QUIET)
