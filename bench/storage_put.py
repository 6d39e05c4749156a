"""Measure ``FilesystemBlobStore.put`` against the bare syscalls it cannot avoid.

Usage: ``python bench/storage_put.py [--root DIR] [--repeat N]`` (DIR on the file system
to measure; default: a temp dir). Per workload it prints the median over N runs of the
time per operation in microseconds:

* ``floor``: raw ``open/write/fsync/rename/fsync(dir)`` of the same bytes, nothing else;
* ``cold``: puts into a new store, which also creates most fan-out directories (each an
  extra ``mkdir`` + ``fsync``);
* ``warm``: puts when the fan-out directories exist (any store past ~100k blobs);
* ``overhead`` = warm - floor: what the store itself costs (SHA-256, AES-GCM, Python);
* ``dup``: a put of bytes already present (hash + stat, no write); ``get``: verified read.

Then small blobs (9 KB, a typical small DICOM instance) side by side, one file per blob
against packed records (:mod:`storage.packs`): the median time per put and the syncs
(``fsync`` + ``fdatasync``, counted in-process, pack creation included) per put; and the
latency of one ``fdatasync`` after a 9 KB ``pwrite`` into an appended, a fallocated and a
zero-filled file (why packs are zero-filled ahead of need). ``--open N`` also times
opening a packed store of N small blobs (page cache warm, and cold: the store's files
evicted with ``posix_fadvise(DONTNEED)``). ``--only small|open`` skips the rest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from storage import BlobCipher, FilesystemBlobStore, generate_key_file, load_key, open_store

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

WORKLOADS = (("1,000 x 12 KB", 1000, 12 * 1024), ("200 x 0.5 MB", 200, 512 * 1024))
COLUMNS = ("floor", "cold", "warm", "overhead", "dup", "get")


def _per_op_us(run: Callable[[bytes], object], items: list[bytes]) -> float:
    started = time.perf_counter()
    for item in items:
        run(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def _floor(directory: Path, blobs: list[bytes]) -> float:
    """The same syscalls as a durable put, with nothing else."""
    tmp, final = directory / "tmp", directory / "final"
    tmp.mkdir(parents=True)
    final.mkdir()
    names = iter(range(len(blobs)))

    def write(data: bytes) -> None:
        name = str(next(names))
        fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data)
        os.fsync(fd)
        os.rename(tmp / name, final / name)
        os.close(fd)
        dfd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)

    return _per_op_us(write, blobs)


def _measure(directory: Path, blobs: list[bytes], key_file: Path | None) -> dict[str, float]:
    floor = _floor(directory / "floor", blobs)
    shutil.rmtree(directory / "floor")  # same free space and page cache state for the store
    store = open_store(directory / "store", key_file)
    cold = _per_op_us(store.put, blobs)
    dup = _per_op_us(store.put, blobs)
    keys = [store.put(data).key for data in blobs]
    get = _per_op_us(lambda k: store.get(k.decode()), [k.encode() for k in keys])
    for key in keys:
        store.delete(key)
    warm = _per_op_us(store.put, blobs)
    shutil.rmtree(directory)
    return {"floor": floor, "cold": cold, "warm": warm, "overhead": warm - floor,
            "dup": dup, "get": get}  # fmt: skip


SMALL = 9 * 1024
SMALL_COUNT = 2000
PACK_THRESHOLD = 64 * 1024


class _SyncCounter:
    """Counts ``os.fsync`` and ``os.fdatasync`` calls (the storage code looks them up on
    ``os`` at each call, so wrapping the module attributes sees every one)."""

    def __init__(self) -> None:
        self.count = 0
        self._saved = (os.fsync, os.fdatasync)

    def __enter__(self) -> _SyncCounter:
        fsync, fdatasync = self._saved

        def counted_fsync(fd: FileDescriptorLike) -> None:
            self.count += 1
            fsync(fd)

        def counted_fdatasync(fd: FileDescriptorLike) -> None:
            self.count += 1
            fdatasync(fd)

        os.fsync, os.fdatasync = counted_fsync, counted_fdatasync
        return self

    def __exit__(self, *_: object) -> None:
        os.fsync, os.fdatasync = self._saved


def _small_store(directory: Path, key_file: Path | None, packed: bool) -> FilesystemBlobStore:
    cipher = BlobCipher(load_key(key_file)) if key_file is not None else None
    store = FilesystemBlobStore(directory, cipher, pack_threshold=PACK_THRESHOLD * packed)
    store.put(b"warm up")  # the first pack exists: steady state, as in a running node
    return store


def _measure_small(directory: Path, blobs: list[bytes], key_file: Path | None, packed: bool
                   ) -> dict[str, float]:  # fmt: skip
    store = _small_store(directory, key_file, packed)
    times = []
    with _SyncCounter() as syncs:
        for data in blobs:
            started = time.perf_counter()
            store.put(data)
            times.append((time.perf_counter() - started) * 1e6)
        store.close()  # background pack work is part of the cost
    store = _small_store(directory, key_file, packed)  # reopened: as after a restart
    keys = [k.encode() for k in list(store.keys())]
    get = _per_op_us(lambda k: store.get(k.decode()), keys)
    store.close()
    shutil.rmtree(directory)
    return {"put": statistics.median(times), "p90": sorted(times)[len(times) * 9 // 10],
            "syncs": syncs.count / len(blobs), "get": get}  # fmt: skip


def _fdatasync_probe(directory: Path, count: int = 500) -> dict[str, float]:
    """Median fdatasync latency (us) after a 9 KB pwrite, by how the blocks were made."""
    record = os.urandom(SMALL)
    size = count * 12288
    zeros = bytes(1 << 20)

    def zero_fill(fd: int) -> None:
        for offset in range(0, size, len(zeros)):
            os.pwrite(fd, zeros, offset)

    def fallocate(fd: int) -> None:
        os.posix_fallocate(fd, 0, size)

    def nothing(fd: int) -> None:
        pass

    out = {}
    ways = (("append", nothing), ("fallocated", fallocate), ("zero-filled", zero_fill))
    for name, prepare in ways:
        path = directory / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        prepare(fd)
        os.fsync(fd)
        lat = []
        for n in range(count):
            os.pwrite(fd, record, n * 12288)
            started = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - started) * 1e6)
        os.close(fd)
        path.unlink()
        out[name] = statistics.median(lat)
    return out


def _open_cost(directory: Path, records: int) -> None:
    """Time opening a packed store of *records* small blobs (sidecars + the open pack)."""
    store = _small_store(directory, None, packed=True)
    payload = bytearray(os.urandom(SMALL))
    for n in range(records):
        payload[:8] = n.to_bytes(8, "big")
        store.put(bytes(payload))
    store.close()
    packs = len(list((directory / "packs").glob("*.pack")))
    sealed = len(list((directory / "packs").glob("*.idx")))
    for cache in ("warm", "cold"):
        samples = []
        for _ in range(3):
            if cache == "cold":  # evict the store's files (clean pages) from the page cache
                for path in directory.rglob("*"):
                    if path.is_file():
                        fd = os.open(path, os.O_RDONLY)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        os.close(fd)
            started = time.perf_counter()
            FilesystemBlobStore(directory, create=False).close()
            samples.append(time.perf_counter() - started)
        print(
            f"open: {records} packed blobs in {packs} packs ({sealed} sealed), {cache} page "
            f"cache: {statistics.median(samples) * 1e3:.0f} ms (median of 3)"
        )


def _small_table(base: Path, key: Path, repeat: int) -> None:
    blobs = [os.urandom(SMALL) for _ in range(SMALL_COUNT)]
    print(f"\n{SMALL_COUNT:,} x 9 KB: one file per blob vs packed (put: median us; "
          "syncs: fsync+fdatasync per put)")  # fmt: skip
    print(f"{'layout':<10}{'variant':<11}{'put':>8}{'p90':>8}{'syncs':>8}{'get':>8}")
    run = 0
    for variant, key_file in (("plain", None), ("encrypted", key)):
        for layout in ("file", "packed"):
            samples = []
            for _ in range(repeat):
                run += 1
                packed = layout == "packed"
                samples.append(_measure_small(base / f"s{run}", blobs, key_file, packed))
            row = [statistics.median(s[c] for s in samples) for c in ("put", "p90", "syncs", "get")]
            print(
                f"{layout:<10}{variant:<11}{row[0]:>8.0f}{row[1]:>8.0f}{row[2]:>8.2f}{row[3]:>8.0f}"
            )
    probe = _fdatasync_probe(base)
    print("fdatasync after a 9 KB pwrite (median us): "
          + ", ".join(f"{name} {us:.0f}" for name, us in probe.items()))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="Time FilesystemBlobStore.put.")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--only", choices=("small", "open"), default=None, help="only the 9 KB comparison / --open"
    )
    parser.add_argument("--open", type=int, default=0, metavar="N",
                        help="also time opening a packed store of N small blobs")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as scratch:
        base = Path(scratch)
        key = generate_key_file(base / "bench.key")
        if args.only != "open":
            _small_table(base, key, args.repeat)
        if args.open:
            _open_cost(base / "open", args.open)
        if args.only is not None:
            return
        print()
        print(f"{'workload':<15}{'variant':<11}" + "".join(f"{c:>10}" for c in COLUMNS))
        run = 0
        for name, count, size in WORKLOADS:
            blobs = [os.urandom(size) for _ in range(count)]
            for variant, key_file in (("plain", None), ("encrypted", key)):
                samples = []
                for _ in range(args.repeat):
                    run += 1
                    samples.append(_measure(base / str(run), blobs, key_file))
                row = [statistics.median(s[c] for s in samples) for c in COLUMNS]
                print(f"{name:<15}{variant:<11}" + "".join(f"{v:>10.0f}" for v in row))


if __name__ == "__main__":
    main()
