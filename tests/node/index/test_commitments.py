"""The Storage Commitment queue on SQLite and PostgreSQL: a recorded request is owed a
report until it is settled, a repeat replaces it, and settling an older copy of a
repeated request leaves the newer one owed."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from node.index import SqlIndex
from node.index.records import CommitmentRequest

CT = "1.2.840.10008.5.1.4.1.1.2"


def _request(tx: str = "1.2.3.4", refs: int = 2, calling: str = "CT1") -> CommitmentRequest:
    return CommitmentRequest(
        calling_ae=calling,
        transaction_uid=tx,
        called_ae="GRIDPACS",
        references=tuple((CT, f"1.2.9.{n}") for n in range(refs)),
    )


def test_a_recorded_request_is_due_until_it_is_reported(index: SqlIndex) -> None:
    assert index.due_commitments() == [] and index.next_commitment_due() is None
    index.record_commitment(_request())

    (pending,) = index.due_commitments()
    assert pending.request == _request() and pending.attempts == 0
    due = index.next_commitment_due()
    assert due is not None and due <= datetime.now(UTC)
    assert index.commitment_counts() == {"pending": 1, "reported": 0, "abandoned": 0}

    assert index.commitment_reported(pending, committed=2, failed=0)
    assert index.due_commitments() == []
    assert index.commitment_counts() == {"pending": 0, "reported": 1, "abandoned": 0}
    assert not index.commitment_reported(pending, committed=2, failed=0)  # settled once


def test_an_undelivered_report_is_due_again_later_or_abandoned(index: SqlIndex) -> None:
    index.record_commitment(_request("1.1"))
    index.record_commitment(_request("1.2"))
    first, second = sorted(index.due_commitments(), key=lambda p: p.request.transaction_uid)

    later = datetime.now(UTC) + timedelta(seconds=60)
    assert index.commitment_not_delivered(first, "connection refused", later)
    assert index.commitment_not_delivered(second, "x" * 2000, None)  # given up

    assert index.due_commitments() == []
    due = index.next_commitment_due()
    assert due is not None and abs((due - later).total_seconds()) < 1
    assert index.commitment_counts() == {"pending": 1, "reported": 0, "abandoned": 1}
    # settled rows are forgotten once old enough; the owed one never is
    assert index.prune_commitments(datetime.now(UTC) - timedelta(days=1)) == 0
    assert index.prune_commitments(datetime.now(UTC) + timedelta(days=1)) == 1
    assert index.commitment_counts() == {"pending": 1, "reported": 0, "abandoned": 0}


def test_a_repeated_request_replaces_the_first_and_is_owed_again(index: SqlIndex) -> None:
    index.record_commitment(_request(refs=2))
    (older,) = index.due_commitments()
    time.sleep(0.002)  # a later requested_at, as a real repeat has
    index.record_commitment(_request(refs=3))

    # the report evaluated for the first copy does not settle the repeat
    assert not index.commitment_reported(older, committed=2, failed=0)
    assert not index.commitment_not_delivered(older, "late", None)
    (newer,) = index.due_commitments()
    assert len(newer.request.references) == 3 and newer.attempts == 0
    assert index.commitment_reported(newer, committed=3, failed=0)

    index.record_commitment(_request(refs=1))  # asked again after the report: owed again
    (again,) = index.due_commitments()
    assert len(again.request.references) == 1


def test_the_same_transaction_uid_from_two_senders_is_two_requests(index: SqlIndex) -> None:
    index.record_commitment(_request(calling="CT1"))
    index.record_commitment(_request(calling="MR1"))
    assert sorted(p.request.calling_ae for p in index.due_commitments()) == ["CT1", "MR1"]


def test_requests_are_listed_newest_first_by_state(index: SqlIndex) -> None:
    index.record_commitment(_request("1.1", refs=3))
    time.sleep(0.002)
    index.record_commitment(_request("1.2", refs=1))
    first = next(p for p in index.due_commitments() if p.request.transaction_uid == "1.1")
    index.commitment_reported(first, committed=2, failed=1)

    listed = index.commitments()
    assert [(e.transaction_uid, e.state, e.instances) for e in listed] == [
        ("1.2", "pending", 1), ("1.1", "reported", 3),
    ]  # fmt: skip
    reported = listed[1]
    assert (reported.committed, reported.failed, reported.attempts) == (2, 1, 1)
    assert reported.reported_at is not None and reported.due_at is None
    assert listed[0].due_at is not None and listed[0].requested_at.tzinfo is not None
    assert [e.transaction_uid for e in index.commitments(["pending"])] == ["1.2"]
    assert len(index.commitments(limit=1)) == 1
