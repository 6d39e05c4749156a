"""Files and folders: de-identify each file on its own, never leave a partial output.

Each output is written to a hidden temporary file (``.<random>.part``) in the target
directory and renamed into place only once its bytes are on stable storage, so a crash, a
power loss or a refused input never leaves a partial file at an output's name. Output
files are named after the new SOP Instance UID: input names and folders often carry
patient names, so they are not reproduced.

One file (:func:`anonymize_file`) is made durable on its own: fsync, rename, fsync of the
directory. Many files (:func:`anonymize_tree`) are made durable together, a *group
commit*: a batch of temporary files (:data:`GROUP_FILES` files or :data:`GROUP_BYTES`,
whichever comes first, and whatever is left at the end) is written out by one ``syncfs``
of the output file system and then fsynced file by file (cheap by then; each fsync still
reports its own file's write-back errors), or, without ``syncfs``, fsynced concurrently
from a few threads; then renamed into place; then each directory that gained a name is
fsynced once. An outcome is yielded only after its batch
is durable, and a file whose fsync or rename fails becomes a failure whose temporary file is
removed.

Only the head of a source file is read into memory (:data:`HEAD_BYTES`); when the rest is
native pixel data (:meth:`~anonymizer.engine.Deidentifier.deidentify_head`), the new
header is written with one ``writev`` and the pixels are copied from the source file by
the kernel (``copy_file_range``, else ``sendfile``, else a plain copy): the pixels of a
CT never pass through Python. Anything else reads the whole file.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from anonymizer.engine import DeidentifiedInstance, Deidentifier
from anonymizer.errors import AnonymizationError, UnreadableInput
from anonymizer.uncached import DirectWriter, Tail


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
    a rename; ``tail`` = (source file, offset, length) is copied from the source after it.

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
    missing: list[Path] = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_directory(new.parent)


def _create_temporary(directory: Path) -> tuple[int, str, list[Path]]:
    """A new hidden temporary file in ``directory``: its descriptor, its path and the
    directories made for it (their parents need an fsync for the new names to last)."""
    created: list[Path] = []
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")
    except FileNotFoundError:  # the first output of a folder: make it (not once a file)
        missing = directory
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".", suffix=".part")
    return fd, temporary, created


def _write_output(fd: int, data: bytes | Sequence[bytes], tail: Tail | None) -> None:
    _write_all(fd, _parts(data))
    if tail is not None:
        _copy_range(tail[0], fd, tail[1], tail[2])


def _parts(data: bytes | Sequence[bytes]) -> list[bytes]:
    return [data] if isinstance(data, bytes) else list(data)


@dataclass
class _Staged:
    """An output written to its temporary file, not yet durable nor at its name."""

    fd: int  # -1 once closed
    temporary: str
    target: Path
    pending: Future[None] | None = None  # its direct write, still running
    error: OSError | None = None
    renamed: bool = False

    def settle(self) -> None:
        """Wait for the direct write, if any; its error becomes :attr:`error`."""
        if self.pending is not None:
            try:
                self.pending.result()
            except OSError as exc:
                self.error = exc
            finally:
                self.pending = None


class GroupCommit:
    """Outputs written to temporary files now, made durable and renamed in batches.

    :meth:`writer` gives :func:`anonymize_file` a writer that stages an output (written, not
    fsynced); :meth:`hold` queues every outcome, staged or failed, in input order;
    :meth:`commit` makes the staged files durable together and returns the held outcomes,
    a staged file that could not be made durable turned into a failure (its temporary file
    removed). :meth:`discard` (also :meth:`close`, and leaving a ``with`` block) removes
    whatever was staged and not committed. The fsync threads live from the first commit
    until :meth:`close`: close before forking.
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
        self._held: list[tuple[FileOutcome, _Staged | None]] = []
        self._staged: dict[Path, _Staged] = {}  # by source, from stage to hold
        self._count = 0
        self._bytes = 0
        self._new_dirs: set[Path] = set()  # parents of directories made for outputs

    def __enter__(self) -> GroupCommit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def due(self) -> bool:
        """True when the staged outputs fill a batch."""
        return self._count >= self.max_files or self._bytes >= self.max_bytes

    def writer(self, source: Path) -> Writer:
        """A ``write`` for :func:`anonymize_file` that stages the output of ``source``."""
        return lambda target, parts, tail: self.stage(source, target, parts, tail)

    def stage(
        self, source: Path, target: Path, data: bytes | Sequence[bytes], tail: Tail | None = None
    ) -> None:
        """Write the output of ``source`` to a temporary file for ``target``; on failure
        the temporary file is removed and the error raised."""
        fd, temporary, created = _create_temporary(target.parent)
        parts = _parts(data)
        size = sum(len(p) for p in parts) + (0 if tail is None else tail[2])
        try:
            pending = self.direct.start(str(target.parent), fd, parts, tail, size)
            if pending is None:
                _write_output(fd, parts, tail)
        except BaseException:
            os.close(fd)
            Path(temporary).unlink(missing_ok=True)
            raise
        self._new_dirs.update(d.parent for d in created)
        _drop(self._staged.pop(source, None))
        self._staged[source] = _Staged(fd, temporary, target, pending)
        self._count += 1
        self._bytes += size

    def hold(self, outcome: FileOutcome) -> None:
        """Queue ``outcome``; a successful one must have been staged for its source."""
        staged = self._staged.pop(outcome.source, None)
        if not outcome.ok:
            _drop(staged)
            staged = None
        elif staged is None:
            raise ValueError(f"no output staged for {outcome.source}")
        self._held.append((outcome, staged))

    def commit(self) -> list[FileOutcome]:
        """Make every staged output durable at its name; the held outcomes, in order.

        Order: every file fsynced, then renamed, then every directory that gained a name
        fsynced: at any moment an output's name holds nothing or the complete file.
        """
        staged = [s for _, s in self._held if s is not None]
        try:
            for s in staged:
                s.settle()
            written = [s for s in staged if s.error is None]
            for s, error in zip(written, self._fsync_all(written), strict=True):
                s.error = error
                if error is None:
                    try:
                        os.replace(s.temporary, s.target)
                        s.renamed = True
                    except OSError as exc:
                        s.error = exc
            directories = {s.target.parent for s in staged if s.renamed} | self._new_dirs
            for directory in sorted(directories):
                try:
                    fsync_directory(directory)
                except OSError as exc:  # the names may not last: withdraw those outputs
                    for s in staged:
                        if s.renamed and s.target.parent == directory:
                            s.error, s.renamed = exc, False
                            s.target.unlink(missing_ok=True)
        finally:
            for s in staged:
                _drop(s, keep=s.renamed)
        held, self._held = self._held, []
        self._count = self._bytes = 0
        self._new_dirs = set()
        return [
            outcome if s is None or s.error is None else _write_failure(outcome, s.error)
            for outcome, s in held
        ]

    def _fsync_all(self, staged: list[_Staged]) -> list[OSError | None]:
        """fsync every staged file; the error of each, if any.

        One ``syncfs`` first writes the whole batch out with one journal commit (where the
        platform has it); the per-file fsyncs that follow then find little or nothing to do,
        and still report each file's own write-back errors. Without ``syncfs`` the fsyncs
        run concurrently, so the file system can fold them into fewer commits.
        """
        fds = [s.fd for s in staged]
        if len(fds) > 1 and _syncfs(fds[0]):
            return [_fsync(fd) for fd in fds]
        if len(fds) <= 1 or self._threads <= 1:
            return [_fsync(fd) for fd in fds]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="fsync")
        return list(self._pool.map(_fsync, fds))

    def discard(self) -> None:
        """Remove every output staged and not committed (an error of the caller, Ctrl-C)."""
        pending = [s for _, s in self._held if s is not None] + list(self._staged.values())
        self._held, self._staged = [], {}
        self._count = self._bytes = 0
        for s in pending:
            _drop(s)

    def close(self) -> None:
        """:meth:`discard`, stop the fsync threads and release the direct writer's buffer."""
        self.discard()
        self.direct.close()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):  # not Linux (or no libc symbol): fsyncs alone
        return None
    return function


_SYNCFS = _load_syncfs()


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
    if not keep:
        Path(staged.temporary).unlink(missing_ok=True)


def _write_failure(outcome: FileOutcome, exc: OSError) -> FileOutcome:
    return replace(outcome, target=None, error=f"cannot write: {exc}", error_kind="OSError")


def _write_all(fd: int, parts: list[bytes]) -> None:
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


def _copy_range(source: BinaryIO, fd: int, offset: int, length: int) -> None:
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
        _write_all(fd, [chunk])
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
            write(target, result.parts, None if tail is None else (handle, *tail))
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
    """Write ``result`` to the file ``fd``: its parts, then its tail copied from ``source``."""
    _write_all(fd, list(result.parts))
    if result.source_tail is not None:
        if source is None:
            raise ValueError("the result's pixel data is still in its source file")
        _copy_range(source, fd, *result.source_tail)


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
    failure, not the end of the run.
    """
    own = group is None
    batch = group or GroupCommit()
    try:
        for source in inputs:
            try:
                outcome = anonymize_file(deidentifier, source, output_dir, batch.writer(source))
            except Exception as exc:  # reported per file, never swallowed
                outcome = FileOutcome(source, error=str(exc) or repr(exc),
                                      error_kind=type(exc).__name__)  # fmt: skip
            batch.hold(outcome)
            if batch.due:
                yield from batch.commit()
        yield from batch.commit()
    finally:
        if own:
            batch.close()
        else:
            batch.discard()
