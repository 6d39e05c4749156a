"""Fixtures for the node index tests: an open index per backend and a record factory."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from node.index import InstanceRecord, SqlIndex

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


@pytest.fixture
def index(db_url: str) -> Iterator[SqlIndex]:
    """A migrated, empty index on SQLite and on PostgreSQL."""
    idx = SqlIndex.open(db_url)
    try:
        yield idx
    finally:
        idx.close()


def record(
    sop: str,
    *,
    study: str = "1.2.826.0.1.1",
    series: str = "1.2.826.0.1.1.1",
    patient_id: str = "PID1",
    collection: str = "c1",
    **attributes: str | int | None,
) -> InstanceRecord:
    """An :class:`InstanceRecord` with sensible defaults; keyword args are attributes."""
    attrs: dict[str, str | int | None] = {"PatientName": "Doe^John", "Modality": "CT"}
    attrs.update(attributes)
    return InstanceRecord(
        sop_instance_uid=sop,
        sop_class_uid=CT_STORAGE,
        study_instance_uid=study,
        series_instance_uid=series,
        patient_id=patient_id,
        transfer_syntax_uid=EXPLICIT_LE,
        blob_key=f"blob-{sop}",
        size=1000,
        collection=collection,
        attributes=attrs,
        received_at=datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
        calling_ae="MODALITY1",
    )
