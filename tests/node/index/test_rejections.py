"""Rejecting instances in the index (IHE IOCM), on SQLite and PostgreSQL: removal with
exact counters, the rejection row that refuses a re-send, the queued blobs, and the
INSTANCE_REJECTED changes the catalog publisher sends."""

from __future__ import annotations

import threading

import pytest

from node.index import ChangeKind, IndexQuery, Level, SqlIndex, rejections, writes
from node.index.errors import InstanceRejected
from node.index.records import AddOutcome, RejectedInstance, RejectionResult
from tests.node.index.conftest import record


def _reject(uid: str, collection: str = "c1", reason: str = "113001") -> RejectedInstance:
    return RejectedInstance(
        sop_instance_uid=uid,
        collection=collection,
        study_instance_uid="1.2.826.0.1.1",
        series_instance_uid="1.2.826.0.1.1.1",
        reason=reason,
        note_uid="1.2.826.0.9.9",
        rejected_by="PACSADMIN",
    )


def _studies(index: SqlIndex) -> list[dict[str, object]]:
    query = IndexQuery(
        level=Level.STUDY,
        filters={"StudyInstanceUID": ""},
        requested=("StudyInstanceUID", "NumberOfStudyRelatedInstances"),
    )
    return list(index.find(query))


def test_rejection_removes_records_and_refuses_a_resend(index: SqlIndex) -> None:
    for uid in ("1.1", "1.2", "1.3"):
        assert index.add_instance(record(uid)) is AddOutcome.STORED
    before = index.last_change_seq()

    result = index.reject([_reject("1.1"), _reject("1.2"), _reject("9.9")])

    assert result.removed == ("1.1", "1.2")
    assert result.recorded == ("1.1", "1.2", "9.9")  # 9.9 is not held: refused all the same
    assert result.blob_keys == ("blob-1.1", "blob-1.2")
    assert index.get_record("1.1") is None and index.get_record("1.3") is not None
    assert [s["NumberOfStudyRelatedInstances"] for s in _studies(index)] == [1]
    assert index.queued_blob_removals() == ["blob-1.1", "blob-1.2"]
    changes = index.changes_since(before, 100)
    assert [(c.kind, c.record.sop_instance_uid, c.reason) for c in changes] == [
        (ChangeKind.INSTANCE_REJECTED, uid, "113001") for uid in ("1.1", "1.2", "9.9")
    ]
    assert changes[0].record.blob_key == "blob-1.1"  # the full record of a held instance
    rejection = index.rejection("1.2")
    assert rejection is not None and rejection.rejected_by == "PACSADMIN"

    with pytest.raises(InstanceRejected, match="113001"):
        index.add_instance(record("1.1"))
    with pytest.raises(InstanceRejected):
        index.add_instance(record("9.9"))
    assert index.last_change_seq() == changes[-1].seq  # the refusals wrote nothing

    index.blobs_removed(["blob-1.1", "blob-1.2"])
    assert index.queued_blob_removals() == []


def test_a_bulk_add_leaves_rejected_instances_out(index: SqlIndex) -> None:
    index.add_instance(record("3.1"))
    index.reject([_reject("3.1"), _reject("3.2")])  # one held, one never seen
    seq = index.last_change_seq()

    outcomes = index.add_instances([record("3.1"), record("3.2"), record("3.3")])

    assert outcomes == [AddOutcome.REJECTED, AddOutcome.REJECTED, AddOutcome.STORED]
    assert index.get_record("3.1") is None and index.get_record("3.2") is None
    assert [s["NumberOfStudyRelatedInstances"] for s in _studies(index)] == [1]
    changes = index.changes_since(seq, 100)
    assert [(c.kind, c.record.sop_instance_uid) for c in changes] == [
        (ChangeKind.INSTANCE_ADDED, "3.3")
    ]


def test_rejecting_again_changes_nothing_and_other_collections_are_left(index: SqlIndex) -> None:
    index.add_instance(record("2.1"))
    index.add_instance(record("2.2", study="1.2.826.0.2", series="1.2.826.0.2.1",
                              patient_id="PID2", collection="research"))  # fmt: skip
    index.reject([_reject("2.1")])
    seq = index.last_change_seq()

    again = index.reject([_reject("2.1"), _reject("2.2")])  # 2.2 is held in "research"

    assert again.recorded == () and again.removed == () and again.elsewhere == ("2.2",)
    assert index.last_change_seq() == seq
    assert index.get_record("2.2") is not None and index.rejection("2.2") is None
    removed = index.reject([_reject("2.2", collection="research", reason="113039")])
    assert removed.removed == ("2.2",)
    assert _studies(index) == []


def test_a_store_racing_a_rejection_of_the_same_instance_never_both_win(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, READ COMMITTED: the store has checked the rejections (none yet) when the
    rejection runs. Without the UID lock the rejection saw nothing held and committed, and
    the store then committed the instance: stored although rejected. With it, the
    rejection waits for the store's commit and removes what it stored."""
    storer = SqlIndex.open(pg_url)
    rejecter = SqlIndex.open(pg_url)
    upsert = writes.upsert
    results: list[object] = []
    waited: list[bool] = []

    def upsert_then_race(*args: object, **kwargs: object) -> object:
        if not waited:
            rejection = threading.Thread(
                target=lambda: results.append(rejecter.reject([_reject("4.1")]))
            )
            rejection.start()
            rejection.join(1.0)  # finished here: it did not wait for this store
            waited.append(rejection.is_alive())
            threads.append(rejection)
        return upsert(*args, **kwargs)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(writes, "upsert", upsert_then_race)
    try:
        assert storer.add_instance(record("4.1")) is AddOutcome.STORED
        threads[0].join(10)
        assert waited == [True]  # the rejection waited for the store's commit
        [result] = results
        assert isinstance(result, RejectionResult) and result.removed == ("4.1",)
        assert storer.get_record("4.1") is None and storer.rejection("4.1") is not None
        with pytest.raises(InstanceRejected):
            storer.add_instance(record("4.1"))
    finally:
        storer.close()
        rejecter.close()


def test_a_store_that_waits_for_a_rejection_sees_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the rejection holds the UID when the store arrives. The store
    waits for its commit and its check, taken after the wait, finds the rejection."""
    storer = SqlIndex.open(pg_url)
    rejecter = SqlIndex.open(pg_url)
    remove_many = rejections.remove_many
    outcome: list[object] = []
    blocked: list[bool] = []

    def remove_then_race(*args: object, **kwargs: object) -> object:
        def store() -> None:
            try:
                outcome.append(storer.add_instance(record("4.2")))
            except InstanceRejected as exc:
                outcome.append(exc)

        thread = threading.Thread(target=store)
        thread.start()
        thread.join(1.0)
        blocked.append(thread.is_alive())
        threads.append(thread)
        return remove_many(*args, **kwargs)

    threads: list[threading.Thread] = []
    monkeypatch.setattr(rejections, "remove_many", remove_then_race)
    try:
        result = rejecter.reject([_reject("4.2")])
        threads[0].join(10)
        assert blocked == [True] and result.recorded == ("4.2",)
        assert isinstance(outcome[0], InstanceRejected)
        assert storer.get_record("4.2") is None
    finally:
        storer.close()
        rejecter.close()
