"""Pending C-MOVE and C-GET responses, encoded in one piece (Implicit VR Little Endian).

A retrieve answers every C-STORE sub-operation with a Pending response carrying the four
sub-operation counts, which is how a workstation draws its progress bar. pynetdicom builds
each one as a pydicom data set, encodes it twice (once to learn the group length) and
queues it as P-DATA primitives: in a local C-MOVE of a CT study that was two thirds of the
node's CPU per image, more than sending the image itself. The command set is ten
elements of fixed form, so it is written here directly, byte for byte what pynetdicom
writes (tested against it), and handed to the event-driven DUL as a ready PDU. Anything
else (final responses, identifiers, requests) goes through pynetdicom as before.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_GET, C_MOVE

from node.dicom.store_scp import (
    NO_DATA_SET,
    RawPData,
    command_element,
    command_pdu,
    command_set,
    uid_value,
)

_PENDING = 0xFF00
_COMMAND_FIELD = {C_GET: 0x8010, C_MOVE: 0x8021}
_US = struct.Struct("<H")
#: The smallest peer maximum PDU length a pending response is written for (they are ~140 bytes).
_MIN_PDU = 512


def pending_response(primitive: Any) -> bytes | None:
    """The command set of a Pending C-GET/C-MOVE response without identifier, or None for
    any other response (or one with a value this encoder does not expect)."""
    field = _COMMAND_FIELD.get(type(primitive))
    if field is None or primitive.Status != _PENDING or primitive.Identifier is not None:
        return None
    counts = (
        primitive.NumberOfRemainingSuboperations,
        primitive.NumberOfCompletedSuboperations,
        primitive.NumberOfFailedSuboperations,
        primitive.NumberOfWarningSuboperations,
    )
    message_id = primitive.MessageIDBeingRespondedTo
    if message_id is None or any(c is None for c in counts):
        return None
    sop_class = primitive.AffectedSOPClassUID
    return command_set(
        (
            command_element(0x0002, uid_value(str(sop_class))) if sop_class else b"",
            command_element(0x0100, _US.pack(field)),
            command_element(0x0120, _US.pack(message_id)),
            command_element(0x0800, _US.pack(NO_DATA_SET)),
            command_element(0x0900, _US.pack(_PENDING)),
            *(command_element(0x1020 + n, _US.pack(c)) for n, c in enumerate(counts)),
        )
    )


class PendingInOnePiece(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, writing pending retrieve responses itself."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        max_pdu = self.maximum_pdu_size
        if getattr(self.dul, "takes_raw_pdata", False) and (not max_pdu or max_pdu >= _MIN_PDU):
            command = pending_response(primitive)
            if command is not None:
                raw = RawPData(command_pdu(context_id, command))
                self.dul.send_pdu(raw)  # type: ignore[arg-type]  # see RawPData
                return
        super().send_msg(primitive, context_id)
