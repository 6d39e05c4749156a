"""The executor with real processes: time limit kills the whole group, logs, cancellation."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from node.streams.executor import LOG_TAIL_BYTES, Workspace, reap_stale, run_command

pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_fresh_folder_env_and_logs(tmp_path: Path) -> None:
    first = Workspace.create(tmp_path, "job/1", 1)
    second = Workspace.create(tmp_path, "job/1", 1)
    assert first.root != second.root and first.input.is_dir() and first.output.is_dir()
    code = (
        "import os, sys; print('out', os.environ['GRIDPACS_JOB_ID'], os.getcwd());"
        "print('err', file=sys.stderr); open('output/x.txt','w').write('x'); sys.exit(3)"
    )
    result = run_command(
        _py(code), first, env={"GRIDPACS_JOB_ID": "job-1"}, time_limit=20, cancel=threading.Event()
    )
    assert result.exit_code == 3 and not result.succeeded
    assert result.describe(20) == "command exited with status 3"
    logs = first.log_tail().decode()
    assert f"out job-1 {first.root}" in logs and "err" in logs
    assert first.outputs() == [first.output / "x.txt"]


def test_time_limit_kills_the_process_group(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, "slow", 1)
    code = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "open('child.pid', 'w').write(str(child.pid)); print('started', flush=True);"
        "time.sleep(60)"
    )
    started = time.monotonic()
    result = run_command(
        _py(code), ws, env={}, time_limit=1.5, cancel=threading.Event(), kill_grace=0.5
    )
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 10
    assert "time limit of 1.5 s exceeded" in result.describe(1.5)
    child = int((ws.root / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the command's child survived the time limit"
    assert b"time limit exceeded" in ws.log_tail()


def test_cancel_stops_the_command(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, "cancel", 1)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    result = run_command(_py(code), ws, env={}, time_limit=60, cancel=cancel, kill_grace=0.3)
    assert result.cancelled and not result.succeeded and result.seconds < 10
    assert result.describe(60) == "cancelled"


def test_logs_keep_the_last_mebibyte(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, "chatty", 1)
    code = "import sys; sys.stdout.write('a' * (3 * 1024 * 1024)); sys.stdout.write('THE END')"
    result = run_command(_py(code), ws, env={}, time_limit=20, cancel=threading.Event())
    assert result.succeeded
    tail = ws.log_tail()
    assert len(tail) == LOG_TAIL_BYTES and tail.endswith(b"THE END")


def test_missing_program_is_a_clear_failure(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, "missing", 1)
    result = run_command(["/nonexistent/algo"], ws, env={}, time_limit=5, cancel=threading.Event())
    assert result.exit_code == 127 and not result.succeeded
    assert b"/nonexistent/algo" in ws.log_tail()


def test_command_dies_with_the_node_that_started_it(tmp_path: Path) -> None:
    """The kernel kills the command when its parent goes (a node killed with -9)."""
    ws = Workspace.create(tmp_path, "orphan", 1)
    command = "import os, time; open('cmd.pid', 'w').write(str(os.getpid())); time.sleep(60)"
    node_script = (
        "import sys, threading; from pathlib import Path;"
        "from node.streams.executor import Workspace, run_command;"
        f"run_command([sys.executable, '-c', {command!r}], Workspace(Path({str(ws.root)!r})),"
        " env={}, time_limit=60, cancel=threading.Event())"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    node = subprocess.Popen([sys.executable, "-c", node_script], env=env)
    pid_file = ws.root / "cmd.pid"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = pid_file.read_text() if pid_file.exists() else ""
        if text.strip():
            break
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert _alive(pid)
    node.kill()
    node.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the command outlived the killed node"


def test_reap_stale_kills_a_leftover_command(tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, "leftover", 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], cwd=ws.root, start_new_session=True
    )
    (ws.root / "pid").write_text(str(proc.pid))
    assert reap_stale(tmp_path) == 1
    assert proc.wait(timeout=5) == -9
