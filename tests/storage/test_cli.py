"""``gridpacs storage`` through the same entry point a user runs, as a subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from storage import FilesystemBlobStore, generate_key_file, open_store
from tests.storage.conftest import blob_path, flip_byte

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def gridpacs(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridpacs", "storage", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
        timeout=50,
    )


@pytest.fixture
def healthy(tmp_path: Path) -> tuple[FilesystemBlobStore, Path]:
    key = generate_key_file(tmp_path / "store.key")
    store = open_store(tmp_path / "blobs", key)
    assert isinstance(store, FilesystemBlobStore)
    for i in range(7):
        store.put(f"blob {i}".encode() * 100)
    return store, key


def test_scrub_of_a_healthy_store(healthy: tuple[FilesystemBlobStore, Path]) -> None:
    store, key = healthy
    table = gridpacs("scrub", "--root", store.root, "--key-file", key)
    assert table.returncode == 0, table.stderr
    assert "checked" in table.stdout and "7" in table.stdout
    assert "all blobs verified" in table.stdout
    machine = gridpacs("scrub", "--root", store.root, "--key-file", key, "--json")
    assert machine.returncode == 0, machine.stderr
    report = json.loads(machine.stdout)
    assert (report["checked"], report["ok"], report["corrupt"], report["findings"]) == (7, 7, 0, [])


def test_scrub_reports_corruption_and_exits_1(healthy: tuple[FilesystemBlobStore, Path]) -> None:
    store, key = healthy
    bad = sorted(store.keys())[3]
    flip_byte(blob_path(store, bad), 40)
    table = gridpacs("scrub", "--root", store.root, "--key-file", key)
    assert table.returncode == 1
    assert bad in table.stdout and "corrupt" in table.stdout
    machine = gridpacs("scrub", "--root", store.root, "--key-file", key, "--json")
    assert machine.returncode == 1
    report = json.loads(machine.stdout)
    assert (report["checked"], report["ok"], report["corrupt"]) == (7, 6, 1)
    assert [(f["key"], f["kind"]) for f in report["findings"]] == [(bad, "corrupt")]


def test_scrub_that_cannot_open_exits_2(
    healthy: tuple[FilesystemBlobStore, Path], tmp_path: Path
) -> None:
    store, _ = healthy
    wrong = generate_key_file(tmp_path / "wrong.key")
    result = gridpacs("scrub", "--root", store.root, "--key-file", wrong)
    assert result.returncode == 2
    assert "wrong key" in result.stderr and "Traceback" not in result.stderr
    # (A missing root takes the same path, StorageError -> 2; it is covered in-process by
    # test_filesystem.test_open_without_create, to spare a subprocess.)


def test_keygen(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    first = gridpacs("keygen", path)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == 32
    again = gridpacs("keygen", path)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
