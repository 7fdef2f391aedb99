"""A two-node Ray cluster on this machine's loopback interface, for tests/test_ray.py.

Ray 2.60 replaces a node address of ``127.0.0.1`` by the machine's interface address, and its
servers listen on the address a node advertises, unless it runs in loopback mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own mode for single machines): then every
server binds 127.0.0.1 only. Loopback mode refuses to start a second node, so the worker node is
started by a small launcher that lifts that one check (``_WORKER_LAUNCHER``); both nodes and the
driver (``fedfuse.runtime._ray.loopback``) run in loopback mode.

The cluster is killed by process group: ``ray start --block`` runs in a new session, and every
process it starts stays in that group, so teardown kills what it started and nothing else
(``ray stop`` would stop every Ray of this user on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedfuse.party import Evaluation

START_SECONDS = 120.0  # a busy CI machine starts a Ray node in 5 to 60 seconds

_WORKER_LAUNCHER = """
import sys, types
import ray._private.ray_constants as constants
import ray.scripts.scripts as scripts

# loopback mode refuses worker nodes with this one check; the node itself keeps loopback mode
lifted = types.ModuleType(constants.__name__)
lifted.__dict__.update(constants.__dict__)
lifted.ENABLE_RAY_CLUSTER = True
scripts.ray_constants = lifted
sys.argv = ["ray", *sys.argv[1:]]
sys.exit(scripts.main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalCluster:
    """A head and a worker node, one CPU each, bound to 127.0.0.1; ``address`` is the head's."""

    temp_dir: Path
    address: str = ""
    processes: list[subprocess.Popen] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(32))

    def auth_env(self) -> dict[str, str]:
        """What a driver needs to be let in: the cluster's own token (whatever token file
        ``~/.ray`` may hold)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def env(self) -> dict[str, str]:
        return dict(
            os.environ,
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
            **self.auth_env(),
        )

    def start_node(self, name: str, argv: list[str]) -> None:
        log = open(self.temp_dir / f"{name}.log", "w")  # noqa: SIM115 (kept open by the node)
        self.processes.append(
            subprocess.Popen(
                argv,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()

    def start(self) -> None:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        ray = str(Path(sys.executable).with_name("ray"))
        common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1"]
        common += [f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        self.start_node(
            "head", [ray, "start", "--head", f"--port={port}", "--include-dashboard=false", *common]
        )
        self.start_node(
            "worker",
            [sys.executable, "-c", _WORKER_LAUNCHER, "start", f"--address={self.address}", *common],
        )

    def log_tail(self, chars: int = 3000) -> str:
        tails = []
        for name in ("head", "worker"):
            path = self.temp_dir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            tails.append(f"--- {name} node log ---\n{text[-chars:]}")
        return "\n".join(tails)

    def check_running(self) -> None:
        for name, process in zip(("head", "worker"), self.processes, strict=False):
            if process.poll() is not None:
                raise RuntimeError(
                    f"the Ray {name} node exited ({process.returncode}):\n{self.log_tail()}"
                )

    def stop(self) -> None:
        """Kill every process the nodes started (their process groups), and wait for them."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3  # Ray takes its time to stop; then SIGKILL
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(deadline - time.monotonic(), 0.1))
        for process in self.processes:  # SIGKILL what is left of each group, the leader gone
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)


def reset_auth() -> None:
    """Make this process read Ray's token settings again (Ray >= 2.50 reads them once, on
    import; older Rays have no token authentication, and nothing to reset)."""
    try:
        from ray._private.authentication_test_utils import reset_auth_token_state
    except ImportError:
        return
    reset_auth_token_state()


def wait_for_nodes(cluster: LocalCluster, count: int) -> None:
    """Wait (``START_SECONDS``) until this driver, connected, sees ``count`` live nodes."""
    import ray

    deadline = time.monotonic() + START_SECONDS
    while True:
        cluster.check_running()
        alive = [n for n in ray.nodes() if n["Alive"]]
        if len(alive) >= count:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(alive)} of {count} Ray nodes alive after {START_SECONDS:.0f} s:\n"
                f"{cluster.log_tail()}"
            )
        time.sleep(0.5)


@contextlib.contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    """Start the two nodes (a short temp dir: Ray's socket paths must stay under 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ffray", dir="/tmp") as temp_dir:
        cluster = LocalCluster(Path(temp_dir))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


class ScriptedParty:
    """Answers an evaluation with its own number; ``fail`` raises, ``stall`` waits a long time,
    in the rounds they name."""

    def __init__(self, number: int, fail: int = 0, stall: int = 0) -> None:
        self.number, self.fail, self.stall = number, fail, stall

    def handle(self, task):
        if task.round == self.fail:
            raise RuntimeError(f"party {self.number} breaks")
        if task.round == self.stall:
            time.sleep(120)
        return Evaluation(self.number, {"sum": float(task.weights["w"].sum())})
