"""C-ECHO a configured destination as the node would reach it, and say why it failed.

Why: a destination is first used when a radiologist's C-MOVE or a modality's commitment
report needs it, which is the worst time to find a wrong port, a firewall, an AE title the
peer does not know or a certificate the node cannot trust. pynetdicom reports a failed
association as "not established"; the reason (refused, timed out, which TLS check) is
found here by repeating the connection step by step.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass

from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dicom.client_tls import TlsArgs
from node.dicom.reactor import RequestorAE
from node.dicom.scu import install_nodelay_for_outgoing


@dataclass(frozen=True)
class EchoResult:
    """One C-ECHO: ``ok`` only for a Success status on an established association."""

    ok: bool
    ms: float
    status: int | None
    reason: str


def echo(
    calling_ae: str,
    called_ae: str,
    host: str,
    port: int,
    *,
    tls: TlsArgs | None = None,
    timeout: float = 10.0,
) -> EchoResult:
    """C-ECHO ``called_ae`` at ``host:port`` as ``calling_ae`` (over TLS with ``tls``)."""
    install_nodelay_for_outgoing()
    ae = RequestorAE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    started = time.perf_counter()
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls)
    try:
        if assoc.is_rejected:
            return _failed(started, None, f"{called_ae} rejected the association{_why(assoc)}")
        if not assoc.is_established:
            return _failed(started, None, diagnose(host, port, tls, timeout))
        reply = assoc.send_c_echo()
        code = int(reply.Status) if reply is not None and "Status" in reply else None
        if code != 0:
            found = "no answer" if code is None else f"status 0x{code:04X}"
            return _failed(started, code, f"C-ECHO answered with {found}")
        return EchoResult(True, _ms(started), 0, "")
    finally:
        if assoc.is_established:
            assoc.release()


def diagnose(host: str, port: int, tls: TlsArgs | None, timeout: float) -> str:
    """Why no association came up: the TCP connection, then the TLS handshake."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
    with raw:
        if tls is None:
            return f"{host}:{port} accepts connections but no DICOM association"
        context, server_name = tls
        try:
            with context.wrap_socket(raw, server_hostname=server_name):
                pass
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the peer's certificate is not trusted: {exc.verify_message}"
        except (ssl.SSLError, OSError) as exc:
            return f"TLS handshake failed: {exc}"
    return f"TLS handshake succeeds, but {host}:{port} refused or dropped the association"


def _why(assoc: Association) -> str:
    """The A-ASSOCIATE-RJ's reason ("Calling AE title not recognised" …)."""
    primitive = assoc.acceptor.primitive
    return f": {primitive.reason_str}" if primitive is not None else ""


def _failed(started: float, status: int | None, reason: str) -> EchoResult:
    return EchoResult(False, _ms(started), status, reason)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
