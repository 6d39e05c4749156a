"""Thin adapters: a pynetdicom event → a call on a node service → a DIMSE status.

No archive logic lives here; that is in ``node.services``. Every handler catches what it
must so one bad request never takes down the association thread, let alone the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.dimse_primitives import C_STORE, N_ACTION
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    Verification,
)

from catalog import CatalogError
from catalog.security.errors import AuditError
from node.audit import DicomAudit, audited_keys, query_target, studies_of
from node.config import Destination
from node.dicom import status
from node.dicom.client_tls import TlsArgs
from node.dicom.commitment import parse_request
from node.dicom.find_scp import ENCODED_IDENTIFIERS
from node.dicom.identifiers import ResponseEncoder, to_query, to_response
from node.dicom.part10 import part10
from node.dicom.scu import contexts_for
from node.dicom.store_scp import StoreCall, StoreOutcome
from node.dicom.transcode import Accepted, StoreAssociation, accepted_for_sending, fit_to
from node.errors import IngestError, NodeError, NotAuthorized, StoreNotAccepted
from node.index.errors import IndexFailure
from node.index.records import IndexQuery, Model
from node.permissions import Permissions, Service
from node.routing import Route, Router
from node.services.commitment import (
    INVALID_ARGUMENT_VALUE,
    PROCESSING_FAILURE,
    CommitmentRefused,
    CommitmentService,
)
from node.services.ingest import IngestService, StoreRequest
from node.services.query import MatchSource, QueryService
from node.services.rejection import (
    KEY_OBJECT_SELECTION,
    RejectionNotAllowed,
    RejectionService,
    note_in,
)
from node.services.retrieve import RetrieveService
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.dicom")

_PATIENT_ROOT = {
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
}
_QUERY_ERRORS = (NodeError, IndexFailure, CatalogError)
#: The association a refused C-MOVE must still open to its destination to be answered.
ECHO_ONLY = build_context(Verification)


class Retriever(Protocol):
    """Plans and loads the instances of a C-MOVE/C-GET (local or grid-wide)."""

    def plan(self, query: IndexQuery) -> Sequence[Any]: ...

    def load(self, item: Any) -> Dataset: ...


class StreamSink(Protocol):
    """The processing-stream trigger, as the gateway sees it."""

    def stored(
        self,
        association: int,
        *,
        stream: str,
        study_instance_uid: str,
        collection: str,
        calling_ae: str,
    ) -> None: ...

    def ended(self, association: int, *, released: bool) -> Any: ...


def _model(event: Event) -> Model:
    sop_class = str(event.request.AffectedSOPClassUID)
    return Model.PATIENT_ROOT if sop_class in _PATIENT_ROOT else Model.STUDY_ROOT


def _called_ae(event: Event) -> str:
    primitive = event.assoc.requestor.primitive
    return str(primitive.called_ae_title).strip() if primitive is not None else ""


def _calling_ae(event: Event) -> str:
    primitive = event.assoc.requestor.primitive
    return str(primitive.calling_ae_title).strip() if primitive is not None else ""


def _peer(event: Event) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def _log_unreachable(event: Event, destination: str, *, reason: str, **fields: object) -> None:
    """A C-MOVE answered 0xA801: the destination is unknown or did not associate."""
    log_event(LOG, "c_move", level=logging.WARNING, calling_ae=_calling_ae(event),
              destination=destination, **fields,
              status=f"0x{status.MOVE_UNKNOWN_DESTINATION:04X}", reason=reason)  # fmt: skip


def _audit_refusal(exc: Exception) -> Dataset:
    """A read refused because its audit row could not be written (fail closed)."""
    log_event(LOG, "audit_write_failed", level=logging.ERROR, reason=str(exc))
    return status.status_dataset(
        status.QR_UNABLE_TO_PROCESS, "not served: the audit log cannot be written"
    )


@dataclass
class Gateway:
    """The node's DICOM behaviour, bound to pynetdicom events by :meth:`handlers`."""

    ae_title: str
    router: Router
    ingest: IngestService
    query: QueryService
    retrieve: RetrieveService
    destinations: dict[str, Destination]
    grid_query: MatchSource | None = None
    grid_retrieve: Retriever | None = None
    on_stored: Callable[[], None] | None = None
    """Called after each successful store (wakes the catalog publisher)."""
    streams: StreamSink | None = None
    """Told what each association stored to stream AE titles, and when it ended."""
    rejections: RejectionService | None = None
    """Applies IHE IOCM rejection notes (KOS with a rejection title) before storing them."""
    commitments: CommitmentService | None = None
    """Records Storage Commitment requests (N-ACTION); None: the node offers none."""
    destination_tls: Mapping[str, TlsArgs] = field(default_factory=dict)
    """DICOM TLS for the destinations configured with ``tls = true`` (by AE title)."""
    permissions: Permissions = field(default_factory=Permissions)
    """What each calling AE title may ask for (``[dicom.permissions]``); default: all."""
    audit: DicomAudit = field(default_factory=lambda: DicomAudit(None))
    """The node's audit trail (``node.audit``); default: none kept."""
    allowed_calling_aes: frozenset[str] = frozenset()
    """``[dicom] allowed_calling_aes`` (pynetdicom refuses the others; here they are logged
    and audited); empty: any."""

    def _check(self, calling_ae: str, service: Service) -> None:
        """Raise :class:`NotAuthorized` (0x0124) unless ``calling_ae`` may use ``service``."""
        if not self.permissions.allows(calling_ae, service):
            raise NotAuthorized(f"{calling_ae} may not {service.value} here ([dicom.permissions])")

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_N_ACTION, self.on_n_action),
            (evt.EVT_RELEASED, self.on_released),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    # -- association ---------------------------------------------------------------------
    def on_requested(self, event: Event) -> None:
        """Reject associations addressed to an AE title this node does not serve; log and
        audit those from calling AE titles the allowlist refuses (pynetdicom rejects them)."""
        called = _called_ae(event)
        calling = _calling_ae(event)
        if self.allowed_calling_aes and calling not in self.allowed_calling_aes:
            reason = "calling AE title not allowed"
            log_event(LOG, "association_rejected", level=logging.WARNING, calling_ae=calling,
                      called_ae=called, reason=reason)  # fmt: skip
            self.audit.event("dicom.association_rejected", calling, _peer(event),
                             {"called_ae": called}, reason)  # fmt: skip
            return
        if called not in self.router.ae_titles:
            log_event(
                LOG,
                "association_rejected",
                level=logging.WARNING,
                calling_ae=_calling_ae(event),
                called_ae=called,
                reason="called AE title not recognised",
            )
            self.audit.event("dicom.association_rejected", _calling_ae(event), _peer(event),
                             {"called_ae": called}, "called AE title not recognised")  # fmt: skip
            # permanent rejection, service-user, called-AE-title-not-recognized; kill() lets
            # the DUL flush the A-ASSOCIATE-RJ before the socket closes (as pynetdicom does)
            event.assoc.acse.send_reject(0x01, 0x01, 0x07)
            event.assoc.kill()

    def on_released(self, event: Event) -> None:
        """A stream association ended normally: its studies become jobs."""
        self._association_ended(event, released=True)

    def on_aborted(self, event: Event) -> None:
        """Aborted: what was stored stays, no job is made (the sender did not finish)."""
        self._association_ended(event, released=False)

    def _association_ended(self, event: Event, *, released: bool) -> None:
        self.audit.association_ended(id(event.assoc), _calling_ae(event), _called_ae(event),
                                     _peer(event), released=released)  # fmt: skip
        if self.streams is None:
            return
        try:
            self.streams.ended(id(event.assoc), released=released)
        except Exception:  # a full disk must not take the association thread down silently
            LOG.exception("event=stream_trigger_error")

    def on_echo(self, event: Event) -> int:
        log_event(LOG, "c_echo", calling_ae=_calling_ae(event), status="0x0000")
        return status.SUCCESS

    # -- storage -------------------------------------------------------------------------
    def on_store(self, event: Event) -> int | Dataset:
        """pynetdicom's path (a request the fast path declined): the same :meth:`store`."""
        req = cast(C_STORE, event.request)
        transfer_syntax = event.context.transfer_syntax
        outcome = self.store(
            StoreCall(
                calling_ae=_calling_ae(event),
                called_ae=_called_ae(event),
                sop_class_uid=str(req.AffectedSOPClassUID),
                sop_instance_uid=str(req.AffectedSOPInstanceUID),
                transfer_syntax=str(transfer_syntax),
                # what event.encoded_dataset(include_meta=True) returns, a tenth of the cost
                part10=lambda: part10(
                    req.AffectedSOPClassUID,
                    req.AffectedSOPInstanceUID,
                    transfer_syntax,
                    event.encoded_dataset(include_meta=False),
                ),
                association=id(event.assoc),
            )
        )
        if outcome.status == status.SUCCESS:
            return status.SUCCESS
        return status.status_dataset(outcome.status, outcome.comment)

    def store(self, call: StoreCall) -> StoreOutcome:
        """Store one received instance as its called AE title's route says; never raises.

        Both C-STORE paths end here: :mod:`node.dicom.store_scp` (the DUL thread, most
        requests) and :meth:`on_store` (pynetdicom's, for the rest).
        """
        started = time.perf_counter()
        called, calling = call.called_ae, call.calling_ae
        outcome = "refused"
        result = StoreOutcome(status.SUCCESS)
        try:
            self._check(calling, Service.STORE)  # before the data set is even put together
            request = StoreRequest(
                data=call.part10(),
                calling_ae=calling,
                called_ae=called,
                affected_sop_class_uid=call.sop_class_uid,
                affected_sop_instance_uid=call.sop_instance_uid,
            )
            route = self.router.route_for(called)
            if route is None:  # cannot happen after on_requested, but never store unrouted
                raise IngestError(f"no route for called AE {called!r}")
            if route.grid:
                self.ingest.refuse(
                    request,
                    StoreNotAccepted(f"{called} answers grid queries; store to the node's AE"),
                )
            rejection = ""
            if call.sop_class_uid.strip() == KEY_OBJECT_SELECTION:
                rejection = self._apply_rejection(request, route)
            if route.archive_original_in is not None:
                self.ingest.store(request, collection=route.archive_original_in)
            stored = self.ingest.store(
                request, collection=route.collection, transform=route.transform
            )
            outcome = stored.outcome.value + (f", {rejection}" if rejection else "")
            self.audit.stored(call.association, stored.study_instance_uid)
            if route.stream is not None and self.streams is not None:
                self.streams.stored(
                    call.association,
                    stream=route.stream,
                    study_instance_uid=stored.study_instance_uid,
                    collection=stored.collection,
                    calling_ae=calling,
                )
            if self.on_stored is not None:
                self.on_stored()
        except Exception as exc:
            if not isinstance(exc, NodeError):
                LOG.exception("unexpected failure storing %s", call.sop_instance_uid)
            failure = status.store_failure(exc)
            result = StoreOutcome(int(failure.Status), failure.get("ErrorComment"))
            self.audit.stored(call.association, None)
        log_event(
            LOG,
            "c_store",
            level=logging.INFO if result.status == status.SUCCESS else logging.WARNING,
            calling_ae=calling,
            called_ae=called,
            sop_instance_uid=call.sop_instance_uid,
            status=f"0x{result.status:04X}",
            outcome=outcome,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return result

    def _apply_rejection(self, request: StoreRequest, route: Route) -> str:
        """Apply the rejection ``request`` carries, if it is a rejection note, to every
        collection the route stores into; what it did, for the log line ("" for no note).

        A rejection refused (sender not allowed, unreadable references) is the C-STORE's
        failure: the note is quarantined and nothing is rejected or stored."""
        targets = [(route.collection, route.transform)]
        if route.archive_original_in is not None:
            targets.insert(0, (route.archive_original_in, None))
        applied = ""
        for collection, transform in targets:
            try:
                note = note_in(request.data, transform)
            except IngestError as exc:
                self.ingest.refuse(request, exc)
            if note is None:
                return applied
            if self.rejections is None:
                refusal = RejectionNotAllowed("rejection notes are not taken here")
                self.ingest.refuse(request, refusal)
            try:
                self.rejections.check_allowed(request.calling_ae)
            except IngestError as exc:
                self.ingest.refuse(request, exc)
            result = self.rejections.apply_note(
                note, collection=collection, calling_ae=request.calling_ae
            )
            applied += (
                f"{collection}: rejected {len(result.recorded)}, removed {len(result.removed)} "
            )
        return applied.strip()

    # -- storage commitment ----------------------------------------------------------------
    def on_n_action(self, event: Event) -> tuple[int | Dataset, None]:
        """A Storage Commitment request: recorded durably, then answered; the report
        follows on an association of the node's (``node.commitment_reporter``)."""
        req = cast(N_ACTION, event.request)
        calling = _calling_ae(event)
        code, comment, transaction, count = status.SUCCESS, "", "", 0
        try:
            if not self.permissions.allows(calling, Service.COMMIT):
                raise CommitmentRefused(
                    status.NOT_AUTHORIZED, f"{calling} may not commit here ([dicom.permissions])"
                )
            if self.commitments is None:
                raise CommitmentRefused(PROCESSING_FAILURE, "storage commitment is disabled")
            request = parse_request(
                sop_class_uid=str(req.RequestedSOPClassUID or ""),
                sop_instance_uid=str(req.RequestedSOPInstanceUID or ""),
                action_type=req.ActionTypeID,
                information=_action_information(event),
                calling_ae=calling,
                called_ae=_called_ae(event),
            )
            transaction, count = request.transaction_uid, len(request.references)
            self.commitments.accept(request)
        except CommitmentRefused as exc:
            code, comment = exc.status, exc.reason
        except Exception as exc:  # the index is down …: the sender asks again later
            if not isinstance(exc, (NodeError, IndexFailure)):
                LOG.exception("unexpected failure recording a storage commitment request")
            code, comment = PROCESSING_FAILURE, f"request not recorded: {exc}"
        log_event(
            LOG,
            "n_action",
            level=logging.INFO if code == status.SUCCESS else logging.WARNING,
            calling_ae=calling,
            transaction_uid=transaction or None,
            instances=count,
            status=f"0x{code:04X}",
            reason=comment or None,
        )
        self.audit.event("dicom.commit", calling, _peer(event),
                         {"called_ae": _called_ae(event), "transaction_uid": transaction,
                          "instances": count, "reason": comment}, f"0x{code:04X}")  # fmt: skip
        if code == status.SUCCESS:
            return status.SUCCESS, None
        return status.status_dataset(code, comment), None

    # -- query ---------------------------------------------------------------------------
    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | bytes | None]]:
        """Stream the matches; as encoded bytes where the SCP takes them (find_scp)."""
        started = time.perf_counter()
        matches = 0
        final: int | Dataset = status.SUCCESS
        try:
            self._check(_calling_ae(event), Service.FIND)
            query = to_query(event.identifier, _model(event))
            target = query_target(_called_ae(event), query.level.value, query.filters)
            self.audit.read("dicom.find", _calling_ae(event), _peer(event), target, "served")
            encoder = None
            if getattr(event, ENCODED_IDENTIFIERS, False):
                syntax = event.context.transfer_syntax
                encoder = ResponseEncoder.for_query(query, self.ae_title, syntax)
            for match in self._query_service(event).find(query):
                if event.is_cancelled:
                    final = status.CANCELLED
                    break
                matches += 1
                encoded = encoder.encode(match) if encoder is not None else None
                yield status.PENDING, encoded or to_response(match, query, self.ae_title)
        except AuditError as exc:
            final = _audit_refusal(exc)
        except _QUERY_ERRORS as exc:
            final = status.query_failure(exc)
        except Exception as exc:
            LOG.exception("unexpected C-FIND failure")
            final = status.query_failure(exc)
        code = final if isinstance(final, int) else int(final.Status)
        if matches == 0 and code not in (status.SUCCESS, status.CANCELLED):
            self.audit.event("dicom.find", _calling_ae(event), _peer(event),
                             {"called_ae": _called_ae(event),
                              "reason": str(getattr(final, "ErrorComment", ""))},
                             f"0x{code:04X}")  # fmt: skip
        log_event(
            LOG,
            "c_find",
            calling_ae=_calling_ae(event),
            matches=matches,
            status=f"0x{code:04X}",
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        yield final, None

    def _query_service(self, event: Event) -> MatchSource:
        route = self.router.route_for(_called_ae(event))
        if route is not None and route.grid:
            if self.grid_query is None:
                raise NotAuthorized("this node has no catalog configured")
            return self.grid_query
        return self.query

    # -- retrieve ------------------------------------------------------------------------
    def _retriever(self, event: Event) -> Retriever:
        route = self.router.route_for(_called_ae(event))
        if route is not None and route.grid:
            if self.grid_retrieve is None:
                raise NotAuthorized("this node has no catalog configured")
            return self.grid_retrieve
        return self.retrieve

    def _plan(
        self, event: Event, service: Service, destination: str
    ) -> tuple[Retriever, Sequence[Any]]:
        """The sub-operations, recorded in the audit log before any is sent."""
        action, calling, peer = f"dicom.{service.value}", _calling_ae(event), _peer(event)
        target: dict[str, Any] = {"called_ae": _called_ae(event), "destination": destination}
        try:
            self._check(calling, service)
            retriever = self._retriever(event)
            query = to_query(event.identifier, _model(event))
            target["keys"] = audited_keys(query.filters)
            planned = retriever.plan(query)
        except Exception as exc:
            code = int(status.query_failure(exc).Status)
            self.audit.event(action, calling, peer, {**target, "reason": str(exc)},
                             f"0x{code:04X}")  # fmt: skip
            raise
        target.update(instances=len(planned),
                      **studies_of([str(p.study_instance_uid) for p in planned]))  # fmt: skip
        self.audit.read(action, calling, peer, target, "served")
        return retriever, planned

    def on_move(self, event: Event) -> Iterator[Any]:
        destination_ae = str(event.move_destination or "").strip()
        destination = self.destinations.get(destination_ae)
        if destination is None:
            _log_unreachable(event, destination_ae, reason="unknown move destination")
            self.audit.event("dicom.move", _calling_ae(event), _peer(event),
                             {"called_ae": _called_ae(event), "destination": destination_ae,
                              "reason": "unknown move destination"},
                             f"0x{status.MOVE_UNKNOWN_DESTINATION:04X}")  # fmt: skip
            yield None, None
            return
        tls = self.destination_tls.get(destination_ae)
        secure = {"tls_args": tls} if tls is not None else {}
        try:
            retriever, planned = self._plan(event, Service.MOVE, destination_ae)
        except Exception as exc:
            # pynetdicom sends a final status only after the destination, a count, and an
            # association with the destination: one for C-ECHO alone, nothing is sent on it.
            yield destination.host, destination.port, {"contexts": [ECHO_ONLY], **secure}
            yield from self._refuse_retrieve(event, exc, destination_ae)
            return
        store = StoreAssociation()  # what the destination accepts, once it has
        options = {
            "contexts": contexts_for(planned),
            "evt_handlers": [(evt.EVT_ACCEPTED, store.on_accepted)],
            **secure,
        }
        yield destination.host, destination.port, options
        try:
            yield len(planned)  # pynetdicom takes this before it associates
        except GeneratorExit:  # … and drops the handler when no association came up
            if not planned:
                raise  # nothing to send: pynetdicom answered without an association
            _log_unreachable(
                event,
                destination_ae,
                address=f"{destination.host}:{destination.port}",
                tls=tls is not None,
                reason="the destination did not accept an association"
                + (" (TLS: see the handshake error logged before)" if tls is not None else ""),
            )
            raise
        yield from self._suboperations(
            event, retriever, planned, destination_ae, lambda: store.accepted
        )

    def on_get(self, event: Event) -> Iterator[Any]:
        try:
            retriever, planned = self._plan(event, Service.GET, "(C-GET)")
        except Exception as exc:
            yield from self._refuse_retrieve(event, exc, "(C-GET)")
            return
        accepted = accepted_for_sending(event.assoc.accepted_contexts)
        yield len(planned)
        yield from self._suboperations(event, retriever, planned, "(C-GET)", lambda: accepted)

    def _refuse_retrieve(self, event: Event, exc: Exception, destination: str) -> Iterator[Any]:
        failure = status.query_failure(exc)
        log_event(
            LOG,
            "retrieve_refused",
            level=logging.WARNING,
            calling_ae=_calling_ae(event),
            destination=destination,
            status=f"0x{int(failure.Status):04X}",
            reason=str(exc),
        )
        yield 1
        yield failure, None

    def _suboperations(
        self,
        event: Event,
        retriever: Retriever,
        planned: Sequence[Any],
        destination: str,
        accepted: Callable[[], Accepted],
    ) -> Iterator[Any]:
        started = time.perf_counter()
        failed = decoded = 0
        for inst, ready in _read_ahead(
            planned, lambda item: fit_to(retriever.load(item), accepted())
        ):
            if event.is_cancelled:
                yield status.CANCELLED, None
                return
            try:
                dataset, was_decoded = ready.result()
                decoded += was_decoded
            except Exception as exc:
                failed += 1
                log_event(
                    LOG,
                    "suboperation_failed",
                    level=logging.ERROR,
                    sop_instance_uid=inst.sop_instance_uid,
                    reason=str(exc),
                )
                yield status.PENDING, _Unloadable(inst.sop_instance_uid)
                continue
            yield status.PENDING, dataset
        log_event(
            LOG,
            "retrieve",
            calling_ae=_calling_ae(event),
            destination=destination,
            instances=len(planned),
            unsendable=failed,
            decoded=decoded,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )


def _action_information(event: Event) -> Dataset | None:
    """The N-ACTION's Action Information, or None when absent; undecodable bytes raise
    :class:`CommitmentRefused` (the sender's error, answered 0x0115)."""
    if cast(N_ACTION, event.request).ActionInformation is None:
        return None
    try:
        return cast(Dataset, event.action_information)
    except Exception as exc:
        raise CommitmentRefused(
            INVALID_ARGUMENT_VALUE, f"action information cannot be decoded: {exc}"
        ) from exc


def _read_ahead(
    planned: Sequence[Any], prepare: Callable[[Any], tuple[Dataset, bool]]
) -> Iterator[tuple[Any, Future[tuple[Dataset, bool]]]]:
    """Each planned instance with its prepared data set, the next one prepared (read from
    the store, verified, decoded if it must be) in a thread while this one is sent: the
    read and the SHA-256 overlap the wait for the destination's response instead of
    following it. One ahead is enough for that, and keeps at most two in memory."""
    if not planned:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieve-read-ahead") as pool:
        upcoming = pool.submit(prepare, planned[0])
        try:
            for index, inst in enumerate(planned):
                ready = upcoming
                if index + 1 < len(planned):
                    upcoming = pool.submit(prepare, planned[index + 1])
                yield inst, ready
        finally:  # cancelled, or the association went away: drop what was read ahead
            pool.shutdown(wait=True, cancel_futures=True)


class _Unloadable:
    """A truthy non-Dataset: pynetdicom counts it as a failed sub-operation."""

    def __init__(self, sop_instance_uid: str) -> None:
        self.SOPInstanceUID = sop_instance_uid
