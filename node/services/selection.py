"""The held instances a list of study, series and SOP Instance UIDs names (admin commands).

Why a module: ``gridpacs node reject`` must show exactly what it will remove before it
removes it, and remove exactly that; both steps read the selection here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from node.index.records import IndexQuery, InstanceRecord, Level, StoredInstance

_MAX_UIDS = 100
"""UIDs per query (one C-FIND UID list); longer selections are split."""


class SelectingIndex(Protocol):
    def instances(self, query: IndexQuery) -> Iterator[StoredInstance]: ...

    def get_records(self, sop_instance_uids: Sequence[str]) -> dict[str, InstanceRecord]: ...


@dataclass(frozen=True, slots=True)
class Selection:
    """Instances named by study, series or SOP Instance UID (a union), optionally only
    those held in some collections."""

    studies: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    collections: tuple[str, ...] | None = None

    def is_empty(self) -> bool:
        return not (self.studies or self.series or self.instances)


def held(index: SelectingIndex, selection: Selection) -> list[InstanceRecord]:
    """The records of every held instance the selection names, in a stable order
    (patient, study, series, SOP Instance UID)."""
    uids: dict[str, None] = {}
    for keyword, values in (
        ("StudyInstanceUID", selection.studies),
        ("SeriesInstanceUID", selection.series),
        ("SOPInstanceUID", selection.instances),
    ):
        for start in range(0, len(values), _MAX_UIDS):
            query = IndexQuery(
                level=Level.IMAGE,
                filters={keyword: "\\".join(values[start : start + _MAX_UIDS])},
                collections=selection.collections,
            )
            uids.update((i.sop_instance_uid, None) for i in index.instances(query))
    records = index.get_records(list(uids))
    return sorted(
        records.values(),
        key=lambda r: (r.collection, r.patient_id, r.study_instance_uid,
                       r.series_instance_uid, r.sop_instance_uid),
    )  # fmt: skip


def not_held(selection: Selection, records: Sequence[InstanceRecord]) -> list[str]:
    """The UIDs of the selection that matched nothing held."""
    found = {
        "study": {r.study_instance_uid for r in records},
        "series": {r.series_instance_uid for r in records},
        "instance": {r.sop_instance_uid for r in records},
    }
    named = (
        ("study", selection.studies),
        ("series", selection.series),
        ("instance", selection.instances),
    )
    return [uid for kind, uids in named for uid in uids if uid not in found[kind]]
