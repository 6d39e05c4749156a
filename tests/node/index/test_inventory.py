"""The index's reconciliation reads and writes on SQLite and PostgreSQL: a period's
instances by StudyDate or date received, re-enqueueing and retracting through the outbox."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from node.index import ChangeKind, SqlIndex
from tests.node.index.conftest import record

JUNE = ("20240601", "20240630", datetime(2024, 6, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC))


def test_inventory_by_study_date_or_received(index: SqlIndex) -> None:
    index.add_instance(record("1.1", StudyDate="20240610"))
    late = replace(record("2.1", study="1.2.2", series="1.2.2.1", StudyDate="20240501"),
                   received_at=datetime(2024, 6, 30, 23, 59, tzinfo=UTC))  # fmt: skip
    index.add_instance(late)
    outside = replace(record("3.1", study="1.2.3", series="1.2.3.1", StudyDate="20240701"),
                      received_at=datetime(2024, 7, 1, tzinfo=UTC))  # fmt: skip
    index.add_instance(outside)
    index.add_instance(record("4.1", study="1.2.4", series="1.2.4.1", collection="c2",
                              StudyDate="20240615"))  # fmt: skip
    got = {e.sop_instance_uid: e for e in index.inventory(*JUNE)}
    assert set(got) == {"1.1", "2.1", "4.1"}
    assert got["2.1"].study_date == "20240501"
    assert got["2.1"].received_at == datetime(2024, 6, 30, 23, 59, tzinfo=UTC)
    assert (got["1.1"].study_instance_uid, got["1.1"].series_instance_uid) == (
        "1.2.826.0.1.1", "1.2.826.0.1.1.1")  # fmt: skip
    assert {e.sop_instance_uid for e in index.inventory(*JUNE, collections=["c2"])} == {"4.1"}


def test_republish_and_retract_append_outbox_rows(index: SqlIndex) -> None:
    index.add_instance(record("1.1"))
    index.add_instance(record("1.2", collection="c1"))
    before = index.last_change_seq()
    done = index.republish(["1.1", "1.2", "9.9", "1.1"], allowed=lambda c: c == "c1")
    assert (list(done.enqueued), list(done.skipped)) == (["1.1", "1.2"], ["9.9"])
    changes = index.changes_since(before)
    assert [(c.kind, c.record.sop_instance_uid) for c in changes] == [
        (ChangeKind.INSTANCE_ADDED, "1.1"), (ChangeKind.INSTANCE_ADDED, "1.2")]  # fmt: skip
    assert changes[0].record.blob_key == "blob-1.1"  # the full record, as first published
    refused = index.republish(["1.1"], allowed=lambda c: False)
    assert list(refused.enqueued) == [] and list(refused.skipped) == ["1.1"]

    before = index.last_change_seq()
    gone = index.retract([("1.1", "c1"), ("8.8", "c1")])
    assert (list(gone.enqueued), list(gone.skipped)) == (["8.8"], ["1.1"])
    [change] = index.changes_since(before)
    assert change.kind is ChangeKind.INSTANCE_DELETED
    assert (change.record.sop_instance_uid, change.record.collection) == ("8.8", "c1")
    assert index.stats()["instances"] == 2  # neither touched the index itself
