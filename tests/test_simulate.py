import argparse
import json

import pytest

from fedfuse import SimulationConfig, simulate
from fedfuse.cli._simulate import _config_from_args, add_parsers


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
    doc = json.loads((tmp_path / "history.json").read_text())
    assert doc["config"]["rounds"] == 4 and len(doc["rounds"]) == 4
    assert sum(sum(v) for v in doc["label_counts"].values()) == sum(
        len(d) for d in result.dataset.train_data()
    )
    png = (tmp_path / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_simulate_is_reproducible():
    a = simulate(rounds=2, num_parties=3, centralized=False, federated_eval=False)
    b = simulate(rounds=2, num_parties=3, centralized=False, federated_eval=False)
    assert a.history[-1]["train"] == b.history[-1]["train"]


def test_config_from_toml(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text('[simulation]\nrounds = 3\npartition = "classes"\nclasses_per_party = 3\n')
    config = SimulationConfig.from_toml(path)
    assert config.rounds == 3 and config.partition_params() == {"k": 3}
    path.write_text("rounds = 3\nlearning_rte = 0.1\n")
    with pytest.raises(ValueError, match=r"unknown simulation setting\(s\) \['learning_rte'\]"):
        SimulationConfig.from_toml(path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset": "cifar100"}, "unknown dataset 'cifar100'"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"partition": "random"}, "unknown partition 'random'"),
        ({"fusion": "fedsum"}, "unknown fusion 'fedsum'"),
        ({"optimizer": "adamx"}, "unknown optimizer 'adamx'"),
        ({"fraction": 0}, r"fraction must be in \(0, 1\]"),
        ({"num_parties": 5000}, "num_parties=5000 exceeds"),
        ({"rounds": 0}, "rounds must be"),
        ({"partition": "dirichlet", "alpha": -1.0}, "alpha"),
        ({"fusion": "krum", "num_parties": 4}, "krum with num_byzantine=1 needs more than 4"),
        ({"fusion": "multi_krum", "count": 3}, "at most 3 parties take part in a round"),
        ({"max_update_ratio": -1.0}, "max_update_ratio must be a finite number >= 0"),
        ({"max_update_norm": float("nan")}, "max_update_norm must be a finite number >= 0"),
    ],
)
def test_simulate_bad_input_names_the_parameter(overrides, message):
    with pytest.raises(ValueError, match=message):
        simulate(centralized=False, **overrides)


def test_max_update_ratio_is_set_from_python_and_the_command_line():
    result = simulate(
        rounds=1, num_parties=3, max_update_ratio=1e-6, centralized=False, federated_eval=False
    )
    record = result.history[0]
    assert not record["fused"] and sorted(record["rejected"]) == result.dataset.party_ids
    assert all("exceeds the limit" in reason for reason in record["rejected"].values())
    assert record["not_fused"] == "no update was accepted"
    assert SimulationConfig().max_update_ratio == 10.0
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["simulate", "--max-update-ratio", "0", "--max-update-norm", "5"])
    config = _config_from_args(args, SimulationConfig())
    assert (config.max_update_ratio, config.max_update_norm) == (0.0, 5.0)
