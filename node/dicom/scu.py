"""The node as an SCU: socket options and presentation contexts for outgoing associations."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket

from node.dicom.client_tls import TlsArgs
from node.dicom.reactor import RequestorAE
from node.dicom.transcode import CannotSend, accepted_for_sending, fit_to
from node.errors import NodeError
from node.index.records import StoredInstance

MAX_REQUESTED_CONTEXTS = 128
_nodelay_installed = False


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle: DICOM request/response turns otherwise wait for delayed ACKs (~40-90 ms)."""
    with contextlib.suppress(OSError):  # not a TCP socket (e.g. a socketpair in tests)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def install_nodelay_for_outgoing() -> None:
    """Make every association this process opens set TCP_NODELAY (called once at start-up).

    pynetdicom creates requestor sockets internally and offers no option for socket flags,
    so its socket factory is wrapped here — the one place the node changes pynetdicom.
    """
    global _nodelay_installed
    if _nodelay_installed:
        return
    original = AssociationSocket._create_socket

    def _create_socket(self: AssociationSocket, address: Any) -> socket.socket:
        sock = original(self, address)
        set_nodelay(sock)
        return sock

    AssociationSocket._create_socket = _create_socket  # type: ignore[method-assign]
    _nodelay_installed = True


def contexts_for(instances: Iterable[StoredInstance]) -> list[PresentationContext]:
    """Presentation contexts to send ``instances`` as stored.

    Per SOP class: one context for each stored transfer syntax (so compressed bytes go as
    they are, since each context carries exactly one accepted syntax) and one uncompressed
    context (Explicit, Implicit VR Little Endian) that pynetdicom can re-encode into, and
    that compressed data is decoded into when the peer takes nothing else
    (:mod:`node.dicom.transcode`).
    """
    stored: dict[str, list[str]] = {}
    for inst in instances:
        ts_list = stored.setdefault(inst.sop_class_uid, [])
        if inst.transfer_syntax_uid and inst.transfer_syntax_uid not in ts_list:
            ts_list.append(inst.transfer_syntax_uid)
    uncompressed: list[str] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    contexts: list[PresentationContext] = []
    for sop_class, ts_list in stored.items():
        contexts.extend(build_context(sop_class, ts) for ts in ts_list if ts not in uncompressed)
        contexts.append(build_context(sop_class, list(uncompressed)))
    return contexts[:MAX_REQUESTED_CONTEXTS]


class SendFailed(NodeError):
    """A C-STORE to a destination did not succeed for every instance."""


def send_files(
    calling_ae: str,
    called_ae: str,
    host: str,
    port: int,
    files: Sequence[Path],
    *,
    timeout: float = 60.0,
    tls: TlsArgs | None = None,
) -> int:
    """C-STORE ``files`` (Part 10) to ``called_ae`` over one association (DICOM TLS with
    ``tls``); returns how many.

    Raises :class:`SendFailed` naming the first instance the destination did not accept
    (status other than success or warning) or why the association failed.
    """
    if not files:
        return 0
    install_nodelay_for_outgoing()
    headers = [dcmread(path, stop_before_pixels=True) for path in files]
    ae = RequestorAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts: dict[tuple[str, str], PresentationContext] = {}
    for ds in headers:
        key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if key not in contexts:
            others = [t for t in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if t != key[1]]
            contexts[key] = build_context(key[0], [key[1], *others])
    ae.requested_contexts = list(contexts.values())[:MAX_REQUESTED_CONTEXTS]
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls)
    if not assoc.is_established:
        raise SendFailed(
            f"{called_ae} at {host}:{port} did not accept an association"
            + (" (over TLS: see the handshake error logged before)" if tls else "")
        )
    try:
        accepted = accepted_for_sending(assoc.accepted_contexts)
        for path in files:  # one dataset in memory at a time, however large the series
            try:
                outgoing, _ = fit_to(dcmread(path), accepted)
            except CannotSend as exc:
                raise SendFailed(f"{called_ae}: cannot send {path.name}: {exc}") from exc
            try:
                reply = assoc.send_c_store(outgoing)
            except (ValueError, RuntimeError) as exc:  # no accepted context, aborted ...
                raise SendFailed(
                    f"{called_ae}: cannot send {outgoing.SOPInstanceUID}: {exc}"
                ) from exc
            code = int(reply.Status) if reply is not None and "Status" in reply else -1
            if code != 0 and not (0xB000 <= code <= 0xBFFF):
                raise SendFailed(
                    f"{called_ae} refused {outgoing.SOPInstanceUID}: "
                    + (f"status 0x{code:04X}" if code >= 0 else "no response")
                )
    finally:
        assoc.release()
    return len(files)
