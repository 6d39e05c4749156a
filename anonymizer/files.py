"""Files and folders: de-identify each file on its own, never leave a partial output.

An output gets its name only once its bytes are on stable storage, so a crash, a power
loss or a refused input never leaves a partial file at an output's name. Output files are
named after the new SOP Instance UID: input names and folders often carry patient names,
so they are not reproduced.

One file (:func:`write_atomic`) is written to a hidden temporary file (``.<random>.part``)
and made durable on its own: fsync, rename, fsync of the directory. Many files
(:func:`anonymize_tree`) are made durable together, a *group commit*: each output is created
unnamed (``O_TMPFILE``) where the file system allows (else as a hidden temporary file) and
written (CT-size outputs on a disk with ``O_DIRECT`` by a writer thread,
:mod:`anonymizer.uncached`); a batch (:data:`GROUP_FILES` files or :data:`GROUP_BYTES`,
whichever comes first, and whatever is left at the end) is then, in a committer thread
while the next batch is written (one batch at a time), written out by one ``syncfs`` per
file system (whose error report covers the whole batch on Linux 5.8 and later; elsewhere,
or on an error, each file is fsynced to find its own), linked or renamed to its name,
written out again for the new links' counts, and each directory that gained a name is
fsynced once. An outcome is yielded only after its batch is durable, and a file that
cannot be written, made durable or named becomes a failure that leaves nothing behind;
after a crash an unnamed file leaves nothing at all.

Only the head of a source file is read into memory (:data:`HEAD_BYTES`); when the rest is
native pixel data (:meth:`~anonymizer.engine.Deidentifier.deidentify_head`), the new
header is written with one ``writev`` and the pixels are copied from the source file by
the kernel (``copy_file_range``, else ``sendfile``, else a plain copy): the pixels of a
CT never pass through Python. Anything else reads the whole file.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import BinaryIO

from anonymizer.engine import DeidentifiedInstance, Deidentifier
from anonymizer.errors import AnonymizationError, UnreadableInput
from anonymizer.tail import SourceTail, zero_bytes
from anonymizer.uncached import DirectWriter, Tail

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file."""

    source: Path
    target: Path | None = None
    error: str | None = None
    error_kind: str | None = None

    @property
    def ok(self) -> bool:
        """True when the file was written."""
        return self.error is None


def list_inputs(path: Path) -> list[Path]:
    """``path`` itself, or every regular file below it (hidden files skipped), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UnreadableInput(f"no such file or directory: {path}")
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(root) / f for f in files if not f.startswith("."))
    return sorted(found)


#: How much of a source file is read first: the header of any usual instance.
HEAD_BYTES = 64 * 1024


#: A group commit makes this many outputs durable together at most …
GROUP_FILES = 128
#: … or this many bytes of them, whichever comes first.
GROUP_BYTES = 64 << 20
#: Threads that fsync a group's files concurrently.
FSYNC_THREADS = 8

#: Writes an output: (target, parts, tail).
Writer = Callable[[Path, Sequence[bytes], Tail | None], None]


def write_atomic(path: Path, data: bytes | Sequence[bytes], tail: Tail | None = None) -> None:
    """Write ``data`` (bytes, or parts written in order) durably through a temporary file and
    a rename; ``tail`` (the source file and a :class:`~anonymizer.tail.SourceTail`) is
    copied from the source after it, its zero runs written as zeros.

    Returns once the file and its name are on stable storage (file fsync, rename, directory
    fsync); on failure the temporary file is removed and nothing appears at ``path``.
    """
    fd, temporary, created = _create_temporary(path.parent)
    try:
        try:
            _write_output(fd, data, tail)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for directory in (path.parent, *(d.parent for d in created)):
        fsync_directory(directory)


def fsync_directory(directory: Path) -> None:
    """Make the names in ``directory`` (new, renamed or removed) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_output_dir(directory: Path) -> None:
    """Create ``directory`` and its missing parents durably (each new name's parent fsynced).

    Done once before a batch, so workers writing into it never race to create it.
    """
    for new in reversed(_missing_dirs(directory)):
        new.mkdir(exist_ok=True)
        fsync_directory(new.parent)


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    return missing


def _mkstemp(directory: Path) -> tuple[int, str]:
    """A new hidden temporary file in the existing ``directory``: descriptor and path."""
    return tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")


#: Unnamed files are linked at their name through ``/proc/self/fd`` (``linkat`` with
#: ``AT_SYMLINK_FOLLOW``; ``AT_EMPTY_PATH`` would need a capability).
_O_TMPFILE: int = getattr(os, "O_TMPFILE", 0) if os.path.isdir("/proc/self/fd") else 0


def _open_unnamed(directory: Path) -> int:
    """A new unnamed file (``O_TMPFILE``) in ``directory``, open for reading and writing."""
    return os.open(directory, _O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)


def _create_unnamed(directory: Path) -> tuple[int, str | None]:
    """A new file for an output in ``directory``: unnamed (``O_TMPFILE``) where the file
    system allows, else a hidden temporary file; its descriptor and path (None: unnamed).

    One system call (``mkstemp`` draws names in Python and renames at commit); the file
    gets its name only at commit, and a crash before that leaves nothing behind, not even
    a temporary name.
    """
    if _O_TMPFILE:
        try:
            return _open_unnamed(directory), None
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    return _mkstemp(directory)


def _publish(staged: _Staged, directories: dict[Path, int]) -> None:
    """Put a durable staged file at its name: rename it, or link it when unnamed (through a
    temporary name and a rename when something is at the name already: ``linkat`` never
    replaces). ``directories``: descriptors of the targets' directories, opened here the
    first time one is needed and closed by the caller (one per directory and commit)."""
    if staged.temporary is not None:
        os.replace(staged.temporary, staged.target)
        return
    parent = staged.target.parent
    directory = directories.get(parent)
    if directory is None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        directory = directories[parent] = os.open(parent, flags)
    proc = f"/proc/self/fd/{staged.fd}"
    try:
        os.link(proc, staged.target.name, dst_dir_fd=directory)  # linkat(.., FOLLOW)
    except FileExistsError:
        temporary = f".{os.urandom(8).hex()}.part"
        os.link(proc, temporary, dst_dir_fd=directory)
        try:
            os.replace(temporary, staged.target.name, src_dir_fd=directory,
                       dst_dir_fd=directory)  # fmt: skip
        except BaseException:
            os.unlink(temporary, dir_fd=directory)
            raise


def _withdraw_unsynced(linked: list[_Staged]) -> None:
    """fsync each file just linked at its name (its link count changed, which a directory's
    fsync alone does not write on every file system); one that fails leaves its name."""
    for s in linked:
        error = _fsync(s.fd)
        if error is not None:
            s.error, s.renamed = error, False
            s.target.unlink(missing_ok=True)


def _create_temporary(directory: Path) -> tuple[int, str, list[Path]]:
    """A new hidden temporary file in ``directory``: its descriptor, its path and the
    directories made for it (their parents need an fsync for the new names to last)."""
    created: list[Path] = []
    try:
        fd, temporary = _mkstemp(directory)
    except FileNotFoundError:  # the first output of a folder: make it (not once a file)
        created = _missing_dirs(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = _mkstemp(directory)
    return fd, temporary, created


def _write_output(fd: int, data: bytes | Sequence[bytes], tail: Tail | None) -> None:
    write_all(fd, _parts(data))
    if tail is not None:
        copy_tail(tail[0], fd, tail[1])


def _parts(data: bytes | Sequence[bytes]) -> list[bytes]:
    return [data] if isinstance(data, bytes) else list(data)


@dataclass
class _Staged:
    """An output written to its temporary file, not yet durable nor at its name."""

    target: Path
    fd: int = -1  # -1 before the file is created and once it is closed
    temporary: str | None = None  # None: an unnamed file (O_TMPFILE), linked at commit
    # its direct write, still running in a thread (giving the descriptor when the thread
    # also creates the file)
    pending: Future[None] | Future[int] | None = None
    error: Exception | None = None
    renamed: bool = False

    def settle(self) -> None:
        """Wait for the direct write, if any; its error becomes :attr:`error`."""
        if self.pending is not None:
            try:
                fd = self.pending.result()
                if fd is not None:
                    self.fd = fd
            except Exception as exc:  # the file's failure, reported at commit
                self.error = exc
            finally:
                self.pending = None


class GroupCommit:
    """Outputs written to temporary files now, made durable and renamed in batches.

    :meth:`writer` gives :func:`anonymize_file` a writer that stages an output (an unnamed
    file where the file system allows, written, not yet durable; a CT-size one on a disk
    written with ``O_DIRECT`` by a thread of :class:`~anonymizer.uncached.DirectWriter`,
    which also creates it once the directory is known to take unnamed files);
    :meth:`hold` queues every outcome, staged or failed, in input order; :meth:`commit`
    makes the staged files durable together and returns the held outcomes, a staged file
    that could not be written or made durable turned into a failure (nothing of it left);
    :meth:`commit_in_background` does the same in a committer thread while the next batch
    is staged. :meth:`discard` (also :meth:`close`, and leaving a ``with`` block) removes
    whatever was staged and not committed. ``direct=False`` never writes around the page
    cache. The threads live until
    :meth:`close`: close before forking.
    """

    def __init__(
        self,
        max_files: int = GROUP_FILES,
        max_bytes: int = GROUP_BYTES,
        threads: int = FSYNC_THREADS,
        direct: bool = True,
    ) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.direct = DirectWriter(direct)  # large outputs around the page cache
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._batch = _Batch()  # filling
        self._staged: dict[Path, _Staged] = {}  # by source, from stage to hold
        self._devices: dict[Path, int] = {}  # output directories made or found, their device
        self._unnamed: set[Path] = set()  # directories whose outputs the writer creates
        self._committer: ThreadPoolExecutor | None = None
        self._committing: Future[list[FileOutcome]] | None = None

    def __enter__(self) -> GroupCommit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def due(self) -> bool:
        """True when the staged outputs fill a batch."""
        return self._batch.count >= self.max_files or self._batch.bytes >= self.max_bytes

    def writer(self, source: Path) -> Writer:
        """A ``write`` for :func:`anonymize_file` that stages the output of ``source``."""
        return lambda target, parts, tail: self.stage(source, target, parts, tail)

    def stage(
        self, source: Path, target: Path, data: bytes | Sequence[bytes], tail: Tail | None = None
    ) -> None:
        """Write the output of ``source`` to a new unnamed (or hidden temporary) file for
        ``target``; a large one on a disk is written by a writer thread (its errors are that
        file's failure at :meth:`commit`). On failure here the file is removed and the error
        raised."""
        self._witness(target.parent)
        parts = _parts(data)
        size = sum(len(p) for p in parts) + (0 if tail is None else tail[1].length)
        staged = _Staged(target)
        directory = str(target.parent)
        if target.parent in self._unnamed:
            create = partial(_open_unnamed, target.parent)
            staged.pending = self.direct.start_new(directory, create, parts, tail, size)
        if staged.pending is None:
            staged.fd, staged.temporary = _create_unnamed(target.parent)
            try:
                staged.pending = self.direct.start(directory, staged.fd, parts, tail, size)
                if staged.pending is None:
                    _write_output(staged.fd, parts, tail)
            except BaseException:
                _drop(staged)
                raise
            if staged.pending is not None and staged.temporary is None:
                self._unnamed.add(target.parent)  # from now on created by the writer
        _drop(self._staged.pop(source, None))
        self._staged[source] = staged
        self._batch.count += 1
        self._batch.bytes += size

    def _witness(self, directory: Path) -> None:
        """Make ``directory`` if missing (its new parents are fsynced at the next commit) and
        hold a descriptor on its file system, opened before any of the batch's files there:
        the commit's ``syncfs`` on it reports the write-back errors of all of them."""
        device = self._devices.get(directory)
        if device is None:
            created = _missing_dirs(directory)
            if created:
                directory.mkdir(parents=True, exist_ok=True)
                self._batch.new_dirs.update(d.parent for d in created)
            device = self._devices[directory] = os.stat(directory).st_dev
        if device not in self._batch.witnesses:
            self._batch.witnesses[device] = os.open(
                directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )

    def hold(self, outcome: FileOutcome) -> None:
        """Queue ``outcome``; a successful one must have been staged for its source."""
        staged = self._staged.pop(outcome.source, None)
        if not outcome.ok:
            _drop(staged)
            staged = None
        elif staged is None:
            raise ValueError(f"no output staged for {outcome.source}")
        self._batch.held.append((outcome, staged))

    def commit(self) -> list[FileOutcome]:
        """Make every staged output durable at its name; the held outcomes, in order (those
        of a batch still committing in the background first)."""
        done = self.wait()
        return done + self._commit(self._take())

    def commit_in_background(self) -> list[FileOutcome]:
        """Start committing the held outcomes' batch in the committer thread and go on
        filling the next; returns the outcomes of the batch committed before it (waiting
        for it if need be), so at most one batch commits at a time and outcomes stay in
        order. :meth:`wait` gives the last batch's."""
        done = self.wait()
        if self._committer is None:
            self._committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._committing = self._committer.submit(self._commit, self._take())
        return done

    def wait(self) -> list[FileOutcome]:
        """The outcomes of the batch committing in the background, once it is done."""
        committing, self._committing = self._committing, None
        return [] if committing is None else committing.result()

    def _take(self) -> _Batch:
        batch, self._batch = self._batch, _Batch()
        return batch

    def _commit(self, batch: _Batch) -> list[FileOutcome]:
        """Make ``batch``'s staged outputs durable at their names; its outcomes, in order.

        Order: every file written out (``syncfs``, or fsyncs), then put at its name (renamed,
        or linked and written out again for its link count), then every directory that
        gained a name fsynced: at any moment an output's name holds nothing or the complete
        file.
        """
        staged = [s for _, s in batch.held if s is not None]
        dir_fds: dict[Path, int] = {}  # descriptors for linking, per directory
        try:
            for s in staged:
                s.settle()
            written = [s for s in staged if s.error is None]
            for s, error in zip(written, self._fsync_all(batch, written), strict=True):
                s.error = error
                if error is None:
                    try:
                        _publish(s, dir_fds)
                        s.renamed = True
                    except OSError as exc:
                        s.error = exc
            linked = [s for s in staged if s.renamed and s.temporary is None]
            if linked and not batch.sync():
                _withdraw_unsynced(linked)
            directories = {s.target.parent for s in staged if s.renamed} | batch.new_dirs
            for directory in sorted(directories):
                try:
                    fsync_directory(directory)
                except OSError as exc:  # the names may not last: withdraw those outputs
                    for s in staged:
                        if s.renamed and s.target.parent == directory:
                            s.error, s.renamed = exc, False
                            s.target.unlink(missing_ok=True)
        finally:
            for fd in dir_fds.values():
                os.close(fd)
            for s in staged:
                _drop(s, keep=s.renamed)
            batch.close()
        return [
            outcome if s is None or s.error is None else _write_failure(outcome, s.error)
            for outcome, s in batch.held
        ]

    def _fsync_all(self, batch: _Batch, staged: list[_Staged]) -> list[OSError | None]:
        """Write every staged file out; the error of each, if any.

        One ``syncfs`` per file system writes the whole batch out (one device flush instead
        of one per file). Where ``syncfs`` reports write-back errors
        (:data:`SYNCFS_REPORTS_ERRORS`) a clean one speaks for every file of the batch: its
        descriptor was opened before any of them. Otherwise, or when it reports an error,
        each file is fsynced to find its own error (cheap once written out); without
        ``syncfs`` the fsyncs run concurrently, so the file system can fold them into fewer
        commits.
        """
        fds = [s.fd for s in staged]
        if len(fds) <= 1:  # one file: its own fsync, not the whole file system's
            return [_fsync(fd) for fd in fds]
        synced = batch.sync()
        if synced and SYNCFS_REPORTS_ERRORS:
            return [None] * len(fds)
        if synced or self._threads <= 1:
            return [_fsync(fd) for fd in fds]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="fsync")
        return list(self._pool.map(_fsync, fds))

    def discard(self) -> None:
        """Remove every output staged and not committed (an error of the caller, Ctrl-C).

        A batch already committing in the background is let finish: its outputs are
        complete at their names, though never reported."""
        try:
            self.wait()
        except Exception:  # cleaning up after another error: this one is logged, not raised
            _log.exception("a group commit failed while its batch was discarded")
        batch = self._take()
        pending = [s for _, s in batch.held if s is not None] + list(self._staged.values())
        self._staged = {}
        for s in pending:
            _drop(s)
        batch.close()

    def close(self) -> None:
        """:meth:`discard` and stop the writer, committer and fsync threads."""
        self.discard()
        self.direct.close()
        for pool in (self._committer, self._pool):
            if pool is not None:
                pool.shutdown()
        self._committer = self._pool = None


@dataclass
class _Batch:
    """The outcomes held for one group commit and what the commit needs besides."""

    held: list[tuple[FileOutcome, _Staged | None]] = field(default_factory=list)
    count: int = 0
    bytes: int = 0
    new_dirs: set[Path] = field(default_factory=set)  # parents of directories made for it
    witnesses: dict[int, int] = field(default_factory=dict)  # by device: opened before it

    def sync(self) -> bool:
        """``syncfs`` of every file system the batch wrote to; False unless all succeeded."""
        return bool(self.witnesses) and all(_syncfs(fd) for fd in self.witnesses.values())

    def close(self) -> None:
        for fd in self.witnesses.values():
            os.close(fd)
        self.witnesses = {}


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):  # not Linux (or no libc symbol): fsyncs alone
        return None
    return function


_SYNCFS = _load_syncfs()


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        release = os.uname().release.split(".")
        return (int(release[0]), int(release[1].split("-")[0])) >= (major, minor)
    except (AttributeError, IndexError, ValueError):
        return False


#: True where ``syncfs`` returns the write-back errors of the whole file system since the
#: descriptor it is given was opened (Linux 5.8 and later): a batch's first-opened file then
#: speaks for every file of the batch, and a clean ``syncfs`` needs no per-file fsync.
SYNCFS_REPORTS_ERRORS = _SYNCFS is not None and _kernel_at_least(5, 8)


def _syncfs(fd: int) -> bool:
    """Flush the file system holding ``fd``; False when not possible (the caller fsyncs)."""
    return _SYNCFS is not None and _SYNCFS(fd) == 0


def _fsync(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
        return None
    except OSError as exc:
        return exc


def _drop(staged: _Staged | None, keep: bool = False) -> None:
    """Close a staged file's descriptor and, unless ``keep``, remove its temporary file."""
    if staged is None:
        return
    staged.settle()  # never close a file a thread is writing
    if staged.fd >= 0:
        os.close(staged.fd)
        staged.fd = -1
    if not keep and staged.temporary is not None:  # an unnamed file goes with its descriptor
        Path(staged.temporary).unlink(missing_ok=True)


def _write_failure(outcome: FileOutcome, exc: Exception) -> FileOutcome:
    if isinstance(exc, AnonymizationError):  # e.g. the source shrank while it was copied
        return replace(outcome, target=None, error=str(exc), error_kind=type(exc).__name__)
    kind = "OSError" if isinstance(exc, OSError) else type(exc).__name__
    return replace(outcome, target=None, error=f"cannot write: {exc}", error_kind=kind)


def write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
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


def copy_tail(source: BinaryIO, fd: int, tail: SourceTail) -> None:
    """``tail`` appended to ``fd``: its pieces copied from ``source`` in the kernel, its
    zero runs written as zeros (their source bytes are never read)."""
    for position, length, copied in tail.pieces():
        if copied:
            copy_range(source, fd, tail.offset + position, length)
        else:
            write_all(fd, [zero_bytes(length)])


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


def anonymize_file(
    deidentifier: Deidentifier, source: Path, output_dir: Path, write: Writer | None = None
) -> FileOutcome:
    """De-identify one file into ``output_dir``; failures are returned, not raised.

    The output is durable when this returns (:func:`write_atomic`), unless ``write`` (target,
    parts, tail) writes it instead, e.g. :meth:`GroupCommit.stage` for a batch.
    """
    write = write or write_atomic
    try:
        handle = open_source(source)
    except OSError as exc:
        return FileOutcome(source, error=f"cannot read: {exc}", error_kind="UnreadableInput")
    with handle:
        try:
            result = deidentify_source(deidentifier, handle)
        except OSError as exc:
            return FileOutcome(source, error=f"cannot read: {exc}", error_kind="UnreadableInput")
        except AnonymizationError as exc:
            return FileOutcome(source, error=str(exc), error_kind=type(exc).__name__)
        try:
            target = output_dir / f"{result.sop_instance_uid or 'instance'}.dcm"
            tail = result.source_tail
            write(target, result.parts, None if tail is None else (handle, tail))
        except AnonymizationError as exc:
            return FileOutcome(source, error=str(exc), error_kind=type(exc).__name__)
        except OSError as exc:
            return FileOutcome(source, error=f"cannot write: {exc}", error_kind="OSError")
    return FileOutcome(source, target=target)


def deidentify_source(deidentifier: Deidentifier, source: BinaryIO) -> DeidentifiedInstance:
    """De-identify the Part 10 file open as ``source`` (unbuffered, at its start).

    Reads :data:`HEAD_BYTES` first and the rest only when the head is not enough; keep
    ``source`` open until the result is written (:func:`write_instance`).
    """
    size = os.fstat(source.fileno()).st_size
    head = source.read(HEAD_BYTES)
    if len(head) < size:
        result = deidentifier.deidentify_head(head, size)
        if result is not None:
            return result
        head += source.read()
    return deidentifier.deidentify_part10(head)


def write_instance(fd: int, result: DeidentifiedInstance, source: BinaryIO | None) -> None:
    """Write ``result`` to the file ``fd``: its parts, then its tail from ``source``."""
    write_all(fd, list(result.parts))
    if result.source_tail is not None:
        if source is None:
            raise ValueError("the result's pixel data is still in its source file")
        copy_tail(source, fd, result.source_tail)


def open_source(source: Path) -> BinaryIO:
    """``source`` for reading, without updating its access time where that is allowed."""
    flags = os.O_RDONLY | getattr(os, "O_NOATIME", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(source, flags)
    except PermissionError:  # O_NOATIME needs the file's owner (or CAP_FOWNER)
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    return os.fdopen(fd, "rb", buffering=0)


def anonymize_tree(
    deidentifier: Deidentifier,
    inputs: Iterable[Path],
    output_dir: Path,
    group: GroupCommit | None = None,
) -> Iterator[FileOutcome]:
    """De-identify every input into ``output_dir``, in order, with group commits.

    Each outcome is yielded once its output is durable at its name (batches of ``group``'s
    size, default :class:`GroupCommit`); leaving the iteration early removes what was
    written and not yet committed. Unexpected errors (a bug in a reader) are one file's
    failure, not the end of the run (:func:`stage_file`).
    """
    own = group is None
    batch = group or GroupCommit()
    try:
        for source in inputs:
            yield from stage_file(deidentifier, source, output_dir, batch)
        yield from batch.commit()
    finally:
        if own:
            batch.close()
        else:
            batch.discard()


def stage_file(
    deidentifier: Deidentifier, source: Path, output_dir: Path, group: GroupCommit
) -> list[FileOutcome]:
    """De-identify ``source`` into ``group`` and hold its outcome; when that fills a batch,
    start committing it in the background and return the outcomes of the batch committed
    before it (durable, in order), else nothing. Unexpected errors (a bug in a reader) are
    the file's failure, not the end of the run."""
    try:
        outcome = anonymize_file(deidentifier, source, output_dir, group.writer(source))
    except Exception as exc:  # reported per file, never swallowed
        outcome = FileOutcome(source, error=str(exc) or repr(exc), error_kind=type(exc).__name__)
    group.hold(outcome)
    return group.commit_in_background() if group.due else []
