"""The DICOM listener: AE set-up, presentation contexts, socket options, start and stop."""

from __future__ import annotations

import copy
import socket
import ssl
import threading
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from catalog.security.errors import TlsConfigError
from catalog.security.revocation import check_crl_file
from node.config import DicomConfig
from node.dicom.commitment import STORAGE_COMMITMENT_PUSH
from node.dicom.handlers import Gateway
from node.dicom.reactor import (
    EventDrivenRequestHandler,
    RequestorAE,
    install_race_free_loop,
    supported,
    warn_if_unsupported,
    with_store_sink,
)
from node.dicom.scu import install_nodelay_for_outgoing, set_nodelay
from node.dicom.store_scu import install_stored_bytes_pass_through
from node.errors import ConfigError

# pynetdicom accepts the first of *our* syntaxes that the peer offers: prefer Explicit VR
# Little Endian so C-GET (and C-STORE) keep VRs — Implicit VR loses those of private elements.
PREFERRED_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    *(
        ts
        for ts in ALL_TRANSFER_SYNTAXES
        if ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ),
]

_QR_CONTEXTS = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)


class NoDelayAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on every accepted socket."""

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        set_nodelay(client_socket)
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True)
        return client_socket, address


def configure_pynetdicom() -> None:
    """The one place pynetdicom's process-wide switches are set (called by node.app)."""
    _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers carry PHI: never in the logs
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.UNRESTRICTED_STORAGE_SERVICE = False
    install_nodelay_for_outgoing()
    warn_if_unsupported()
    install_race_free_loop()
    if supported():
        install_stored_bytes_pass_through()


def _tls_context(config: DicomConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(config.tls.cert_file), str(config.tls.key_file))
    if config.tls.ca_file is not None:
        ctx.load_verify_locations(str(config.tls.ca_file))
    if config.tls.crl_file is not None:
        assert config.tls.ca_file is not None  # validated
        try:
            check_crl_file(config.tls.crl_file, config.tls.ca_file)
        except TlsConfigError as exc:
            raise ConfigError(f"[dicom.tls] {exc}") from exc
        ctx.load_verify_locations(str(config.tls.crl_file))  # a PEM CRL joins the store
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.verify_mode = ssl.CERT_REQUIRED if config.tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def build_ae(config: DicomConfig) -> AE:
    """An AE that accepts verification, every storage SOP class and Q/R FIND/MOVE/GET."""
    ae = RequestorAE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu_size
    ae.network_timeout = config.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = config.network_timeout
    ae.require_calling_aet = list(config.allowed_calling_aes)
    ae.require_called_aet = False  # checked against every routed AE title in on_requested
    ae.add_supported_context(Verification, PREFERRED_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(
            cx.abstract_syntax, PREFERRED_SYNTAXES, scp_role=True, scu_role=False
        )
    for sop_class in _QR_CONTEXTS:
        ae.add_supported_context(sop_class, PREFERRED_SYNTAXES)
    if config.commitment.enabled:  # the sender is the SCU: it may propose just that role
        ae.add_supported_context(
            STORAGE_COMMITMENT_PUSH, PREFERRED_SYNTAXES[:2], scu_role=True, scp_role=False
        )
    # outgoing C-MOVE sub-associations request contexts built per move (scu.contexts_for)
    return ae


def serve(
    ae: AE,
    address: tuple[str, int],
    handlers: list[tuple[Any, Any]],
    ssl_context: ssl.SSLContext | None = None,
    request_handler: type[RequestHandler] = EventDrivenRequestHandler,
) -> ThreadedAssociationServer:
    """Listen on ``address`` for ``ae`` in a background thread: TCP_NODELAY on every accepted
    socket and the event-driven association reactors (node/dicom/reactor.py; tests pass
    pynetdicom's own ``RequestHandler`` as a reference)."""
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=handlers,  # type: ignore[arg-type]
        server_class=NoDelayAssociationServer,
        request_handler=request_handler,
    )
    server.contexts = [_CheaplyCopied.of(cx) for cx in server.contexts]
    ae._servers.append(server)  # so ae.shutdown() stops it, as with ae.start_server()
    threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True).start()
    return server


class _CheaplyCopied(PresentationContext):
    """A supported context that pynetdicom's ``deepcopy`` copies in microseconds.

    pynetdicom deep-copies the server's supported contexts for every association it
    accepts. The node supports every storage SOP class in every transfer syntax it knows:
    177 contexts holding 7,965 UIDs, each rebuilt and validated against a regular
    expression, 31 ms of CPU before any association could start. The UIDs are immutable
    strings and are shared; the lists that negotiation could change are copied.
    """

    @classmethod
    def of(cls, context: PresentationContext) -> _CheaplyCopied:
        cheap = cls()
        cheap.__dict__.update(vars(context))
        return cheap

    def __deepcopy__(self, memo: dict[int, Any]) -> _CheaplyCopied:
        twin = copy.copy(self)
        twin._transfer_syntax = list(self._transfer_syntax)
        return twin


class DicomServer:
    """Owns the listening socket and its association threads."""

    def __init__(self, config: DicomConfig, gateway: Gateway) -> None:
        self._config = config
        self._gateway = gateway
        self._ae = build_ae(config)
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured with port 0)."""
        if self._server is None:
            raise RuntimeError("server not started")
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int | None:
        """The second, TLS-only listener's port (``[dicom.tls] port``), if there is one."""
        if self._tls_server is None:
            return None
        return int(self._tls_server.server_address[1])

    def start(self) -> None:
        tls = _tls_context(self._config)
        tls_port = self._config.tls.port if self._config.tls is not None else None
        if tls_port is None:  # one listener: TLS-only when [dicom.tls] is set
            self._server = self._listen(self._config.port, tls)
        else:  # plain on [dicom] port, TLS on its own
            self._server = self._listen(self._config.port, None)
            self._tls_server = self._listen(tls_port, tls)

    def _listen(self, port: int, tls: ssl.SSLContext | None) -> ThreadedAssociationServer:
        return serve(
            self._ae,
            (self._config.host, port),
            self._gateway.handlers(),
            tls,
            # C-STOREs are served by the DUL thread (node/dicom/store_scp.py); the rest,
            # and any request that path declines, by the Gateway's pynetdicom handlers
            with_store_sink(self._gateway.store),
        )

    def stop(self) -> None:
        """Stop accepting, then close live associations."""
        for server in (self._server, self._tls_server):
            if server is not None:
                server.shutdown()
        self._server = self._tls_server = None
        self._ae.shutdown()
