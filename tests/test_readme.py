"""The README's Python blocks run as written, and its spec file is a valid spec that trains."""

import re
from pathlib import Path

import pytest

from fedfuse.recipes import FederationSpec, load_spec, simulate

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # their output folders land here
    blocks = _blocks("python")
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # our own README, trusted
    assert namespace["state"].round == 10
    assert namespace["result"].final["mean_accuracy"] > 0.5  # the consensus block ran last
    assert (tmp_path / "simulate-output" / "history.json").is_file()


def test_the_spec_file_is_one_spec_that_trains(tmp_path):
    (toml,) = [b for b in _blocks("toml") if "[training]" in b]
    path = tmp_path / "spec.toml"
    path.write_text(toml)
    spec = load_spec(path)
    spec.validate()
    assert isinstance(spec, FederationSpec)
    assert spec.fusion.params == {"server_learning_rate": 0.01, "b1": 0.9}
    assert spec.data.partition_params == {"alpha": 0.3}
    assert spec.aggregation.deadline == 600
    result = simulate(path, rounds=2, centralized=False)
    assert [r["round"] for r in result.history] == [1, 2]
    assert all(len(r["participants"]) == 4 for r in result.history)  # fraction 0.5 of 8


@pytest.mark.parametrize("block", _blocks("bash"))
def test_every_cli_line_parses(block):
    from fedfuse.cli._main import build_parser

    text = block.replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#")[0].strip().rstrip("&").strip()
        if not line.startswith(".venv/bin/fedfuse ") and not line.startswith("fedfuse "):
            continue
        argv = line.split()[1:]
        if "..." in argv:
            continue
        build_parser().parse_args(argv)  # exits (SystemExit) on an unknown flag
