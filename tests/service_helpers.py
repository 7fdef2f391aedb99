"""Real processes for end-to-end tests: a fedfuse service on a free 127.0.0.1 port, parties."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }


def fedfuse_process(*args: str, log: Path, cwd: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - the child owns the file for its lifetime
    return subprocess.Popen(
        [sys.executable, "-m", "fedfuse", *args],
        stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=cwd,
    )  # fmt: skip


class Service:
    """``fedfuse serve`` in a child process; ``kill()`` is SIGKILL, ``start()`` restarts it."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int | None = None,
        scheme="http",
        verify: bool | str = True,
    ) -> None:
        self.data_dir = data_dir
        self.extra = extra
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"service-{self.port}.log"

    def start(self) -> Service:
        self.proc = fedfuse_process(
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
            log=self.log,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.url}/healthz", verify=self.verify, timeout=1)
                if health.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {self.log.read_text()}")
            time.sleep(0.1)
        raise RuntimeError("service did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, verify=self.verify, timeout=30)

    def wait_for(self, predicate, timeout: float = 120.0, path: str = "/v1/federations"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.get(path).json()
            if predicate(body):
                return body
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting on {path}: {self.get(path).json()}")


def cli_create(url: str, tmp_path: Path, *flags: str) -> dict:
    """``fedfuse create --server url <flags>`` as a process; its JSON answer."""
    created = tmp_path / "created.json"
    create = fedfuse_process("create", "--server", url, *flags, log=created)
    assert create.wait(120) == 0, created.read_text()
    return json.loads(created.read_text())


def party_processes(url: str, token: str, files, tmp_path: Path) -> list[subprocess.Popen]:
    """One ``fedfuse party`` process per data file, each logging to ``party<i>.log``."""
    args = ("party", "--server", url, "--token", token)
    return [
        fedfuse_process(*args, "--data", str(path), log=tmp_path / f"party{i}.log")
        for i, path in enumerate(files)
    ]


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
