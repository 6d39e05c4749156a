"""Child processes for the durability tests (run with ``python -m tests.storage.child_writer``).

``forever ROOT START [KEY_FILE]``: put deterministic blobs number START, START+1, ... in a
loop, printing each key only after ``put`` returned, until killed.
``fill ROOT``: put 64 KiB blobs until the store is full, then report as JSON.
"""

from __future__ import annotations

import json
import os
import random
import sys
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
    else:
        fill(root)
