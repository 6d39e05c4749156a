"""What a node acknowledged survives ``kill -9``; what is sent twice is stored once."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.filereader import read_dataset
from pynetdicom import evt

from tests.factories import StudySpec, make_dataset, write_study
from tests.integration.archive import file_dataset_bytes, load, node_status, status_counts
from tests.integration.processes import HOST, REPO_ROOT, Node, NodeFactory, subprocess_env
from tests.integration.scu import (
    STORAGE_CLASSES,
    Received,
    association,
    get,
    query,
    series_instance_uids,
    store,
)

pytestmark = pytest.mark.timeout(240)

TOTAL = 500
KILL_AFTER = 150


class Sender:
    """``tests.integration.sender`` in a child process, its stdout read line by line."""

    def __init__(self, node: Node, folder: Path) -> None:
        self.stderr_path = folder.parent / f"sender-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.integration.sender",
                    HOST, str(node.port), node.called_ae, str(folder),
                ],
                cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE,
                stderr=stderr, text=True,
            )  # fmt: skip
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.acked: list[str] = []
        self.other: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        _SENDERS.append(self)

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def read_until(self, acks: int | None, timeout: float) -> bool:
        """Consume lines until ``acks`` ACKs (or EOF when None); False at EOF."""
        deadline = time.monotonic() + timeout
        while acks is None or len(self.acked) < acks:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"sender too slow: {len(self.acked)} ACKs after {timeout:.0f} s"
                )
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                return False
            if line.startswith("ACK "):
                self.acked.append(line[4:])
            else:
                self.other.append(line)
        return True

    def finish(self, timeout: float = 60) -> int:
        self.read_until(None, timeout)
        code = self.proc.wait(timeout=timeout)
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


_SENDERS: list[Sender] = []


@pytest.fixture(autouse=True)
def _stop_senders() -> Iterator[None]:
    """No sender outlives its test, whatever happened in it."""
    yield
    while _SENDERS:
        _SENDERS.pop().stop()


def _series_uids(node: Node, study_uid: str, series_uid: str) -> list[str]:
    return series_instance_uids(node, study_uid, series_uid)


def test_acknowledged_instances_survive_kill_9(node_factory: NodeFactory, tmp_path: Path) -> None:
    folder = tmp_path / "outgoing"
    folder.mkdir()
    spec = StudySpec(patient_id="ITDUR001", patient_name="DURABLE^DORA")
    sent = write_study(str(folder), TOTAL, spec, rows=16, columns=16)
    sent_bytes = {
        str(ds.SOPInstanceUID): file_dataset_bytes(folder / f"{n:05d}.dcm")
        for n, ds in enumerate(sent, 1)
    }
    node = node_factory()

    sender = Sender(node, folder)
    sender.read_until(KILL_AFTER, timeout=120)
    node.kill()  # SIGKILL mid-association: no graceful anything
    code = sender.finish()
    acked = set(sender.acked)
    assert code != 0, "the sender finished all instances before the node was killed"
    assert len(acked) < TOTAL, "the node was killed after everything was acknowledged"
    failures = [line for line in sender.other if line.startswith("FAIL")]
    assert not failures, f"C-STORE failures before the kill: {failures[:5]}"

    node.restart()
    found = set(_series_uids(node, spec.study_uid, spec.series_uid))
    lost = acked - found
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged instances lost: {sorted(lost)[:5]}"
    assert found <= set(sent_bytes), "the index holds instances nobody sent"

    # readable, not only indexed: fetch the series back and compare bytes
    got = Received()
    with association(
        node, scp_roles=STORAGE_CLASSES, handlers=[(evt.EVT_C_STORE, got.handler)]
    ) as assoc:
        responses = get(
            assoc,
            "S",
            query("SERIES", StudyInstanceUID=spec.study_uid, SeriesInstanceUID=spec.series_uid),
        )
    assert responses[-1].status == 0x0000, f"C-GET after restart: 0x{responses[-1].status:04X}"
    assert set(got.items) == found
    for uid in found:
        assert got.items[uid] == sent_bytes[uid], f"bytes of {uid} differ after restart"

    # resend everything: every instance acknowledged, none stored twice
    again = Sender(node, folder)
    code = again.finish(timeout=180)
    assert code == 0, f"resend failed: {again.other[-5:]}\n{again.stderr()[-2000:]}"
    assert len(again.acked) == TOTAL, again.other[:5]
    uids = _series_uids(node, spec.study_uid, spec.series_uid)
    assert len(uids) == len(set(uids)) == TOTAL, f"{len(uids)} rows for {len(set(uids))} UIDs"
    counts = status_counts(node_status(node.data_dir))
    assert counts == {"patients": 1, "studies": 1, "series": 1, "instances": TOTAL}, counts


def test_same_instance_twice_is_stored_once(node_factory: NodeFactory) -> None:
    node = node_factory()
    ds = make_dataset(StudySpec(patient_id="ITDUP001"), rows=16, columns=16)
    with association(node) as assoc:
        assert store(assoc, ds) == 0x0000
        assert store(assoc, ds) == 0x0000
    load(node, [ds])  # and once more on a new association
    counts = status_counts(node_status(node.data_dir))
    assert counts == {"patients": 1, "studies": 1, "series": 1, "instances": 1}, counts
    assert _series_uids(node, ds.StudyInstanceUID, ds.SeriesInstanceUID) == [ds.SOPInstanceUID]
    # what is kept is the instance as sent
    got = Received()
    with association(
        node, scp_roles=STORAGE_CLASSES, handlers=[(evt.EVT_C_STORE, got.handler)]
    ) as assoc:
        get(assoc, "S", query("STUDY", StudyInstanceUID=ds.StudyInstanceUID))
    assert list(got.items) == [ds.SOPInstanceUID]
    assert dcmread_pixels(got.items[ds.SOPInstanceUID]) == ds.PixelData


def dcmread_pixels(raw: bytes) -> bytes:
    """PixelData of an Explicit VR Little Endian dataset given as bytes (no file meta)."""
    return bytes(read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True).PixelData)


def test_sigterm_mid_association_exits_0_and_keeps_acknowledged(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "outgoing"
    folder.mkdir()
    spec = StudySpec(patient_id="ITDTERM01", patient_name="GRACEFUL^GRACE")
    write_study(str(folder), 120, spec, rows=16, columns=16)
    node = node_factory()

    sender = Sender(node, folder)
    sender.read_until(30, timeout=120)
    code = node.terminate()
    sender.finish()
    assert code == 0, f"SIGTERM during an association: exit code {code} (None = killed)"
    node.restart()
    found = set(_series_uids(node, spec.study_uid, spec.series_uid))
    lost = set(sender.acked) - found
    assert not lost, f"{len(lost)} acknowledged instances lost over a graceful restart"


def test_parallel_associations_all_stored(node_factory: NodeFactory) -> None:
    node = node_factory()
    specs = [StudySpec(patient_id=f"ITDPAR{n}") for n in range(4)]
    batches = [
        [make_dataset(spec, instance_number=i, rows=8, columns=8) for i in range(1, 26)]
        for spec in specs
    ]
    statuses: list[list[int]] = [[] for _ in batches]
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            with association(node, calling_ae=f"PAR{n}") as assoc:
                statuses[n].extend(store(assoc, ds) for ds in batches[n])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert all(s == [0x0000] * 25 for s in statuses), statuses
    counts = status_counts(node_status(node.data_dir))
    assert counts == {"patients": 4, "studies": 4, "series": 4, "instances": 100}, counts


@pytest.mark.parametrize(
    "index", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_same_instances_from_parallel_associations_stored_once(
    node_factory: NodeFactory, request: pytest.FixtureRequest, index: str
) -> None:
    """Four modalities resend the same 20 instances at once: all succeed, each stored once."""
    db_url = request.getfixturevalue("pg_url") if index == "postgresql" else None
    node = node_factory(args=["--db-url", db_url] if db_url else [])
    spec = StudySpec(patient_id="ITDRACE01")
    datasets = [make_dataset(spec, instance_number=i, rows=8, columns=8) for i in range(1, 21)]
    statuses: list[list[int]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def send(n: int) -> None:
        try:
            with association(node, calling_ae=f"RACE{n}") as assoc:
                barrier.wait(30)
                statuses[n].extend(store(assoc, ds) for ds in datasets)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert all(s == [0x0000] * len(datasets) for s in statuses), statuses
    uids = _series_uids(node, spec.study_uid, spec.series_uid)
    assert sorted(uids) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    counts = status_counts(node_status(node.data_dir, db_url))
    assert counts == {"patients": 1, "studies": 1, "series": 1, "instances": 20}, counts
