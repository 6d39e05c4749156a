"""The one exception hierarchy of the catalog (except ``catalog.security``, which has its own).

Boundaries translate these once: the servicer to gRPC status codes
(:mod:`catalog.server.status`), the client turns gRPC errors back into them, the CLI into an
exit code and one line.
"""

from __future__ import annotations


class CatalogError(Exception):
    """Root of every error raised by the catalog."""


class InvalidFilter(CatalogError):
    """A query filter cannot be understood (bad date range, empty UID, bad limit ...)."""


class InvalidChange(CatalogError):
    """A published change is malformed (no UID, unknown kind, seqs not ascending ...)."""


class UnknownNode(CatalogError):
    """An operation named a node that never registered."""


class CatalogUnavailable(CatalogError):
    """The catalog cannot answer now: its database is down, or no replica answers."""


class CatalogRejected(CatalogError):
    """A replica answered but refused the call (bad argument, permission, auth)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class ConfigError(CatalogError):
    """The catalog configuration file is missing or invalid."""


class JobNotFound(CatalogError):
    """No job has that id."""


class LeaseLost(CatalogError):
    """A worker presented a lease that is no longer held (expired, re-placed, finished)."""


class InvalidJobState(CatalogError):
    """The job is not in a state that allows the operation (retry a running job ...)."""


class NotAllowed(CatalogError):
    """The caller's roles do not allow the operation on that collection."""
