"""Protobuf <-> :mod:`catalog.records` conversions, shared by the servicer and the client.

Only ``catalog.server`` and ``catalog.client`` touch ``*_pb2`` types; everything else uses
the domain dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from catalog.records import (
    AttributeValue,
    Change,
    ChangeKind,
    Holder,
    InstanceLocation,
    InstanceMatch,
    InstanceRecord,
    NodeInfo,
    QueryFilter,
    SeriesMatch,
    StudyMatch,
)
from catalog.v1 import catalog_pb2 as pb
from catalog.v1 import records_pb2 as rpb

KIND_TO_PB = {
    ChangeKind.INSTANCE_ADDED: rpb.CHANGE_KIND_INSTANCE_ADDED,
    ChangeKind.INSTANCE_DELETED: rpb.CHANGE_KIND_INSTANCE_DELETED,
    ChangeKind.SUPERSEDED: rpb.CHANGE_KIND_SUPERSEDED,
    ChangeKind.STORE_RESET: rpb.CHANGE_KIND_STORE_RESET,
    ChangeKind.INSTANCE_REJECTED: rpb.CHANGE_KIND_INSTANCE_REJECTED,
}
KIND_FROM_PB = {v: k for k, v in KIND_TO_PB.items()}


class ConversionError(ValueError):
    """A message cannot be turned into a domain value (unknown enum ...)."""


def timestamp_to_pb(value: datetime | None, target: Timestamp) -> None:
    if value is not None:
        target.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))


def timestamp_from_pb(message: Timestamp, present: bool) -> datetime | None:
    return message.ToDatetime(tzinfo=UTC) if present else None


def attributes_to_pb(attrs: Mapping[str, AttributeValue], target: object) -> None:
    """Fill a ``map<string, AttributeValue>`` field; ``None`` stays an empty value."""
    for key, value in attrs.items():
        slot = target[key]  # type: ignore[index]
        if isinstance(value, bool):
            slot.integer = int(value)
        elif isinstance(value, int):
            slot.integer = value
        elif value is not None:
            slot.text = str(value)


def attributes_from_pb(source: Mapping[str, rpb.AttributeValue]) -> dict[str, AttributeValue]:
    result: dict[str, AttributeValue] = {}
    for key, value in source.items():
        which = value.WhichOneof("value")
        result[key] = value.text if which == "text" else value.integer if which else None
    return result


def record_to_pb(record: InstanceRecord, target: rpb.InstanceRecord) -> None:
    target.sop_instance_uid = record.sop_instance_uid
    target.sop_class_uid = record.sop_class_uid
    target.study_instance_uid = record.study_instance_uid
    target.series_instance_uid = record.series_instance_uid
    target.patient_id = record.patient_id
    target.transfer_syntax_uid = record.transfer_syntax_uid
    target.blob_key = record.blob_key
    target.size = record.size
    target.collection = record.collection
    attributes_to_pb(record.attributes, target.attributes)
    timestamp_to_pb(record.received_at, target.received_at)
    target.calling_ae = record.calling_ae


def record_from_pb(message: rpb.InstanceRecord) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=message.sop_instance_uid,
        sop_class_uid=message.sop_class_uid,
        study_instance_uid=message.study_instance_uid,
        series_instance_uid=message.series_instance_uid,
        patient_id=message.patient_id,
        transfer_syntax_uid=message.transfer_syntax_uid,
        blob_key=message.blob_key,
        size=message.size,
        collection=message.collection,
        attributes=attributes_from_pb(message.attributes),
        received_at=timestamp_from_pb(message.received_at, message.HasField("received_at")),
        calling_ae=message.calling_ae,
    )


def change_to_pb(change: Change, target: rpb.Change) -> None:
    target.seq = change.seq
    target.kind = KIND_TO_PB[change.kind]
    target.reason = change.reason
    if change.record is not None:
        record_to_pb(change.record, target.record)


def change_from_pb(message: rpb.Change) -> Change:
    try:
        kind = KIND_FROM_PB[message.kind]
    except KeyError:
        raise ConversionError(f"change seq {message.seq}: unknown kind {message.kind}") from None
    record = record_from_pb(message.record) if message.HasField("record") else None
    return Change(seq=message.seq, kind=kind, record=record, reason=message.reason)


def node_to_pb(node: NodeInfo, target: rpb.NodeDescriptor) -> None:
    target.name = node.name
    target.ae_title = node.ae_title
    target.dicom_host = node.dicom_host
    target.dicom_port = node.dicom_port
    target.peer_address = node.peer_address
    timestamp_to_pb(node.updated_at, target.updated_at)
    timestamp_to_pb(node.last_seen, target.last_seen)


def node_from_pb(message: rpb.NodeDescriptor) -> NodeInfo:
    return NodeInfo(
        name=message.name,
        ae_title=message.ae_title,
        dicom_host=message.dicom_host,
        dicom_port=message.dicom_port,
        peer_address=message.peer_address,
        updated_at=timestamp_from_pb(message.updated_at, message.HasField("updated_at")),
        last_seen=timestamp_from_pb(message.last_seen, message.HasField("last_seen")),
    )


def filter_to_pb(query: QueryFilter, target: pb.QueryFilter) -> None:
    target.patient_id = query.patient_id
    target.patient_name = query.patient_name
    target.study_date = query.study_date
    target.modalities.extend(query.modalities)
    target.accession_number = query.accession_number
    target.study_instance_uids.extend(query.study_instance_uids)
    target.series_instance_uids.extend(query.series_instance_uids)
    target.sop_instance_uids.extend(query.sop_instance_uids)
    target.collections.extend(query.collections)
    target.study_description = query.study_description
    target.limit = query.limit


def filter_from_pb(message: pb.QueryFilter) -> QueryFilter:
    return QueryFilter(
        patient_id=message.patient_id,
        patient_name=message.patient_name,
        study_date=message.study_date,
        modalities=tuple(message.modalities),
        accession_number=message.accession_number,
        study_instance_uids=tuple(message.study_instance_uids),
        series_instance_uids=tuple(message.series_instance_uids),
        sop_instance_uids=tuple(message.sop_instance_uids),
        collections=tuple(message.collections),
        study_description=message.study_description,
        limit=message.limit,
    )


def holders_to_pb(holders: tuple[Holder, ...], target: object) -> None:
    for holder in holders:
        target.add(node=holder.node, ae_title=holder.ae_title, collection=holder.collection)  # type: ignore[attr-defined]


def holders_from_pb(source: object) -> tuple[Holder, ...]:
    return tuple(
        Holder(node=h.node, ae_title=h.ae_title, collection=h.collection)
        for h in source  # type: ignore[attr-defined]
    )


def study_to_pb(match: StudyMatch, target: pb.StudyMatch) -> None:
    target.study_instance_uid = match.study_instance_uid
    attributes_to_pb(match.attributes, target.attributes)
    target.modalities_in_study.extend(match.modalities_in_study)
    target.number_of_series = match.number_of_series
    target.number_of_instances = match.number_of_instances
    holders_to_pb(match.holders, target.holders)


def study_from_pb(message: pb.StudyMatch) -> StudyMatch:
    return StudyMatch(
        study_instance_uid=message.study_instance_uid,
        attributes=attributes_from_pb(message.attributes),
        modalities_in_study=tuple(message.modalities_in_study),
        number_of_series=message.number_of_series,
        number_of_instances=message.number_of_instances,
        holders=holders_from_pb(message.holders),
    )


def series_to_pb(match: SeriesMatch, target: pb.SeriesMatch) -> None:
    target.study_instance_uid = match.study_instance_uid
    target.series_instance_uid = match.series_instance_uid
    attributes_to_pb(match.attributes, target.attributes)
    target.number_of_instances = match.number_of_instances
    holders_to_pb(match.holders, target.holders)


def series_from_pb(message: pb.SeriesMatch) -> SeriesMatch:
    return SeriesMatch(
        study_instance_uid=message.study_instance_uid,
        series_instance_uid=message.series_instance_uid,
        attributes=attributes_from_pb(message.attributes),
        number_of_instances=message.number_of_instances,
        holders=holders_from_pb(message.holders),
    )


def instance_to_pb(match: InstanceMatch, target: pb.InstanceMatch) -> None:
    target.study_instance_uid = match.study_instance_uid
    target.series_instance_uid = match.series_instance_uid
    target.sop_instance_uid = match.sop_instance_uid
    target.sop_class_uid = match.sop_class_uid
    attributes_to_pb(match.attributes, target.attributes)
    holders_to_pb(match.holders, target.holders)


def instance_from_pb(message: pb.InstanceMatch) -> InstanceMatch:
    return InstanceMatch(
        study_instance_uid=message.study_instance_uid,
        series_instance_uid=message.series_instance_uid,
        sop_instance_uid=message.sop_instance_uid,
        sop_class_uid=message.sop_class_uid,
        attributes=attributes_from_pb(message.attributes),
        holders=holders_from_pb(message.holders),
    )


def location_to_pb(location: InstanceLocation, target: pb.InstanceLocation) -> None:
    target.study_instance_uid = location.study_instance_uid
    target.series_instance_uid = location.series_instance_uid
    target.sop_instance_uid = location.sop_instance_uid
    target.sop_class_uid = location.sop_class_uid
    target.transfer_syntax_uid = location.transfer_syntax_uid
    target.size = location.size
    holders_to_pb(location.holders, target.holders)
    target.peer_addresses.extend(location.peer_addresses)


def location_from_pb(message: pb.InstanceLocation) -> InstanceLocation:
    return InstanceLocation(
        study_instance_uid=message.study_instance_uid,
        series_instance_uid=message.series_instance_uid,
        sop_instance_uid=message.sop_instance_uid,
        sop_class_uid=message.sop_class_uid,
        transfer_syntax_uid=message.transfer_syntax_uid,
        size=message.size,
        holders=holders_from_pb(message.holders),
        peer_addresses=tuple(message.peer_addresses),
    )
