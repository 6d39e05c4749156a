"""Protobuf ↔ :class:`~catalog.reconcile.Held` for ``gridpacs.catalog.v1.HoldingsService``:
the one translation, used by the servicer and the client (kept free of the service so the
client stays light)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.reconcile import Held
from catalog.v1 import holdings_pb2 as pb

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["HoldingsService"].full_name


def micros(moment: datetime | None) -> int:
    """Microseconds since the epoch (UTC); 0 for unknown."""
    if moment is None:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime | None:
    if not value:
        return None
    return EPOCH + timedelta(microseconds=value)


def held_to_pb(node: str, held: Held, out: pb.Holding) -> None:
    out.node = node
    out.collection = held.collection
    out.sop_instance_uid = held.sop_instance_uid
    out.study_instance_uid = held.study_instance_uid
    out.series_instance_uid = held.series_instance_uid
    out.sop_class_uid = held.sop_class_uid
    out.study_date = held.study_date
    out.received_at_us = micros(held.received_at)


def held_from_pb(holding: pb.Holding) -> tuple[str, Held]:
    return holding.node, Held(
        sop_instance_uid=holding.sop_instance_uid,
        collection=holding.collection,
        study_instance_uid=holding.study_instance_uid,
        series_instance_uid=holding.series_instance_uid,
        sop_class_uid=holding.sop_class_uid,
        study_date=holding.study_date,
        received_at=from_micros(holding.received_at_us),
    )
