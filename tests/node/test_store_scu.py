"""Stored data sets go out of C-MOVE and C-GET as their stored bytes, parsed only to change.

End to end, every retrieve test (DCMTK ``movescu``/``getscu``, pynetdicom, the grid) checks
that what arrives is what was stored; these check that the bytes were not parsed and
encoded again to get there, and that a change of encoding still is.
"""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from node.dicom.pending import pending_response
from node.dicom.store_scu import encode, store_pdus, store_request
from node.services.retrieve import StoredDataset
from tests.factories import make_dataset, to_bytes


class _CountingParses(StoredDataset):
    parses = 0

    def parsed(self):  # type: ignore[no-untyped-def]
        type(self).parses += 1
        return super().parsed()


def test_a_stored_data_set_is_sent_as_its_bytes_without_being_parsed() -> None:
    data = to_bytes(make_dataset(rows=128, columns=128))
    _CountingParses.parses = 0
    stored = _CountingParses(data)
    assert (stored.SOPClassUID, stored.SOPInstanceUID) == (
        dcmread(io.BytesIO(data)).SOPClassUID,
        dcmread(io.BytesIO(data)).SOPInstanceUID,
    )
    assert "PixelData" not in stored and "PatientName" not in stored  # nothing else read
    sent = encode(stored, False, True)  # the stored syntax: Explicit VR Little Endian
    assert sent is not None and data.endswith(sent) and len(sent) > 128 * 128 * 2
    assert _CountingParses.parses == 0


def test_another_encoding_is_pydicoms_from_the_whole_data_set() -> None:
    ds = make_dataset()
    data = to_bytes(ds)
    _CountingParses.parses = 0
    implicit = encode(_CountingParses(data), True, True)
    assert _CountingParses.parses == 1
    assert implicit is not None and not data.endswith(implicit)
    back = decode(io.BytesIO(implicit), True, True)  # as the peer reads it
    assert back.PatientName == ds.PatientName and back.PixelData == ds.PixelData


def test_a_file_meta_without_group_length_is_parsed_to_find_its_data_set() -> None:
    data = to_bytes(make_dataset())
    meta_length = int.from_bytes(data[140:144], "little")
    # the same file, its file meta without (0002,0000): nothing says where the data set starts
    bare = data[:132] + data[144:]
    _CountingParses.parses = 0
    stored = _CountingParses(bare)
    assert stored.encoded is None
    assert encode(stored, False, True) == data[144 + meta_length :]
    assert _CountingParses.parses == 1


def _pynetdicom_command_set(primitive: object) -> bytes:
    """The command set pynetdicom encodes for ``primitive`` (what it sends upstream)."""
    message = (_RSP_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is not None  # type: ignore[attr-defined]
               else _RQ_TO_MESSAGE)[type(primitive)]()  # fmt: skip
    message.primitive_to_message(primitive)
    return bytes(encode_dataset(message.command_set, True, True))


@pytest.mark.parametrize("originator", [None, ("MOVESCU", 7)], ids=["c-get", "c-move"])
def test_a_store_request_is_framed_as_pynetdicom_frames_it(
    originator: tuple[str, int] | None,
) -> None:
    ds = make_dataset(rows=100, columns=100)
    stored = StoredDataset(to_bytes(ds))
    assert stored.encoded is not None
    request = C_STORE()
    request.MessageID = 42
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    if originator is not None:
        request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID = originator
    request.DataSet = io.BytesIO(bytes(stored.encoded))
    command = store_request(ds.SOPClassUID, ds.SOPInstanceUID, 42, *(originator or (None, None)))
    assert command == _pynetdicom_command_set(request)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    expected = b"".join(_p_data_tf(primitive) for primitive in message.encode_msg(5, 4096))
    assert store_pdus(5, command, stored.encoded, 4096) == expected


def _p_data_tf(primitive: P_DATA) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@pytest.mark.parametrize("kind", [C_MOVE, C_GET])
def test_a_pending_retrieve_response_is_encoded_as_pynetdicom_encodes_it(kind: type) -> None:
    response = kind()
    response.MessageIDBeingRespondedTo = 3
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.2"
    response.Status = 0xFF00
    response.NumberOfRemainingSuboperations = 97
    response.NumberOfCompletedSuboperations = 2
    response.NumberOfFailedSuboperations = 1
    response.NumberOfWarningSuboperations = 0
    assert pending_response(response) == _pynetdicom_command_set(response)
    response.Status = 0x0000  # a final response: pynetdicom's, with its identifier rules
    assert pending_response(response) is None
