"""The node's C-STORE SCP fast path: requests taken off the wire by the DUL thread itself.

For every C-STORE, pynetdicom's DUL decodes each P-DATA-TF PDU into PDU and primitive
objects and walks its state machine, the DIMSE layer decodes the command set into a pydicom
data set and a request primitive, the association thread (after a thread hand-off) builds an
event for the handler, and the response goes back as a pydicom command set encoded through
pydicom's writer and handed to the DUL thread again. Profiled on small instances that was
about half of the node's CPU per C-STORE, and two of its four thread hand-offs.

Here the DUL thread of a node association reads a P-DATA-TF PDU itself and, when it opens a
new message whose command set is a plain C-STORE-RQ (the handful of elements PS3.7 9.3.1.1
defines, all in one fragment) on an accepted storage context, takes the message:

- it collects the data set fragments as they arrive (no PDU objects, one copy at the end),
- calls the node's store function (:class:`StoreSink`) on the DUL thread — the association
  is idle meanwhile, there is nothing to hand off to — and
- writes the C-STORE-RSP (:func:`store_response`, the bytes pynetdicom writes, tested
  against it) to the socket as one P-DATA-TF.

Anything else — another command, an unusual command set, a fragmented command, a context
that was not accepted, a message already begun on pynetdicom's path, any state but
data transfer (Sta6) — goes to pynetdicom exactly as before, PDU by PDU, so its checks,
aborts and logging still apply. One exception: a P-DATA-TF whose PDV items do not fill it
exactly, or a PDV out of sequence during a fast store's data set, is A-ABORTed by the DUL
itself before any PDV of it is used (pynetdicom's decoder crashes on some). Not done for
the fast requests: pynetdicom's EVT_PDU_RECV, EVT_DATA_RECV, EVT_DIMSE_RECV/SENT
notifications and its per-request log line (the node binds none of them; its own
``c_store`` log line records each instance).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

LOG = logging.getLogger("gridpacs.node.dicom")

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
HANDLER_FAILED = 0xC211  # what pynetdicom answers when the C-STORE handler raises
MIN_PEER_PDU = 1024
"""A peer that accepts smaller PDUs than this gets pynetdicom's path (it fragments)."""

_MESSAGE_CONTROL_COMMAND_LAST = 0x03
_COMMAND_ELEMENTS = frozenset(
    {0x0000, 0x0002, 0x0100, 0x0110, 0x0700, 0x0800, 0x1000, 0x1030, 0x1031}
)
"""The elements a C-STORE-RQ command set may hold (PS3.7 Table 9.3-1); any other: decline."""
_TAG_LENGTH = struct.Struct("<HHI")


@dataclass(frozen=True)
class StoreCommand:
    """The C-STORE-RQ command set, as far as the node uses it."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    priority: int = 0
    move_originator_ae: str = ""
    move_originator_message_id: int | None = None


@dataclass(frozen=True)
class StoreCall:
    """One received C-STORE, as the node's store function sees it (either path)."""

    calling_ae: str
    called_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    part10: Callable[[], bytes]
    """Builds the Part 10 bytes (preamble, meta, the data set as received) when asked."""
    association: int
    """Identifies the association (``id`` of pynetdicom's object) across its requests."""


@dataclass(frozen=True)
class StoreOutcome:
    """What the SCU is told: the status and, for a failure, why (ErrorComment, ≤ 64 chars)."""

    status: int
    comment: str | None = None


StoreSink = Callable[[StoreCall], StoreOutcome]


def _text(value: bytes) -> str:
    """ASCII only (UIDs, AE titles): anything else raises, so the command is declined —
    a UID the response cannot carry back must not reach the store function."""
    return value.decode("ascii").rstrip("\x00 ")


def decode_store_command(raw: bytes | memoryview) -> StoreCommand | None:
    """The C-STORE-RQ in ``raw`` (Implicit VR Little Endian), or ``None`` to decline.

    Declines — it never raises — anything that is not a well-formed C-STORE-RQ with a data
    set and only the elements of Table 9.3-1: pynetdicom then decodes and answers it.
    """
    view = memoryview(raw)
    values: dict[int, bytes] = {}
    offset = 0
    end = len(view)
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _TAG_LENGTH.unpack_from(view, offset)
        offset += 8
        if group != 0 or element not in _COMMAND_ELEMENTS or element in values:
            return None
        if length > end - offset:
            return None
        values[element] = bytes(view[offset : offset + length])
        offset += length
    try:
        if _unsigned(values, 0x0100) != C_STORE_RQ or _unsigned(values, 0x0800) == NO_DATA_SET:
            return None
        sop_class = _text(values[0x0002])
        sop_instance = _text(values[0x1000])
        message_id = _unsigned(values, 0x0110)
        priority = _unsigned(values, 0x0700) or 0
        originator_ae = _text(values.get(0x1030, b""))
        originator_id = _unsigned(values, 0x1031)
    except (KeyError, ValueError, struct.error):  # UnicodeDecodeError is a ValueError
        return None
    if not sop_class or not sop_instance or message_id is None:
        return None
    return StoreCommand(
        message_id=message_id,
        sop_class_uid=sop_class,
        sop_instance_uid=sop_instance,
        priority=priority,
        move_originator_ae=originator_ae,
        move_originator_message_id=originator_id,
    )


def _unsigned(values: dict[int, bytes], element: int) -> int | None:
    raw = values.get(element)
    if raw is None:
        return None
    if len(raw) != 2:
        raise ValueError(f"(0000,{element:04X}) is not a US")
    return int(struct.unpack("<H", raw)[0])


def command_element(element: int, value: bytes) -> bytes:
    """One element (0000,eeee) of a command set, Implicit VR Little Endian."""
    return _TAG_LENGTH.pack(0x0000, element, len(value)) + value


def uid_value(value: str) -> bytes:
    """A UID's value bytes, padded to even length with a NUL."""
    raw = value.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def command_set(elements: Iterable[bytes]) -> bytes:
    """``elements`` (in tag order) behind their Command Group Length (0000,0000)."""
    body = b"".join(elements)
    return command_element(0x0000, struct.pack("<I", len(body))) + body


def _comment(text: str) -> bytes:
    raw = text.encode("ascii", "replace")[:64]
    return raw + b" " * (len(raw) % 2)


def store_response(command: StoreCommand, outcome: StoreOutcome) -> bytes:
    """The C-STORE-RSP command set (Implicit VR Little Endian), as pynetdicom encodes it."""
    return command_set(
        (
            command_element(0x0002, uid_value(command.sop_class_uid)),
            command_element(0x0100, struct.pack("<H", C_STORE_RSP)),
            command_element(0x0120, struct.pack("<H", command.message_id)),
            command_element(0x0800, struct.pack("<H", NO_DATA_SET)),
            command_element(0x0900, struct.pack("<H", outcome.status)),
            command_element(0x0902, _comment(outcome.comment)) if outcome.comment else b"",
            command_element(0x1000, uid_value(command.sop_instance_uid)),
        )
    )


class RawPData:
    """P-DATA-TF PDUs already encoded, queued like a primitive: an event-driven DUL
    (:class:`node.dicom.reactor.EventDrivenDUL`) writes them to the socket as they are.
    Pending retrieve responses (:mod:`node.dicom.pending`) and C-STORE requests of stored
    data sets (:mod:`node.dicom.store_scu`) go this way."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def command_pdu(context_id: int, command_set: bytes) -> bytes:
    """A P-DATA-TF PDU carrying ``command_set`` as one last command fragment."""
    item_length = len(command_set) + 2
    return (
        struct.pack(">BBIIBB", 0x04, 0x00, item_length + 4, item_length, context_id,
                    _MESSAGE_CONTROL_COMMAND_LAST)
        + command_set
    )  # fmt: skip


_STORAGE_CLASSES: dict[str, bool] = {}


def is_storage_class(sop_class_uid: str) -> bool:
    """Whether pynetdicom would serve ``sop_class_uid`` with its Storage Service Class."""
    known = _STORAGE_CLASSES.get(sop_class_uid)
    if known is None:
        known = uid_to_service_class(sop_class_uid) is StorageServiceClass
        if len(_STORAGE_CLASSES) < 4096:  # bounded: the UIDs come from the network
            _STORAGE_CLASSES[sop_class_uid] = known
    return known


@dataclass
class PendingStore:
    """A C-STORE-RQ taken by the fast path, its data set still arriving."""

    context_id: int
    command: StoreCommand
    fragments: list[memoryview] = field(default_factory=list)
    size: int = 0

    def add(self, fragment: memoryview) -> None:
        self.fragments.append(fragment)
        self.size += len(fragment)
