"""Storage Commitment Push Model on the wire: the N-ACTION a sender asks with, and the
N-EVENT-REPORT the node answers with on an association of its own (PS3.4 Annex J).

The report always goes on a new association to the sender's configured address, as
PS3.4 J.3.3 allows and as DCMTK- and Orthanc-style modalities expect: the request's
association is usually released long before the instances are verified, and the report
must survive a node restart (``node.commitment_reporter`` retries it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, build_role

from node.config import Destination
from node.dicom.client_tls import TlsArgs
from node.dicom.reactor import RequestorAE
from node.dicom.scu import install_nodelay_for_outgoing
from node.errors import NodeError
from node.index.records import CommitmentRequest
from node.services.commitment import (
    INVALID_ARGUMENT_VALUE,
    CommitmentRefused,
    CommitmentReport,
)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
"""Storage Commitment Push Model SOP Class."""
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
"""The one SOP Instance every request and report names (PS3.4 J.3.2)."""
REQUEST_ACTION = 1
"""Action Type ID of "Request Storage Commitment"."""
ALL_COMMITTED, FAILURES_EXIST = 1, 2
"""Event Type IDs of the report: all committed, or some not."""

NO_SUCH_ACTION = 0x0123
INVALID_OBJECT_INSTANCE = 0x0117
NO_SUCH_SOP_CLASS = 0x0118

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TRANSACTION_UID, _REFERENCED_CLASS, _REFERENCED_INSTANCE = 0x00081195, 0x00081150, 0x00081155
_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class ReportNotDelivered(NodeError):
    """The sender could not be reached, refused the association or the report."""


def parse_request(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    action_type: int | None,
    information: Dataset | None,
    calling_ae: str,
    called_ae: str,
) -> CommitmentRequest:
    """The request an N-ACTION carries.

    Raises :class:`CommitmentRefused` with the N-ACTION status for anything malformed:
    another SOP class or instance, another action, a missing or invalid Transaction UID,
    an empty list, or an item without two valid UIDs (the first such item is named).
    """
    if sop_class_uid.strip("\0 ") != STORAGE_COMMITMENT_PUSH:
        raise CommitmentRefused(NO_SUCH_SOP_CLASS, f"not Storage Commitment: {sop_class_uid}")
    if sop_instance_uid.strip("\0 ") != WELL_KNOWN_INSTANCE:
        raise CommitmentRefused(
            INVALID_OBJECT_INSTANCE, f"requested SOP instance must be {WELL_KNOWN_INSTANCE}"
        )
    if action_type != REQUEST_ACTION:
        raise CommitmentRefused(NO_SUCH_ACTION, f"action type {action_type} is not 1")
    if information is None:
        raise CommitmentRefused(INVALID_ARGUMENT_VALUE, "no action information")
    transaction = _uid(information, _TRANSACTION_UID, "Transaction UID")
    items = information.get("ReferencedSOPSequence")
    if not items:
        raise CommitmentRefused(INVALID_ARGUMENT_VALUE, "Referenced SOP Sequence is empty")
    references: dict[tuple[str, str], None] = {}
    for number, item in enumerate(items, 1):
        where = f"item {number}"  # ErrorComment is an LO: 64 characters
        pair = (
            _uid(item, _REFERENCED_CLASS, f"{where}: Referenced SOP Class UID"),
            _uid(item, _REFERENCED_INSTANCE, f"{where}: Referenced SOP Instance UID"),
        )
        references[pair] = None
    return CommitmentRequest(
        calling_ae=calling_ae,
        transaction_uid=transaction,
        called_ae=called_ae,
        references=tuple(references),
    )


def _uid(ds: Dataset, tag: int, name: str) -> str:
    """The UID at ``tag``, read from the raw element when pydicom has not converted it:
    converting each of a 1,000-item request's elements through pydicom took 50-95 ms."""
    try:
        element = ds.get_item(tag)
        value = None if element is None else element.value
        text = value.decode("ascii") if isinstance(value, bytes) else str(value or "")
    except Exception as exc:  # an undecodable value is the sender's error, not ours
        raise CommitmentRefused(INVALID_ARGUMENT_VALUE, f"{name} cannot be read") from exc
    text = text.strip("\0 ")
    if not text:
        raise CommitmentRefused(INVALID_ARGUMENT_VALUE, f"{name} is missing")
    if len(text) > 64 or not _UID.fullmatch(text):
        raise CommitmentRefused(INVALID_ARGUMENT_VALUE, f"{name} is not a UID")
    return text


def report_dataset(report: CommitmentReport, retrieve_ae: str) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT's Event Type ID and Event Information for ``report``."""
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.RetrieveAETitle = retrieve_ae
        ds.ReferencedSOPSequence = DicomSequence(
            [_item(sop_class, uid) for sop_class, uid in report.committed]
        )
    if report.failed:
        failed = []
        for sop_class, uid, reason in report.failed:
            item = _item(sop_class, uid)
            item.FailureReason = int(reason)
            failed.append(item)
        ds.FailedSOPSequence = DicomSequence(failed)
    return (FAILURES_EXIST if report.failed else ALL_COMMITTED), ds


def _item(sop_class: str, uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = uid
    return item


def send_report(
    *,
    calling_ae: str,
    called_ae: str,
    address: tuple[str, int],
    event_type: int,
    information: Dataset,
    timeout: float = 30.0,
    syntaxes: Sequence[str] = _SYNTAXES,
    tls: TlsArgs | None = None,
) -> None:
    """Open an association to the sender and send it the report as the SCP.

    The node proposes the SCP role for the SOP class (SCP/SCU Role Selection): the
    sender, which was the SCU of the request, receives this N-EVENT-REPORT.

    Raises :class:`ReportNotDelivered` unless the sender answers with Success.
    """
    install_nodelay_for_outgoing()
    ae = RequestorAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = [build_context(STORAGE_COMMITMENT_PUSH, list(syntaxes))]
    role = build_role(STORAGE_COMMITMENT_PUSH, scu_role=False, scp_role=True)
    host, port = address
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, ext_neg=[role], tls_args=tls)
    except OSError as exc:
        raise ReportNotDelivered(f"{called_ae} at {host}:{port}: {exc}") from exc
    if not assoc.is_established:
        raise ReportNotDelivered(
            f"{called_ae} at {host}:{port} did not accept an association for the report"
            + (" (over TLS: see the handshake error logged before)" if tls else "")
        )
    try:
        try:
            reply, _ = assoc.send_n_event_report(
                information, event_type, STORAGE_COMMITMENT_PUSH, WELL_KNOWN_INSTANCE
            )
        except (ValueError, RuntimeError) as exc:  # context refused, aborted …
            raise ReportNotDelivered(f"{called_ae}: report not sent: {exc}") from exc
        code = int(reply.Status) if reply is not None and "Status" in reply else -1
        if code != 0:
            raise ReportNotDelivered(
                f"{called_ae} answered the report with "
                + (f"status 0x{code:04X}" if code >= 0 else "nothing (timeout or abort)")
            )
    finally:
        if assoc.is_established:
            assoc.release()


def deliverer(
    destinations: Mapping[str, Destination],
    retrieve_ae: str,
    timeout: float,
    tls: Mapping[str, TlsArgs] | None = None,
) -> Callable[[CommitmentRequest, CommitmentReport], None]:
    """The reporter's delivery: each report to its sender's configured address (over DICOM
    TLS where ``tls`` names it), sent as the AE title the request was addressed to;
    committed instances are retrievable from the node's own AE title."""
    secure = tls or {}

    def deliver(request: CommitmentRequest, report: CommitmentReport) -> None:
        destination = destinations.get(request.calling_ae)
        if destination is None:  # removed from the configuration since the request
            raise ReportNotDelivered(f"{request.calling_ae} is no longer a destination")
        event_type, information = report_dataset(report, retrieve_ae)
        send_report(
            calling_ae=request.called_ae,
            called_ae=request.calling_ae,
            address=(destination.host, destination.port),
            event_type=event_type,
            information=information,
            timeout=timeout,
            tls=secure.get(request.calling_ae),
        )

    return deliver
