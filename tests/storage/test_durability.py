"""Crash safety and full disks, with real processes and a real (tiny) file system.

SIGKILL tests the process-crash half of durability (temp + rename: no partial blob is ever
visible, every acknowledged put survives). Power loss is not simulated: that half rests on
the fsync of the file and of its directory before ``put`` returns (see docs/storage.md).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage import (
    BlobStore,
    ChecksumMismatch,
    EncryptionError,
    StorageError,
    StorageFull,
    key_of,
    open_store,
)
from storage.errors import error_from_os
from tests.storage.child_writer import blob

REPO = Path(__file__).resolve().parents[2]
CHILD = [sys.executable, "-m", "tests.storage.child_writer"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


class _Observer(threading.Thread):
    """Reads every blob as soon as it is listed, while the child is still writing."""

    def __init__(self, store: BlobStore) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.stop = threading.Event()
        self.seen: set[str] = set()
        self.torn: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for key in list(self.store.keys()):
                if key in self.seen:
                    continue
                try:
                    self.store.get(key)
                except (ChecksumMismatch, EncryptionError) as exc:
                    self.torn.append(str(exc))
                self.seen.add(key)


def _run_until_killed(root: Path, start: int, key: Path | None) -> list[str]:
    """Start a writer at blob *start*, kill it mid-way, return the keys it acknowledged."""
    args = [*CHILD, "forever", str(root), str(start)] + ([str(key)] if key else [])
    child = subprocess.Popen(args, stdout=subprocess.PIPE, cwd=REPO, env=_env())
    assert child.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < 6:
            line = child.stdout.readline()
            assert line.endswith(b"\n"), f"child exited early with {child.poll()}"
            acknowledged.append(line.decode().strip())
        time.sleep(random.uniform(0, 0.03))  # land somewhere inside a later put
    finally:
        child.send_signal(signal.SIGKILL)
        # Through the same buffered reader: communicate() would skip what readline()
        # already buffered, cutting a line in two.
        rest = child.stdout.read()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    # Keys printed between our last read and the kill were acknowledged too; a torn last
    # line was not.
    return acknowledged + [ln.decode() for ln in rest.split(b"\n")[:-1]]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_sigkill_mid_way_loses_no_acknowledged_put_and_shows_no_partial_blob(
    tmp_path: Path, key_file: Path, encrypted: bool
) -> None:
    root = tmp_path / "blobs"
    key = key_file if encrypted else None
    observer = _Observer(open_store(root, key))  # opened first: the child finds the store
    observer.start()
    acknowledged: list[str] = []
    kills_mid_put = 0
    verified_acks: list[str] = []
    verified_listed: set[str] = set()
    try:
        # Kill repeatedly until at least two kills provably landed inside a put (they
        # left a temp file behind), so the test cannot pass without exercising that. How
        # often a kill lands there depends on the machine (1 in 12 was seen on a slow one,
        # encrypting outside the temp file's lifetime): up to 40 tries.
        for attempt in range(40):
            acknowledged += _run_until_killed(root, len(acknowledged), key)
            leftovers = list((root / "tmp").iterdir())
            kills_mid_put += bool(leftovers)
            store = open_store(root, key)
            for index in range(len(verified_acks), len(acknowledged)):
                assert acknowledged[index] == key_of(blob(index))
                assert store.get(acknowledged[index]) == blob(index)
            verified_acks = acknowledged[:]
            # Everything listed verifies and is one the child made: the acknowledged
            # blobs plus at most the one in flight, if its rename landed before the kill.
            in_flight = key_of(blob(len(acknowledged)))
            listed = set(store.keys())
            assert listed - set(acknowledged) <= {in_flight}
            for key_hex in listed - verified_listed:
                store.get(key_hex)  # raises on a torn or corrupt blob
            verified_listed = listed
            # The kill's temp file is ignored above and removed at the next open once
            # past the grace period (aged here instead of waiting).
            for leftover in leftovers:
                os.utime(leftover, (time.time() - 60, time.time() - 60))
            open_store(root, key)
            assert list((root / "tmp").iterdir()) == []
            if kills_mid_put >= 2:
                print(f"two kills inside a put after {attempt + 1} tries")
                break
        # The concurrent reader may lag on a loaded machine; let it read what is left, so the
        # torn-read check below covers every acknowledged blob.
        deadline = time.monotonic() + 30
        while not set(acknowledged) <= observer.seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        observer.stop.set()
        observer.join(timeout=30)
    assert kills_mid_put >= 2, "no kill landed inside a put; the test proved nothing"
    assert observer.torn == [], "a reader saw a partially written blob"
    assert set(acknowledged) <= observer.seen, "the reader never read some acknowledged blobs"
    assert list(open_store(root, key).scrub()) == []


@pytest.mark.parametrize(
    ("code", "full"),
    [(errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EACCES, False), (errno.EIO, False)],
)
def test_errno_mapping_seam(code: int, full: bool) -> None:
    """The translation table alone (a seam): the tmpfs test below exercises it for real."""
    mapped = error_from_os(OSError(code, os.strerror(code)), "writing blob x")
    assert isinstance(mapped, StorageError)
    assert isinstance(mapped, StorageFull) is full
    assert os.strerror(code) in str(mapped)


def _userns_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        timeout=10,
    )
    return probe.returncode == 0


@pytest.mark.timeout(60)
def test_full_tmpfs_raises_storage_full_and_leaves_no_debris(tmp_path: Path) -> None:
    """A real 1 MiB tmpfs, mounted in a private user+mount namespace (no root needed)."""
    if not _userns_available():
        pytest.skip("unprivileged user namespaces are disabled; the errno seam test covers it")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" -m tests.storage.child_writer fill "$1"'
    )
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh",
         str(mountpoint), sys.executable],
        capture_output=True, cwd=REPO, env=_env(), timeout=50,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["error"].startswith("StorageFull:"), report["error"]
    assert "No space left on device" in report["error"]
    assert 5 <= len(report["stored"]) < 16  # 1 MiB holds fewer than sixteen 64 KiB blobs
    assert report["again"] == report["stored"][0]
    assert report["tmp_left"] == [], "a failed put must remove its temp file"
    assert report["verified"] is True
    assert report["findings"] == []
