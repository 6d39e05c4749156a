"""Giving a file's blocks back to the file system: hole punching, and finding what is left.

Why: a pack file is never shrunk or rewritten (appends into blocks written ahead are what
makes a put one data-only sync). A deleted record's blocks are returned with
``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` instead: the file keeps its
size and its other records keep their offsets, the range reads back as zeros, and the
disk space is free at once. ext4, XFS, Btrfs and tmpfs support it; where the file
system does not (or off Linux), :func:`punch_hole` says so and the caller writes zeros,
which keeps the privacy half of the promise but not the space.

The standard library has ``os.posix_fallocate`` but no way to pass flags, hence ctypes
on the C library's ``fallocate`` (a plain system call wrapper, stable since Linux 2.6.38).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from typing import Any

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOSYS}


def _load_fallocate() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = _load_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate ``length`` bytes at ``offset`` of the open file ``fd`` (its size is
    kept; the range reads as zeros); False when the file system cannot (nothing changed).

    Not durable by itself: the caller ``fsync``s (the extent map is metadata).
    """
    if length <= 0:
        return True
    if _FALLOCATE is None:
        return False
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    if _FALLOCATE(fd, mode, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code))


def holds_data(fd: int, offset: int, length: int) -> bool:
    """Whether any block of ``[offset, offset + length)`` is still allocated (not a hole).

    Answers True where the file system cannot tell (no ``SEEK_DATA``): at worst a range is
    punched twice, which is harmless.
    """
    try:
        found = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno != errno.ENXIO  # ENXIO: no data from offset to the end of the file
    return found < offset + length


def allocated_bytes(fd: int) -> int:
    """Disk space the open file ``fd`` occupies (its blocks, not its size)."""
    return os.fstat(fd).st_blocks * 512
