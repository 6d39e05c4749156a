"""The node's audit rows as DICOM audit messages: each kind of row gets its PS3.15 A.5.3
event, its participants in their roles and its objects (what a repository searches by)."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from catalog.security.atna import AuditSource, to_xml
from catalog.security.audit import AuditRecord
from node.audit_atna import node_message, query_dataset

SOURCE = AuditSource("GRIDPACS", "hospital-a")


def _row(action: str, target: dict[str, Any], outcome: str = "served", actor: str = "WS1"
         ) -> AuditRecord:  # fmt: skip
    at = dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.UTC)
    return AuditRecord(7, at, actor, action, target, "10.2.3.4:4242", outcome, "0" * 64, "1" * 64)


def _xml(row: AuditRecord) -> ET.Element:
    return ET.fromstring(to_xml(node_message(row, SOURCE)))


def _event(doc: ET.Element) -> tuple[str | None, str | None, str | None]:
    event = doc.find("EventIdentification")
    assert event is not None
    code = event.find("EventID")
    assert code is not None
    return code.get("csd-code"), event.get("EventActionCode"), event.get("EventOutcomeIndicator")


def _participants(doc: ET.Element) -> list[tuple[str | None, str | None, str | None]]:
    return [(p.get("UserID"), p.get("UserIsRequestor"),
             p.find("RoleIDCode").get("csd-code") if p.find("RoleIDCode") is not None else None)
            for p in doc.iter("ActiveParticipant")]  # fmt: skip


def _objects(doc: ET.Element) -> list[tuple[str | None, str | None, str | None]]:
    return [(o.get("ParticipantObjectID"), o.get("ParticipantObjectTypeCodeRole"),
             o.find("ParticipantObjectIDTypeCode").get("csd-code"))  # type: ignore[union-attr]
            for o in doc.iter("ParticipantObjectIdentification")]  # fmt: skip


def test_a_move_is_begin_transferring_from_the_node_to_its_destination_for_the_requestor() -> None:
    doc = _xml(_row("dicom.move", {"called_ae": "GRIDPACS", "destination": "VIEWER",
                                   "instances": 3, "studies": ["1.2.3", "1.2.4"],
                                   "studies_total": 2, "keys": {"PatientID": "P-9"}}))  # fmt: skip
    assert _event(doc) == ("110102", "E", "0")
    assert _participants(doc) == [
        ("GRIDPACS", "false", "110153"),  # source: the node
        ("VIEWER", "false", "110152"),  # destination
        ("WS1", "true", None),  # who asked
    ]
    assert _objects(doc) == [("1.2.3", "3", "110180"), ("1.2.4", "3", "110180"),
                             ("P-9", "1", "2")]  # fmt: skip


def test_a_get_sends_to_the_requestor_itself() -> None:
    doc = _xml(_row("dicom.get", {"called_ae": "GRIDPACS", "destination": "(C-GET)",
                                  "studies": ["1.2.3"]}))  # fmt: skip
    assert _participants(doc) == [("GRIDPACS", "false", "110153"), ("WS1", "true", "110152")]
    ws = list(doc.iter("ActiveParticipant"))[1]
    assert ws.get("NetworkAccessPointID") == "10.2.3.4"


def test_a_refused_move_is_a_minor_failure_with_its_reason() -> None:
    doc = _xml(_row("dicom.move", {"called_ae": "GRIDPACS", "destination": "VIEWER",
                                   "reason": "WS1 may not move"}, "0x0124"))  # fmt: skip
    assert _event(doc) == ("110102", "E", "4")
    assert doc.findtext("EventIdentification/EventOutcomeDescription") == "WS1 may not move"


def test_a_store_association_is_instances_transferred_from_the_sender() -> None:
    doc = _xml(_row("dicom.store", {"called_ae": "GRIDPACS", "instances": 5, "refused": 0,
                                    "studies": {"1.2.3": 5}}, "released", actor="CT1"))  # fmt: skip
    assert _event(doc) == ("110104", "C", "0")
    assert _participants(doc) == [("CT1", "true", "110153"), ("GRIDPACS", "false", "110152")]
    assert _objects(doc) == [("1.2.3", "3", "110180")]
    assert doc.findtext("ParticipantObjectIdentification/ParticipantObjectDescription") == (
        "5 instances"
    )


@pytest.mark.parametrize(
    ("action", "target", "event"),
    [
        ("dicom.commit", {"transaction_uid": "1.9", "instances": 2}, ("110103", "R", "0")),
        ("dicom.association_rejected", {"called_ae": "GRIDPACS"}, ("110113", "E", "4")),
        ("application.start", {"name": "site-a"}, ("110100", "E", "0")),
    ],
)
def test_other_rows_have_their_own_events(
    action: str, target: dict[str, Any], event: tuple[str, str, str]
) -> None:
    outcome = "calling AE title not allowed" if "rejected" in action else "0x0000"
    assert _event(_xml(_row(action, target, outcome))) == event


def test_a_stop_row_says_application_stop() -> None:
    doc = _xml(_row("application.stop", {"name": "site-a"}, "stopped", actor="GRIDPACS"))
    code = doc.find("EventIdentification/EventTypeCode")
    assert code is not None and code.get("csd-code") == "110121"


@pytest.mark.parametrize(
    "keys",
    [
        {"PatientID": "P1", "StudyInstanceUID": "1.2.345", "StudyDate": "20260101-"},
        {"PatientName": "Müller^Hans", "AccessionNumber": "A7", "ModalitiesInStudy": "CT"},
    ],
)
def test_query_keys_are_the_data_set_pydicom_would_write(keys: dict[str, str]) -> None:
    expected = Dataset()
    expected.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(expected, keyword, value)
    if "PatientName" in keys:
        expected.SpecificCharacterSet = "ISO_IR 192"
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, expected, parent_encoding=expected.get("SpecificCharacterSet", "iso8859"))
    assert query_dataset(keys, "STUDY") == buffer.getvalue()


def test_hostile_query_strings_still_make_a_document_the_repository_can_parse() -> None:
    hostile = 'O\'Brien"<script>&\x00\x1b]0;pwned\x07^'
    doc = _xml(_row("dicom.find", {"called_ae": "GRIDPACS", "level": "STUDY",
                                   "keys": {"PatientName": hostile}},
                    outcome="0xC000", actor='WS"<1>'))  # fmt: skip
    requestor = doc.find("ActiveParticipant")
    assert requestor is not None and requestor.get("UserID") == 'WS"<1>'
    encoded = doc.findtext("ParticipantObjectIdentification/ParticipantObjectQuery") or ""
    keys = read_dataset(DicomBytesIO(base64.b64decode(encoded)), is_implicit_VR=False,
                        is_little_endian=True)  # fmt: skip
    assert str(keys.PatientName).startswith("O'Brien\"<script>&")


def test_a_reason_with_control_characters_is_kept_without_them() -> None:
    doc = _xml(_row("dicom.move", {"destination": "X", "reason": "bad\x00\x1bname <&>"},
                    "0x0124"))  # fmt: skip
    assert doc.findtext("EventIdentification/EventOutcomeDescription") == "badname <&>"


def test_a_researcher_fetch_is_instances_transferred_to_the_token_user() -> None:
    row = _row("grid.researcher_fetch", {"study": "1.2.3", "sop_instance_uid": "1.2.3.4",
                                         "collection": "lung", "token_id": "t9"},
               actor="alice")  # fmt: skip
    doc = _xml(row)
    assert _event(doc) == ("110104", "R", "0")
    assert _participants(doc) == [("GRIDPACS", "false", "110153"), ("alice", "true", "110152")]
    assert list(doc.iter("ActiveParticipant"))[1].get("AlternativeUserID") == "t9"
    assert _objects(doc) == [("1.2.3", "3", "110180")]
