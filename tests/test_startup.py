"""Start-up stays cheap: ``import fedfuse`` and ``fedfuse --help`` import no layer (nor torch).

Each check runs in a fresh interpreter, where ``sys.modules`` shows what an import pulled in;
timings are not asserted (the machine is shared), only which modules were imported.
"""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fedfuse
from fedfuse.cli._commands import COMMANDS
from fedfuse.cli._main import build_parser

SRC = str(Path(__file__).resolve().parents[1] / "src")
HEAVY = ("torch", "numpy", "scipy", "httpx", "rich", "pygments", "matplotlib")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _imported(code: str) -> tuple[list[str], list[str], str]:
    """Which of HEAVY and which fedfuse modules ``code`` imports, and what it printed."""
    report = (
        "import json, sys\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "ours = sorted(m for m in sys.modules if m.startswith('fedfuse'))\n"
        "print(json.dumps([heavy, ours]))\n"
    )
    proc = _python(code + "\n" + report)
    *printed, last = proc.stdout.splitlines()
    heavy, ours = json.loads(last)
    return heavy, ours, "\n".join(printed)


def test_import_fedfuse_imports_no_layer():
    heavy, ours, _ = _imported("import fedfuse")
    assert heavy == []
    assert ours == ["fedfuse"]


def test_fedfuse_help_lists_every_command_without_importing_torch():
    code = (
        "from fedfuse.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
    )
    heavy, ours, printed = _imported(code)
    assert heavy == []
    assert ours == ["fedfuse", "fedfuse.cli", "fedfuse.cli._commands", "fedfuse.cli._main"]
    for name in COMMANDS:
        assert name in printed
    assert "join a federation as a party and train on local data" in printed


def test_python_m_fedfuse_help():
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "fedfuse", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "{demo,simulate,partition,consensus,node,serve,create,party,dashboard}" in proc.stdout


def test_a_chosen_command_gets_its_flags_and_only_its_module_is_imported():
    code = (
        "from fedfuse.cli._main import build_parser\n"
        "args = build_parser(['party']).parse_args(\n"
        "    ['party', '--server', 'http://127.0.0.1:1', '--token', 't', '--data', 'd.npz'])\n"
        "print(args.command, args.reconnect_timeout)\n"
    )
    heavy, ours, printed = _imported(code)
    assert printed == "party 120.0"
    assert "torch" not in heavy
    assert [m for m in ours if m.startswith("fedfuse.cli.")] == [
        "fedfuse.cli._commands",
        "fedfuse.cli._main",
        "fedfuse.cli._party",
    ]


def test_the_listed_help_lines_are_the_full_parsers_lines():
    """A listed command (no flags yet) reads the same in ``--help`` as the built one."""

    def lines(parser):
        sub = next(a for a in parser._actions if a.dest == "command")
        return {action.dest: action.help for action in sub._choices_actions}

    assert (
        lines(build_parser([]))
        == lines(build_parser())
        == {name: command.help for name, command in COMMANDS.items()}
    )
    assert list(lines(build_parser(["simulate"]))) == list(COMMANDS)  # the same order


def test_lazy_names_resolve_to_the_layers_objects():
    from fedfuse.federation import Privacy
    from fedfuse.recipes import simulate

    assert fedfuse.Privacy is Privacy
    assert fedfuse.simulate is simulate
    assert fedfuse.federation.Privacy is Privacy  # a layer, by attribute
    assert set(dir(fedfuse)) >= {*fedfuse.__all__, "federation", "recipes", "cli"}
    for name in fedfuse.__all__:
        assert getattr(fedfuse, name) is not None


def test_the_lazy_table_covers_all_and_nothing_else():
    assert sorted(fedfuse._EXPORTS) == sorted(set(fedfuse.__all__) - {"__version__"})
    for name, layer in fedfuse._EXPORTS.items():
        assert name in importlib.import_module(layer).__all__, (name, layer)


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="module 'fedfuse' has no attribute 'Federatoin'"):
        fedfuse.Federatoin  # noqa: B018
    assert not hasattr(fedfuse, "nope")
    with pytest.raises(ImportError, match="cannot import name 'Nope' from 'fedfuse'"):
        from fedfuse import Nope  # noqa: F401


def test_version_is_cheap():
    heavy, ours, printed = _imported("import fedfuse\nprint(fedfuse.__version__)")
    assert printed == fedfuse.__version__ and heavy == [] and ours == ["fedfuse"]


def test_the_progress_bar_shows_parties_trained_per_second():
    from fedfuse.cli._simulate import _progress_text

    record = {"participants": ["p0", "p1", "p2"], "seconds": 0.006, "central": {"accuracy": 0.8125}}
    assert _progress_text(record) == "acc 81.25% | 500 parties/s"
    slow = {"participants": ["p0", "p1"], "seconds": 0.8}
    assert _progress_text(slow) == "acc -% | 2.5 parties/s"
    assert _progress_text({"participants": [], "seconds": 0.0}) == "acc -% | - parties/s"
