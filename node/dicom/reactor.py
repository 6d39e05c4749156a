"""Event-driven reactors for pynetdicom's acceptor associations (no 1 ms polling).

pynetdicom 3.0 runs two polling loops per association: the DUL thread sleeps 1 ms whenever a
turn found nothing to do, and the association thread sleeps 1 ms before every look at its
message queue. A C-STORE request/response turn therefore waits up to three such sleeps
(request PDU picked up, message picked up, response PDU picked up), ~3 ms per instance on
Linux, longer than the whole turn of a C++ server. Here the same loops *block* instead:

- the DUL thread waits in ``select`` on the association socket and a wake-up socket pair;
  :meth:`EventDrivenDUL.send_pdu` (every primitive the service user queues for sending) and
  :meth:`EventDrivenDUL.kill_dul` write to the pair;
- the association thread waits on a :class:`threading.Event` that the DUL thread sets after
  every state-machine action (the only place messages, releases and aborts are queued for
  the service user) and when it exits.

Both waits are bounded (:data:`MAX_WAIT_S`), so a change that arrives by another path (a
flag set from another thread) is still seen within a few milliseconds, as the ARTIM and
idle timers are. What each loop *does* per turn is pynetdicom's own code, called as it is.

pynetdicom has no public hook for this (its source says "TODO: try and make this event
based"), so this module is the one place that leans on its internals: the loop bodies of
``DULServiceProvider.run_reactor`` and ``Association._run_reactor`` are restated here. It is
enabled only for the pynetdicom versions it was written against (:data:`SUPPORTED`); any
other version falls back to pynetdicom's own loops with a warning, and
``tests/node/test_reactor.py`` fails loudly so the restated loops get re-checked.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, cast

import pynetdicom
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AddressInformation, AssociationSocket, RequestHandler

from node.dicom import find_scp
from node.dicom.part10 import part10
from node.dicom.pending import PendingInOnePiece
from node.dicom.store_scp import (
    HANDLER_FAILED,
    MIN_PEER_PDU,
    PendingStore,
    RawPData,
    StoreCall,
    StoreOutcome,
    StoreSink,
    command_pdu,
    decode_store_command,
    is_storage_class,
    store_response,
)
from node.dicom.store_scu import FramedStores

# the messages pynetdicom logs from these loops, under its own logger names
DUL_LOG = logging.getLogger("pynetdicom.dul")
ASSOC_LOG = logging.getLogger("pynetdicom.association")

SUPPORTED = ("3.0.",)
"""pynetdicom version prefixes whose run loops this module restates."""
MAX_WAIT_S = 0.01
"""Longest a reactor blocks without news: bounds how late a flag set elsewhere is seen."""
_CLOSED_WAIT_S = 0.001
"""With no socket to watch (closing), wait like pynetdicom does."""
_P_DATA_TF = 0x04
_PDU_TYPES = range(0x01, 0x08)
_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")
_PDUS_PER_TURN = 64
"""At most this many PDUs of one data set read in one turn: the loop's other duties
(kill requests, primitives to send) wait no longer than that."""
_PREALLOCATE_MAX = 1 << 20
"""A PDU claiming more than this is read in pieces of this size: memory follows the bytes
that arrive, not the length a peer claims (up to 4 GiB, zero-filled up front)."""


def supported(version: str = pynetdicom.__version__) -> bool:
    """Whether the event-driven reactors are written for this pynetdicom version."""
    return version.startswith(SUPPORTED)


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL provider, blocking in ``select`` instead of sleeping 1 ms a turn."""

    takes_raw_pdata = True
    """It writes queued :class:`~node.dicom.store_scp.RawPData` to the socket as they are."""

    def __init__(self, assoc: Association, store_sink: StoreSink | None = None) -> None:
        super().__init__(assoc)
        self.store_sink = store_sink
        """Where the C-STOREs this DUL takes itself go (node.dicom.store_scp); None: none."""
        self._pending_store: PendingStore | None = None
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.user_wake = threading.Event()
        """Set after every state-machine action and on exit: news for the association."""
        self._waiting = False
        """True from just before the DUL looks at its queues until it stops waiting."""

    # -- wake-ups from other threads --------------------------------------------------
    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w.fileno() < 0:
                return  # the reactor has exited
            # a full pipe already holds a pending wake-up
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        # Only a DUL that may be blocked needs the byte: it sets the flag before it looks
        # at its queues, so a primitive queued before the flag is seen by that look. A CT
        # image is dozens of P-DATA primitives queued while the DUL is busy sending.
        if self._waiting:
            self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _process_recv_primitive(self) -> bool:
        """Encoded P-DATA-TF PDUs go straight to the socket; other primitives as upstream.

        Sending P-DATA in Sta6 (DT-1) leaves the state machine where it is, so writing the
        PDUs here is what it would do, without a P-DATA primitive and PDU object per 16 KiB.
        In any other state the association is ending: they are dropped, as the state
        machine would refuse them, and the sender's DIMSE wait ends as it would upstream.
        """
        try:
            primitive = self.to_provider_queue.queue[0]
        except IndexError:
            return False
        if not isinstance(primitive, RawPData):
            return bool(super()._process_recv_primitive())
        self.to_provider_queue.get(block=False)
        if self.state_machine.current_state == "Sta6" and self.socket is not None:
            self.socket.send(primitive.data)
        return True

    # -- the loop ---------------------------------------------------------------------
    def _wait_for_work(self) -> None:
        """Block until the socket is readable, a primitive is queued, or MAX_WAIT_S."""
        self._waiting = True
        try:
            self._block()
        finally:
            self._waiting = False

    def _block(self) -> None:
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return
        sock = self.socket.socket if self.socket is not None else None
        watched: list[Any] = [self._wake_r]
        timeout = MAX_WAIT_S
        if sock is not None and self.socket is not None and self.socket._is_connected:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes already buffered: select cannot see them
            if sock.fileno() >= 0:
                watched.append(sock)
        else:
            timeout = _CLOSED_WAIT_S
        try:
            select.select(watched, [], [], timeout)
        except (OSError, ValueError):
            return  # the socket went away: the transport check reports it
        with contextlib.suppress(OSError):  # BlockingIOError: drained
            while self._wake_r.recv(4096):
                pass

    def run_reactor(self) -> None:
        """pynetdicom's DUL loop (3.0.x, ``dul.py``), waiting for work instead of sleeping."""
        try:
            self._run()
        finally:
            with self._wake_lock:
                self._wake_r.close()
                self._wake_w.close()
            self.user_wake.set()

    def _run(self) -> None:
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                self._abort_on(exc)
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            try:
                self.state_machine.do_action(event)
            except Exception as exc:  # pynetdicom has logged it and stopped the DUL
                self._abort_on(exc)  # the peer gets an A-ABORT, not a silent hang-up
                return
            self.user_wake.set()
            idle = False

    # -- the C-STORE fast path (node/dicom/store_scp.py) ---------------------------------
    def _read_pdu_data(self) -> None:
        """Read one PDU; C-STOREs the fast path takes are served here, the rest as upstream.

        While a data set is arriving and its next PDU is already readable, that PDU is read
        at once, without a turn of the loop (up to :data:`_PDUS_PER_TURN`): a CT image
        comes as dozens of PDUs back to back.
        """
        if self.store_sink is None:
            super()._read_pdu_data()
            return
        for _ in range(_PDUS_PER_TURN):
            pdu = self._read_whole_pdu()
            if pdu is None:
                return
            if pdu[0] != _P_DATA_TF or (
                self._pending_store is None and self.state_machine.current_state != "Sta6"
            ):
                break
            rest = self._take_stores(pdu)
            if rest is not None:
                pdu = rest
                break
            if self._pending_store is None or not self._readable_now():
                return
        else:
            return
        # pynetdicom's own handling of a received PDU (3.0.x ``_read_pdu_data``)
        try:
            decoded, event = self._decode_pdu(pdu)
            self.event_queue.put(event)
        except Exception as exc:
            DUL_LOG.error("Unable to decode the received PDU data")
            DUL_LOG.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(decoded)

    def _readable_now(self) -> bool:
        sock = self.socket.socket if self.socket is not None else None
        if sock is None or sock.fileno() < 0:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def _read_whole_pdu(self) -> bytearray | None:
        """One PDU off the socket in as few reads as it takes, or None (an event is queued).

        The failure cases and their events are upstream's (``_read_pdu_data``).
        """
        header = self._recv_exactly(bytearray(6))
        if header is None:
            self.event_queue.put("Evt17")
            return None
        pdu_type, _, length = _PDU_HEADER.unpack(header)
        if pdu_type not in _PDU_TYPES:
            DUL_LOG.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")
            return None
        if length <= _PREALLOCATE_MAX:
            pdu = bytearray(6 + length)
            pdu[:6] = header
            received = self._recv_exactly(pdu, 6) is not None
        else:
            pdu = header
            received = True
            while received and len(pdu) < 6 + length:
                piece = self._recv_exactly(bytearray(min(_PREALLOCATE_MAX, 6 + length - len(pdu))))
                received = piece is not None
                pdu += piece or b""
        if not received:
            DUL_LOG.error("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return None
        return pdu

    def _recv_exactly(self, buffer: bytearray, start: int = 0) -> bytearray | None:
        sock = self.socket.socket if self.socket is not None else None
        if sock is None:
            return None
        view = memoryview(buffer)
        filled = start
        try:
            while filled < len(buffer):
                count = sock.recv_into(view[filled:])
                if not count:
                    return None
                filled += count
        except (OSError, TimeoutError) as exc:
            DUL_LOG.error("Connection closed before the entire PDU was received")
            DUL_LOG.exception(exc)
            return None
        return buffer

    def _take_stores(self, pdu: bytearray) -> bytearray | None:
        """Serve the PDVs of fast-path C-STOREs in ``pdu``; return what is left for upstream.

        ``None``: all consumed. Otherwise a P-DATA-TF of the remaining PDVs (``pdu`` itself
        when none was taken), which begins a message pynetdicom is to handle.
        """
        view = memoryview(pdu)
        offset, end = 6, len(pdu)
        if not _pdvs_well_framed(view):
            DUL_LOG.error("Invalid P-DATA-TF: its PDV items do not fill it exactly")
            self._malformed()
            return None
        while offset < end:
            length, context_id, control = _PDV_HEADER.unpack_from(view, offset)
            fragment = view[offset + 6 : offset + 4 + length]
            pending = self._pending_store
            if pending is not None:
                if context_id != pending.context_id or control & 0x01:
                    DUL_LOG.error("P-DATA out of sequence during a C-STORE data set")
                    self._malformed()
                    return None
                pending.add(fragment)
                if control & 0x02:
                    self._pending_store = None
                    self._serve_store(pending)
            else:
                started = self._start_store(context_id, control, fragment)
                if started is None:
                    break  # this message is pynetdicom's, and so is the rest of the PDU
                self._pending_store = started
            offset += 4 + length
        if offset >= end:
            return None
        if offset == 6:
            return pdu
        return bytearray(_PDU_HEADER.pack(_P_DATA_TF, 0, end - offset)) + pdu[offset:]

    def _malformed(self) -> None:
        """A P-DATA-TF that breaks the protocol: A-ABORT, as for a PDU pynetdicom cannot
        decode. Checked before any PDV of it is acted on: no instance in a broken PDU is
        stored (pynetdicom's own decoder crashes on some, e.g. a PDV of length 1)."""
        self._pending_store = None
        self.event_queue.put("Evt19")  # invalid PDU: A-ABORT (AA-8)

    def _start_store(
        self, context_id: int, control: int, fragment: memoryview
    ) -> PendingStore | None:
        """A new C-STORE-RQ for the fast path, or None when it belongs to pynetdicom."""
        assoc = self.assoc
        if (
            control != 0x03  # a whole command set in this one PDV
            or self.state_machine.current_state != "Sta6"
            or assoc.dimse.message is not None  # pynetdicom is assembling a message
            or context_id not in assoc._accepted_cx
            or not (assoc.requestor.maximum_length or 1 << 32) >= MIN_PEER_PDU
        ):
            return None
        command = decode_store_command(fragment)
        if (
            command is None
            or not is_storage_class(command.sop_class_uid)
            or command.sop_class_uid in assoc.acceptor.accepted_common_extended
        ):
            return None
        return PendingStore(context_id, command)

    def _serve_store(self, pending: PendingStore) -> None:
        """Store the instance (on this thread: the association is idle), then answer."""
        if self.state_machine.current_state != "Sta6":
            return  # aborted or released meanwhile: nobody to answer
        assoc = self.assoc
        command = pending.command
        transfer_syntax = assoc._accepted_cx[pending.context_id].transfer_syntax[0]
        primitive = assoc.requestor.primitive
        call = StoreCall(
            calling_ae=str(primitive.calling_ae_title).strip() if primitive else "",
            called_ae=str(primitive.called_ae_title).strip() if primitive else "",
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax=str(transfer_syntax),
            part10=lambda: part10(
                command.sop_class_uid,
                command.sop_instance_uid,
                str(transfer_syntax),
                pending.fragments,
            ),
            association=id(assoc),
        )
        assert self.store_sink is not None
        self._idle_timer.stop()  # a slow disk is not an idle peer
        try:
            outcome = self.store_sink(call)
        except Exception:
            DUL_LOG.exception("Exception in the C-STORE handler")
            outcome = StoreOutcome(HANDLER_FAILED)
        finally:
            self._idle_timer.restart()
        if self.socket is not None:
            self.socket.send(command_pdu(pending.context_id, store_response(command, outcome)))

    def _abort_on(self, exc: Exception) -> None:
        """What pynetdicom does on an exception in its loop: A-ABORT and stop both reactors."""
        DUL_LOG.error("Exception in DUL.run(), aborting association")
        DUL_LOG.exception(exc)
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort_pdu.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


def _pdvs_well_framed(pdu: memoryview) -> bool:
    """Whether the PDV items of a P-DATA-TF fill it exactly, each with a context ID and a
    message control header (PS3.8 9.3.5.1)."""
    offset, end = 6, len(pdu)
    while offset < end:
        if end - offset < _PDV_HEADER.size:
            return False
        length = _PDV_HEADER.unpack_from(pdu, offset)[0]
        if length < 2 or offset + 4 + length > end:
            return False
        offset += 4 + length
    return offset == end


class EventDrivenAssociation(FramedStores):
    """An acceptor association whose reactor waits for its DUL's news instead of polling,
    and whose C-FIND responses are written by :mod:`node.dicom.find_scp`."""

    dul: EventDrivenDUL

    @classmethod
    def adopt(
        cls, assoc: Association, store_sink: StoreSink | None = None
    ) -> EventDrivenAssociation:
        """Turn a freshly configured (not yet started) acceptor into an event-driven one.

        pynetdicom builds and configures the association itself (contexts, handlers,
        timeouts); only its DUL provider and its run loop are replaced. With a
        ``store_sink`` the DUL serves C-STOREs itself (:mod:`node.dicom.store_scp`).
        """
        swap_dul(assoc, store_sink)
        assoc.dimse.__class__ = PendingInOnePiece
        assoc.__class__ = cls
        return cast(EventDrivenAssociation, assoc)

    def _run_reactor(self) -> None:
        association_loop(self)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """C-FIND on the Q/R models goes to :mod:`node.dicom.find_scp`; the rest as upstream."""
        if not self._sent_release and getattr(msg, "Status", 0) is None and not (
            msg.is_valid_request
        ):
            # pynetdicom only logs this and never answers: the peer would wait forever
            ASSOC_LOG.error(
                f"Invalid {msg.msg_type} request (a required element is missing or empty): "
                "aborting the association"
            )
            self.abort()
            return
        context = self._accepted_cx.get(context_id)
        if not self._sent_release and context is not None and find_scp.serves(msg, context):
            find_scp.serve_find(self, msg, context)
            return
        super()._serve_request(msg, context_id)


def swap_dul(assoc: Association, store_sink: StoreSink | None = None) -> None:
    """Give a not yet started association an :class:`EventDrivenDUL` in place of its own."""
    old = assoc.dul
    new = EventDrivenDUL(assoc, store_sink)
    new.socket = old.socket
    # what the socket's creation already queued (Evt5, "connection open") comes along
    new.event_queue = old.event_queue
    new.to_provider_queue = old.to_provider_queue
    new.to_user_queue = old.to_user_queue
    new._recv_pdu = old._recv_pdu
    assoc.dul = new
    # re-apply the timeouts: their setters write into the DUL's timers
    assoc.acse_timeout = assoc.acse_timeout
    assoc.network_timeout = assoc.network_timeout


class FramingRequestor(FramedStores):
    """A requestor association of the node (see :class:`RequestorAE`)."""


class RequestorAE(AE):
    """The node's AE: its requestor associations (a C-MOVE's sub-association, a stream's
    results) get the event-driven DUL the acceptors have, and frame stored data sets'
    C-STOREs themselves (:class:`~node.dicom.store_scu.FramedStores`). Without the first,
    each C-STORE turn waited on the DUL's 1 ms polls.

    ``AE.associate()`` creates the association and its socket through ``_create_socket``
    before it starts the DUL thread; both are changed there."""

    def _create_socket(
        self,
        assoc: Association,
        address: AddressInformation,
        tls_args: tuple[ssl.SSLContext, str] | None,
    ) -> AssociationSocket:
        sock = super()._create_socket(assoc, address, tls_args)
        if supported():
            swap_dul(assoc)
            assoc.__class__ = FramingRequestor
        return sock


def association_loop(assoc: Association) -> None:
    """pynetdicom's association loop (3.0.x ``Association._run_reactor``), with two changes.

    - With an :class:`EventDrivenDUL` it waits for the DUL's news instead of sleeping 1 ms
      before every look at the message queue (a stock DUL: it sleeps, as upstream).
    - It closes upstream's pause race. A ``send_*()`` call (an SCU sending a request)
      clears ``_reactor_checkpoint`` and proceeds once ``_is_paused`` is true; upstream's
      loop sets ``_is_paused``, passes the checkpoint, then clears ``_is_paused`` and
      takes the next message — so a ``send_*()`` that paused it in between, after the
      loop had passed the checkpoint, can have its response taken by the loop and waits
      out its DIMSE timeout (seen 1 in ~5,000 C-ECHOs from a pynetdicom SCU to a server
      answering in under a millisecond). Here the loop re-checks the checkpoint after
      clearing ``_is_paused`` and goes back to waiting if it was paused meanwhile.
    """
    dul = assoc.dul
    wake = dul.user_wake if isinstance(dul, EventDrivenDUL) else None
    assoc._is_paused = False
    served = True
    while not assoc._kill:
        assoc._is_paused = True  # a waiting loop is a paused one: send_*() may proceed
        if wake is None:
            time.sleep(0.001)
        elif not served:
            wake.wait(MAX_WAIT_S)
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        if not assoc._reactor_checkpoint.is_set():
            continue  # paused after we passed the checkpoint: the next message is not ours
        if wake is not None:
            wake.clear()  # everything queued before this is seen by the checks below
        context_id, msg = assoc.dimse.get_msg(block=False)
        served = msg is not None
        if msg:
            assoc._serve_request(msg, cast(int, context_id))
        if _finished(assoc):
            return


def _finished(assoc: Association) -> bool:
    """Release, abort, a dead DUL or the idle timeout end the association (as upstream)."""
    if assoc.is_established and assoc.acse.is_release_requested():
        assoc.acse.send_release(is_response=True)
        ASSOC_LOG.info("Association Released")
        assoc.is_released = True
        assoc.is_established = False
        pynetdicom.evt.trigger(assoc, pynetdicom.evt.EVT_RELEASED, {})
        assoc.kill()
        return True
    if assoc.acse.is_aborted():
        aborted = "Association Aborted"
        if assoc.acse.is_aborted("a-p-abort"):
            aborted += " (A-P-ABORT)"
        ASSOC_LOG.info(aborted)
        assoc.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for subscribers
        assoc.is_aborted = True
        assoc.is_established = False
        pynetdicom.evt.trigger(assoc, pynetdicom.evt.EVT_ABORTED, {})
        assoc.kill()
        return True
    if not assoc.dul.is_alive():
        assoc.kill()
        return True
    if assoc.dul.idle_timer_expired():
        ASSOC_LOG.error("Network timeout reached")
        if assoc.network_timeout_response == "A-RELEASE":
            assoc._is_paused = True
            assoc._reactor_checkpoint.wait()
            assoc.release()
            assoc._is_paused = False
        else:
            assoc.abort()
        assoc.kill()
        return True
    return False


_loop_installed = False


def install_race_free_loop() -> None:
    """Run :func:`association_loop` for every association of this process (requestors too).

    pynetdicom creates requestor associations inside ``AE.associate()`` with no hook, so
    this replaces ``Association._run_reactor`` itself: the one monkey-patch here, made only
    for the supported versions. The node calls it at start-up (its C-MOVE/C-GET
    sub-associations are requestors); so do the tests' and benchmarks' pynetdicom SCUs,
    which otherwise lose a response now and then to a node that answers this fast.
    """
    global _loop_installed
    if _loop_installed or not supported():
        return
    Association._run_reactor = association_loop  # type: ignore[method-assign,assignment]
    _loop_installed = True


class EventDrivenRequestHandler(RequestHandler):
    """The server's request handler: every accepted association gets the event-driven loops."""

    store_sink: StoreSink | None = None
    """Set on a subclass (:func:`with_store_sink`) to take C-STOREs off pynetdicom's path."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        if not supported():
            return assoc
        sink = type(self).store_sink
        return EventDrivenAssociation.adopt(assoc, sink)


def with_store_sink(sink: StoreSink) -> type[EventDrivenRequestHandler]:
    """A request handler class whose associations serve C-STOREs through ``sink``."""
    return type(
        "StoreFastPathRequestHandler",
        (EventDrivenRequestHandler,),
        {"store_sink": staticmethod(sink)},
    )


def warn_if_unsupported() -> None:
    """Log once at start-up when this pynetdicom is not one the reactors were written for."""
    if not supported():
        logging.getLogger("gridpacs.node.dicom").warning(
            "pynetdicom %s is not one of %s: using its polling reactors (slower turn-around)",
            pynetdicom.__version__,
            ", ".join(SUPPORTED),
        )
