"""The storage package's one exception hierarchy, and the one place OS errors are translated.

Callers catch :class:`StorageError` (or a subclass named for the condition); nothing in
``storage`` lets a bare :class:`OSError` or a ``cryptography`` exception escape, so the
gateway can map storage failures to DICOM statuses in one place.
"""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Root of every error raised by :mod:`storage`."""


class InvalidKey(StorageError, ValueError):
    """A key is not 64 lower-case hex digits (and so can never name a blob or a path)."""


class BlobNotFound(StorageError):
    """No blob is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key} not found")
        self.key = key


class ChecksumMismatch(StorageError):
    """The bytes read back do not hash to their key: the blob is corrupt."""

    def __init__(self, key: str, actual: str) -> None:
        super().__init__(f"blob {key} is corrupt: its content hashes to {actual}")
        self.key = key
        self.actual = actual


class DamagedRecord(ChecksumMismatch):
    """A packed blob's record header no longer describes it: the pack is corrupt there."""

    def __init__(self, key: str, problem: str) -> None:
        StorageError.__init__(self, f"blob {key} is corrupt: {problem}")
        self.key = key
        self.actual = ""


class StorageFull(StorageError):
    """The file system is out of space or the quota is exhausted (ENOSPC / EDQUOT)."""


class EncryptionError(StorageError):
    """Decryption failed (wrong key, tampered or truncated file), or the key misfits the store."""


class KeyFileError(StorageError):
    """A key file is missing, malformed, or would be overwritten."""


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def error_from_os(exc: OSError, doing: str) -> StorageError:
    """Translate an :class:`OSError` raised while *doing* something into our hierarchy.

    Kept separate from the I/O code so the errno mapping is one small, testable seam:
    ENOSPC and EDQUOT become :class:`StorageFull` (the node answers "out of resources"
    instead of "processing failure"), everything else a plain :class:`StorageError`.
    """
    detail = f"{doing}: {exc.strerror or exc}"
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(detail)
    return StorageError(detail)
