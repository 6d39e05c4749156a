"""gRPC transport security: mutual-TLS credentials from PEM files, and who is on the other end.

Servers demand a client certificate signed by the grid CA (``require_client_auth=True``); the
TLS handshake itself rejects a certificate from another CA, or none. Plaintext is not offered
here at all: a process that wants it (local development only) must say so in its own
configuration and call ``add_insecure_port`` itself, so it can never happen by omission.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from cryptography.hazmat.primitives import serialization

from catalog.security.errors import PkiError, TlsConfigError
from catalog.security.pki import describe, load_certificate


@dataclass(frozen=True)
class TlsFiles:
    """The three PEM files a process needs: its certificate, its key, and the grid CA."""

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Read (cert, key, ca) bytes, raising :class:`TlsConfigError` with the failing path."""
        return (
            _read(self.cert, "certificate"),
            _read(self.key, "private key"),
            _read(self.ca, "CA certificate"),
        )


@dataclass(frozen=True)
class PeerIdentity:
    """The client certificate a peer presented, as verified by the TLS handshake."""

    common_name: str
    organizational_unit: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    fingerprint_sha256: str
    pem: bytes

    @property
    def label(self) -> str:
        """A short, stable name for logs and the audit log: ``cert:<CN>``."""
        return f"cert:{self.common_name}"


class AuthContextSource(Protocol):
    """What :func:`peer_identity` needs of a ``grpc.ServicerContext``."""

    def auth_context(self) -> dict[str, list[bytes]]: ...


def server_credentials(
    cert: str | os.PathLike[str],
    key: str | os.PathLike[str],
    ca: str | os.PathLike[str],
    *,
    require_client_auth: bool = True,
) -> grpc.ServerCredentials:
    """Credentials for ``server.add_secure_port``: our cert/key, clients verified against ``ca``.

    ``require_client_auth`` stays true between grid hosts; a deployment that lets researchers
    in with a bearer token and no client certificate may turn it off for a separate port.
    """
    cert_pem, key_pem, ca_pem = TlsFiles(Path(cert), Path(key), Path(ca)).read()
    _check_pair(cert_pem, key_pem, Path(cert), Path(key))
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=require_client_auth,
    )


def channel_credentials(
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
    ca: str | os.PathLike[str],
) -> grpc.ChannelCredentials:
    """Credentials for ``grpc.secure_channel``: trust only ``ca``, present our cert and key.

    ``cert`` and ``key`` may both be None for a client that authenticates by token only (the
    server must then not require client certificates).
    """
    ca_pem = _read(Path(ca), "CA certificate")
    if (cert is None) != (key is None):
        raise TlsConfigError("give both a client certificate and its key, or neither")
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    cert_pem, key_pem = _read(Path(cert), "certificate"), _read(Path(key), "private key")
    _check_pair(cert_pem, key_pem, Path(cert), Path(key))
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )


def with_token(credentials: grpc.ChannelCredentials, token: str) -> grpc.ChannelCredentials:
    """Channel credentials that also send ``authorization: Bearer <token>`` on every call.

    gRPC attaches call credentials only over TLS, so a token never travels in plaintext.
    """
    return grpc.composite_channel_credentials(
        credentials, grpc.access_token_call_credentials(token)
    )


def peer_identity(context: AuthContextSource) -> PeerIdentity | None:
    """The verified client certificate of the current call, or None (plaintext, or no cert).

    gRPC exposes the peer's leaf certificate in the auth context only after the handshake
    verified it against the server's root certificates, so a non-None result means "signed by
    the CA this server trusts".
    """
    auth = context.auth_context() or {}
    pems = auth.get("x509_pem_cert") or []
    if pems:
        try:
            info = describe(load_certificate(pems[0]))
        except PkiError:
            return None
        return PeerIdentity(
            common_name=info.common_name,
            organizational_unit=info.organizational_unit,
            dns_names=info.dns_names,
            ip_addresses=info.ip_addresses,
            fingerprint_sha256=info.fingerprint_sha256,
            pem=pems[0],
        )
    names = auth.get("x509_common_name") or []
    if not names:
        return None
    # Without the PEM we can still name the peer, but not fingerprint or classify it.
    cn = names[0].decode("utf-8", "replace")
    return PeerIdentity(cn, None, (), (), hashlib.sha256(b"").hexdigest(), b"")


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_path: Path, key_path: Path) -> None:
    # Fail at start-up with both paths named, not with an opaque handshake error later.
    try:
        cert = load_certificate(cert_pem)
    except PkiError as exc:
        raise TlsConfigError(f"{cert_path}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise TlsConfigError(f"{key_path}: not an unencrypted PEM private key ({exc})") from exc
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise TlsConfigError(f"{key_path} is not the key of {cert_path}")


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise TlsConfigError(f"{what} not found: {path}") from exc
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if not data.strip():
        raise TlsConfigError(f"{what} is empty: {path}")
    return data
