"""Outputs created and written by writer threads: the same bytes as written in the caller,
unnamed until their commit, and at most ``depth`` of them pending.

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
from anonymizer.writeback import OutputWriters
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


def _run(deid: Deidentifier, inputs: list[Path], out: Path, writers: int) -> dict[str, bytes]:
    with GroupCommit(max_files=5, writers=writers) as group:
        outcomes = list(anonymize_tree(deid, inputs, out, group))
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith(".")], "temporary files left"
    return {n: (out / n).read_bytes() for n in names}


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_outputs_written_by_threads_are_those_written_in_the_caller(
    tmp_path: Path, tmpfs: Path, where: str
) -> None:
    base = tmp_path if where == "disk" else tmpfs
    inputs = _corpus(base / "in")
    deid = Deidentifier(load_profile(), SITE_A)
    expected = _expected(deid, inputs)
    assert _run(deid, inputs, base / "threads", writers=2) == expected
    assert _run(deid, inputs, base / "caller", writers=0) == expected


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
    assert _run(deid, inputs, out, writers=2) == expected


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
