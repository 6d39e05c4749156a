"""Catalog errors -> gRPC status codes: the one translation table of the servicer.

Every servicer method runs under :func:`guarded` (unary) or :func:`guarded_stream`
(server-streaming), so no method maps an exception by itself. The security engineer's
interceptors (``catalog/server/interceptors.py``) handle authentication and audit on top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

import grpc

from catalog.errors import (
    CatalogError,
    CatalogUnavailable,
    InvalidChange,
    InvalidFilter,
    InvalidJobState,
    JobNotFound,
    LeaseLost,
    NotAllowed,
    UnknownNode,
)
from catalog.server.convert import ConversionError

log = logging.getLogger("catalog.server")
T = TypeVar("T")

CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidFilter, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidChange, grpc.StatusCode.INVALID_ARGUMENT),
    (ConversionError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownNode, grpc.StatusCode.FAILED_PRECONDITION),
    (JobNotFound, grpc.StatusCode.NOT_FOUND),
    (LeaseLost, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidJobState, grpc.StatusCode.FAILED_PRECONDITION),
    (NotAllowed, grpc.StatusCode.PERMISSION_DENIED),
    (CatalogUnavailable, grpc.StatusCode.UNAVAILABLE),
    (CatalogError, grpc.StatusCode.INTERNAL),
)


def status_for(exc: Exception) -> grpc.StatusCode:
    """The status code for an exception raised by the service."""
    for kind, code in CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, method: str, exc: Exception) -> NoReturn:
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("event=rpc_error method=%s code=%s", method, code.name)
        details = f"internal error: {type(exc).__name__}"
    else:
        log.info("event=rpc_error method=%s code=%s details=%s", method, code.name, exc)
        details = str(exc)
    context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover


def guarded(method: str, context: grpc.ServicerContext, call: Callable[[], T]) -> T:
    """Run a unary method body, mapping catalog errors to a status."""
    try:
        return call()
    except Exception as exc:  # the boundary: every error becomes a status
        _abort(context, method, exc)


def guarded_stream(
    method: str, context: grpc.ServicerContext, produce: Callable[[], Iterator[T]]
) -> Iterator[T]:
    """Run a streaming method body, mapping errors raised at any point of the stream."""
    try:
        yield from produce()
    except Exception as exc:  # the boundary: every error becomes a status
        _abort(context, method, exc)
