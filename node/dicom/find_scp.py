"""The node's C-FIND SCP: pending responses sent as ready bytes, one P-DATA-TF each.

pynetdicom's C-FIND service turns every match into two pydicom data sets — the identifier
the handler yields, and a C-FIND-RSP command set built element by element — encodes both
with pydicom's writer, and hands the DUL two P-DATA primitives. Measured on a 52-match
STUDY query that was ~0.6 ms per match, most of a wildcard query's time; the SQL is a
fraction of a millisecond. Here, for the Patient and Study Root FIND models on the node's
acceptor associations:

- the EVT_C_FIND handler is told it may yield the identifier already encoded
  (``event.encoded_identifiers``; :class:`node.dicom.identifiers.ResponseEncoder` writes
  it from the index row), and
- a pending response with such an identifier goes out as one P-DATA-TF holding two PDVs,
  the command set (fixed for the query but for its status, so pre-encoded once) and the
  identifier (PS3.8 9.3.5: a P-DATA-TF carries one or more PDVs; command and data set of
  one message may share it).

Everything else — the handler call, its exceptions, cancellation, failure, warning and the
final responses, an identifier yielded as a Dataset, one too large for a single PDU — is
pynetdicom's own ``_c_find_scp`` logic, restated here for 3.0.x (the reactor module's
version check covers this too: it is only used with :class:`EventDrivenAssociation`). Not
done for the fast responses: pynetdicom's per-response INFO log line and EVT_DIMSE_SENT
(the node binds neither; its own ``c_find`` log line counts the matches).
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import traceback
from io import BytesIO
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.service_class import QueryRetrieveServiceClass, attempt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from pynetdicom.status import STATUS_CANCEL, STATUS_PENDING, STATUS_WARNING

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.presentation import PresentationContext

LOG = logging.getLogger("pynetdicom.service-c")  # where pynetdicom's C-FIND SCP logs

ENCODED_IDENTIFIERS = "encoded_identifiers"
"""Event attribute: ``True`` when the handler may yield identifiers as encoded ``bytes``
(in the transfer syntax of ``event.context``)."""
FIND_SOP_CLASSES = frozenset(
    {
        str(PatientRootQueryRetrieveInformationModelFind),
        str(StudyRootQueryRetrieveInformationModelFind),
    }
)
"""The FIND models answered here (the ones the node accepts)."""
_PENDING = (0xFF00, 0xFF01)
_C_FIND_RSP = 0x8020
_DATA_SET_PRESENT = 0x0001
_HANDLER_FAILED = 0xC311  # pynetdicom's status for an exception in the handler
_PDV_OVERHEAD = 6  # item length (4), presentation context ID (1), control header (1)
_COMMAND_LAST, _DATA_LAST = b"\x03", b"\x02"
MAX_QUEUED = 16
"""Pending responses the DUL may hold unsent before the handler waits for it to catch up.

Writing a response is now cheaper than the DUL's turn that sends it, so without a bound a
large answer would pile up in its queue (memory), and the DUL, which reads the socket only
when it has nothing to send, would not see a C-CANCEL until the whole answer was out."""
_DRAIN_WAIT_S = 0.01


def pending_command(sop_class_uid: str, message_id: int, status: int) -> bytes:
    """A C-FIND-RSP command set with a data set (Implicit VR Little Endian, PS3.7 9.3.2.2)."""
    uid = sop_class_uid.encode("ascii")
    if len(uid) % 2:
        uid += b"\0"
    body = (
        struct.pack("<HHI", 0x0000, 0x0002, len(uid))
        + uid
        + struct.pack(
            "<HHIHHHIHHHIHHHIH",
            *(0x0000, 0x0100, 2, _C_FIND_RSP),
            *(0x0000, 0x0120, 2, message_id),
            *(0x0000, 0x0800, 2, _DATA_SET_PRESENT),
            *(0x0000, 0x0900, 2, status),
        )
    )
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def serves(msg: Any, context: PresentationContext | None) -> bool:
    """Whether :func:`serve_find` answers this request (else pynetdicom's own service)."""
    return (
        isinstance(msg, C_FIND)
        and context is not None
        and context.abstract_syntax in FIND_SOP_CLASSES
        and msg.AffectedSOPClassUID == context.abstract_syntax
        and msg.is_valid_request
    )


def serve_find(assoc: Association, msg: C_FIND, context: PresentationContext) -> None:
    """Answer ``msg`` as pynetdicom's ``Association._serve_request`` would call the service."""
    assoc.dimse.cancel_req = {}  # a C-CANCEL for an earlier request does not apply
    assoc._is_paused = True
    try:
        FindService(assoc).SCP(msg, context)
    finally:
        assoc._is_paused = False
        assoc.dimse.cancel_req = {}


class FindService(QueryRetrieveServiceClass):
    """pynetdicom's Query/Retrieve service with the C-FIND pending responses pre-encoded."""

    def _c_find_scp(self, req: C_FIND, context: PresentationContext) -> None:
        cx_id = cast(int, context.context_id)
        rsp = C_FIND()
        rsp.MessageID = req.MessageID
        rsp.MessageIDBeingRespondedTo = req.MessageID
        rsp.AffectedSOPClassUID = req.AffectedSOPClassUID
        generator = self._trigger(req, context, rsp)
        if generator is None:
            return
        fast = _PendingSender(self.assoc, cx_id, req)
        for result, exc in self._wrap_handler(generator):
            rsp.Identifier = None
            if exc:
                LOG.error("Exception in handler bound to 'evt.EVT_C_FIND'")
                LOG.error("".join(traceback.format_exception(exc[1])))
                result = (_HANDLER_FAILED, None)
            rsp_status, identifier = cast(tuple[Any, Any], result)
            if not self.assoc.is_established:
                return
            if fast.send(rsp_status, identifier):
                continue
            if not self._respond(rsp, rsp_status, identifier, context):
                return
        if self.assoc.is_established:
            rsp.Identifier = None
            rsp.Status = 0x0000
            self.dimse.send_msg(rsp, cx_id)

    def _trigger(self, req: C_FIND, context: PresentationContext, rsp: C_FIND) -> Any:
        """The handler's generator, or ``None`` when it failed (a failure was sent)."""
        with attempt(rsp, self.dimse, cast(int, context.context_id), self.assoc) as ctx:
            ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_FIND'"
            ctx.error_status = _HANDLER_FAILED
            generator = evt.trigger(
                ctx.assoc,
                evt.EVT_C_FIND,
                {
                    "request": req,
                    "context": context.as_tuple,
                    "_is_cancelled": self.is_cancelled,
                    ENCODED_IDENTIFIERS: True,
                },
            )
        if not ctx.success or not self.assoc.is_established:
            return None
        return iter([(0x0000, None)]) if generator is None else generator

    def _respond(
        self, rsp: C_FIND, rsp_status: Any, identifier: Any, context: PresentationContext
    ) -> bool:
        """Send one response the way pynetdicom does; ``False`` when it ends the operation."""
        cx_id = cast(int, context.context_id)
        rsp = self.validate_status(rsp_status, rsp)
        if rsp.Status not in self.statuses:  # unknown status: sent, then done
            self.dimse.send_msg(rsp, cx_id)
            return False
        category = self.statuses[rsp.Status][0]
        if category == STATUS_PENDING:
            if isinstance(identifier, Dataset):
                syntax = context.transfer_syntax[0]
                identifier = encode(
                    identifier, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated
                )
            if not identifier:
                LOG.error("Failed encoding the response 'Identifier' dataset")
                rsp.Status = 0xC312
                self.dimse.send_msg(rsp, cx_id)
                return False
            rsp.Identifier = BytesIO(identifier)
            self.dimse.send_msg(rsp, cx_id)
            return True
        if category == STATUS_CANCEL:
            LOG.info("Received C-CANCEL-FIND RQ from peer")
        self.dimse.send_msg(rsp, cx_id)
        return category == STATUS_WARNING  # cancel, failure and success end it


class _PendingSender:
    """Sends pending responses whose identifier is already encoded, one PDU each."""

    def __init__(self, assoc: Association, cx_id: int, req: C_FIND) -> None:
        self._assoc = assoc
        self._dul = assoc.dul
        self._queue = assoc.dul.to_provider_queue
        self._wake: threading.Event | None = getattr(assoc.dul, "user_wake", None)
        self._cx_id = cx_id
        self._max_pdu = assoc.dimse.maximum_pdu_size
        sop_class, message_id = str(req.AffectedSOPClassUID), cast(int, req.MessageID)
        self._commands = {
            code: _COMMAND_LAST + pending_command(sop_class, message_id, code) for code in _PENDING
        }

    def send(self, rsp_status: object, identifier: object) -> bool:
        """Send it if it is a pending status with identifier bytes that fit one PDU."""
        command = self._commands.get(rsp_status) if isinstance(rsp_status, int) else None
        if command is None or not isinstance(identifier, bytes) or not identifier:
            return False
        size = 2 * _PDV_OVERHEAD + len(command) - 1 + len(identifier)
        if self._max_pdu and size > self._max_pdu:
            return False
        pdata = P_DATA()
        pdvs = pdata.presentation_data_value_list  # as pynetdicom's encode_msg fills it
        pdvs.append((self._cx_id, command))
        pdvs.append((self._cx_id, _DATA_LAST + identifier))
        if self._queue.qsize() >= MAX_QUEUED:
            self._drain()
        self._dul.send_pdu(pdata)
        return True

    def _drain(self) -> None:
        """Wait until the DUL has sent what it holds (it reads the socket in between)."""
        while self._queue.qsize() and self._assoc.is_established and self._dul.is_alive():
            if self._wake is None:  # a stock DUL: poll as pynetdicom does
                time.sleep(0.001)
                continue
            self._wake.clear()  # the DUL sets it after each action; nothing else waits on it now
            if self._queue.qsize():
                self._wake.wait(_DRAIN_WAIT_S)
