"""The one narrow seam between the node and where instance bytes live.

Modelled on Orthanc's ``IStorageArea``: blobs are opaque, addressed by the SHA-256 of
their plaintext, and know nothing of DICOM. Back-ends (filesystem, memory, later S3) are
interchangeable behind :class:`BlobStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

FindingKind = Literal["corrupt", "unreadable"]
"""``corrupt``: the bytes fail verification; ``unreadable``: they could not be read at all."""

ScrubProgress = Callable[[str], None]
"""Called by :meth:`BlobStore.scrub` with each key once it has been checked."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What the index records about a stored blob."""

    key: str
    """Lower-case hex SHA-256 of the plaintext bytes."""
    size: int
    """Plaintext size in bytes."""


@dataclass(frozen=True, slots=True)
class ScrubFinding:
    """One blob that failed verification during a scrub."""

    key: str
    problem: str
    kind: FindingKind = "corrupt"


@runtime_checkable
class BlobStore(Protocol):
    """Content-addressed, durable blob storage.

    ``put`` returns only once the bytes are durable (fsynced); putting bytes that are
    already stored is a cheap no-op returning the same :class:`BlobInfo`. ``get`` verifies
    the checksum and raises :class:`storage.errors.ChecksumMismatch` on corruption.
    ``get`` and ``delete`` of an absent key raise :class:`storage.errors.BlobNotFound`
    (``delete_many`` returns the absent keys instead, and removes the rest together:
    one sync per pack or directory, not per blob);
    a malformed key raises :class:`storage.errors.InvalidKey`. ``scrub`` verifies every
    blob, yields one :class:`ScrubFinding` per bad blob and calls *progress* per key.
    A caller that has already hashed the bytes passes ``digest`` (their SHA-256) so they
    are not hashed twice — 0.25 ms of a CT image; a wrong digest files the bytes under a
    key they do not match, which ``get`` and ``scrub`` report as corruption.
    """

    def put(self, data: bytes, digest: bytes | None = None) -> BlobInfo: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> list[str]: ...

    def keys(self) -> Iterator[str]: ...

    def scrub(self, progress: ScrubProgress | None = None) -> Iterator[ScrubFinding]: ...
