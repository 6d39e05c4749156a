"""Removes old attempt folders and kept logs from the worker's ``work_dir``.

Why: a failed attempt's folder is kept so someone can look at what the command saw and
wrote, and an attempt cut short by a crash leaves its folder too. Each holds the study as
DICOM files, identified data at a clinical site, so keeping them for ever would fill the
disk and keep patient data where nobody looks. Folders are removed once untouched for
``keep_failed_for`` seconds (far longer than any attempt's time limit, and never while
their command's process group is alive); the kept logs (``<work_dir>/logs``) once older
than ``keep_logs_for``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.pruning")

#: ``<job>-a<attempt>-<random>``, as :class:`node.streams.executor.Workspace` names them
ATTEMPT_FOLDER = re.compile(r"[A-Za-z0-9_-]+-a\d+-[0-9a-f]{8}")


@dataclass(frozen=True, slots=True)
class Pruned:
    folders: int = 0
    logs: int = 0
    bytes: int = 0


def prune_work_dir(
    work_dir: Path, *, keep_failed_for: float, keep_logs_for: float, now: float | None = None
) -> Pruned:
    """Remove attempt folders untouched for ``keep_failed_for`` seconds and kept logs older
    than ``keep_logs_for``; what went. A folder whose command still runs is left alone."""
    if not work_dir.is_dir():
        return Pruned()
    now = time.time() if now is None else now
    folders = logs = freed = 0
    for entry in work_dir.iterdir():
        if not (entry.is_dir() and ATTEMPT_FOLDER.fullmatch(entry.name)):
            continue
        if now - _last_touched(entry) < keep_failed_for or _running(entry):
            continue
        size = _size(entry)
        shutil.rmtree(entry, ignore_errors=True)
        if not entry.exists():
            folders += 1
            freed += size
    for log_file in (work_dir / "logs").glob("*.txt"):
        with contextlib.suppress(OSError):
            stat = log_file.stat()
            if now - stat.st_mtime >= keep_logs_for:
                log_file.unlink()
                logs += 1
                freed += stat.st_size
    return Pruned(folders, logs, freed)


def _last_touched(folder: Path) -> float:
    """The newest modification time in the folder's top two levels (input, output …)."""
    newest = folder.stat().st_mtime
    with contextlib.suppress(OSError):
        for child in folder.iterdir():
            newest = max(newest, child.stat().st_mtime)
    return newest


def _running(folder: Path) -> bool:
    """True while the process group the folder's ``pid`` file names is alive."""
    try:
        pgid = int((folder / "pid").read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class WorkDirPruner:
    """Prunes at start and then every ``interval`` seconds, in a daemon thread."""

    def __init__(
        self,
        work_dir: Path,
        *,
        keep_failed_for: float,
        keep_logs_for: float,
        interval: float = 3600.0,
    ) -> None:
        self._work_dir = work_dir
        self._keep_failed_for = keep_failed_for
        self._keep_logs_for = keep_logs_for
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def prune(self) -> Pruned:
        try:
            pruned = prune_work_dir(self._work_dir, keep_failed_for=self._keep_failed_for,
                                    keep_logs_for=self._keep_logs_for)  # fmt: skip
        except OSError as exc:
            log_event(LOG, "work_dir_not_pruned", level=logging.WARNING, error=str(exc))
            return Pruned()
        if pruned.folders or pruned.logs:
            log_event(LOG, "work_dir_pruned", folders=pruned.folders, logs=pruned.logs,
                      bytes=pruned.bytes)  # fmt: skip
        return pruned

    def _run(self) -> None:
        self.prune()
        while not self._stop.wait(self._interval):
            self.prune()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="work-dir-pruner", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
