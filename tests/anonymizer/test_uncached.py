"""Large outputs written around the page cache (O_DIRECT): the same bytes, wherever written.

Real files on the real disk (pytest's temporary directory, ext4 here) and on tmpfs
(/dev/shm); the refusal path is driven by the kernel itself (an alignment the block device
refuses with EINVAL), not by a stand-in.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from anonymizer import Deidentifier, load_profile
from anonymizer.files import GroupCommit, anonymize_tree, list_inputs, open_source
from anonymizer.tail import SourceTail
from anonymizer.uncached import ALIGN, DIRECT_MIN_BYTES, DirectWriter, file_system_type
from tests.anonymizer.conftest import SITE_A
from tests.factories import StudySpec, make_dataset

pytestmark = pytest.mark.timeout(120)

EXT4, XFS, TMPFS = 0xEF53, 0x58465342, 0x01021994


def _fs_type(path: Path) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return file_system_type(fd)
    finally:
        os.close(fd)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    if _fs_type(tmp_path) not in (EXT4, XFS):
        pytest.skip(f"{tmp_path} is not on ext4 or XFS")
    return tmp_path


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    if not Path("/dev/shm").is_dir() or _fs_type(Path("/dev/shm")) != TMPFS:
        pytest.skip("no tmpfs at /dev/shm")
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="gridpacs-test-") as name:
        yield Path(name)


@pytest.fixture
def tiny_ext4(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 with 16 inodes (5 free), loop-mounted (the tests run as root)."""
    image, mount = tmp_path / "tiny.img", tmp_path / "tiny"
    mount.mkdir()
    with image.open("wb") as handle:
        handle.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-N", "16", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _ct_corpus(directory: Path, count: int = 12) -> list[Path]:
    """CT-size instances with random pixels, 512 rows of 500 to 511 columns, so the outputs
    end at different offsets in their last block (and a pixel shifted by one shows)."""
    directory.mkdir(parents=True)
    rng = random.Random(7)
    for n in range(count):
        columns = 500 + n
        ds = make_dataset(StudySpec(patient_id=f"MRN-{n % 3}"), instance_number=n + 1,
                          rows=512, columns=columns)  # fmt: skip
        ds.PixelData = rng.randbytes(512 * columns * 2)
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
    deid: Deidentifier, inputs: list[Path], out: Path, direct: bool
) -> tuple[dict[str, bytes], int, int]:
    """The outputs by name, and how many the writer threads wrote directly and created."""
    with GroupCommit(direct=direct) as group:
        outcomes = list(anonymize_tree(deid, inputs, out, group))
        writes, created = group.direct.writes, group.direct.created
    assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith(".")], "temporary files left"
    return {n: (out / n).read_bytes() for n in names}, writes, created


def test_ct_outputs_on_disk_are_written_directly_and_byte_identical(disk: Path) -> None:
    inputs = _ct_corpus(disk / "in")
    deid = Deidentifier(load_profile(), SITE_A)
    expected = _expected(deid, inputs)
    assert all(len(data) >= DIRECT_MIN_BYTES for data in expected.values())
    assert len({len(data) % ALIGN for data in expected.values()}) > 1  # various tails

    direct, writes, created = _run(deid, inputs, disk / "direct", direct=True)
    cached, none, not_created = _run(deid, inputs, disk / "cached", direct=False)

    assert writes == len(inputs) and none == 0
    # The first output shows the directory takes unnamed files and direct writes; the
    # writer threads create the others themselves.
    assert created == len(inputs) - 1 and not_created == 0
    assert direct == expected
    assert cached == expected


def test_a_file_the_writer_cannot_create_fails_alone_and_leaves_nothing(
    tiny_ext4: Path, tmp_path: Path
) -> None:
    """The writer threads' ``O_TMPFILE`` finds no free inode (``ENOSPC``, the kernel's own
    refusal on a real ext4 with 16 inodes): those outputs fail with the reason at the
    commit, the others are written whole, and nothing else is left."""
    inputs = _ct_corpus(tmp_path / "in", count=8)
    deid = Deidentifier(load_profile(), SITE_A)
    expected = _expected(deid, inputs)
    out = tiny_ext4 / "out"
    out.mkdir()
    free = os.statvfs(out).f_favail
    assert 1 < free < len(inputs)
    with GroupCommit() as group:
        outcomes = list(anonymize_tree(deid, inputs, out, group))
        created = group.direct.created
    assert [o.source for o in outcomes] == inputs
    ok = [o for o in outcomes if o.ok]
    assert len(ok) == free and created == free - 1  # the first made by the caller
    for outcome in outcomes[free:]:
        assert not outcome.ok and outcome.error_kind == "OSError"
        assert outcome.error is not None and "No space left on device" in outcome.error
    written = {o.target.name for o in ok if o.target is not None}
    assert sorted(os.listdir(out)) == sorted(written)
    assert {n: (out / n).read_bytes() for n in written} == {n: expected[n] for n in written}


def test_ct_outputs_on_tmpfs_go_through_the_page_cache(tmpfs: Path) -> None:
    """tmpfs takes O_DIRECT (Linux >= 6.6) as a plain copy: not worth a second copy."""
    inputs = _ct_corpus(tmpfs / "in", count=4)
    deid = Deidentifier(load_profile(), SITE_A)
    written, writes, created = _run(deid, inputs, tmpfs / "out", direct=True)
    assert writes == 0 and created == 0
    assert written == _expected(deid, inputs)


def _write(
    writer: DirectWriter, path: Path, parts: list[bytes], tail: tuple[Path, int, int] | None
) -> bool:
    """Write through ``writer`` as GroupCommit does; True when it went direct."""
    size = sum(len(p) for p in parts) + (tail[2] if tail else 0)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if tail is None:
            pending = writer.start(str(path.parent), fd, parts, None, size)
        else:
            with open_source(tail[0]) as source:
                pending = writer.start(
                    str(path.parent), fd, parts, (source, SourceTail(tail[1], tail[2])), size
                )
        if pending is None:
            return False
        pending.result()
        return True
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [ALIGN * 128, ALIGN * 128 + 1, ALIGN * 200 - 1])
def test_whole_blocks_go_direct_and_the_partial_block_after_them(disk: Path, size: int) -> None:
    source = disk / "source"
    source.write_bytes(os.urandom(size + 5000))
    header = os.urandom(1234)
    writer = DirectWriter()
    try:
        assert _write(writer, disk / "out", [header, b"", header[:10]], (source, 777, size - 1244))
        assert writer.writes == 1
    finally:
        writer.close()
    expected = header + header[:10] + source.read_bytes()[777 : 777 + size - 1244]
    assert (disk / "out").read_bytes() == expected


def test_small_outputs_are_not_written_directly(disk: Path) -> None:
    writer = DirectWriter()
    try:
        assert not _write(writer, disk / "small", [b"x" * (DIRECT_MIN_BYTES - 1)], None)
        assert (disk / "small").stat().st_size == 0  # left to the caller
        assert _write(writer, disk / "large", [b"x" * DIRECT_MIN_BYTES], None)
    finally:
        writer.close()
    assert (disk / "large").read_bytes() == b"x" * DIRECT_MIN_BYTES


def test_a_refused_direct_write_is_written_the_ordinary_way_and_not_tried_again(
    disk: Path,
) -> None:
    """256-byte alignment is finer than any block device's logical block (512 bytes at
    least): the kernel refuses the direct write with EINVAL before writing anything."""
    data = os.urandom(256 * 2049 + 100)  # whole "blocks": an odd multiple of 256
    writer = DirectWriter(align=256)
    try:
        assert _write(writer, disk / "first", [data], None)  # started, written by the thread
        assert writer.writes == 0 and not writer.usable(str(disk), -1)
        assert not _write(writer, disk / "second", [data], None)  # the ordinary way now
    finally:
        writer.close()
    assert (disk / "first").read_bytes() == data
    assert (disk / "second").stat().st_size == 0


def test_disabled_writer_writes_nothing_directly(disk: Path) -> None:
    writer = DirectWriter(enabled=False)
    try:
        assert not _write(writer, disk / "out", [b"y" * (1 << 20)], None)
    finally:
        writer.close()
