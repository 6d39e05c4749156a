"""Deleted packed blobs give their disk space back: holes punched at delete, and `reclaim`
for what older deletes (zeros written, blocks kept) and superseded torn records still hold.

Holes are checked from outside the store: ``SEEK_DATA`` on the pack file and its
``st_blocks``, on the real file system under the test's temporary directory.
"""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import BlobNotFound, ChecksumMismatch, FilesystemBlobStore, packs
from storage.packs import Location
from tests.storage.conftest import flip_byte, packed_store
from tests.storage.test_cli import gridpacs

REPO = Path(__file__).resolve().parents[2]
BLOCK = 4096
HEADER_SIZE = 56

pytestmark = pytest.mark.timeout(60)


def _secret(n: int) -> bytes:
    """60 kB (15 blocks as a record) with a string a privacy check can look for."""
    return (f"PATIENT-SECRET-{n:04d}|".encode() * 3000)[:30_000] + random.Random(n).randbytes(
        30_000
    )


def _where(store: FilesystemBlobStore, key: str) -> tuple[Path, Location]:
    assert store._packs is not None
    where = store._packs.locate(bytes.fromhex(key))
    assert where is not None, f"{key} is not packed"
    return store.root / "packs" / f"{where.pack:08d}.pack", where


def _span(where: Location) -> int:
    return -(-(HEADER_SIZE + where.length) // BLOCK) * BLOCK


def _is_hole(path: Path, where: Location) -> bool:
    """No allocated block in the record's aligned span (what `du` would count)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, where.offset, os.SEEK_DATA) >= where.offset + _span(where)
    except OSError as exc:
        assert exc.errno == errno.ENXIO
        return True
    finally:
        os.close(fd)


def _fill(store: FilesystemBlobStore, count: int) -> dict[str, tuple[Path, Location]]:
    """``count`` secret blobs over several packs (earlier ones sealed); where each is."""
    keys = [store.put(_secret(n)).key for n in range(count)]
    assert store._packs is not None
    store._packs.sync_background()
    return {key: _where(store, key) for key in keys}


def test_a_delete_punches_the_record_out_of_its_pack(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    placed = _fill(store, 9)
    gone, kept = list(placed)[:6], list(placed)[6:]
    sizes = {p: p.stat().st_size for p, _ in placed.values()}
    blocks_before = {p: p.stat().st_blocks for p in sizes}
    for key in gone:
        store.delete(key)
    for key in gone:
        assert _is_hole(*placed[key])
    assert all(p.stat().st_size == size for p, size in sizes.items())  # offsets unchanged
    freed = sum(blocks_before[p] - p.stat().st_blocks for p in sizes) * 512
    assert freed >= sum(_span(placed[k][1]) for k in gone)
    assert not any(_is_hole(*placed[k]) for k in kept)
    # the kept blobs' own secrets are still there: check only the deleted ones' strings
    everything = b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert not any(f"PATIENT-SECRET-{n:04d}".encode() in everything for n in range(6))
    assert [store.get(k) for k in kept] == [_secret(n) for n in range(6, 9)]
    assert list(store.scrub()) == []
    store.close()
    again = packed_store(root)
    assert sorted(again.keys()) == sorted(kept) and list(again.scrub()) == []
    assert again.put(_secret(0)).key == gone[0]  # put back after the delete: a new record
    assert again.get(gone[0]) == _secret(0)
    again.close()


def test_where_no_hole_can_be_punched_zeros_are_written_and_reclaim_frees_them_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    placed = _fill(store, 8)
    gone = list(placed)[:5]
    with monkeypatch.context() as patch:
        patch.setattr(packs, "punch_hole", lambda fd, offset, length: False)
        for key in gone:
            store.delete(key)
    for key in gone:
        path, where = placed[key]
        assert not _is_hole(path, where)  # zeros, still allocated
        with open(path, "rb") as file:
            file.seek(where.offset)
            assert file.read(_span(where)) == bytes(_span(where))
    report = store.reclaim()
    assert (report.dead_records, report.released) == (5, 5)
    assert report.bytes_freed >= sum(_span(placed[k][1]) for k in gone)
    assert all(_is_hole(*placed[k]) for k in gone)
    again = store.reclaim()  # nothing left to give back
    assert (again.dead_records, again.released, again.bytes_freed) == (5, 0, 0)
    assert [store.get(k) for k in list(placed)[5:]] == [_secret(n) for n in range(5, 8)]
    assert list(store.scrub()) == []
    store.close()


def test_a_torn_record_superseded_by_a_later_put_is_reclaimed(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    key = store.put(_secret(1)).key
    path, torn = _where(store, key)
    store.close()
    flip_byte(path, torn.offset + HEADER_SIZE + 100)  # bit rot, or a torn append
    again = packed_store(root)
    with pytest.raises(ChecksumMismatch):
        again.get(key)
    assert again.put(_secret(1)).key == key  # written anew: the torn record is dead
    report = again.reclaim()
    assert (report.dead_records, report.released) == (1, 1)
    assert _is_hole(path, torn)
    assert again.get(key) == _secret(1) and list(again.scrub()) == []
    again.close()
    third = packed_store(root)
    assert third.get(key) == _secret(1) and list(third.scrub()) == []
    third.close()


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed-pack", "open-pack"])
def test_killed_between_release_and_tombstone_the_bytes_are_gone_and_a_retry_finishes(
    tmp_path: Path, sealed: bool
) -> None:
    """A real SIGKILL at the worst moment: blocks released, tombstone not yet written."""
    root = tmp_path / "b"
    store = packed_store(root)
    victim = store.put(_secret(0)).key
    survivors = _fill(store, 12) if sealed else {store.put(_secret(1)).key: None}
    path, where = _where(store, victim)
    store.close()
    child = subprocess.run(
        [sys.executable, "-m", "tests.storage.child_writer", "dies_deleting", str(root), victim],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=30,
    )
    assert child.returncode == -9, child.stderr.decode()
    assert _is_hole(path, where)
    assert b"PATIENT-SECRET-0000" not in b"".join(p.read_bytes() for p in root.rglob("*.pack"))
    again = packed_store(root)
    if sealed:  # the table still lists the record: it reads as damaged until the retry
        with pytest.raises(ChecksumMismatch):
            again.get(victim)
        again.delete(victim)
    else:  # a scan finds no header: the record is simply not there
        with pytest.raises(BlobNotFound):
            again.delete(victim)
    assert not again.exists(victim)
    assert list(again.scrub()) == []
    assert all(again.exists(k) for k in survivors if k != victim)
    again.close()
    assert not packed_store(root).exists(victim)


def test_a_put_of_the_same_bytes_during_a_delete_waits_and_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the wait the put would return on the record being deleted: acknowledged,
    then gone."""
    store = packed_store(tmp_path / "b")
    data = _secret(3)
    key = store.put(data).key
    releasing = threading.Event()
    punch = packs.punch_hole

    def slow_punch(fd: int, offset: int, length: int) -> bool:
        releasing.set()
        time.sleep(0.3)
        return punch(fd, offset, length)

    monkeypatch.setattr(packs, "punch_hole", slow_punch)
    deleter = threading.Thread(target=store.delete, args=(key,))
    deleter.start()
    assert releasing.wait(5)
    started = time.monotonic()
    assert store.put(data).key == key
    waited = time.monotonic() - started
    deleter.join()
    assert waited > 0.1  # it waited for the delete, then wrote a new record
    assert store.get(key) == data
    store.close()
    assert packed_store(tmp_path / "b").get(key) == data


def test_gridpacs_storage_reclaim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    placed = _fill(store, 6)
    with monkeypatch.context() as patch:
        patch.setattr(packs, "punch_hole", lambda fd, offset, length: False)
        for key in list(placed)[:4]:
            store.delete(key)
    busy = gridpacs("reclaim", "--root", root)  # the store is open: a running node
    assert busy.returncode == 2 and "writer lock" in busy.stderr
    store.close()
    done = gridpacs("reclaim", "--root", root, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["dead_records"], summary["released"]) == (4, 4)
    assert summary["packed_bytes_after"] == summary["packed_bytes_before"] - summary["bytes_freed"]
    assert summary["bytes_freed"] >= 4 * 60_000
    assert all(_is_hole(*placed[k]) for k in list(placed)[:4])
    table = gridpacs("reclaim", "--root", root)
    assert table.returncode == 0 and "bytes freed" in table.stdout and "0.0 MiB" in table.stdout
    missing = gridpacs("reclaim", "--root", tmp_path / "nowhere")
    assert missing.returncode == 2 and "not a gridpacs blob store" in missing.stderr
    assert sorted(packed_store(root).keys()) == sorted(list(placed)[4:])
