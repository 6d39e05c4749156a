"""Study references of stream jobs in the node index, on SQLite and PostgreSQL: kept
durably, the same pair again is a no-op, a reference never silently names two studies."""

from __future__ import annotations

import threading

import pytest

from node.index import RecordConflict, SqlIndex

REF = "ref:" + "5a" * 24


def test_a_reference_maps_back_to_its_study_across_reopening(db_url: str) -> None:
    index = SqlIndex.open(db_url)
    try:
        assert index.study_of_reference(REF) is None
        index.remember_study_reference(REF, "1.2.840.99.1", "local")
        index.remember_study_reference(REF, "1.2.840.99.1", "local")  # resent: no change
        with pytest.raises(RecordConflict, match="names another study"):
            index.remember_study_reference(REF, "1.2.840.99.2", "local")
    finally:
        index.close()
    again = SqlIndex.open(db_url)
    try:
        assert again.study_of_reference(REF) == "1.2.840.99.1"
        assert again.study_of_reference("ref:" + "0" * 48) is None
    finally:
        again.close()


def test_concurrent_triggers_of_one_study_record_it_once(db_url: str) -> None:
    index = SqlIndex.open(db_url)
    errors: list[BaseException] = []

    def remember() -> None:
        try:
            index.remember_study_reference(REF, "1.2.840.99.3", "local")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=remember) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert index.study_of_reference(REF) == "1.2.840.99.3"
    finally:
        index.close()
