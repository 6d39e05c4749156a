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

from storage import generate_key_file, open_store

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


def main() -> None:
    parser = argparse.ArgumentParser(description="Time FilesystemBlobStore.put.")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.root) as scratch:
        base = Path(scratch)
        key = generate_key_file(base / "bench.key")
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
