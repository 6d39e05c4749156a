"""Child processes for the durability tests (run with ``python -m tests.storage.child_writer``).

``forever ROOT START [KEY_FILE]``: put deterministic blobs number START, START+1, ... in a
loop, printing each key only after ``put`` returned, until killed.
``fill ROOT``: put 64 KiB blobs until the store is full, then report as JSON.
``packed ROOT START [KEY_FILE]``: as ``forever`` with small blobs into small packs, from
4 threads (the parent kills it -9; :func:`small_blob` gives the bytes of each number).
``traced ROOT COUNT``: open a packed store, wait for its spare pack, print ``BEGIN``, put
COUNT small blobs, print ``END`` (run under strace to count the syscalls of a put).
``dies_deleting ROOT KEY``: delete the packed blob KEY and SIGKILL itself at the moment its
tombstone would be written (after the record's blocks were released).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from pathlib import Path

from storage import StorageFull, open_store

SIZES = (12_000, 250_000, 1_000_000)


def blob(index: int) -> bytes:
    """The *index*-th blob of ``forever`` (the parent recomputes it to check leftovers)."""
    rnd = random.Random(index)
    return rnd.randbytes(rnd.choice(SIZES))


def forever(root: Path, start: int, key_file: Path | None) -> None:
    store = open_store(root, key_file)
    index = start
    while True:
        info = store.put(blob(index))
        print(info.key, flush=True)
        index += 1


def small_blob(index: int) -> bytes:
    """The *index*-th blob of ``packed``: 1 B to 20 KB, so records take 1 to 5 blocks."""
    rnd = random.Random(-index - 1)
    return rnd.randbytes(rnd.randint(1, 20_000))


def packed(root: Path, start: int, key_file: Path | None) -> None:
    from tests.storage.conftest import packed_store

    store = packed_store(root, key_file)
    numbers = iter(range(start, 1 << 62))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(numbers)
            key = store.put(small_blob(index)).key
            with lock:
                print(index, key, flush=True)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def traced(root: Path, count: int) -> None:
    from tests.storage.conftest import packed_store

    for n in range(2):  # makes the open pack, then its spare (close joins the maker)
        store = packed_store(root, pack_size=64 * 1024 * 1024)
        store.put(b"warm up %d" % n)
        store.close()
    store = packed_store(root, pack_size=64 * 1024 * 1024)
    blobs = [small_blob(n)[:9000].ljust(9000, b"x") for n in range(count)]
    sys.stdout.write("BEGIN\n")
    sys.stdout.flush()
    for data in blobs:
        store.put(data)
    sys.stdout.write("END\n")
    sys.stdout.flush()


def dies_deleting(root: Path, key: str) -> None:
    import signal

    from storage import packs
    from tests.storage.conftest import packed_store

    def die(self: packs.PackStore, digests: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    packs.PackStore._append_tombstones = die  # type: ignore[method-assign]
    packed_store(root).delete(key)


def fill(root: Path) -> None:
    store = open_store(root)
    stored: list[str] = []
    error = ""
    for index in range(10_000):
        try:
            stored.append(store.put(random.Random(index).randbytes(64 * 1024)).key)
        except StorageFull as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
    again = store.put(random.Random(0).randbytes(64 * 1024)).key  # present: still a no-op
    report = {
        "stored": stored,
        "error": error,
        "again": again,
        "tmp_left": os.listdir(root / "tmp"),
        "verified": all(len(store.get(key)) == 64 * 1024 for key in stored),
        "findings": [f.problem for f in store.scrub()],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    mode, root = sys.argv[1], Path(sys.argv[2])
    if mode == "forever":
        forever(root, int(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif mode == "packed":
        packed(root, int(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif mode == "traced":
        traced(root, int(sys.argv[3]))
    elif mode == "dies_deleting":
        dies_deleting(root, sys.argv[3])
    else:
        fill(root)
