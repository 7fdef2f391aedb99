import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedfuse.cli._main import build_parser
from fedfuse.cli._spec_flags import spec_from_args
from fedfuse.data import load_party_npz
from fedfuse.federation import Aggregation
from fedfuse.fusion import FusionSpec
from fedfuse.recipes import SIMULATION_DEFAULTS

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "fedfuse", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_demo_runs_the_full_federation(tmp_path):
    """The README's demo: 10 Dirichlet parties on digits, 25 FedAvg rounds, baseline, files."""
    proc = run_cli("demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "10 parties (dirichlet partition)" in out and "fedavg per round" in out
    history = json.loads((tmp_path / "fedfuse-demo-output" / "history.json").read_text())
    rounds = history["rounds"]
    assert len(rounds) == 25 and len(rounds[0]["participants"]) == 10
    assert rounds[-1]["central"]["accuracy"] > 0.85
    assert rounds[-1]["federated"]["accuracy"] > 0.85
    assert rounds[-1]["central"]["accuracy"] > rounds[0]["central"]["accuracy"] + 0.3
    assert history["centralized"][-1]["accuracy"] > 0.9
    assert (tmp_path / "fedfuse-demo-output" / "accuracy.png").stat().st_size > 10_000
    assert "centralized model (pooled data, 50 epochs)" in out


def test_simulate_with_flags_and_toml(tmp_path):
    toml = tmp_path / "sim.toml"
    toml.write_text('rounds = 2\nnum_parties = 4\npartition = "iid"\nmodel = "logreg"\n')
    proc = run_cli(
        "simulate",
        "--config",
        str(toml),
        "--rounds",
        "3",
        "--fraction",
        "0.5",
        "--no-centralized",
        "--out",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "history.json").read_text())
    assert doc["config"]["rounds"] == 3 and doc["config"]["model"]["name"] == "logreg"
    assert doc["config"]["sampling"]["fraction"] == 0.5
    assert [len(r["sampled"]) for r in doc["rounds"]] == [2, 2, 2]
    assert doc["centralized"] == []


def test_partition_writes_tutorial_npz_files(tmp_path):
    proc = run_cli(
        "partition",
        "--dataset",
        "digits",
        "--num-parties",
        "3",
        "--partition",
        "classes",
        "--classes-per-party",
        "4",
        "--out",
        str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted(tmp_path.glob("data_party*.npz"))
    assert [f.name for f in files] == ["data_party0.npz", "data_party1.npz", "data_party2.npz"]
    with np.load(files[0]) as npz:
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]
    party = load_party_npz(files[0])
    assert len(np.unique(party.train.y)) == 4
    assert "party_0" in proc.stdout and "total" in proc.stdout


def test_cli_errors_are_one_line_and_exit_2(tmp_path):
    proc = run_cli("simulate", "--dataset", "nope", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("fedfuse simulate: error: data.dataset must be one of")
    assert "got 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("simulate", "--fraction", "1.5", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "sampling.fraction must be None or a number > 0 and <= 1, got 1.5" in proc.stderr
    proc = run_cli("simulate", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "no spec file at" in proc.stderr
    assert "missing.toml" in proc.stderr and "Traceback" not in proc.stderr
    # a parameter the chosen fusion does not take is refused, not ignored
    proc = run_cli("simulate", "--server-learning-rate", "0.1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "unknown setting 'server_learning_rate'" in proc.stderr


def _spec(*argv):
    args = build_parser().parse_args(["simulate", *argv])
    return spec_from_args(args, SIMULATION_DEFAULTS)


def test_simulate_flags_are_derived_from_the_spec():
    spec = _spec(
        "--learning-rate", "0.2",
        "--fusion", "fedadam",
        "--server-learning-rate", "0.01",
        "--partition", "dirichlet",
        "--alpha", "0.3",
        "--round-timeout", "12.5",
        "--count", "4",
    )  # fmt: skip
    assert spec.training.learning_rate == 0.2
    assert spec.fusion == FusionSpec("fedadam", {"server_learning_rate": 0.01})
    assert spec.data.partition_params == {"alpha": 0.3}
    assert spec.aggregation.deadline == 12.5 and spec.sampling.count == 4
    assert _spec("--fusion-algorithm", "median").fusion.name == "median"  # --fusion is an alias
    spec = _spec("--mode", "buffered", "--buffer-size", "3")
    assert spec.aggregation == Aggregation(mode="buffered", buffer_size=3)
    assert _spec() == SIMULATION_DEFAULTS  # no flag given: the defaults, untouched


def test_simulate_config_json_is_overridden_by_flags(tmp_path):
    path = tmp_path / "spec.json"
    nested = {
        "rounds": 7,
        "training": {"learning_rate": 0.3, "epochs": 2},
        "fusion": {"name": "iter_avg"},
    }
    path.write_text(json.dumps(nested))
    spec = _spec("--config", str(path), "--epochs", "3")
    assert (spec.rounds, spec.training.learning_rate, spec.training.epochs) == (7, 0.3, 3)
    assert spec.fusion.name == "iter_avg"
    path.write_text(json.dumps({"rounds": 7, "learning_rate": 0.3, "fusion_algorithm": "iter_avg"}))
    flat = _spec("--config", str(path), "--epochs", "3")
    assert flat == spec  # flat names in the file mean the same


def test_simulate_buffered_from_the_command_line(tmp_path):
    proc = run_cli(
        "simulate",
        "--num-parties", "4",
        "--rounds", "3",
        "--mode", "buffered",
        "--buffer-size", "3",
        "--no-centralized",
        "--no-federated-eval",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "out" / "history.json").read_text())
    assert doc["config"]["aggregation"]["mode"] == "buffered"
    assert doc["config"]["aggregation"]["buffer_size"] == 3
    rounds = doc["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["fused"] and len(r["participants"]) == 3 for r in rounds)
    assert all(len(r["staleness"]) == 3 and min(r["staleness"]) >= 0 for r in rounds)
    assert max(rounds[-1]["staleness"]) >= 1  # parties train on while others are fused
    assert doc["centralized"] == []


def _flags(parser, command=(), *, required_only=False):
    """(sub-command, flag, help) for every flag of ``parser`` and its sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, (*command, name), required_only=required_only)
        elif (
            action.option_strings
            and not isinstance(action, argparse._HelpAction)
            and (action.required or not required_only)
        ):
            yield " ".join(command), "/".join(action.option_strings), action.help


COMMANDS = sorted({command for command, _, _ in _flags(build_parser())})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_a_help_text_that_shows_its_default(command):
    parser = build_parser()
    flags = [(flag, text) for c, flag, text in _flags(parser) if c == command]
    assert flags, command
    missing = [flag for flag, text in flags if not text or text == argparse.SUPPRESS]
    assert missing == [], f"fedfuse {command}: flags without help: {missing}"
    required = {f for c, f, _ in _flags(parser, required_only=True) if c == command}
    silent = [flag for flag, text in flags if flag not in required and "default" not in text]
    assert silent == [], f"fedfuse {command}: help texts that do not say the default: {silent}"


def test_the_commands_are_all_walked():
    assert COMMANDS == [
        "consensus", "create", "dashboard", "demo", "node", "partition", "party", "serve",
        "simulate",
    ]  # fmt: skip
    simulate_flags = {flag for c, flag, _ in _flags(build_parser()) if c == "simulate"}
    assert {"--learning-rate", "--fusion-algorithm/--fusion", "--alpha", "--mode"} <= simulate_flags
    assert {"--server-learning-rate", "--buffer-size", "--config", "--round-timeout"} <= (
        simulate_flags
    )
