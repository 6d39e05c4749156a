"""Outputs created and written by writer threads: the same bytes as written in the caller,
around the page cache or through it, unnamed until their commit, and at most ``depth`` of
them pending.

Real files on the real disk (pytest's temporary directory, ext4 here) and on tmpfs.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anonymizer import Deidentifier, load_profile
from anonymizer.files import GroupCommit, anonymize_tree, list_inputs
from anonymizer.writeback import (
    ALIGN,
    DIRECT_FILE_SYSTEMS,
    DIRECT_MIN_BYTES,
    OutputWriters,
    file_system_type,
)
from tests.anonymizer.conftest import SITE_A
from tests.factories import StudySpec, make_dataset

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="gridpacs-test-") as name:
        yield Path(name)


def _corpus(directory: Path, count: int = 12) -> list[Path]:
    """Instances with random pixels, from 64x64 to CT size with 512 rows of 500 to 511
    columns, so outputs end at different offsets of their last block."""
    directory.mkdir(parents=True)
    rng = random.Random(7)
    for n in range(count):
        rows, columns = (512, 500 + n) if n % 2 else (64, 64)
        ds = make_dataset(StudySpec(patient_id=f"MRN-{n % 3}"), instance_number=n + 1,
                          rows=rows, columns=columns)  # fmt: skip
        ds.PixelData = rng.randbytes(rows * columns * 2)
        ds.save_as(directory / f"{n:03d}.dcm", enforce_file_format=True)
    return list_inputs(directory)


def _expected(deid: Deidentifier, inputs: list[Path]) -> dict[str, bytes]:
    """Each output as the engine builds it in memory from the whole input file."""
    out = {}
    for path in inputs:
        result = deid.deidentify_part10(path.read_bytes())
        out[f"{result.sop_instance_uid}.dcm"] = result.data
    return out


def _run(
    deid: Deidentifier, inputs: list[Path], out: Path, writers: int, direct: bool = True
) -> tuple[dict[str, bytes], int]:
    """The outputs by name, and how many were written with O_DIRECT."""
    with GroupCommit(max_files=5, writers=writers, direct=direct) as group:
        outcomes = list(anonymize_tree(deid, inputs, out, group))
        direct_writes = group.writers.direct_writes
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith(".")], "temporary files left"
    return {n: (out / n).read_bytes() for n in names}, direct_writes


def _fs_type(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return file_system_type(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_outputs_written_by_threads_are_those_written_in_the_caller(
    tmp_path: Path, tmpfs: Path, where: str
) -> None:
    """CT-size outputs on a disk go around the page cache (whole blocks direct, the partial
    last block through the cache), everything else through it: the same bytes every way."""
    base = tmp_path if where == "disk" else tmpfs
    inputs = _corpus(base / "in")
    deid = Deidentifier(load_profile(), SITE_A)
    expected = _expected(deid, inputs)
    large = sum(1 for data in expected.values() if len(data) >= DIRECT_MIN_BYTES)
    assert large == 6 and len({len(d) % ALIGN for d in expected.values()}) > 1  # tails vary
    on_disk = _fs_type(base) in DIRECT_FILE_SYSTEMS
    assert on_disk == (where == "disk"), "pytest's temporary directory is expected on a disk"

    threads, direct_writes = _run(deid, inputs, base / "threads", writers=2)
    assert threads == expected and direct_writes == (large if on_disk else 0)
    caller, direct_writes = _run(deid, inputs, base / "caller", writers=0)
    assert caller == expected and direct_writes == (large if on_disk else 0)
    cached, direct_writes = _run(deid, inputs, base / "cached", writers=2, direct=False)
    assert cached == expected and direct_writes == 0


def test_a_refused_direct_write_is_written_the_ordinary_way_and_not_tried_again(
    tmp_path: Path,
) -> None:
    """256-byte alignment is finer than any block device's logical block (512 bytes at
    least): the kernel refuses the direct write with EINVAL before writing anything."""
    if _fs_type(tmp_path) not in DIRECT_FILE_SYSTEMS:
        pytest.fail(f"{tmp_path} is not on ext4 or XFS: the direct path goes untested")
    data = os.urandom(256 * 2049 + 100)
    writers = OutputWriters(align=256)
    try:
        for name in ("first", "second"):
            fd = os.open(tmp_path / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                writers.write(str(tmp_path), fd, [data], None, len(data))
            finally:
                os.close(fd)
            assert writers.direct_writes == 0 and writers._verdicts[str(tmp_path)] is False
    finally:
        writers.close()
    assert (tmp_path / "first").read_bytes() == data == (tmp_path / "second").read_bytes()


def test_an_output_already_at_its_name_is_replaced(tmp_path: Path) -> None:
    """An unnamed file cannot be linked over a name: it goes through a temporary name and a
    rename, and nothing is left beside it."""
    inputs = _corpus(tmp_path / "in", count=4)
    deid = Deidentifier(load_profile(), SITE_A)
    out = tmp_path / "out"
    expected = _expected(deid, inputs)
    out.mkdir()
    for name in expected:
        (out / name).write_bytes(b"an older output")
    assert _run(deid, inputs, out, writers=2)[0] == expected


def test_at_most_depth_jobs_are_pending_and_submit_waits_beyond() -> None:
    writers = OutputWriters(threads=1, depth=3)
    release = threading.Event()
    started = []
    try:
        futures = [writers.submit(lambda: (started.append(1), release.wait(10))) for _ in range(3)]
        blocked = threading.Thread(target=lambda: futures.append(writers.submit(lambda: None)))
        blocked.start()
        time.sleep(0.2)
        assert blocked.is_alive() and len(futures) == 3, "a fourth job was taken"
        release.set()
        blocked.join(10)
        assert not blocked.is_alive() and len(futures) == 4
        for future in futures:
            future.result(10)
    finally:
        release.set()
        writers.close()
    assert len(started) == 3


def test_a_job_error_is_its_future_s_and_the_place_is_freed() -> None:
    writers = OutputWriters(threads=1, depth=1)
    try:
        failed = writers.submit(lambda: (_ for _ in ()).throw(OSError(28, "No space left")))
        with pytest.raises(OSError, match="No space left"):
            failed.result(10)
        assert writers.submit(lambda: None).result(10) is None  # the place came back
    finally:
        writers.close()
