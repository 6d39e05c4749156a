"""The index's side of reconciliation: list a period's instances, re-enqueue or retract.

Re-enqueueing appends a fresh ``INSTANCE_ADDED`` outbox row for an instance the index still
holds (the catalog lost its publish); retracting appends an ``INSTANCE_DELETED`` row for one
it does not hold (the catalog still attributes it to this node). Both go through the outbox
so the publisher sends them like any other change and every replica converges.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from .models import Instance, Series, Study, table_of
from .records import InstanceRecord

ST, SE, IN = (table_of(m) for m in (Study, Series, Instance))


@dataclass(frozen=True, slots=True)
class InventoryEntry:
    """One held instance as reconciliation sees it."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    collection: str
    study_date: str
    received_at: datetime | None


def inventory_statement(
    start_date: str,
    end_date: str,
    received_from: datetime,
    received_until: datetime,
    collections: Collection[str] | None,
) -> Any:
    """Instances whose StudyDate is in [start_date, end_date] (YYYYMMDD) or that were
    received in [received_from, received_until), optionally of some collections only.

    The UNION of two index-driven selects (studies by StudyDate, instances by received_at):
    one OR across the two tables would scan every instance row.
    """
    columns = (
        IN.c.sop_instance_uid,
        ST.c.study_instance_uid,
        SE.c.series_instance_uid,
        IN.c.sop_class_uid,
        ST.c.collection,
        ST.c.study_date,
        IN.c.received_at,
    )
    by_date = (
        sa.select(*columns)
        .select_from(ST.join(SE, SE.c.study_pk == ST.c.pk).join(IN, IN.c.series_pk == SE.c.pk))
        .where(ST.c.study_date.between(start_date, end_date))
    )
    by_received = (
        sa.select(*columns)
        .select_from(IN.join(SE, IN.c.series_pk == SE.c.pk).join(ST, SE.c.study_pk == ST.c.pk))
        .where(IN.c.received_at >= received_from, IN.c.received_at < received_until)
    )
    if collections is not None:
        by_date = by_date.where(ST.c.collection.in_(sorted(collections)))
        by_received = by_received.where(ST.c.collection.in_(sorted(collections)))
    return sa.union(by_date, by_received)


def tombstone(sop_instance_uid: str, collection: str) -> InstanceRecord:
    """What a deletion change needs: the instance's UID and collection."""
    return InstanceRecord(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid="",
        study_instance_uid="",
        series_instance_uid="",
        patient_id="",
        transfer_syntax_uid="",
        blob_key="",
        size=0,
        collection=collection,
    )


@dataclass(frozen=True, slots=True)
class Requeued:
    """The outcome of a re-enqueue or retraction: what went to the outbox, what did not."""

    enqueued: Sequence[str]
    skipped: Sequence[str]
