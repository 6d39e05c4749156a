"""Pruning the worker's work_dir: old attempt folders (identified images) and old kept
logs go; recent ones, a folder whose command still runs, and anything not made by the
worker stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node.streams.executor import Workspace
from node.streams.pruning import WorkDirPruner, prune_work_dir

DAY = 86400.0


def _aged(path: Path, days: float) -> Path:
    """Set the modification time of ``path`` and what is directly in it ``days`` back."""
    when = time.time() - days * DAY
    for item in [*path.iterdir(), path] if path.is_dir() else [path]:
        os.utime(item, (when, when))
    return path


def _attempt(work_dir: Path, job: str, days: float, image_bytes: int = 4096) -> Path:
    ws = Workspace.create(work_dir, job, 1)
    (ws.input / "1.dcm").write_bytes(b"\0" * image_bytes)  # the study it was given
    return _aged(ws.root, days)


def test_old_attempts_and_logs_go_and_everything_else_stays(tmp_path: Path) -> None:
    work = tmp_path / "jobs"
    old = _attempt(work, "41", days=8)
    recent = _attempt(work, "42", days=1)
    running = _attempt(work, "43", days=9)
    (running / "pid").write_text(str(os.getpgid(0)))  # this test's own group: alive
    _aged(running, 9)
    stranger = work / "not-an-attempt"
    stranger.mkdir()
    _aged(stranger, 30)
    (work / "logs").mkdir()
    old_log = work / "logs" / "41-a1-0a1b2c3d.txt"
    old_log.write_text("x" * 100)
    _aged(old_log, 31)
    new_log = work / "logs" / "42-a1-1b2c3d4e.txt"
    new_log.write_text("y")

    pruned = prune_work_dir(work, keep_failed_for=7 * DAY, keep_logs_for=30 * DAY)

    assert (pruned.folders, pruned.logs) == (1, 1)
    assert pruned.bytes >= 4096 + 100
    assert not old.exists() and not old_log.exists()
    assert recent.exists() and running.exists() and stranger.exists() and new_log.exists()
    # a group that is gone no longer protects its folder
    (running / "pid").write_text("999999999")
    _aged(running, 9)
    assert prune_work_dir(work, keep_failed_for=7 * DAY, keep_logs_for=30 * DAY).folders == 1
    assert not running.exists()


def test_the_pruner_runs_at_start_and_logs_what_it_freed(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    work = tmp_path / "jobs"
    old = _attempt(work, "7", days=2)
    pruner = WorkDirPruner(work, keep_failed_for=DAY, keep_logs_for=DAY, interval=3600)
    with caplog.at_level("INFO", logger="gridpacs.node.streams.pruning"):
        pruner.start()
        deadline = time.monotonic() + 5
        while old.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        pruner.stop()
    assert not old.exists()
    assert "event=work_dir_pruned folders=1 logs=0" in caplog.text
    assert prune_work_dir(tmp_path / "missing", keep_failed_for=1, keep_logs_for=1).folders == 0
