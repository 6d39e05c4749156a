"""What only the filesystem store promises: layout, verification of what is on disk,
temp-file hygiene, and refusing a store opened with the wrong key setting."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from storage import (
    ChecksumMismatch,
    EncryptionError,
    FilesystemBlobStore,
    StorageError,
    generate_key_file,
    open_store,
)
from storage.encryption import MAGIC, OVERHEAD
from tests.storage.conftest import blob_path, flip_byte

PAYLOAD = b"\x00" * 128 + b"DICM" + b"patient bytes that must never appear on disk" * 40


def _corrupt_error(store: FilesystemBlobStore) -> type[Exception]:
    return EncryptionError if store.encrypted else ChecksumMismatch


def test_layout_fans_out_by_hash(fs_store: FilesystemBlobStore) -> None:
    info = fs_store.put(PAYLOAD)
    path = blob_path(fs_store, info.key)
    assert path.is_file()
    entries = {p.name for p in fs_store.root.iterdir()}
    first_level = {f"{n:02x}" for n in range(256)}  # made with the store: no fsync per blob
    assert entries == first_level | {"gridpacs-store.json", "tmp"}
    assert [p.name for p in (fs_store.root / info.key[:2]).iterdir()] == [info.key[2:4]]
    on_disk = path.read_bytes()
    if fs_store.encrypted:
        assert on_disk.startswith(MAGIC + b"\x01")
        assert len(on_disk) == len(PAYLOAD) + OVERHEAD
        assert b"patient bytes" not in on_disk
    else:
        assert on_disk == PAYLOAD


def test_marker_records_the_format(fs_store: FilesystemBlobStore) -> None:
    marker = json.loads((fs_store.root / "gridpacs-store.json").read_text())
    assert marker["format"] == "gridpacs-blobstore" and marker["version"] == 1
    assert (marker["encryption"] is not None) == fs_store.encrypted


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_is_caught_on_get_and_by_scrub(
    fs_store: FilesystemBlobStore, where: str
) -> None:
    good = fs_store.put(b"untouched neighbour")
    bad = fs_store.put(PAYLOAD)
    path = blob_path(fs_store, bad.key)
    size = path.stat().st_size
    flip_byte(path, {"first": 0, "middle": size // 2, "last": size - 1}[where])

    with pytest.raises(_corrupt_error(fs_store)):
        fs_store.get(bad.key)
    assert fs_store.get(good.key) == b"untouched neighbour"
    findings = list(fs_store.scrub())
    assert [(f.key, f.kind) for f in findings] == [(bad.key, "corrupt")]


def test_truncated_file_is_caught_and_healed_by_a_new_put(fs_store: FilesystemBlobStore) -> None:
    info = fs_store.put(PAYLOAD)
    path = blob_path(fs_store, info.key)
    with path.open("r+b") as file:
        file.truncate(10)
    with pytest.raises(_corrupt_error(fs_store)):
        fs_store.get(info.key)
    fs_store.put(PAYLOAD)  # sizes differ: rewritten, not trusted
    assert fs_store.get(info.key) == PAYLOAD


def test_unreadable_blob_is_reported_as_unreadable(fs_store: FilesystemBlobStore) -> None:
    info = fs_store.put(PAYLOAD)
    path = blob_path(fs_store, info.key)
    path.unlink()
    # A directory where the file should be: the read fails with EISDIR whoever runs the
    # test (a mode-0 file would not do: root reads it anyway).
    path.mkdir()
    with pytest.raises(StorageError, match="reading blob"):
        fs_store.get(info.key)
    (finding,) = list(fs_store.scrub())
    assert (finding.key, finding.kind) == (info.key, "unreadable")


def test_put_of_present_bytes_does_not_rewrite(fs_store: FilesystemBlobStore) -> None:
    info = fs_store.put(PAYLOAD)
    before = blob_path(fs_store, info.key).stat()
    time.sleep(0.01)
    assert fs_store.put(PAYLOAD) == info
    after = blob_path(fs_store, info.key).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_stray_and_temp_files_are_ignored(fs_store: FilesystemBlobStore) -> None:
    info = fs_store.put(PAYLOAD)
    (fs_store.root / "tmp" / "deadbeef.tmp").write_bytes(b"half a blob")
    (fs_store.root / "zz").mkdir()
    (fs_store.root / "zz" / ("0" * 64)).write_bytes(b"not in a fan-out dir")
    misplaced = fs_store.root / info.key[:2] / info.key[2:4] / ("f" * 64)
    misplaced.write_bytes(b"name does not match its directory")
    (fs_store.root / info.key[:2] / info.key[2:4] / "notes.txt").write_text("hi")
    assert list(fs_store.keys()) == [info.key]
    assert list(fs_store.scrub()) == []


def _open_like(store: FilesystemBlobStore, key_file: Path | None) -> FilesystemBlobStore:
    reopened = open_store(store.root, key_file)
    assert isinstance(reopened, FilesystemBlobStore)
    return reopened


def test_stale_temp_files_are_removed_on_open_but_live_ones_are_kept(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "s")
    assert isinstance(store, FilesystemBlobStore)
    tmp_dir = store.root / "tmp"
    stale, live, fresh = tmp_dir / "a.tmp", tmp_dir / "b.tmp", tmp_dir / "c.tmp"
    for path in (stale, live, fresh):
        path.write_bytes(b"partial")
    old = time.time() - 60
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    holder = os.open(live, os.O_RDONLY)  # stands in for a writer in another process
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        # flock locks belong to the open file description, so the store's own open of
        # the file conflicts with ours exactly as it would with another process.
        open_store(store.root)
        assert not stale.exists()
        assert live.exists(), "a temp file under a writer's lock must survive"
        assert fresh.exists(), "an unlocked temp file inside the grace period is kept"
    finally:
        os.close(holder)


def test_encrypted_store_refuses_no_key_wrong_key_and_plain_store_refuses_a_key(
    tmp_path: Path,
) -> None:
    right = generate_key_file(tmp_path / "right.key")
    wrong = generate_key_file(tmp_path / "wrong.key")
    encrypted = open_store(tmp_path / "enc", right)
    info = encrypted.put(PAYLOAD)
    with pytest.raises(EncryptionError, match="key file is required"):
        open_store(tmp_path / "enc")
    with pytest.raises(EncryptionError, match="wrong key"):
        open_store(tmp_path / "enc", wrong)
    assert open_store(tmp_path / "enc", right).get(info.key) == PAYLOAD
    open_store(tmp_path / "plain")
    with pytest.raises(EncryptionError, match="not encrypted"):
        open_store(tmp_path / "plain", right)


def test_a_blob_moved_to_another_address_fails_authentication(tmp_path: Path) -> None:
    store = open_store(tmp_path / "enc", generate_key_file(tmp_path / "k"))
    assert isinstance(store, FilesystemBlobStore)
    a, b = store.put(b"instance A"), store.put(b"instance B")
    blob_path(store, b.key).write_bytes(blob_path(store, a.key).read_bytes())
    with pytest.raises(EncryptionError, match="authentication failed"):
        store.get(b.key)


def test_open_without_create(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="not a gridpacs blob store"):
        open_store(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_unknown_marker_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    assert isinstance(store, FilesystemBlobStore)
    (store.root / "gridpacs-store.json").write_text('{"format": "other"}')
    with pytest.raises(StorageError, match="not a valid store marker"):
        open_store(store.root)
