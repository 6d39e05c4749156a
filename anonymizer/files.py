"""Files and folders: de-identify each file on its own, never leave a partial output.

Each output is written to a temporary file in the target directory and renamed into
place only when complete, so a crash or a refused input leaves nothing behind. Output
files are named after the new SOP Instance UID: input names and folders often carry
patient names, so they are not reproduced.

Only the head of a source file is read into memory (:data:`HEAD_BYTES`); when the rest is
native pixel data (:meth:`~anonymizer.engine.Deidentifier.deidentify_head`), the new
header is written with one ``writev`` and the pixels are copied from the source file by
the kernel (``copy_file_range``, else ``sendfile``, else a plain copy): the pixels of a
CT never pass through Python. Anything else reads the whole file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from anonymizer.engine import DeidentifiedInstance, Deidentifier
from anonymizer.errors import AnonymizationError, UnreadableInput


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


def write_atomic(
    path: Path,
    data: bytes | Sequence[bytes],
    tail: tuple[BinaryIO, int, int] | None = None,
) -> None:
    """Write ``data`` (bytes, or parts written in order) through a temporary file and a
    rename; ``tail`` = (source file, offset, length) is copied from the source after it."""
    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    except FileNotFoundError:  # the first output of a folder: make it (not once a file)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        try:
            _write_all(fd, [data] if isinstance(data, bytes) else list(data))
            if tail is not None:
                _copy_range(tail[0], fd, tail[1], tail[2])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def anonymize_file(deidentifier: Deidentifier, source: Path, output_dir: Path) -> FileOutcome:
    """De-identify one file into ``output_dir``; failures are returned, not raised."""
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
            write_atomic(target, result.parts, None if tail is None else (handle, *tail))
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
    deidentifier: Deidentifier, inputs: list[Path], output_dir: Path
) -> Iterator[FileOutcome]:
    """:func:`anonymize_file` for every input, in order."""
    for source in inputs:
        yield anonymize_file(deidentifier, source, output_dir)
