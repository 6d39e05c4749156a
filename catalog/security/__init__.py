"""Security of the catalog and the grid: PKI, mutual TLS, API tokens, the audit log.

A library with no dependency on the rest of the catalog: the catalog's composition root builds
these objects and hands them to its gRPC server (see ``catalog.server.interceptors``).
"""

from catalog.security.audit import AuditLog, AuditRecord
from catalog.security.errors import (
    AuditError,
    FileExistsRefused,
    InvalidToken,
    PepperError,
    PermissionDenied,
    PkiError,
    SecurityError,
    TlsConfigError,
    TokenError,
    TokenExpired,
    TokenNotFound,
    TokenRevoked,
    TokenStoreUnavailable,
)
from catalog.security.models import append_only_ddl, create_all
from catalog.security.pki import CertFiles, CertificateInfo, init_ca, inspect, issue
from catalog.security.principal import ALL_COLLECTIONS, Principal, PrincipalKind, Role
from catalog.security.tls import (
    PeerIdentity,
    TlsFiles,
    channel_credentials,
    peer_identity,
    server_credentials,
    with_token,
)
from catalog.security.tokens import IssuedToken, TokenInfo, TokenStore, load_pepper

__all__ = [
    "ALL_COLLECTIONS",
    "AuditError",
    "AuditLog",
    "AuditRecord",
    "CertFiles",
    "CertificateInfo",
    "FileExistsRefused",
    "InvalidToken",
    "IssuedToken",
    "PeerIdentity",
    "PepperError",
    "PermissionDenied",
    "PkiError",
    "Principal",
    "PrincipalKind",
    "Role",
    "SecurityError",
    "TlsConfigError",
    "TlsFiles",
    "TokenError",
    "TokenExpired",
    "TokenInfo",
    "TokenNotFound",
    "TokenRevoked",
    "TokenStore",
    "TokenStoreUnavailable",
    "append_only_ddl",
    "channel_credentials",
    "create_all",
    "init_ca",
    "inspect",
    "issue",
    "load_pepper",
    "peer_identity",
    "server_credentials",
    "with_token",
]
