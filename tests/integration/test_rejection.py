"""IHE IOCM rejection notes against real processes: DCMTK's storescu sends the study and
the note, findscu checks what is left, and the node's data directory is searched for the
rejected bytes themselves; then a two-node grid with two catalog replicas, where the copy
on the other node goes too and is never made again."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.index import SqlIndex
from node.index.records import RejectedInstance
from tests.factories import StudySpec, make_dataset, make_rejection_note
from tests.integration.archive import dcmtk_findscu, dimse_statuses
from tests.integration.processes import HOST, Node, NodeFactory, describe, run_dcmtk
from tests.integration.replication_grid import Grid

pytestmark = [pytest.mark.dcmtk, pytest.mark.timeout(180)]

ADMIN = "PACSADMIN"
REPO = Path(__file__).resolve().parents[2]


def _write(directory: Path, datasets: list[Dataset]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = directory / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _storescu(node: Node, paths: list[Path], calling_ae: str = "MODALITY") -> list[int]:
    """storescu the files on one association; the DIMSE statuses it was answered."""
    result = run_dcmtk("storescu", "-d", "-aet", calling_ae, "-aec", node.called_ae, HOST,
                       str(node.port), *map(str, paths))  # fmt: skip
    statuses = dimse_statuses(result.stdout + result.stderr)
    assert len(statuses) == len(paths), describe(result)
    return statuses


def _study(size: int, patient_id: str) -> tuple[StudySpec, list[Dataset]]:
    spec = StudySpec(patient_id=patient_id)
    datasets = []
    for n in range(size):
        ds = make_dataset(spec, instance_number=n + 1, rows=16, columns=16)
        ds.ImageComments = f"SECRET-{patient_id}-{n:03d}"  # only in these bytes
        datasets.append(ds)
    return spec, datasets


def _images(node: Node, study_uid: str, out: Path) -> list[str]:
    found = dcmtk_findscu(node, "S", ["QueryRetrieveLevel=IMAGE",
                                      f"StudyInstanceUID={study_uid}", "SOPInstanceUID",
                                      "SOPClassUID"], out)  # fmt: skip
    return sorted(str(ds.SOPInstanceUID) for ds in found)


def _bytes_left(data_dir: Path, marker: bytes) -> list[str]:
    """Files under the node's data directory that still hold ``marker``."""
    return [str(p) for p in data_dir.rglob("*") if p.is_file() and marker in p.read_bytes()]


def _pack_blocks(data_dir: Path) -> int:
    """Disk space the node's pack files occupy (allocated blocks, not file sizes)."""
    return sum(p.stat().st_blocks * 512 for p in data_dir.rglob("packs/*.pack"))


def test_a_rejection_note_removes_the_instances_bytes_and_all(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory(args=["--rejecting-ae", ADMIN])
    spec, study = _study(5, "IOCM-1")
    assert _storescu(node, _write(tmp_path / "study", study)) == [0] * 5
    rejected, kept = study[:3], study[3:]
    note = make_rejection_note(rejected, code="113037")  # patient safety: wrong patient
    note_file = _write(tmp_path / "note", [note])

    # a modality may not reject: refused with 0x0124, nothing removed
    assert _storescu(node, note_file, calling_ae="MODALITY") == [0x0124]
    assert len(_images(node, spec.study_uid, tmp_path / "f0")) == 5

    packs_before = _pack_blocks(node.data_dir)
    assert _storescu(node, note_file, calling_ae=ADMIN) == [0x0000]
    # their disk space is free at once: holes punched where the records were (the note,
    # stored after, goes into blocks the pack allocated when it was made)
    assert packs_before - _pack_blocks(node.data_dir) >= 3 * 4096
    left = _images(node, spec.study_uid, tmp_path / "f1")
    assert left == sorted([*(str(ds.SOPInstanceUID) for ds in kept), str(note.SOPInstanceUID)])
    for ds in rejected:  # the bytes are gone from the packs, not only unlisted
        assert _bytes_left(node.data_dir, str(ds.ImageComments).encode()) == []
    assert _bytes_left(node.data_dir, str(kept[0].ImageComments).encode())
    log = node.log_text()
    assert "event=instances_rejected" in log and "reasons=113037" in log

    # sent again by the modality: refused (0xC005), and its bytes do not stay either
    assert _storescu(node, _write(tmp_path / "again", rejected[:1])) == [0xC005]
    assert _bytes_left(node.data_dir, str(rejected[0].ImageComments).encode()) == []
    assert "event=rejected_instance_refused" in node.log_text()
    # the note again: nothing more to do, still a success
    assert _storescu(node, note_file, calling_ae=ADMIN) == [0x0000]
    assert len(_images(node, spec.study_uid, tmp_path / "f2")) == len(left)


def test_blobs_of_a_rejection_cut_short_by_a_crash_go_at_the_next_start(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """The state a kill -9 leaves between the rejection's commit and its blob deletions:
    rows removed, blobs queued. The next start deletes them."""
    node = node_factory()
    spec, study = _study(3, "IOCM-2")
    assert _storescu(node, _write(tmp_path / "study", study)) == [0] * 3
    node.kill()
    index = SqlIndex.open(f"sqlite:///{node.data_dir / 'index.sqlite'}")
    try:
        index.reject([RejectedInstance(str(ds.SOPInstanceUID), "local", reason="113001")
                      for ds in study[:2]])  # fmt: skip
        assert len(index.queued_blob_removals()) == 2
    finally:
        index.close()
    assert _bytes_left(node.data_dir, str(study[0].ImageComments).encode())
    node.start()
    for ds in study[:2]:
        assert _bytes_left(node.data_dir, str(ds.ImageComments).encode()) == []
    assert _bytes_left(node.data_dir, str(study[2].ImageComments).encode())
    with sqlite3.connect(node.data_dir / "index.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM blob_removals").fetchone() == (0,)
    assert _images(node, spec.study_uid, tmp_path / "f") == [str(study[2].SOPInstanceUID)]


def _gridpacs_node(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``gridpacs node …`` as an administrator runs it (stdin not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "gridpacs", "node", *map(str, args)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}, cwd=REPO,
    )  # fmt: skip


def test_an_administrator_rejects_a_study_next_to_the_running_node(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    """`gridpacs node reject`: shown first, asked, then applied through the node's own
    index; the running node deletes the bytes it alone may delete; a re-send is refused."""
    node = node_factory()
    spec, study = _study(3, "IOCM-CLI")
    _, other = _study(1, "IOCM-KEEP")
    assert _storescu(node, _write(tmp_path / "study", [*study, *other])) == [0] * 4
    where = ["--data-dir", node.data_dir]

    shown = _gridpacs_node("reject", *where, "--study", spec.study_uid, "--reason",
                           "patient-safety", "--dry-run")  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Rejected for Patient Safety Reasons" in shown.stderr and "IOCM-CLI" in shown.stderr
    unconfirmed = _gridpacs_node("reject", *where, "--study", spec.study_uid, "--reason",
                                 "113037")  # fmt: skip
    assert unconfirmed.returncode == 3 and "--yes" in unconfirmed.stderr
    assert len(_images(node, spec.study_uid, tmp_path / "f0")) == 3  # nothing changed yet
    nothing = _gridpacs_node("reject", *where, "--study", "1.2.3.4.5", "--reason", "quality",
                             "--yes")  # fmt: skip
    assert nothing.returncode == 1 and "1.2.3.4.5" in nothing.stderr
    bad = _gridpacs_node("reject", *where, "--study", spec.study_uid, "--reason", "oops")
    assert bad.returncode == 2

    done = _gridpacs_node("reject", *where, "--study", spec.study_uid, "--reason",
                          "patient-safety", "--yes", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["rejected"], summary["removed"]) == (3, 3)
    assert summary["blobs_queued_for_the_node"] == 3  # the node holds its packs
    assert summary["rejected_by"].startswith("cli:")
    assert "event=instances_rejected" in done.stderr and "reasons=113037" in done.stderr
    assert _images(node, spec.study_uid, tmp_path / "f1") == []
    _until(lambda: all(not _bytes_left(node.data_dir, str(ds.ImageComments).encode())
                       for ds in study), 20, "the node's sweep to delete the bytes")  # fmt: skip
    assert "event=queued_blobs_removed count=3" in node.log_text()
    status = json.loads(_gridpacs_node("status", *where, "--json").stdout)
    assert (status["rejected"], status["blobs_queued_for_removal"]) == (3, 0)
    assert _bytes_left(node.data_dir, str(other[0].ImageComments).encode())
    assert _storescu(node, _write(tmp_path / "again", study[:1])) == [0xC005]

    node.terminate()  # with the node stopped, the command deletes the bytes itself
    offline = _gridpacs_node("reject", *where, "--instance", str(other[0].SOPInstanceUID),
                             "--reason", "retention", "--yes", "--json")  # fmt: skip
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["blobs_deleted"] == 1
    assert _bytes_left(node.data_dir, str(other[0].ImageComments).encode()) == []


POLICY = """
[replication]
interval_s = 0.2
lost_after_seconds = 60
[replication.collections]
local = 2
"""


def _until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last is True:
            return
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}", False)


def test_a_rejection_removes_every_copy_in_the_grid_for_good(tmp_path: Path) -> None:
    grid = Grid(tmp_path, POLICY)
    grid.start_catalog()
    try:
        n1 = grid.add_node("n1", start=False, dicom_extra=f'rejecting_aes = ["{ADMIN}"]\n')
        n2 = grid.add_node("n2", start=False)
        grid.start_nodes(n1, n2)
        _spec, study = _study(6, "IOCM-3")
        assert _storescu(n1, _write(tmp_path / "study", study)) == [0] * 6
        uids = [str(ds.SOPInstanceUID) for ds in study]

        def held_by_both(replica: int = 0) -> object:
            holders = grid.holders("IOCM-3", replica)
            return all(holders.get(u) == {"n1", "n2"} for u in uids) or holders

        _until(held_by_both, 40, "factor 2 (n2 holds a copy of every instance)")
        rejected, kept = uids[:3], uids[3:]
        note = make_rejection_note(study[:3], code="113001")
        assert _storescu(n1, _write(tmp_path / "note", [note]), calling_ae=ADMIN) == [0]

        def copies_gone(replica: int) -> object:
            holders = grid.holders("IOCM-3", replica)
            gone = all(u not in holders for u in rejected)
            return (gone and all(holders.get(u) == {"n1", "n2"} for u in kept)) or holders

        _until(lambda: copies_gone(0), 40, "the rejected copies gone from n1 and n2")
        _until(lambda: copies_gone(1), 20, "the other replica to agree")
        time.sleep(2.0)  # several planning rounds: nothing rejected is copied back
        assert copies_gone(0) is True and copies_gone(1) is True
        for ds in study[:3]:
            marker = str(ds.ImageComments).encode()
            assert _bytes_left(n1.data_dir, marker) == [] and _bytes_left(n2.data_dir, marker) == []
        assert "event=instances_rejected" in n2.log_text() and "source=catalog" in n2.log_text()
        # n2 now refuses the rejected instance too, from anyone
        assert _storescu(n2, _write(tmp_path / "again", study[:1])) == [0xC005]
    finally:
        grid.stop()
