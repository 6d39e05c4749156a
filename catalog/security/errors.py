"""The one exception hierarchy of ``catalog.security``.

Callers catch :class:`SecurityError` at their boundary (the CLI turns it into an exit code and
one line, the gRPC interceptors into a status code); the subclasses name the condition so the
boundary can choose the right code without parsing messages.
"""

from __future__ import annotations


class SecurityError(Exception):
    """Root of every error raised by ``catalog.security``."""


class PkiError(SecurityError):
    """A certificate or key could not be created, read or used."""


class FileExistsRefused(PkiError):
    """An output file exists and overwriting it was not asked for (``--force``)."""


class TlsConfigError(SecurityError):
    """TLS material (certificate, key, CA) is missing, unreadable or inconsistent."""


class TokenError(SecurityError):
    """Root of token failures."""


class InvalidToken(TokenError):
    """The presented token is malformed, unknown, or its secret does not match.

    The subclasses below exist for logs and tests; clients are told only "invalid token" so
    that a probe cannot learn which ids exist.
    """


class TokenExpired(InvalidToken):
    """The token is genuine but past its expiry."""


class TokenRevoked(InvalidToken):
    """The token is genuine but was revoked."""


class TokenNotFound(TokenError):
    """An administrative operation named a token id that does not exist."""


class TokenStoreUnavailable(TokenError):
    """The token database could not be reached or read."""


class PepperError(TokenError):
    """The server-side pepper file is missing, unreadable, too short or too open."""


class PermissionDenied(SecurityError):
    """An authenticated principal lacks the role an operation needs."""


class AuditError(SecurityError):
    """The audit log could not be written or read."""
