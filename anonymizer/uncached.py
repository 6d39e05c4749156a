"""Large outputs written around the page cache (``O_DIRECT``), where that is cheaper.

A CT-size output written the usual way is copied into the page cache and written out again
when it is made durable: the copy costs CPU and the write-back waits for the device at the
commit. With ``O_DIRECT`` the device reads the bytes straight from our buffer while the
write runs, so nothing is left to write back but the last partial block and the inode.
On this project's disk (ext4 on virtio) that halves the time to make a CT file durable.

``O_DIRECT`` asks for a buffer, an offset and a length aligned to the device's logical
block: the output is assembled in a page-aligned ``mmap`` buffer (header parts copied in,
native pixel data read from the source file right after them), the whole blocks are
written directly, and the last partial block, if any, is written through the page cache
(``O_DIRECT`` cleared on the descriptor), so the file's bytes and size are exactly those of
the ordinary write. Durability is unchanged: the caller still fsyncs (``O_DIRECT`` leaves
the data in the device's volatile cache and the inode unwritten).

Used only on file systems known to write ``O_DIRECT`` straight to a block device (ext2/3/4,
XFS) and only for outputs of :data:`DIRECT_MIN_BYTES` or more: on memory-backed file
systems (tmpfs takes ``O_DIRECT`` since Linux 6.6, as a plain copy) the extra copy into our
buffer would only cost, and a small output is cheaper to copy than to wait for. Where the
flag or the first direct write is refused (``EINVAL``), that directory is written the
ordinary way from then on.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from anonymizer.errors import UnreadableInput
from anonymizer.tail import SourceTail, zero_bytes

#: Outputs smaller than this are written through the page cache.
DIRECT_MIN_BYTES = 256 * 1024
#: Outputs assembled or being written at once (one aligned buffer each) …
DEPTH = 4
#: … by this many writer threads.
THREADS = 2
#: Alignment of the buffer, offsets and lengths: a page, a multiple of any usual logical
#: block size; the partial last page then never shares a page with the direct writes.
ALIGN = max(4096, mmap.PAGESIZE)

#: ``statfs.f_type`` of file systems whose ``O_DIRECT`` writes go straight to the device.
_DIRECT_FILE_SYSTEMS = frozenset({0xEF53, 0x58465342})  # ext2/3/4, XFS
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)

#: The source file, and the bytes of it that follow the written parts (zero runs included).
Tail = tuple[BinaryIO, SourceTail]


def _load_fstatfs() -> Callable[[int, ctypes.Array[ctypes.c_char]], int] | None:
    if not _O_DIRECT:
        return None
    try:
        function: Callable[[int, ctypes.Array[ctypes.c_char]], int] = ctypes.CDLL(
            None, use_errno=True
        ).fstatfs
    except (OSError, AttributeError):  # no libc symbol: never direct
        return None
    return function


_FSTATFS = _load_fstatfs()


def file_system_type(fd: int) -> int | None:
    """``statfs.f_type`` of the file system holding ``fd`` (None when unknown).

    ``f_type`` is the first field of ``struct statfs`` on Linux, a C ``long`` wide.
    """
    if _FSTATFS is None:
        return None
    buffer = ctypes.create_string_buffer(256)  # larger than struct statfs on any ABI
    if _FSTATFS(fd, buffer) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buffer).value & 0xFFFFFFFF


class DirectWriter:
    """Starts large outputs' ``O_DIRECT`` writes; they run in its threads meanwhile.

    :meth:`start` assembles an output in one of :data:`DEPTH` aligned buffers and hands
    the write to a thread, so the device writes one output while this process builds the
    next (a direct write waits for the device: ~0.3 ms for a CT file here). The returned
    future completes once the file holds all its bytes, or raises the write's error; the
    caller must wait for it before it fsyncs, closes or removes the file. ``enabled=False``
    starts nothing; ``align`` is for the tests (an alignment the device refuses).
    :meth:`close` waits for the writes and stops the threads: close before
    forking.
    """

    def __init__(
        self,
        enabled: bool = True,
        min_bytes: int | None = None,
        depth: int = DEPTH,
        threads: int = THREADS,
        align: int = ALIGN,
    ) -> None:
        self.enabled = enabled and _O_DIRECT != 0
        self.align = align
        self.min_bytes = DIRECT_MIN_BYTES if min_bytes is None else min_bytes
        self._depth = depth
        self._threads = threads
        self._verdicts: dict[str, bool] = {}  # by directory: direct writes taken there
        self._idle: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._buffers = 0
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.writes = 0  # outputs written directly (the tests look)
        self.created = 0  # files created by the threads (start_new)

    def usable(self, directory: str, fd: int) -> bool:
        """True when outputs in ``directory`` (``fd`` one of its files) go direct."""
        verdict = self._verdicts.get(directory)
        if verdict is None:
            verdict = self.enabled and file_system_type(fd) in _DIRECT_FILE_SYSTEMS
            self._verdicts[directory] = verdict
        return verdict

    def start(
        self, directory: str, fd: int, parts: Sequence[bytes], tail: Tail | None, size: int
    ) -> Future[None] | None:
        """Start writing ``parts`` then ``tail`` (``size`` bytes in all) to the empty file
        ``fd`` in ``directory``; None when the caller writes it the ordinary way (a small
        output, a file system not worth it, ``O_DIRECT`` refused there before)."""
        if size < self.min_bytes or not self.usable(directory, fd):
            return None
        buffer = self._filled(parts, tail, size)
        return self._executor().submit(self._write, directory, fd, buffer, size)

    def start_new(
        self,
        directory: str,
        create: Callable[[], int],
        parts: Sequence[bytes],
        tail: Tail | None,
        size: int,
    ) -> Future[int] | None:
        """Like :meth:`start`, but the writer thread also makes the file, with ``create``
        (a new empty file in ``directory``): the future's result is its descriptor, the
        caller's to close (on failure the thread closes it). For directories where
        :meth:`start` went direct before: a new inode costs 0.01 to 0.25 ms here, more on
        an ext4 without a journal just after many deletions, and in a writer thread that
        time overlaps the caller's next header instead of adding to it. None when not
        sure direct writes are taken there (then :meth:`start`)."""
        if size < self.min_bytes or not self._verdicts.get(directory):
            return None
        buffer = self._filled(parts, tail, size)
        return self._executor().submit(self._create_and_write, directory, create, buffer, size)

    def _filled(self, parts: Sequence[bytes], tail: Tail | None, size: int) -> mmap.mmap:
        """An idle buffer holding the output (given back if that fails)."""
        buffer = self._take(size)
        try:
            _fill(buffer, parts, tail, size)
        except BaseException:
            self._idle.put(buffer)
            raise
        return buffer

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="direct")
        return self._pool

    def _create_and_write(
        self, directory: str, create: Callable[[], int], buffer: mmap.mmap, size: int
    ) -> int:
        try:
            fd = create()
        except BaseException:
            self._idle.put(buffer)
            raise
        with self._lock:
            self.created += 1
        try:
            self._write(directory, fd, buffer, size)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _take(self, size: int) -> mmap.mmap:
        """An idle buffer of ``size`` bytes or more (waits while all are being written)."""
        if self._buffers < self._depth and self._idle.empty():
            self._buffers += 1
            buffer = None
        else:
            buffer = self._idle.get()
        if buffer is None or len(buffer) < size:
            buffer = mmap.mmap(-1, -(-size // (1 << 20)) * (1 << 20))  # page-aligned
        return buffer

    def _write(self, directory: str, fd: int, buffer: mmap.mmap, size: int) -> None:
        """In a thread: the whole blocks directly, the partial last one through the cache.

        Where ``O_DIRECT`` is refused before anything is written, the whole output goes
        through the cache instead, and the directory is not tried again.
        """
        try:
            view = memoryview(buffer)
            whole = size // self.align * self.align
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            written = 0
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
                while written < whole:
                    written += os.pwrite(fd, view[written:whole], written)
                    if written % self.align:  # a short write mid-block: the rest the ordinary way
                        break
            except OSError as exc:
                if exc.errno != errno.EINVAL or written:
                    raise
                self._verdicts[directory] = False
            else:
                with self._lock:
                    self.writes += 1
            finally:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            while written < size:
                written += os.pwrite(fd, view[written:size], written)
            view.release()
        finally:
            self._idle.put(buffer)

    def close(self) -> None:
        """Wait for the writes started and stop the threads (buffers are freed with it)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _fill(buffer: mmap.mmap, parts: Sequence[bytes], tail: Tail | None, size: int) -> None:
    """The output's ``size`` bytes at the start of ``buffer``: ``parts``, then the tail read
    from its source file, its zero runs zeroed."""
    with memoryview(buffer) as view:
        position = 0
        for part in parts:
            view[position : position + len(part)] = part
            position += len(part)
        if tail is not None:
            source, pixels = tail
            for at, length, copied in pixels.pieces():
                with view[position + at : position + at + length] as piece:
                    if copied:
                        _read_into(source.fileno(), piece, pixels.offset + at)
                    else:
                        piece[:] = zero_bytes(length)
            position += pixels.length
        if position != size:
            raise ValueError(f"output is {position} bytes, {size} announced")


def _read_into(fd: int, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the bytes of ``fd`` from ``offset``."""
    filled = 0
    while filled < len(view):
        got = os.preadv(fd, [view[filled:]], offset + filled)
        if got <= 0:
            raise UnreadableInput("the source file shrank while it was read")
        filled += got
