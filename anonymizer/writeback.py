"""Outputs created and written by threads while the caller de-identifies the next file.

A batch's outputs are made durable together (:class:`~anonymizer.files.GroupCommit`); what
it costs besides is creating each file (0.1-1 ms on this project's ext4, most of it the
inode allocator skipping recently freed inodes) and getting its bytes to the device. None
of that needs the interpreter, so it runs in :data:`THREADS` writer threads.

How the bytes go depends on the output (:class:`OutputWriters`):

* **Large outputs** (:data:`DIRECT_MIN_BYTES` or more: CT-size) on ext2/3/4 or XFS are
  written around the page cache (``O_DIRECT``): assembled in the thread's page-aligned
  buffer (header parts, then the pixels read from the source), the whole blocks written
  directly, the last partial block through the page cache, so the bytes and size are those
  of an ordinary write. Measured here (2026-11-24): through the page cache a 0.5 MB output
  costs 0.2-1 ms of CPU to copy into new pages, and on this virtual machine several times
  that once the guest has to take memory it has not touched before (kept outputs: the
  page-cache variant fell from ~1,000 to 300-500 files/s within a run, ``O_DIRECT`` did not
  move); ``O_DIRECT`` reuses one buffer per thread.
* **Anything else** is written through the page cache and its write-back started at once
  (``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``: asynchronous, it waits for nothing),
  so the device writes while the batch fills and the commit's ``syncfs`` finds little left.

Neither makes anything durable: the caller's commit does (``syncfs`` or fsync), and reports
the errors. Where ``O_DIRECT`` is refused (``EINVAL`` before anything is written), that
directory is written the ordinary way from then on.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from anonymizer.errors import UnreadableInput

#: (source file, offset, length): bytes copied from a source file after an output's parts.
Tail = tuple[BinaryIO, int, int]

#: Writer threads: creating files and copying pixels into the page cache happen in the
#: kernel, the interpreter's lock released, so two threads keep a second core busy.
THREADS = 2
#: Outputs queued or being written at once; the caller waits beyond (each holds its
#: encoded header and a descriptor of its source file).
DEPTH = 16

#: Outputs of this size or more go direct (where the file system takes it).
DIRECT_MIN_BYTES = 256 * 1024
#: Alignment of the buffer, offsets and lengths: a page, a multiple of any usual logical
#: block size; the partial last page then never shares a page with the direct writes.
ALIGN = max(4096, mmap.PAGESIZE)
#: ``statfs.f_type`` of file systems whose ``O_DIRECT`` writes go straight to the device
#: (tmpfs takes the flag since Linux 6.6, as a plain copy: not worth a second copy).
DIRECT_FILE_SYSTEMS = frozenset({0xEF53, 0x58465342})  # ext2/3/4, XFS
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: write-back starts when the kernel likes
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _load_sync_file_range()


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


def start_writeback(fd: int) -> None:
    """Start writing the dirty pages of ``fd`` to its device; returns without waiting."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


class OutputWriters:
    """A few threads that run output jobs (create, then :meth:`write`) in order of
    submission; at most ``depth`` jobs are pending, :meth:`submit` waits beyond that.
    ``direct=False`` never writes around the page cache; ``align`` is for the tests (an
    alignment the device refuses). :meth:`close` waits for the jobs and stops the threads:
    close before forking."""

    def __init__(
        self,
        threads: int = THREADS,
        depth: int = DEPTH,
        direct: bool = True,
        min_bytes: int = DIRECT_MIN_BYTES,
        align: int = ALIGN,
    ) -> None:
        self._threads = threads
        self._places = threading.BoundedSemaphore(depth)
        self._pool: ThreadPoolExecutor | None = None
        self.direct = direct and _O_DIRECT != 0
        self.min_bytes = min_bytes
        self.align = align
        self._verdicts: dict[str, bool] = {}  # by directory: direct writes taken there
        self._buffers = threading.local()  # each thread's aligned buffer
        self._lock = threading.Lock()
        self.direct_writes = 0  # outputs written directly (the tests look)

    def submit(self, job: Callable[[], None]) -> Future[None]:
        """Run ``job`` in a writer thread; its exception, if any, is the future's."""
        self._places.acquire()
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="output")
            future = self._pool.submit(job)
        except BaseException:
            self._places.release()
            raise
        future.add_done_callback(lambda _: self._places.release())
        return future

    def write(
        self, directory: str, fd: int, parts: Sequence[bytes], tail: Tail | None, size: int
    ) -> None:
        """``parts`` then ``tail`` (``size`` bytes in all) into the new, empty file ``fd`` in
        ``directory``: around the page cache when large and possible, else through it with
        its write-back started."""
        if size >= self.min_bytes and self._usable(directory, fd):
            written = self._write_direct(directory, fd, parts, tail, size)
        else:
            written = 0
        if written < size:  # nothing written yet: the ordinary way
            write_all(fd, list(parts))
            if tail is not None:
                copy_range(tail[0], fd, tail[1], tail[2])
            start_writeback(fd)

    def _usable(self, directory: str, fd: int) -> bool:
        verdict = self._verdicts.get(directory)
        if verdict is None:
            verdict = self.direct and file_system_type(fd) in DIRECT_FILE_SYSTEMS
            self._verdicts[directory] = verdict
        return verdict

    def _write_direct(
        self, directory: str, fd: int, parts: Sequence[bytes], tail: Tail | None, size: int
    ) -> int:
        """The whole blocks of the output written directly, the partial last one through
        the cache; returns how much was written (0 when ``O_DIRECT`` is refused: then the
        directory is not tried again)."""
        buffer = self._buffer(size)
        _fill(buffer, parts, tail, size)
        whole = size // self.align * self.align
        written = 0
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        with memoryview(buffer) as view:
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
                return 0
            finally:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
            with self._lock:
                self.direct_writes += 1
            while written < size:
                written += os.pwrite(fd, view[written:size], written)
        return written

    def _buffer(self, size: int) -> mmap.mmap:
        """This thread's page-aligned buffer, of ``size`` bytes or more."""
        buffer: mmap.mmap | None = getattr(self._buffers, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self._buffers.buffer = mmap.mmap(-1, -(-size // (1 << 20)) * (1 << 20))
        return buffer

    def close(self) -> None:
        """Wait for the jobs submitted and stop the threads (their buffers go with them)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._buffers = threading.local()


def _fill(buffer: mmap.mmap, parts: Sequence[bytes], tail: Tail | None, size: int) -> None:
    """The output's ``size`` bytes at the start of ``buffer``: ``parts``, then the tail read
    from its source file."""
    with memoryview(buffer) as view:
        position = 0
        for part in parts:
            view[position : position + len(part)] = part
            position += len(part)
        if tail is not None:
            source, offset, length = tail
            end = position + length
            while position < end:
                got = os.preadv(source.fileno(), [view[position:end]], offset)
                if got <= 0:
                    raise UnreadableInput("the source file shrank while it was read")
                position += got
                offset += got
        if position != size:
            raise ValueError(f"output is {position} bytes, {size} announced")


def write_all(fd: int, parts: list[bytes]) -> None:
    """All ``parts`` in as few ``writev`` calls as the kernel allows."""
    limit = getattr(os, "IOV_MAX", None) or 1024
    for first in range(0, len(parts), limit):
        group = parts[first : first + limit]
        written = os.writev(fd, group)
        total = sum(len(p) for p in group)
        if written < total:  # a short write (full disk, signal): finish part by part
            rest = memoryview(b"".join(group))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


def copy_range(source: BinaryIO, fd: int, offset: int, length: int) -> None:
    """``length`` bytes of ``source`` from ``offset`` appended to ``fd``, in the kernel."""
    src = source.fileno()
    end = offset + length
    for copy in (_copy_file_range, _sendfile):
        try:
            while offset < end:
                done = copy(src, fd, offset, end - offset)
                if done <= 0:
                    raise UnreadableInput("the source file shrank while it was read")
                offset += done
            return
        except OSError:
            continue  # not supported between these files: the next way
    while offset < end:
        chunk = os.pread(src, min(end - offset, 1 << 20), offset)
        if not chunk:
            raise UnreadableInput("the source file shrank while it was read")
        write_all(fd, [chunk])
        offset += len(chunk)


def _copy_file_range(src: int, fd: int, offset: int, count: int) -> int:
    return os.copy_file_range(src, fd, count, offset)


def _sendfile(src: int, fd: int, offset: int, count: int) -> int:
    return os.sendfile(fd, src, offset, count)
