"""C-STOREs the node sends (C-MOVE and C-GET sub-operations): stored bytes go out as stored.

pynetdicom's ``Association.send_c_store`` encodes the data set it is given with pydicom's
writer. A :class:`~node.services.retrieve.StoredDataset` already holds its data set's
bytes, so when the accepted transfer syntax encodes as the stored one (the same VR
encoding and byte order, not deflated) those bytes are sent as they are: the instance is
never parsed, and what the workstation receives is byte for byte what the modality sent.
Any other encoding is pydicom's, from the whole parsed data set.

On the node's associations (a C-MOVE's sub-association, a C-GET's own association, a
stream's results: :class:`FramedStores`) such a C-STORE is also *framed* here: its
command set and its P-DATA-TF PDUs are built in one piece and handed to the event-driven
DUL, which writes them at once (:class:`~node.dicom.store_scp.RawPData`). pynetdicom builds
a primitive, a PDU object and a queue hand-off per 16 KiB, dozens per CT image. Its own
code still takes the response.

pynetdicom has no hook for either: its ``association`` module's ``encode`` is wrapped, and
:mod:`node.dicom.reactor` gives the node's associations this class when it creates them,
only for the pynetdicom versions it supports.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import pynetdicom.association
from pydicom.dataset import Dataset
from pynetdicom.association import Association

from node.dicom.store_scp import C_STORE_RQ, RawPData, command_element, command_set, uid_value
from node.services.retrieve import StoredDataset

_DATA_SET_PRESENT, _PRIORITY_LOW = 0x0001, 0x0002
_PDU_PDV = struct.Struct(">BBIIBB")
_P_DATA_TF, _DATA, _DATA_LAST, _COMMAND_LAST = 0x04, 0x00, 0x02, 0x03
#: PDV bytes that are not the fragment: item length (4), context ID, message control header
_PDV_OVERHEAD = 6

_original_encode = pynetdicom.association.encode


def encode(
    ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False
) -> bytes | None:
    """pynetdicom's ``encode``, passing a stored data set's own bytes through."""
    if isinstance(ds, StoredDataset):
        stored = _as_stored(ds, is_implicit_vr, is_little_endian, deflated)
        if stored is not None:
            return bytes(stored)
        ds = ds.parsed()
    result: Any = _original_encode(ds, is_implicit_vr, is_little_endian, deflated)
    return result


def _as_stored(
    ds: StoredDataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool
) -> memoryview | None:
    """``ds``'s data set bytes when they are already encoded as asked; None where
    pydicom must encode the parsed data set (another VR encoding or byte order, deflate)."""
    syntax = ds.file_meta.TransferSyntaxUID
    if ds.encoded is None or deflated or syntax.is_deflated:
        return None
    if (syntax.is_implicit_VR, syntax.is_little_endian) != (is_implicit_vr, is_little_endian):
        return None
    return ds.encoded


def install_stored_bytes_pass_through() -> None:
    """Make this process's C-STOREs send stored data sets' bytes as they are (called, once,
    for the pynetdicom versions :mod:`node.dicom.reactor` supports)."""
    pynetdicom.association.encode = encode


def store_request(
    sop_class_uid: str,
    sop_instance_uid: str,
    message_id: int,
    originator_aet: str | None = None,
    originator_id: int | None = None,
    priority: int = _PRIORITY_LOW,
) -> bytes:
    """The C-STORE-RQ command set (Implicit VR Little Endian), as pynetdicom encodes it."""
    originator = originator_aet.strip().encode("ascii") if originator_aet else b""
    return command_set(
        (
            command_element(0x0002, uid_value(sop_class_uid)),
            command_element(0x0100, struct.pack("<H", C_STORE_RQ)),
            command_element(0x0110, struct.pack("<H", message_id)),
            command_element(0x0700, struct.pack("<H", priority)),
            command_element(0x0800, struct.pack("<H", _DATA_SET_PRESENT)),
            command_element(0x1000, uid_value(sop_instance_uid)),
            command_element(0x1030, originator + b" " * (len(originator) % 2))
            if originator
            else b"",
            command_element(0x1031, struct.pack("<H", originator_id))
            if originator_id is not None
            else b"",
        )
    )


def store_pdus(context_id: int, command: bytes, data: memoryview, max_pdu: int) -> bytes:
    """The P-DATA-TF PDUs of one C-STORE: the command set, then the data set in fragments
    that fit ``max_pdu`` (the peer's maximum PDU length; 0: no limit), one PDV a PDU."""
    size = max(1, max_pdu - _PDV_OVERHEAD) if max_pdu else max(1, len(data))
    parts = [_pdu(context_id, _COMMAND_LAST, command)]
    for start in range(0, len(data), size):
        fragment = data[start : start + size]
        last = start + size >= len(data)
        parts.append(_pdu(context_id, _DATA_LAST if last else _DATA, fragment))
    return b"".join(parts)


def _pdu(context_id: int, control: int, fragment: bytes | memoryview) -> bytes:
    item = len(fragment) + 2
    return _PDU_PDV.pack(_P_DATA_TF, 0, item + 4, item, context_id, control) + fragment


class FramedStores(Association):
    """An association that frames C-STOREs of stored data sets itself (the node's
    requestors for C-MOVE, its acceptors for C-GET: :mod:`node.dicom.reactor`)."""

    def send_c_store(
        self,
        dataset: Any,
        msg_id: int = 1,
        priority: int = _PRIORITY_LOW,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        framed = self._framed(dataset, msg_id, priority, originator_aet, originator_id)
        if framed is None:
            return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        self._reactor_checkpoint.clear()  # as upstream: the reactor must not take the reply
        while not self._is_paused:
            time.sleep(0.0001)
        try:
            self.dul.send_pdu(RawPData(framed))  # type: ignore[arg-type]  # see RawPData
            _, rsp = self.dimse.get_msg(block=True)
        finally:
            self._reactor_checkpoint.set()
        if rsp is None:
            self._handle_no_response()
            return Dataset()
        return self._check_received_status(rsp)

    def _framed(
        self,
        dataset: Any,
        msg_id: int,
        priority: int,
        originator_aet: str | None,
        originator_id: int | None,
    ) -> bytes | None:
        """The C-STORE's PDUs, or None where pynetdicom's own path must send it."""
        if not (
            isinstance(dataset, StoredDataset)
            and self.is_established
            and getattr(self.dul, "takes_raw_pdata", False)
            and 0 <= msg_id < 0x10000
        ):
            return None
        syntax = dataset.file_meta.TransferSyntaxUID
        try:
            context = self._get_valid_context(dataset.SOPClassUID, syntax, "scu")
        except ValueError:
            return None  # pynetdicom raises it, as it always has
        accepted = context.transfer_syntax[0]
        data = _as_stored(
            dataset, accepted.is_implicit_VR, accepted.is_little_endian, accepted.is_deflated
        )
        if data is None:
            return None
        command = store_request(str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), msg_id,
                                originator_aet, originator_id, priority)  # fmt: skip
        max_pdu = int(self.dimse.maximum_pdu_size or 0)
        return store_pdus(int(context.context_id or 0), command, data, max_pdu)
