"""The node's audit rows as DICOM audit messages (PS3.15 A.5.3), for the site's repository.

Why here and not in :mod:`catalog.security.atna`: the rows' targets are the node's own
(called AE, query keys, studies of a retrieve), and a query's keys travel as the DICOM data
set the standard asks for (``ParticipantObjectQuery``), which needs pydicom.

Rows and the messages they become:

- ``dicom.find``: Query (110112), the requestor, the node, the query keys as a data set;
- ``dicom.move``, ``dicom.get``: Begin Transferring DICOM Instances (110102), the node as
  source, the destination, the requestor, the studies, the patient asked for;
- ``dicom.store``: DICOM Instances Transferred (110104, Create), the sender as source, the
  node as destination, the studies;
- ``grid.researcher_fetch``: DICOM Instances Transferred (110104, Read), the node as
  source, the researcher (token user) as destination, the study;
- ``dicom.commit``: DICOM Instances Accessed (110103), the modality, the transaction;
- ``dicom.association_rejected``: Security Alert (110113), Node Authentication;
- ``application.start``, ``application.stop``: Application Activity (110100).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

from catalog.security.atna import (
    APPLICATION_ACTIVITY,
    APPLICATION_START,
    APPLICATION_STOP,
    BEGIN_TRANSFERRING,
    INSTANCES_ACCESSED,
    INSTANCES_TRANSFERRED,
    MINOR_FAILURE,
    NODE_AUTHENTICATION,
    NODE_ID,
    PATIENT_NUMBER,
    PERSON,
    QUERY,
    ROLE_APPLICATION,
    ROLE_DESTINATION,
    ROLE_PATIENT,
    ROLE_REPORT,
    ROLE_SECURITY_RESOURCE,
    ROLE_SOURCE,
    SECURITY_ALERT,
    SOP_CLASS_UID,
    STUDY_INSTANCE_UID,
    SUCCESS,
    SYSTEM_OBJECT,
    URI,
    ActiveParticipant,
    AuditMessage,
    AuditSource,
    Code,
    ParticipantObject,
    catalog_message,
    network_address,
    outcome_indicator,
)
from catalog.security.audit import AuditRecord

#: Study Root Query/Retrieve Information Model - FIND: what a query is recorded against.
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def node_message(record: AuditRecord, source: AuditSource) -> AuditMessage:
    """The message for one row of the node's audit trail."""
    target = record.target
    outcome = outcome_indicator(record.outcome)
    requestor = ActiveParticipant(
        user_id=record.actor, requestor=True, address=network_address(record.peer)
    )
    node = str(target.get("called_ae") or source.source_id)
    action = record.action
    if action == "dicom.find":
        return _message(
            record,
            source,
            QUERY,
            "E",
            outcome,
            (requestor, ActiveParticipant(node, False, ROLE_APPLICATION)),
            (_query_object(target.get("keys") or {}, target.get("level")),),
        )
    if action in ("dicom.move", "dicom.get"):
        destination = str(target.get("destination") or "(C-GET)")
        if destination == "(C-GET)":  # the requestor receives on its own association
            receiver = ActiveParticipant(
                record.actor, True, ROLE_DESTINATION, address=requestor.address
            )
            participants: tuple[ActiveParticipant, ...] = (receiver,)
        else:
            participants = (ActiveParticipant(destination, False, ROLE_DESTINATION), requestor)
        return _message(
            record,
            source,
            BEGIN_TRANSFERRING,
            "E",
            outcome,
            (ActiveParticipant(node, False, ROLE_SOURCE), *participants),
            _studies(target) + _patients(target.get("keys") or {}),
        )
    if action == "dicom.store":
        return _message(
            record,
            source,
            INSTANCES_TRANSFERRED,
            "C",
            outcome,
            (
                ActiveParticipant(record.actor, True, ROLE_SOURCE, address=requestor.address),
                ActiveParticipant(node, False, ROLE_DESTINATION),
            ),
            _studies(target),
        )
    if action == "grid.researcher_fetch":  # a person took an instance off the node
        study = target.get("study")
        objects = _studies({"studies": {study: 1}}) if study else ()
        return _message(
            record, source, INSTANCES_TRANSFERRED, "R", outcome,
            (ActiveParticipant(source.source_id, False, ROLE_SOURCE),
             ActiveParticipant(record.actor, True, ROLE_DESTINATION,
                               address=requestor.address,
                               alternative_user_id=str(target.get("token_id") or "") or None)),
            objects,
        )  # fmt: skip
    if action == "dicom.commit":
        transaction = str(target.get("transaction_uid") or "")
        return _message(
            record,
            source,
            INSTANCES_ACCESSED,
            "R",
            outcome,
            (requestor, ActiveParticipant(node, False, ROLE_APPLICATION)),
            (
                ParticipantObject(
                    transaction or "-",
                    SYSTEM_OBJECT,
                    ROLE_REPORT,
                    URI,
                    description=f"Storage Commitment of {target.get('instances', 0)} instances",
                ),
            ),
        )
    if action == "dicom.association_rejected":
        return _message(
            record,
            source,
            SECURITY_ALERT,
            "E",
            MINOR_FAILURE,
            (ActiveParticipant(node, False, ROLE_APPLICATION), requestor),
            (
                ParticipantObject(
                    record.actor or "-",
                    SYSTEM_OBJECT,
                    ROLE_SECURITY_RESOURCE,
                    NODE_ID,
                    details=(("Alert Description", record.outcome.encode("utf-8")),),
                ),
            ),
            event_types=(NODE_AUTHENTICATION,),
        )
    if action in ("application.start", "application.stop"):
        kind = APPLICATION_START if action.endswith("start") else APPLICATION_STOP
        return _message(
            record,
            source,
            APPLICATION_ACTIVITY,
            "E",
            SUCCESS,
            (ActiveParticipant(record.actor, False, ROLE_APPLICATION),),
            (),
            event_types=(kind,),
        )
    return catalog_message(record, source)  # anything new still reaches the repository


def _message(
    record: AuditRecord,
    source: AuditSource,
    event: Code,
    action: str,
    outcome: int,
    participants: tuple[ActiveParticipant, ...],
    objects: tuple[ParticipantObject, ...],
    *,
    event_types: tuple[Code, ...] = (),
) -> AuditMessage:
    reason = record.target.get("reason")
    return AuditMessage(
        event=event,
        action=action,
        at=record.at,
        outcome=outcome,
        participants=participants,
        source=source,
        objects=objects,
        event_types=event_types,
        outcome_description=str(reason)[:1024] if reason else None,
    )


def _query_object(keys: Mapping[str, Any], level: Any) -> ParticipantObject:
    return ParticipantObject(
        object_id=STUDY_ROOT_FIND,
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        id_type=SOP_CLASS_UID,
        query=query_dataset(keys, str(level or "")),
        details=(("TransferSyntax", _EXPLICIT_LITTLE.encode("ascii")),),
    )


def query_dataset(keys: Mapping[str, Any], level: str) -> bytes:
    """The query keys as an Explicit VR Little Endian data set (no preamble, no meta).

    Encoded here rather than through a pydicom ``Dataset``: every key is a short text VR
    (CS, DA, LO, PN, SH, UI), so an element is a tag, a VR, a length and the padded value;
    pydicom's dictionary gives the tag and VR, and the tests read the bytes back with
    pydicom. A pydicom data set per row cost half of the export's time.
    """
    values = {**({"QueryRetrieveLevel": level} if level else {}), **keys}
    utf8 = any(ord(c) > 127 for value in values.values() for c in str(value))
    if utf8:
        values["SpecificCharacterSet"] = "ISO_IR 192"
    elements = []
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        if tag is None or not value:
            continue
        vr = dictionary_VR(tag)
        if vr not in _SHORT_TEXT_VRS:
            continue
        raw = str(value).encode("utf-8" if utf8 else "ascii", "replace")[:_MAX_VALUE]
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
        elements.append((tag, _ELEMENT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw))
    return b"".join(encoded for _, encoded in sorted(elements))


_SHORT_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"}
)
_ELEMENT = struct.Struct("<HH2sH")
_MAX_VALUE = 64 * 1024 - 2


def _studies(target: Mapping[str, Any]) -> tuple[ParticipantObject, ...]:
    studies = target.get("studies") or ()
    if isinstance(studies, Mapping):  # a store row counts instances per study
        items: list[tuple[Any, str | None]] = [
            (uid, f"{count} instances") for uid, count in studies.items()
        ]
    else:
        items = [(uid, None) for uid in studies]
    return tuple(
        ParticipantObject(
            str(uid), SYSTEM_OBJECT, ROLE_REPORT, STUDY_INSTANCE_UID, description=note
        )
        for uid, note in items
    )


def _patients(keys: Mapping[str, Any]) -> tuple[ParticipantObject, ...]:
    patient = keys.get("PatientID")
    if not patient:
        return ()
    return (ParticipantObject(str(patient), PERSON, ROLE_PATIENT, PATIENT_NUMBER),)
