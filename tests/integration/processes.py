"""The processes the integration suite talks to: a node started through its CLI, DCMTK tools.

A node here is what a hospital runs: ``python -m gridpacs node serve`` in its own OS process,
reached over TCP on 127.0.0.1. Its stderr goes to a log file that ``conftest.py`` attaches to
the report of every failing test that used it, so a red test shows what the node said.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
NODE_AE = "GRIDPACS"
READY_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 15.0
DCMTK_TIMEOUT_S = 60.0
DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")

# Every process started by these fixtures, so a failing test can show their logs.
PROCESSES: list[LoggedProcess] = []


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: the repo importable, DCMTK without Nagle."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    # Debian DCMTK leaves Nagle on unless told otherwise (~88 ms per instance).
    env["TCP_NODELAY"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------------------------
# DCMTK


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


@cache
def dcmtk(tool: str) -> str:
    """Absolute path of the DCMTK binary ``tool``; the test fails when DCMTK is missing.

    pynetdicom installs Python console scripts with the same names (``storescu`` …) that
    may come first on PATH, so the first *DCMTK* executable on PATH wins, not the first file.
    """
    if shutil.which(tool) is None:
        pytest.fail(f"DCMTK tool {tool!r} not found on PATH: install Debian 'dcmtk'", False)
    for directory in os.get_exec_path():
        candidate = Path(directory) / tool
        if not (candidate.is_file() and os.access(candidate, os.X_OK) and _is_elf(candidate)):
            continue
        out = subprocess.run(
            [str(candidate), "--version"], capture_output=True, text=True, timeout=20
        )
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return str(candidate)
    pytest.fail(
        f"{tool!r} on PATH is not DCMTK (pynetdicom's script of the same name?): "
        "install Debian 'dcmtk'",
        False,
    )


def run_dcmtk(
    tool: str, *args: str, cwd: Path | None = None, timeout: float = DCMTK_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool with ``TCP_NODELAY=1``; never raises on a non-zero exit."""
    return subprocess.run(
        [dcmtk(tool), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=subprocess_env(),
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A command, its exit code and output, for assertion messages."""
    cmd = " ".join(str(a) for a in result.args)
    return (
        f"$ {cmd}\nrc={result.returncode}\n--stdout--\n{result.stdout}\n--stderr--\n{result.stderr}"
    )


# --------------------------------------------------------------------------------------------
# Processes with logs


@dataclass
class LoggedProcess:
    """A child process whose stderr/stdout go to one log file kept for the report."""

    name: str
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    stopped_at: float | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears in the log (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in the log within {timeout:.0f} s\n"
                            f"{self.log_text()[-3000:]}", False)  # fmt: skip
            time.sleep(0.05)

    def _spawn(self, argv: Sequence[str], env: dict[str, str]) -> None:
        assert not self.running(), f"{self.name} is already running"
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(argv),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        self.started_at = time.time()
        self.stopped_at = None
        if self not in PROCESSES:
            PROCESSES.append(self)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code after SIGTERM,
        or None when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)
            code = None
        self.stopped_at = time.time()
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.stopped_at = time.time()


@dataclass
class Node(LoggedProcess):
    """A gridpacs node run as ``python -m gridpacs node serve``."""

    data_dir: Path = Path()
    port: int = 0
    ae_title: str | None = NODE_AE
    extra_args: list[str] = field(default_factory=list)
    # With a config file the node gets only ``--config`` (plus extra_args); data_dir, port
    # and ae_title must then say what the file says.
    config_file: Path | None = None

    @property
    def called_ae(self) -> str:
        return self.ae_title or NODE_AE

    def argv(self) -> list[str]:
        if self.config_file is not None:
            serve = [sys.executable, "-m", "gridpacs", "node", "serve"]
            return [*serve, "--config", str(self.config_file), *self.extra_args]
        argv = [
            sys.executable,
            "-m",
            "gridpacs",
            "node",
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        if self.ae_title is not None:
            argv += ["--ae-title", self.ae_title]
        return argv + self.extra_args

    def start(self, timeout: float = READY_TIMEOUT_S) -> Node:
        """Start and wait for ``event=node_ready`` on stderr (fails the test on timeout)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn(self.argv(), subprocess_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            if "event=node_ready" in text:
                return self
            if not self.running():
                pytest.fail(
                    f"node exited with {self.proc.returncode if self.proc else '?'} before "
                    f"event=node_ready\n$ {' '.join(self.argv())}\n{text[-4000:]}",
                    False,
                )
            time.sleep(0.05)
        text = self.log_path.read_bytes()[offset:].decode(errors="replace")
        self.kill()
        pytest.fail(
            f"no event=node_ready within {timeout:.0f} s\n$ {' '.join(self.argv())}\n"
            f"{text[-4000:]}",
            False,
        )

    def restart(self) -> Node:
        return self.start()


NodeFactory = Callable[..., Node]


@dataclass
class StoreSCP(LoggedProcess):
    """DCMTK ``storescp`` writing received instances byte-for-byte (``+B``) to a folder;
    it accepts every transfer syntax (``+xa``) unless ``uncompressed_only`` (its default
    negotiation, as a workstation without codecs answers)."""

    ae_title: str = "STORESCP"
    port: int = 0
    out_dir: Path = Path()
    uncompressed_only: bool = False
    tls: tuple[str, ...] = ()
    """DCMTK's TLS options for the listener (``+tls KEY CERT +cf CA -rc`` …); none: TCP."""
    probe_tls: tuple[str, ...] = ()
    """The TLS options the readiness C-ECHO needs to be served."""

    def start(self, timeout: float = 20.0) -> StoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            dcmtk("storescp"),
            "-aet",
            self.ae_title,
            "+B",
            *([] if self.uncompressed_only else ["+xa"]),
            *self.tls,
            "-od",
            str(self.out_dir),
            str(self.port),
        ]
        self._spawn(argv, subprocess_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                pytest.fail(f"storescp exited early:\n{self.log_text()[-3000:]}", False)
            probe = run_dcmtk("echoscu", *self.probe_tls, "-aec", self.ae_title, HOST,
                              str(self.port), timeout=10)  # fmt: skip
            if probe.returncode == 0:
                return self
            time.sleep(0.1)
        pytest.fail(f"storescp not answering C-ECHO:\n{self.log_text()[-3000:]}", False)

    def clear(self) -> None:
        for path in self.out_dir.iterdir():
            if path.is_file():
                path.unlink()

    def received(self) -> list[Path]:
        return sorted(p for p in self.out_dir.iterdir() if p.is_file())

    @property
    def destination(self) -> str:
        return f"{self.ae_title}={HOST}:{self.port}"


def gridpacs_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m gridpacs <args>`` from the repo root, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "gridpacs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=subprocess_env(),
    )
