"""Blob stores for the storage tests: every implementation behind one fixture."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storage import BlobStore, FilesystemBlobStore, MemoryBlobStore, generate_key_file, open_store

StoreFactory = Callable[[], BlobStore]


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A fresh key file (mode 0600)."""
    return generate_key_file(tmp_path / "blob.key")


@pytest.fixture(params=["memory", "filesystem", "filesystem+encryption"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Opens the store under test; calling it again reopens the same store (not memory)."""
    kind = request.param
    if kind == "memory":
        memory = MemoryBlobStore()
        return lambda: memory
    root = tmp_path / "blobs"
    if kind == "filesystem":
        return lambda: open_store(root)
    key = generate_key_file(tmp_path / "store.key")
    return lambda: open_store(root, key)


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
