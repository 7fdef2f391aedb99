import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedfuse.data import load_party_npz

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
    assert "10 parties (dirichlet partition)" in out and "FedAvg per round" in out
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
    assert doc["config"]["rounds"] == 3 and doc["config"]["model"] == "logreg"
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
    assert proc.stderr.strip().startswith("fedfuse simulate: error: unknown dataset 'nope'")
    assert "Traceback" not in proc.stderr
    proc = run_cli("simulate", "--fraction", "1.5", "--out", str(tmp_path))
    assert proc.returncode == 2 and "fraction must be in (0, 1]" in proc.stderr
    proc = run_cli("simulate", "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "missing.toml" in proc.stderr
