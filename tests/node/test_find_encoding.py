"""C-FIND responses written from index rows are the bytes pydicom and pynetdicom write.

:class:`ResponseEncoder` and :func:`pending_command` replace pydicom data sets on the
node's C-FIND path; each case here encodes the same answer both ways and compares bytes,
so a difference in padding, element order, VR, length field or character set shows up.
"""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from node.dicom.find_scp import pending_command
from node.dicom.identifiers import ResponseEncoder, to_response
from node.index.records import IndexQuery, Level

SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
STUDY_KEYS = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
    "ReferringPhysicianName",
)
ANSWER: dict[str, object] = {
    "StudyInstanceUID": "1.2.826.0.1.3680043.10.1.123",  # odd length: padded with NUL
    "PatientID": "PID00012",
    "PatientName": "SMITH^JOHN",
    "StudyDate": "20210304",
    "StudyTime": "101500.5",  # odd length: padded with a space
    "AccessionNumber": None,
    "StudyDescription": "CT CHEST W/O",
    "ModalitiesInStudy": ["CT", "SR"],
    "NumberOfStudyRelatedInstances": 151,
    "ReferringPhysicianName": "",
}


def _query(requested: tuple[str, ...], level: Level = Level.STUDY) -> IndexQuery:
    return IndexQuery(level=level, filters={"PatientName": "SMI*"}, requested=requested)


def _pydicom_bytes(match: dict[str, object], query: IndexQuery, syntax: str) -> bytes:
    ds = to_response(match, query, "GRIDPACS")
    implicit = syntax == ImplicitVRLittleEndian
    encoded = encode(ds, implicit, True)
    assert encoded is not None
    return encoded


def _fast_bytes(match: dict[str, object], query: IndexQuery, syntax: str) -> bytes | None:
    encoder = ResponseEncoder.for_query(query, "GRIDPACS", syntax)
    assert encoder is not None
    return encoder.encode(match)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["implicit", "explicit"])
@pytest.mark.parametrize(
    "match",
    [
        ANSWER,
        {**ANSWER, "PatientName": "MÜLLER^JÖRG", "StudyDescription": "Thorax ärztlich"},
        {**ANSWER, "PatientName": "山田^太郎=やまだ^たろう", "ModalitiesInStudy": []},
        {**ANSWER, "RetrieveAETitle": ["NODEA", "NODE_B"]},  # grid answers: the holders
        {**ANSWER, "NumberOfStudyRelatedInstances": None, "PatientID": "A\\B"},
        dict.fromkeys(STUDY_KEYS),
    ],
    ids=["ascii", "latin", "japanese-utf8", "holders", "empty-count", "all-empty"],
)
def test_study_answer_bytes_match_pydicom(match: dict[str, object], syntax: str) -> None:
    query = _query(STUDY_KEYS)
    assert _fast_bytes(match, query, syntax) == _pydicom_bytes(match, query, syntax)


@pytest.mark.parametrize("syntax", SYNTAXES, ids=["implicit", "explicit"])
def test_image_answer_with_binary_and_unknown_keys(syntax: str) -> None:
    # Rows/Columns are US (binary), InstanceNumber IS; a keyword the index does not keep
    # (PatientComments, LT) and a keyword below... any level come back empty as requested
    requested = ("SOPInstanceUID", "Rows", "Columns", "InstanceNumber", "PatientComments")
    query = _query(requested, Level.IMAGE)
    match = {"SOPInstanceUID": "1.2.3.4", "Rows": 512, "Columns": 7, "InstanceNumber": 3}
    assert _fast_bytes(match, query, syntax) == _pydicom_bytes(match, query, syntax)


def test_decoded_answer_carries_only_requested_keys_and_the_charset() -> None:
    query = _query(("PatientName", "StudyDate"))
    raw = _fast_bytes({"PatientName": "ÅSTRÖM^KARIN", "StudyDate": "20200101"}, query,
                      ExplicitVRLittleEndian)  # fmt: skip
    assert raw is not None
    ds = read_dataset(BytesIO(raw), is_implicit_VR=False, is_little_endian=True)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "ÅSTRÖM^KARIN"
    assert sorted(ds.dir()) == [
        "PatientName", "QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet",
        "StudyDate",
    ]  # fmt: skip
    ascii_only = _fast_bytes({"PatientName": "DOE", "StudyDate": ""}, query, ImplicitVRLittleEndian)
    assert ascii_only is not None
    assert b"ISO_IR" not in ascii_only


def test_values_it_does_not_write_fall_back_to_the_dataset_path() -> None:
    query = _query(("PatientID", "StudyDate", "Rows"))
    # non-ASCII in a VR restricted to the default repertoire (DA), a US that is no int
    assert _fast_bytes({"StudyDate": "2021\uff10\uff1304"}, query, ImplicitVRLittleEndian) is None
    assert _fast_bytes({"Rows": "512"}, query, ImplicitVRLittleEndian) is None
    # other transfer syntaxes, and requested keys of VRs it does not write (SQ)
    for syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        assert ResponseEncoder.for_query(query, "GRIDPACS", syntax) is None
    sequence = _query(("PatientID", "ReferencedStudySequence"))
    assert ResponseEncoder.for_query(sequence, "GRIDPACS", ImplicitVRLittleEndian) is None


@pytest.mark.parametrize(
    "sop_class",
    [StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind],
)
@pytest.mark.parametrize("status", [0xFF00, 0xFF01])
@pytest.mark.parametrize("message_id", [1, 7, 65535])
def test_pending_command_is_pynetdicoms_command_set(
    sop_class: str, status: int, message_id: int
) -> None:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    rsp.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    message = C_FIND_RSP()
    message.primitive_to_message(rsp)
    expected = encode(message.command_set, True, True)
    assert pending_command(str(sop_class), message_id, status) == expected


def test_dataset_answers_still_round_trip() -> None:
    """The Dataset path (stock pynetdicom reactors, fallbacks) is unchanged."""
    ds = to_response(ANSWER, _query(STUDY_KEYS), "GRIDPACS")
    assert isinstance(ds, Dataset)
    assert ds.ModalitiesInStudy == ["CT", "SR"]
    assert ds.NumberOfStudyRelatedInstances == 151
