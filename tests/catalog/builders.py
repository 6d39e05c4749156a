"""Catalog records made in code for tests (what a node would publish)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count

from catalog.records import Change, ChangeKind, InstanceRecord

_uid = count(1)


def uid(prefix: str = "1.2.826.0.1.3680043.10.999") -> str:
    return f"{prefix}.{next(_uid)}"


@dataclass
class StudyBuilder:
    """One study's identity; ``instances`` makes its records in one or more series."""

    patient_id: str = "PAT001"
    patient_name: str = "DOE^JANE"
    study_date: str = "20240615"
    accession: str = "ACC001"
    description: str = "CT CHEST"
    collection: str = "clinical"
    study_uid: str = field(default_factory=uid)

    def instances(
        self, n: int, *, modality: str = "CT", series_uid: str | None = None
    ) -> list[InstanceRecord]:
        series = series_uid or uid()
        return [
            InstanceRecord(
                sop_instance_uid=uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid=self.study_uid,
                series_instance_uid=series,
                patient_id=self.patient_id,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                blob_key=f"{i:064x}",
                size=1000 + i,
                collection=self.collection,
                attributes={
                    "PatientName": self.patient_name,
                    "PatientBirthDate": "19700101",
                    "PatientSex": "F",
                    "StudyDate": self.study_date,
                    "StudyTime": "101500",
                    "AccessionNumber": self.accession,
                    "StudyDescription": self.description,
                    "Modality": modality,
                    "SeriesNumber": 1,
                    "InstanceNumber": i + 1,
                    "Rows": 64,
                    "Columns": None,
                },
                received_at=datetime(2024, 6, 15, 10, 15, tzinfo=UTC),
                calling_ae="MODALITY",
            )
            for i in range(n)
        ]


class Outbox:
    """A node's outbox: numbers changes with its own increasing seq."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0

    def added(self, records: list[InstanceRecord]) -> list[Change]:
        return [self._next(ChangeKind.INSTANCE_ADDED, r) for r in records]

    def deleted(self, records: list[InstanceRecord]) -> list[Change]:
        return [self._next(ChangeKind.INSTANCE_DELETED, r) for r in records]

    def rejected(self, records: list[InstanceRecord], reason: str = "113001") -> list[Change]:
        return [self._next(ChangeKind.INSTANCE_REJECTED, r, reason) for r in records]

    def _next(self, kind: ChangeKind, record: InstanceRecord, reason: str = "") -> Change:
        self.seq += 1
        return Change(seq=self.seq, kind=kind, record=record, reason=reason)
