"""An in-memory :class:`~storage.interfaces.BlobStore` for tests and development.

Same contract as the filesystem store (checksums verified on read, the same errors), no
durability. Thread-safe, like Orthanc's ``MemoryStorageArea``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator

from storage.addressing import check_key
from storage.errors import BlobNotFound, ChecksumMismatch
from storage.interfaces import BlobInfo, ScrubFinding, ScrubProgress


class MemoryBlobStore:
    """Blobs in a dict keyed by content address."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes, digest: bytes | None = None) -> BlobInfo:
        """Store *data* (a copy) and return its address."""
        key = (digest or hashlib.sha256(data).digest()).hex()
        with self._lock:
            if key not in self._blobs:
                self._blobs[key] = bytes(data)
        return BlobInfo(key=key, size=len(data))

    def get(self, key: str) -> bytes:
        """Return the verified bytes stored under *key*."""
        check_key(key)
        with self._lock:
            data = self._blobs.get(key)
        if data is None:
            raise BlobNotFound(key)
        actual = hashlib.sha256(data).hexdigest()
        if actual != key:
            raise ChecksumMismatch(key, actual)
        return data

    def exists(self, key: str) -> bool:
        """Whether *key* is stored."""
        check_key(key)
        with self._lock:
            return key in self._blobs

    def delete(self, key: str) -> None:
        """Forget *key*; :class:`BlobNotFound` when absent."""
        check_key(key)
        with self._lock:
            if self._blobs.pop(key, None) is None:
                raise BlobNotFound(key)

    def delete_many(self, keys: Iterable[str]) -> list[str]:
        """Forget these keys; the ones that were absent."""
        wanted = list(dict.fromkeys(check_key(k) for k in keys))
        with self._lock:
            return [k for k in wanted if self._blobs.pop(k, None) is None]

    def keys(self) -> Iterator[str]:
        """A sorted snapshot of the stored keys."""
        with self._lock:
            snapshot = sorted(self._blobs)
        return iter(snapshot)

    def scrub(self, progress: ScrubProgress | None = None) -> Iterator[ScrubFinding]:
        """Verify every blob; yield a finding for each corrupt one."""
        for key in self.keys():
            try:
                self.get(key)
            except ChecksumMismatch as exc:
                yield ScrubFinding(key=key, problem=str(exc), kind="corrupt")
            except BlobNotFound:
                pass  # deleted concurrently
            if progress is not None:
                progress(key)
