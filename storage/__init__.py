"""Persistence primitives for gridpacs: content-addressed blobs and a quarantine.

No networking and no DICOM knowledge. :func:`open_store` is the one way the node (and the
``gridpacs storage`` command) opens the blob store on disk.
"""

from __future__ import annotations

from pathlib import Path

from storage.addressing import check_key, is_key, key_of
from storage.encryption import (
    BlobCipher,
    InsecureKeyFileWarning,
    generate_key_file,
    key_id,
    load_key,
)
from storage.errors import (
    BlobNotFound,
    ChecksumMismatch,
    DamagedRecord,
    EncryptionError,
    InvalidKey,
    KeyFileError,
    StorageError,
    StorageFull,
)
from storage.filesystem import FilesystemBlobStore
from storage.interfaces import BlobInfo, BlobStore, FindingKind, ScrubFinding, ScrubProgress
from storage.memory import MemoryBlobStore
from storage.quarantine import Quarantine, QuarantineEntry

__all__ = [
    "BlobCipher",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "ChecksumMismatch",
    "DamagedRecord",
    "EncryptionError",
    "FilesystemBlobStore",
    "FindingKind",
    "InsecureKeyFileWarning",
    "InvalidKey",
    "KeyFileError",
    "MemoryBlobStore",
    "Quarantine",
    "QuarantineEntry",
    "ScrubFinding",
    "ScrubProgress",
    "StorageError",
    "StorageFull",
    "check_key",
    "generate_key_file",
    "is_key",
    "key_id",
    "key_of",
    "load_key",
    "open_store",
]


def open_store(
    root: Path, key_file: Path | None = None, *, create: bool = True, pack_threshold: int = 0
) -> FilesystemBlobStore:
    """Open (creating unless *create* is false) the filesystem blob store at *root*.

    Parameters
    ----------
    root
        The store's directory.
    key_file
        A 32-byte key file (``gridpacs storage keygen``); blobs are then AES-256-GCM
        encrypted at rest. Must match the key the store was created with.
    create
        When false, a directory that is not yet a store is an error.
    pack_threshold
        Blobs up to this size are appended to pack files (:mod:`storage.packs`: one
        data-only sync per put); 0 (the default here) stores every blob as its own file.
        The node passes ``[storage] pack_threshold`` (64 KiB unless configured).

    Raises
    ------
    KeyFileError
        The key file is missing or malformed.
    EncryptionError
        The key does not match the store (or the store needs one).
    StorageError
        The store cannot be opened.
    """
    cipher = BlobCipher(load_key(key_file)) if key_file is not None else None
    return FilesystemBlobStore(root, cipher=cipher, create=create, pack_threshold=pack_threshold)
