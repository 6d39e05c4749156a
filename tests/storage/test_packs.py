"""Small blobs in pack files: format on disk, crash and tear handling, scrub, concurrency.

The contract itself (round trip, dedupe, delete, keys, scrub, reopen, threads) also runs
against packed stores in test_contract.py; this file checks what only packs promise. The
record layout is rebuilt here from docs/storage.md, not from the module, so a change of
the format on disk fails a test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from storage import (
    BlobNotFound,
    ChecksumMismatch,
    EncryptionError,
    FilesystemBlobStore,
    generate_key_file,
    key_of,
)
from tests.storage.child_writer import small_blob
from tests.storage.conftest import SMALL_PACK, blob_path, flip_byte, packed_store

REPO = Path(__file__).resolve().parents[2]
CHILD = [sys.executable, "-m", "tests.storage.child_writer"]
BLOCK = 4096
HEADER = struct.Struct(">4sBBH32sQII")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _records(pack: Path) -> list[tuple[int, int, str, int, bool]]:
    """(offset, kind, key, length, payload ok) of every valid header, read independently."""
    raw = pack.read_bytes()
    found = []
    for offset in range(BLOCK, len(raw) - HEADER.size, BLOCK):
        magic, version, kind, _, digest, length, pcrc, hcrc = HEADER.unpack_from(raw, offset)
        if magic != b"GPBR" or version != 1 or zlib.crc32(raw[offset : offset + 52]) != hcrc:
            continue
        payload = raw[offset + HEADER.size : offset + HEADER.size + length]
        found.append((offset, kind, digest.hex(), length, zlib.crc32(payload) == pcrc))
    return found


def _packs(root: Path) -> list[Path]:
    return sorted((root / "packs").glob("*.pack"))


def _locate(root: Path, key: str) -> tuple[Path, int, int]:
    for pack in _packs(root):
        for offset, kind, found, length, _ in _records(pack):
            if found == key and kind == 1:
                return pack, offset, length
    raise AssertionError(f"{key} is in no pack")


def _record(digest: bytes, payload: bytes, kind: int = 1) -> bytes:
    head = struct.pack(">4sBBH32sQI", b"GPBR", 1, kind, 0, digest, len(payload),
                       zlib.crc32(payload))  # fmt: skip
    return head + struct.pack(">I", zlib.crc32(head)) + payload


def _append_raw(root: Path, data: bytes) -> int:
    """Write *data* at the first block after every record of the last used pack."""
    pack = [p for p in _packs(root) if _records(p)][-1]
    end = max(o + HEADER.size + n for o, _, _, n, _ in _records(pack))
    offset = -(-end // BLOCK) * BLOCK
    with open(pack, "r+b") as file:
        file.seek(offset)
        file.write(data)
    return offset


def test_small_blobs_go_to_aligned_records_big_ones_to_files(tmp_path: Path) -> None:
    store = packed_store(tmp_path / "b")
    small = [os.urandom(n) for n in (0, 1, 4000, 4096 - 56, 9000, 64 * 1024)]
    big = os.urandom(64 * 1024 + 1)
    keys = [store.put(data).key for data in small]
    big_key = store.put(big).key
    store.close()
    assert blob_path(store, big_key).is_file()
    for key, data in zip(keys, small, strict=True):
        assert not blob_path(store, key).exists()
        pack, offset, length = _locate(store.root, key)
        assert offset % BLOCK == 0 and length == len(data)
        raw = pack.read_bytes()
        assert raw[offset + HEADER.size : offset + HEADER.size + length] == data
    # Records never share a block.
    spans = sorted((r[0], r[0] + HEADER.size + r[3]) for p in _packs(store.root)
                   for r in _records(p))  # fmt: skip
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= -(-end // BLOCK) * BLOCK
    marker = json.loads((store.root / "gridpacs-store.json").read_bytes())
    assert marker["version"] == 2  # code blind to packs refuses the store


def test_round_trip_dedupe_and_reopen_across_sealed_packs(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    blobs = [small_blob(n) for n in range(60)]  # ~600 KB: several 256 KiB packs
    keys = [store.put(data).key for data in blobs]
    assert [store.put(data).key for data in blobs] == keys  # no-op: nothing appended
    store.close()
    records = [r for p in _packs(root) for r in _records(p)]
    assert sorted(r[2] for r in records) == sorted(keys)  # each once
    sealed = sorted(p.name for p in (root / "packs").glob("*.idx"))
    assert len(sealed) >= 2, f"the test should fill packs: {sealed}"
    again = packed_store(root)
    assert sorted(again.keys()) == sorted(keys)
    for key, data in zip(keys, blobs, strict=True):
        assert again.get(key) == data
    again.close()
    # A lost or damaged sidecar only costs a scan (with the derived locations table gone
    # too, or the sidecars would not be read at all).
    _drop_locations_table(root)
    (root / "packs" / sealed[0]).unlink()
    flip_byte(root / "packs" / sealed[1], 20)
    third = packed_store(root)
    assert sorted(third.keys()) == sorted(keys)
    assert list(third.scrub()) == []
    third.close()


def _drop_locations_table(root: Path) -> None:
    for leftover in (root / "packs").glob("locations.sqlite*"):
        leftover.unlink()


def test_sealed_packs_locations_leave_memory_and_survive_losing_their_table(
    tmp_path: Path,
) -> None:
    """Memory holds only the unsealed packs' records; the table is derived from the packs."""
    root = tmp_path / "b"
    store = packed_store(root)
    blobs = [small_blob(n) for n in range(240)]  # ~2.4 MB: about ten 256 KiB packs
    keys = [store.put(data).key for data in blobs]
    packs = store._packs
    assert packs is not None
    packs.sync_background()
    per_pack = SMALL_PACK // BLOCK
    assert len(_packs(root)) >= 8
    assert packs._locations.in_memory() <= 2 * per_pack < len(keys)
    assert all(store.get(key) == data for key, data in zip(keys, blobs, strict=True))
    store.close()
    again = packed_store(root)
    assert again._packs is not None and again._packs._locations.in_memory() <= 2 * per_pack
    assert sorted(again.keys()) == sorted(keys)
    again.close()
    _drop_locations_table(root)  # as after a crash between a seal and its merge
    rebuilt = packed_store(root)
    assert sorted(rebuilt.keys()) == sorted(keys)
    assert all(rebuilt.get(key) == data for key, data in zip(keys, blobs, strict=True))
    assert list(rebuilt.scrub()) == []
    rebuilt.close()
    assert (root / "packs" / "locations.sqlite").exists()


def test_a_tombstone_in_a_newer_pack_shadows_a_merged_record(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    first = store.put(small_blob(0)).key
    for n in range(1, 80):  # first's pack is sealed and merged into the table
        store.put(small_blob(n))
    assert store._packs is not None
    store._packs.sync_background()
    store.delete(first)  # a tombstone in the open pack, over a row of the table
    assert not store.exists(first)
    store.close()
    again = packed_store(root)
    assert not again.exists(first)
    for n in range(80, 160):  # the tombstone's pack is sealed and merged in its turn
        again.put(small_blob(n))
    again.close()
    third = packed_store(root)
    assert not third.exists(first)
    assert third.put(small_blob(0)).key == first  # put back after the tombstone
    third.close()
    assert packed_store(root).get(first) == small_blob(0)


def test_encrypted_packed_records(tmp_path: Path) -> None:
    key_file = generate_key_file(tmp_path / "k")
    store = packed_store(tmp_path / "b", key_file)
    secret = b"PATIENT^SECRET " * 300
    info = store.put(secret)
    store.close()
    pack, offset, length = _locate(store.root, info.key)
    assert secret[:40] not in pack.read_bytes()
    assert length == len(secret) + 33  # the GPBE envelope: magic, version, nonce, tag
    assert packed_store(store.root, key_file).get(info.key) == secret
    flip_byte(pack, offset + HEADER.size + 100)
    again = packed_store(store.root, key_file)
    with pytest.raises(EncryptionError):
        again.get(info.key)
    assert [f.key for f in again.scrub()] == [info.key]
    again.close()


def test_a_deleted_payload_is_gone_from_its_pack_even_once_sealed(tmp_path: Path) -> None:
    """A deleted (e.g. rejected) instance's bytes do not stay readable in the pack; the
    punched record is neither listed nor reported by scrub, before or after a reopen."""
    root = tmp_path / "b"
    store = packed_store(root)
    secret = [f"PATIENT-SECRET-{n:04d}".encode() * 400 for n in range(40)]
    keys = [store.put(data).key for data in secret]  # several packs: earlier ones sealed
    keep = store.put(b"keep me").key
    assert len(_packs(root)) >= 2
    for key in keys:
        store.delete(key)
    assert not any(b"PATIENT-SECRET" in p.read_bytes() for p in root.rglob("*") if p.is_file())
    assert list(store.scrub()) == [] and list(store.keys()) == [keep]
    store.close()
    again = packed_store(root)
    assert list(again.keys()) == [keep] and list(again.scrub()) == []
    assert again.get(keep) == b"keep me" and not any(again.exists(k) for k in keys)
    again.close()


def test_delete_is_a_durable_tombstone(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    keep, gone = store.put(b"keep").key, store.put(b"gone").key
    store.delete(gone)
    with pytest.raises(BlobNotFound):
        store.delete(gone)
    store.close()
    assert any(kind == 2 and key == gone for p in _packs(root) for _, kind, key, _, _ in
               _records(p))  # fmt: skip
    again = packed_store(root)
    assert list(again.keys()) == [keep] and not again.exists(gone)
    again.put(b"gone")  # put back after the tombstone: present again after reopen
    again.close()
    assert sorted(packed_store(root).keys()) == sorted([keep, gone])


def test_torn_tail_records_are_ignored_and_acknowledged_ones_kept(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    keys = [store.put(small_blob(n)).key for n in range(5)]
    store.close()
    # A process killed between payload and header: a payload and no header.
    lost = small_blob(100)
    _append_raw(root, bytes(HEADER.size) + lost)
    # A header cut mid-way (bytes after the first 20 never written).
    half = _record(hashlib.sha256(b"half").digest(), b"half")
    offset = _append_raw(root, half[:20])
    again = packed_store(root)
    assert sorted(again.keys()) == sorted(keys)
    assert list(again.scrub()) == []
    info = again.put(b"after the tear")  # appends reuse the torn blocks
    again.close()
    assert _locate(root, info.key)[1] <= offset
    assert packed_store(root).get(info.key) == b"after the tear"


def test_a_header_whose_payload_fails_is_a_suspect_never_deduplicated(tmp_path: Path) -> None:
    """A power cut can persist an unacknowledged record's header without its payload."""
    root = tmp_path / "b"
    store = packed_store(root)
    keys = [store.put(small_blob(n)).key for n in range(3)]
    store.close()
    data = small_blob(7)
    digest = hashlib.sha256(data).digest()
    torn = bytearray(_record(digest, data))
    torn[HEADER.size + 5000 :] = bytes(len(torn) - HEADER.size - 5000)  # tail never landed
    _append_raw(root, bytes(torn))
    again = packed_store(root)
    assert digest.hex() in set(again.keys())  # listed, so scrub reports it
    with pytest.raises(ChecksumMismatch):
        again.get(digest.hex())
    assert [f.key for f in again.scrub()] == [digest.hex()]
    assert again.put(data).key == digest.hex()  # written again, not trusted
    assert again.get(digest.hex()) == data
    again.close()
    final = packed_store(root)
    assert list(final.scrub()) == [] and sorted(final.keys()) == sorted([*keys, digest.hex()])
    final.close()


def test_a_whole_file_of_a_suspect_blob_wins(tmp_path: Path) -> None:
    root = tmp_path / "b"
    first = packed_store(root)
    first.put(b"an acknowledged record")
    first.close()
    data = small_blob(8)
    torn = bytearray(_record(hashlib.sha256(data).digest(), data))
    torn[-100:] = bytes(100)
    _append_raw(root, bytes(torn))
    unpacking = packed_store(root, pack_threshold=0)  # packing turned off since
    key = unpacking.put(data).key
    assert blob_path(unpacking, key).is_file()
    assert unpacking.get(key) == data and list(unpacking.scrub()) == []
    unpacking.close()


@pytest.mark.parametrize("where", ["payload", "header"])
@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "open"])
def test_scrub_finds_a_flipped_byte_in_a_packed_record(
    tmp_path: Path, where: str, sealed: bool
) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    keys = [store.put(small_blob(n)).key for n in range(40)]
    store.close()
    idx = {p.with_suffix(".pack") for p in (root / "packs").glob("*.idx")}
    victim = next(k for k in keys if (_locate(root, k)[0] in idx) == sealed)
    pack, offset, _ = _locate(root, victim)
    flip_byte(pack, offset + (HEADER.size + 10 if where == "payload" else 12))
    again = packed_store(root)
    findings = list(again.scrub())
    again.close()
    if where == "header" and not sealed:
        # Scanned at open, the record is gone (a header is a record's only proof of
        # existence): listed nowhere, hence the sidecar written as soon as a pack fills.
        assert victim not in set(packed_store(root).keys())
        return
    assert [(f.key, f.kind) for f in findings] == [(victim, "corrupt")]


def test_scrub_command_reports_packed_records(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    keys = [store.put(small_blob(n)).key for n in range(30)]
    store.close()
    pack, offset, _ = _locate(root, keys[4])
    flip_byte(pack, offset + HEADER.size + 1)
    result = subprocess.run(
        [sys.executable, "-m", "gridpacs", "storage", "scrub", "--root", str(root), "--json"],
        capture_output=True, text=True, cwd=REPO, env=_env(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["checked"], report["corrupt"]) == (30, 1)
    assert report["findings"][0]["key"] == keys[4]


def test_concurrent_puts_from_threads_never_overlap(tmp_path: Path) -> None:
    root = tmp_path / "b"
    store = packed_store(root)
    errors: list[BaseException] = []
    per_thread = 40

    def worker(n: int) -> None:
        try:
            for i in range(per_thread):
                store.put(small_blob(n * 1000 + i))
                store.put(small_blob(i))  # the same bytes from every thread at once
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    store.close()
    expected = {key_of(small_blob(n * 1000 + i)) for n in range(1, 7) for i in range(per_thread)}
    expected |= {key_of(small_blob(i)) for i in range(per_thread)}
    records = [r for p in _packs(root) for r in _records(p)]
    assert all(ok for *_, ok in records)
    assert sorted(r[2] for r in records) == sorted(expected)  # shared bytes stored once
    again = packed_store(root)
    assert set(again.keys()) == expected and list(again.scrub()) == []
    again.close()


def test_a_second_instance_reads_and_writes_files_instead(tmp_path: Path) -> None:
    root = tmp_path / "b"
    owner = packed_store(root)
    first = owner.put(b"packed by the owner").key
    other = packed_store(root)  # the writer lock is taken: no appends from here
    assert other.get(first) == b"packed by the owner"
    second = other.put(b"from the second").key
    assert blob_path(other, second).is_file()
    with pytest.raises(Exception, match="another process owns the packs"):
        other.delete(first)
    other.close()
    owner.close()


def test_each_put_costs_one_fdatasync_and_nothing_else(tmp_path: Path) -> None:
    """The point of packs: no fsync, no rename, no new file per put; verified by strace."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace not found: install Debian 'strace' (never skipped)", False)
    trace = tmp_path / "trace"
    count = 20
    subprocess.run(
        [strace, "-f", "-e", "trace=fsync,fdatasync,rename,renameat,renameat2,link,linkat,"
         "openat,mkdir,mkdirat,unlink,unlinkat,pwrite64,write", "-o", str(trace),
         *CHILD, "traced", str(tmp_path / "b"), str(count)],
        check=True, capture_output=True, cwd=REPO, env=_env(), timeout=60,
    )  # fmt: skip
    lines = trace.read_text().splitlines()
    begin = next(i for i, ln in enumerate(lines) if 'write(1, "BEGIN' in ln)
    end = next(i for i, ln in enumerate(lines) if 'write(1, "END' in ln)
    calls = [m.group(1) for ln in lines[begin + 1 : end] if (m := re.search(r"\s(\w+)\(", ln))]
    assert calls.count("fdatasync") == count, calls
    assert calls.count("pwrite64") == 2 * count, calls  # payload, then header
    assert set(calls) == {"fdatasync", "pwrite64"}, calls


def _kill_packed_writer(root: Path, start: int, key: Path | None) -> dict[int, str]:
    """Run the 4-thread packed writer, SIGKILL it mid-way; the puts it acknowledged."""
    args = [*CHILD, "packed", str(root), str(start)] + ([str(key)] if key else [])
    child = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=REPO, env=_env())
    assert child.stdout is not None
    acked: dict[int, str] = {}
    try:
        while len(acked) < 10:
            line = child.stdout.readline()
            assert line.endswith(b"\n"), f"child exited early with {child.poll()}"
            number, key_hex = line.split()
            acked[int(number)] = key_hex.decode()
        time.sleep(random.uniform(0, 0.05))
    finally:
        child.send_signal(signal.SIGKILL)
        # Through the same buffered reader (communicate() would skip what readline()
        # already buffered, cutting a line in two).
        rest = child.stdout.read()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    for line in rest.split(b"\n")[:-1]:  # a torn last line was not acknowledged
        number, key_hex = line.split()
        acked[int(number)] = key_hex.decode()
    return acked


@pytest.mark.timeout(120)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_sigkill_of_a_packing_writer_loses_no_acknowledged_put(
    tmp_path: Path, encrypted: bool
) -> None:
    root = tmp_path / "b"
    key = generate_key_file(tmp_path / "k") if encrypted else None
    acked: dict[int, str] = {}
    for _ in range(8):
        start = max(acked, default=-1) + 10  # past any put in flight at the last kill
        acked |= _kill_packed_writer(root, start, key)
        store = packed_store(root, key)
        listed = set(store.keys())
        for number, key_hex in acked.items():
            assert key_hex == key_of(small_blob(number))
            assert store.get(key_hex) == small_blob(number), f"acknowledged put {number} lost"
        for key_hex in listed - set(acked.values()):
            store.get(key_hex)  # an unacknowledged put that landed: whole, or not listed
        assert list(store.scrub()) == []
        store.close()
    sealed = list((root / "packs").glob("*.idx"))
    assert len(sealed) >= 2, "the writers should have filled and sealed packs"


def test_pack_threshold_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pack_threshold"):
        FilesystemBlobStore(tmp_path / "b", pack_threshold=SMALL_PACK, pack_size=SMALL_PACK)


def test_packs_start_small_and_grow(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path / "b", pack_threshold=64 * 1024)  # the node's sizes
    for n in range(120):  # ~1.4 MB of records: the first pack fills, the second opens
        store.put(small_blob(n)[:9000].ljust(9000, b"-") + n.to_bytes(4, "big"))
    store.close()
    sizes = [p.stat().st_size for p in _packs(store.root)]
    assert sizes[:2] == [1 << 20, 2 << 20], sizes
    for number, pack in enumerate(_packs(store.root), 1):
        head = pack.read_bytes()[:20]
        assert struct.unpack(">4sBxxxIQ", head) == (b"GPPK", 1, number, pack.stat().st_size)


def test_raising_the_threshold_later_rolls_past_packs_too_small(tmp_path: Path) -> None:
    root = tmp_path / "b"
    first = FilesystemBlobStore(root, pack_threshold=4000, pack_size=16 << 20)
    for n in range(140):  # one block each: the 1 MiB pack passes half full, a spare is made
        first.put(n.to_bytes(4, "big") * 1000)
    first.close()
    assert [p.stat().st_size for p in _packs(root)] == [1 << 20, 2 << 20]
    again = FilesystemBlobStore(root, pack_threshold=4 << 20, pack_size=16 << 20)
    big = os.urandom(4 << 20)
    key = again.put(big).key  # fits neither the open pack nor the 2 MiB spare
    again.close()
    pack, offset, length = _locate(root, key)
    declared = struct.unpack(">Q", pack.read_bytes()[12:20])[0]
    assert offset + HEADER.size + length <= pack.stat().st_size == declared
    reader = FilesystemBlobStore(root, create=False)
    assert reader.get(key) == big and len(list(reader.scrub())) == 0
    reader.close()
