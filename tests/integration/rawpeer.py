"""A DICOM peer by hand: association negotiated byte by byte, then any PDU one likes.

Hostile-input tests need to write PDUs no SCU library would (bad PDV lengths, messages out
of order) and to read exactly what the server answers (a C-STORE-RSP status, an A-ABORT, a
closed socket), so nothing else may read the socket: no pynetdicom reactor runs here.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
COMMAND_LAST = 0x03
DATA = 0x00
DATA_LAST = 0x02


def _uid_item(item_type: int, uid: str) -> bytes:
    raw = uid.encode("ascii")
    return struct.pack(">BBH", item_type, 0, len(raw)) + raw


def _presentation_context(context_id: int, abstract: str, transfer: str) -> bytes:
    body = struct.pack(">BBBB", context_id, 0, 0, 0)
    body += _uid_item(0x30, abstract) + _uid_item(0x40, transfer)
    return struct.pack(">BBH", 0x20, 0, len(body)) + body


def associate_rq(called: str, calling: str, contexts: dict[int, str], max_pdu: int) -> bytes:
    """An A-ASSOCIATE-RQ offering each abstract syntax with Explicit VR Little Endian."""
    items = _uid_item(0x10, APPLICATION_CONTEXT)
    for context_id, abstract in contexts.items():
        items += _presentation_context(context_id, abstract, ExplicitVRLittleEndian)
    user = struct.pack(">BBHI", 0x51, 0, 4, max_pdu) + _uid_item(0x52, "1.2.826.0.1.3680043.9.1")
    items += struct.pack(">BBH", 0x50, 0, len(user)) + user
    body = struct.pack(">HH16s16s32x", 1, 0, called.ljust(16).encode(), calling.ljust(16).encode())
    body += items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    """One presentation data value item."""
    return struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def p_data(*pdvs: bytes) -> bytes:
    """A P-DATA-TF PDU of the given PDV items."""
    return pdu(P_DATA_TF, b"".join(pdvs))


def store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set as pynetdicom encodes it."""
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = BytesIO(b"")
    message = C_STORE_RQ()
    message.primitive_to_message(req)
    return bytes(encode(message.command_set, True, True))


def echo_rq(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set as pynetdicom encodes it."""
    req = C_ECHO()
    req.MessageID = message_id
    req.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(req)
    return bytes(encode(message.command_set, True, True))


@dataclass
class Answer:
    """What came back: the DIMSE responses' (command field, status) and how it ended."""

    responses: list[tuple[int, int]] = field(default_factory=list)
    aborted: bool = False
    closed: bool = False
    other_pdus: list[int] = field(default_factory=list)

    @property
    def statuses(self) -> list[int]:
        return [status for _, status in self.responses]


class RawPeer:
    """An association with ``host:port`` negotiated by hand; PDUs are written as given."""

    def __init__(
        self,
        host: str,
        port: int,
        called: str,
        contexts: dict[int, str],
        *,
        calling: str = "RAWPEER",
        max_pdu: int = 16384,
        timeout: float = 10.0,
    ) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(associate_rq(called, calling, contexts, max_pdu))
        pdu_type, body = self.read_pdu()
        assert pdu_type == 0x02, f"association not accepted: PDU type 0x{pdu_type:02X}"
        self.accepted = _accepted_contexts(body)
        assert set(self.accepted) == set(contexts), f"contexts accepted: {self.accepted}"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exactly(self, count: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < count:
            chunk = self.sock.recv(count - len(chunks))
            if not chunk:
                raise ConnectionError("closed")
            chunks += chunk
        return bytes(chunks)

    def read_pdu(self) -> tuple[int, bytes]:
        pdu_type, _, length = struct.unpack(">BBI", self._recv_exactly(6))
        return pdu_type, self._recv_exactly(length)

    def answer(self, *, until_responses: int | None = None, timeout: float = 10.0) -> Answer:
        """Read until an A-ABORT, the socket closes, ``until_responses`` DIMSE responses
        arrived, or ``timeout`` (the test then fails: the server neither answered nor
        ended the association)."""
        got = Answer()
        command = bytearray()
        deadline = time.monotonic() + timeout
        while until_responses is None or len(got.responses) < until_responses:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no answer and no end within {timeout} s: {got}")
            self.sock.settimeout(left)
            try:
                pdu_type, body = self.read_pdu()
            except (ConnectionError, OSError) as exc:
                if isinstance(exc, TimeoutError):
                    raise AssertionError(f"no answer and no end within {timeout} s: {got}") from exc
                got.closed = True
                return got
            if pdu_type == A_ABORT:
                got.aborted = True
                return got
            if pdu_type != P_DATA_TF:
                got.other_pdus.append(pdu_type)
                continue
            offset = 0
            while offset < len(body):
                length, _, control = struct.unpack_from(">IBB", body, offset)
                fragment = body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if control & 0x01:
                    command += fragment
                    if control & 0x02:
                        cs = decode(BytesIO(bytes(command)), True, True)
                        got.responses.append((int(cs.CommandField), int(cs.Status)))
                        command.clear()
        return got

    def release(self, timeout: float = 10.0) -> None:
        """A-RELEASE-RQ; the server must answer A-RELEASE-RP."""
        self.send(pdu(A_RELEASE_RQ, b"\x00" * 4))
        self.sock.settimeout(timeout)
        pdu_type, _ = self.read_pdu()
        assert pdu_type == A_RELEASE_RP, f"release answered with PDU type 0x{pdu_type:02X}"
        self.close()

    def close(self) -> None:
        self.sock.close()


def _accepted_contexts(body: bytes) -> dict[int, int]:
    """{context ID: result} of the A-ASSOCIATE-AC's presentation context items."""
    result: dict[int, int] = {}
    offset = 68  # protocol version .. reserved, as in the RQ
    while offset < len(body):
        item_type, _, length = struct.unpack_from(">BBH", body, offset)
        if item_type == 0x21:
            context_id, _, outcome = struct.unpack_from(">BBB", body, offset + 4)
            if outcome == 0:
                result[context_id] = outcome
        offset += 4 + length
    return result
