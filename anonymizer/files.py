"""Files and folders: de-identify each file on its own, never leave a partial output.

Each output is written to a temporary file in the target directory and renamed into
place only when complete, so a crash or a refused input leaves nothing behind. Output
files are named after the new SOP Instance UID: input names and folders often carry
patient names, so they are not reproduced.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from anonymizer.engine import Deidentifier
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


def write_atomic(path: Path, data: bytes | Sequence[bytes]) -> None:
    """Write ``data`` (bytes, or parts written in order) through a temporary file and a
    rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, bytes):
                handle.write(data)
            else:
                handle.writelines(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def anonymize_file(deidentifier: Deidentifier, source: Path, output_dir: Path) -> FileOutcome:
    """De-identify one file into ``output_dir``; failures are returned, not raised."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        return FileOutcome(source, error=f"cannot read: {exc}", error_kind="UnreadableInput")
    try:
        result = deidentifier.deidentify_part10(data)
        target = output_dir / f"{result.sop_instance_uid or 'instance'}.dcm"
        write_atomic(target, result.parts)
    except AnonymizationError as exc:
        return FileOutcome(source, error=str(exc), error_kind=type(exc).__name__)
    except OSError as exc:
        return FileOutcome(source, error=f"cannot write: {exc}", error_kind="OSError")
    return FileOutcome(source, target=target)


def anonymize_tree(
    deidentifier: Deidentifier, inputs: list[Path], output_dir: Path
) -> Iterator[FileOutcome]:
    """:func:`anonymize_file` for every input, in order."""
    for source in inputs:
        yield anonymize_file(deidentifier, source, output_dir)
