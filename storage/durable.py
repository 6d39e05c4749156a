"""Crash-safe file writes: temp file, write, fsync, rename, fsync the directory.

A file written here is either absent or complete under its final name, after a crash of
the process or of the machine. Temp files live in a directory on the same file system as
their destination (``rename`` is atomic only within one file system) and are held under
an exclusive ``flock`` while being written: the kernel drops the lock when the writer
dies, even by SIGKILL, so :func:`remove_stale_temp_files` can tell a crashed writer's
leftovers from another live process's work in progress (e.g. ``gridpacs storage scrub``
opening the store of a running node) without guessing from timestamps alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

TMP_SUFFIX = ".tmp"
STALE_GRACE_SECONDS = 5.0
"""An unlocked temp file younger than this may belong to a writer between ``open`` and
``flock`` (microseconds in practice); it is left for the next clean-up."""

Chunk = bytes | bytearray | memoryview


def fsync_dir(path: str | Path) -> None:
    """Make the directory entries of *path* (creations, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(path: str | Path) -> None:
    """Create *path* and any missing parents, fsyncing each parent that gained an entry."""
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # a concurrent writer created it: fine, it is durable too
            continue
        fsync_dir(directory.parent)


def _write_all(fd: int, chunks: Sequence[Chunk]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def write_atomically(
    final: str, chunks: Sequence[Chunk], tmp_dir: str, mode: int = 0o640, overwrite: bool = True
) -> None:
    """Write *chunks* to *final* so that it appears complete or not at all, durably.

    The chunks are written without joining them (no copy of the payload). A missing
    parent directory of *final* is created durably. With ``overwrite=False`` an existing
    *final* is kept and :class:`FileExistsError` raised (``link`` instead of ``rename``).
    On any failure the temp file is removed and the :class:`OSError` propagates for the
    caller to translate.
    """
    tmp = os.path.join(tmp_dir, secrets.token_hex(12) + TMP_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_all(fd, chunks)
        os.fsync(fd)
        publish = os.replace if overwrite else os.link
        try:
            publish(tmp, final)
        except FileNotFoundError:
            make_dirs_durably(os.path.dirname(final))
            publish(tmp, final)
        if not overwrite:
            os.unlink(tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    finally:
        os.close(fd)
    fsync_dir(os.path.dirname(final))


def _unlink_quietly(path: str) -> None:
    # Best effort on an error path: the original error is the one that matters.
    with contextlib.suppress(OSError):
        os.unlink(path)


def remove_stale_temp_files(tmp_dir: str | Path) -> int:
    """Delete temp files whose writer is gone; return how many were removed.

    A file is stale when nobody holds its ``flock`` and it is older than
    :data:`STALE_GRACE_SECONDS`. Live writers' files are left alone.
    """
    removed = 0
    now = time.time()
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            if entry.name.endswith(TMP_SUFFIX) and _is_stale(entry.path, now):
                _unlink_quietly(entry.path)
                removed += 1
    return removed


def _is_stale(path: str, now: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer holds it
        return now - os.fstat(fd).st_mtime >= STALE_GRACE_SECONDS
    finally:
        os.close(fd)
