"""Runs one attempt's command: a fresh folder, a time limit, captured logs, cancellation.

Layout of the folder (``<work_dir>/<job>-a<attempt>-<random>/``)::

    input/     the study as DICOM files (one sub-folder per series), read-only by contract
    output/    where the command writes its DICOM results
    derived/   the results rewritten as the derived series the node stores and routes
    logs.txt   the command's stdout and stderr, interleaved

The command runs in its own process group (a new session) so a time limit or a
cancellation stops everything it started; it also receives SIGKILL if the worker thread
that started it dies (Linux parent-death signal, set by util-linux ``setpriv``), so a
killed node leaves no orphan computing a job that is by then placed elsewhere; at start a
node also kills any command group an earlier run of it left behind (:func:`reap_stale`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.executor")

LOG_TAIL_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Workspace:
    """The fresh folder of one attempt."""

    root: Path

    @property
    def input(self) -> Path:
        return self.root / "input"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def derived(self) -> Path:
        return self.root / "derived"

    @property
    def log_file(self) -> Path:
        return self.root / "logs.txt"

    @classmethod
    def create(cls, parent: Path, job_id: str, attempt: int) -> Workspace:
        parent.mkdir(parents=True, exist_ok=True)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in job_id)[:80]
        root = parent / f"{safe}-a{attempt}-{secrets.token_hex(4)}"
        root.mkdir(mode=0o700)
        ws = cls(root)
        ws.input.mkdir()
        ws.output.mkdir()
        return ws

    def outputs(self) -> list[Path]:
        return sorted(p for p in self.output.rglob("*") if p.is_file())

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> bytes:
        """The last ``limit`` bytes of the command's logs (all of them when shorter)."""
        try:
            with self.log_file.open("rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(0, size - limit))
                return fh.read()
        except FileNotFoundError:
            return b""


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_code: int | None
    """None when the command was killed (time limit, cancellation)."""
    timed_out: bool
    cancelled: bool
    seconds: float

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled

    def describe(self, time_limit: float) -> str:
        if self.cancelled:
            return "cancelled"
        if self.timed_out:
            return f"time limit of {time_limit:g} s exceeded; the command was killed"
        if self.exit_code is not None and self.exit_code < 0:
            return f"command killed by signal {-self.exit_code}"
        return f"command exited with status {self.exit_code}"


def with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` run so the kernel SIGKILLs it when the node dies (util-linux ``setpriv``).

    Not ``preexec_fn``: Python code between fork and exec in a threaded process can
    deadlock or abort (it did: SIGABRT in the child under load).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv)
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


def run_command(
    argv: Sequence[str],
    workspace: Workspace,
    *,
    env: Mapping[str, str],
    time_limit: float,
    cancel: threading.Event,
    kill_grace: float = 2.0,
) -> RunResult:
    """Run ``argv`` in ``workspace`` until it exits, times out or ``cancel`` is set."""
    started = time.monotonic()
    deadline = started + time_limit
    full_env = {**os.environ, **env}
    with workspace.log_file.open("ab") as log:
        try:
            proc = subprocess.Popen(
                with_parent_death_signal(argv),
                cwd=workspace.root,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            log.write(f"gridpacs: cannot start {argv[0]!r}: {exc}\n".encode())
            return RunResult(127, False, False, time.monotonic() - started)
        (workspace.root / "pid").write_text(str(proc.pid))
        log_event(
            LOG,
            "command_started",
            pid=proc.pid,
            workspace=workspace.root.name,
            time_limit_s=time_limit,
        )
        timed_out = cancelled = False
        while True:
            try:
                code: int | None = proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if cancel.is_set():
                cancelled = True
            elif time.monotonic() >= deadline:
                timed_out = True
            if cancelled or timed_out:
                _stop_group(proc, kill_grace)
                code = None
                break
        _kill_group(proc.pid)  # anything the command left running in the background
    seconds = time.monotonic() - started
    if timed_out or cancelled:
        note = "time limit exceeded" if timed_out else "cancelled"
        with workspace.log_file.open("ab") as log:
            log.write(f"\ngridpacs: {note} after {seconds:.1f} s; process group killed\n".encode())
    return RunResult(code, timed_out, cancelled, seconds)


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _kill_group(proc.pid)
    proc.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reap_stale(work_dir: Path) -> int:
    """Kill process groups left by a previous run of this node (e.g. after kill -9).

    Each attempt's folder records its command's pid (= process group). Returns how many
    groups were still alive.
    """
    killed = 0
    if not work_dir.is_dir():
        return 0
    for pid_file in work_dir.glob("*/pid"):
        try:
            pgid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            pid_file.unlink(missing_ok=True)
            continue
        if _same_workspace(pgid, pid_file.parent):
            _kill_group(pgid)
            killed += 1
            log_event(
                LOG,
                "stale_command_killed",
                level=logging.WARNING,
                pgid=pgid,
                workspace=pid_file.parent.name,
            )
        pid_file.unlink(missing_ok=True)
    return killed


def _same_workspace(pid: int, root: Path) -> bool:
    """Only kill a group whose leader still runs in that folder (pids get reused)."""
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")).resolve() == root.resolve()
    except OSError:
        return False
