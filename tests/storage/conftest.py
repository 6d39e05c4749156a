"""Blob stores for the storage tests: every implementation behind one fixture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage import (
    BlobCipher,
    BlobStore,
    FilesystemBlobStore,
    MemoryBlobStore,
    generate_key_file,
    load_key,
    open_store,
)

StoreFactory = Callable[[], BlobStore]
SMALL_PACK = 256 * 1024
"""Pack size in tests: a few dozen small blobs already fill, seal and roll packs."""


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A fresh key file (mode 0600)."""
    return generate_key_file(tmp_path / "blob.key")


def packed_store(root: Path, key: Path | None = None, **kwargs: int) -> FilesystemBlobStore:
    """A filesystem store packing blobs up to 64 KiB into small (256 KiB) packs."""
    cipher = BlobCipher(load_key(key)) if key is not None else None
    return FilesystemBlobStore(
        root,
        cipher,
        pack_threshold=kwargs.get("pack_threshold", 64 * 1024),
        pack_size=kwargs.get("pack_size", SMALL_PACK),
    )


@pytest.fixture(
    params=[
        "memory",
        "filesystem",
        "filesystem+encryption",
        "filesystem+packs",
        "filesystem+packs+encryption",
    ]
)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens the store under test; calling it again reopens the same store (not memory).

    A reopened packed store closes the previous instance first, as a restarted process
    would (only one writer holds the packs).
    """
    kind = request.param
    if kind == "memory":
        memory = MemoryBlobStore()
        return lambda: memory
    root = tmp_path / "blobs"
    key = generate_key_file(tmp_path / "store.key") if "encryption" in kind else None
    if "packs" not in kind:
        return lambda: open_store(root, key)
    opened: list[FilesystemBlobStore] = []

    def reopen() -> BlobStore:
        for previous in opened:
            previous.close()
        opened.append(packed_store(root, key))
        return opened[-1]

    def close_all() -> None:
        for store in opened:
            store.close()

    request.addfinalizer(close_all)
    return reopen


@pytest.fixture
def store(store_factory: StoreFactory) -> BlobStore:
    """The store under test."""
    return store_factory()


@pytest.fixture(params=["plain", "encrypted"])
def fs_store(request: pytest.FixtureRequest, tmp_path: Path) -> FilesystemBlobStore:
    """A filesystem store, with and without encryption."""
    key = generate_key_file(tmp_path / "fs.key") if request.param == "encrypted" else None
    store = open_store(tmp_path / "fs", key)
    assert isinstance(store, FilesystemBlobStore)
    return store


def blob_path(store: FilesystemBlobStore, key: str) -> Path:
    """Where the documented layout puts *key* (computed independently of the store)."""
    return store.root / key[:2] / key[2:4] / key


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte of a file in place (what bit rot or a bad disk does)."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
