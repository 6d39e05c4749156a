"""gRPC server interceptors for authentication and auditing, generic over method names.

* :class:`AuthInterceptor` decides per method (an :class:`AccessPolicy`) whether a
  researcher's bearer token, a grid host's mTLS client certificate, either, or nothing is
  needed; it rejects the call with ``UNAUTHENTICATED`` otherwise and makes the
  :class:`~catalog.security.principal.Principal` available to the servicer through
  :func:`current_principal`.
* :class:`AuditInterceptor` appends one row per audited call to the audit log: who, which
  method and a bounded summary of the request (never its bytes), when, from where
  (``context.peer()``) and the final status code.

* :class:`RevocationInterceptor` refuses, with ``UNAUTHENTICATED``, every call whose client
  certificate the grid CA has revoked (the TLS handshake cannot check that in Python).

Order them ``[AuditInterceptor, RevocationInterceptor, AuthInterceptor]`` so rejected calls
are audited too (gRPC
runs the first interceptor outermost). Both wrap the method's *behaviour*, not the lookup:
gRPC looks handlers up on its polling thread but runs behaviours on the pool thread, and only
there is the ``ServicerContext`` (peer, auth context, status code) available and a
``ContextVar`` visible to the servicer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import grpc
from cryptography import x509

from catalog.security.audit import AuditLog
from catalog.security.errors import (
    AuditError,
    InvalidToken,
    PermissionDenied,
    SecurityError,
    TokenError,
)
from catalog.security.pki import UNIT_HOST, issued_by
from catalog.security.principal import Principal, PrincipalKind
from catalog.security.revocation import RevocationList
from catalog.security.tls import PeerIdentity, peer_identity
from catalog.security.tokens import TokenStore

log = logging.getLogger("gridpacs.security")

HEALTH_METHODS = frozenset(
    {"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/List"}
)
REFLECTION_METHODS = frozenset(
    {
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)
AUTHORIZATION = "authorization"
_BEARER = "bearer "
_MAX_FIELDS = 32
_MAX_STR = 256


class Requirement(StrEnum):
    """What a method demands of its caller."""

    PUBLIC = "public"  # nothing (health checks)
    TOKEN = "token"  # a researcher's bearer token
    HOST = "host"  # a grid host's client certificate (publish, register, replication)
    TOKEN_OR_HOST = "token_or_host"  # either


@dataclass(frozen=True)
class AccessPolicy:
    """Which credential each method needs; configured by the catalog's composition root.

    Parameters
    ----------
    rules
        ``{"/gridpacs.catalog.v1.CatalogService/PublishChanges": Requirement.HOST, ...}``.
    default
        For methods not in ``rules``: a token (deny by default, never public).
    host_units
        Certificate ``OU`` values that make a client certificate a *host* certificate
        (:mod:`catalog.security.pki` issues ``OU=host``); a researcher's client-only
        certificate (``OU=user``) does not qualify.
    allowed_hosts
        When set, only these certificate common names count as hosts.
    ca_pem
        When set, the host certificate must also verify against this CA in Python: a second
        check for servers whose TLS layer trusts more than the grid CA.
    """

    rules: Mapping[str, Requirement] = field(default_factory=dict)
    default: Requirement = Requirement.TOKEN
    host_units: frozenset[str] = frozenset({UNIT_HOST})
    allowed_hosts: frozenset[str] | None = None
    ca_pem: bytes | None = None

    def requirement(self, method: str) -> Requirement:
        """The requirement for a full method name such as ``/pkg.Service/Method``."""
        if method in self.rules:
            return self.rules[method]
        if method in HEALTH_METHODS or method in REFLECTION_METHODS:
            return Requirement.PUBLIC
        return self.default

    def host_principal(self, peer: PeerIdentity | None) -> Principal | None:
        """The host principal for a verified client certificate, or None if it is no host."""
        if peer is None or peer.organizational_unit not in self.host_units:
            return None
        if self.allowed_hosts is not None and peer.common_name not in self.allowed_hosts:
            return None
        if self.ca_pem is not None and not _signed_by(peer.pem, self.ca_pem):
            return None
        return Principal(peer.label, {}, PrincipalKind.HOST, None)


@dataclass
class _CallState:
    """What the interceptors learn about the current call, shared between them."""

    principal: Principal | None = None
    token_hint: str | None = None  # public id of a presented token, verified or not


_state: ContextVar[_CallState | None] = ContextVar("gridpacs_call_state", default=None)


def current_principal() -> Principal | None:
    """The authenticated caller of the RPC being served on this thread, or None.

    None for public methods and outside an RPC. Servicers read it and pass it on to the
    plain-Python service (``principal.require_read(collection)``).
    """
    state = _state.get()
    return state.principal if state is not None else None


def require_principal() -> Principal:
    """Like :func:`current_principal`, but an unauthenticated call is a programming error."""
    principal = current_principal()
    if principal is None:
        raise PermissionDenied("no authenticated principal for this call")
    return principal


def status_for(error: SecurityError) -> tuple[grpc.StatusCode, str]:
    """The gRPC status for a security error (for the catalog's one status translator).

    Messages are deliberately vague for token failures so probes learn nothing.
    """
    if isinstance(error, PermissionDenied):
        return grpc.StatusCode.PERMISSION_DENIED, str(error)
    if isinstance(error, InvalidToken):
        return grpc.StatusCode.UNAUTHENTICATED, "invalid or expired token"
    if isinstance(error, AuditError):
        return grpc.StatusCode.UNAVAILABLE, "audit log unavailable"
    if isinstance(error, TokenError):
        return grpc.StatusCode.UNAVAILABLE, "token store unavailable"
    return grpc.StatusCode.INTERNAL, "security check failed"


class GuardingInterceptor(grpc.ServerInterceptor):
    """An interceptor that runs a guard around a handler's *behaviour*: on the pool thread,
    where the ``ServicerContext`` and the call's ``ContextVar`` exist (see the module
    docstring). Subclasses say which guard, if any, a method gets."""

    def guard_for(self, method: str, handler: grpc.RpcMethodHandler) -> Guard | None:
        """The guard for ``method`` (None: the handler runs unwrapped)."""
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        guard = self.guard_for(handler_call_details.method, handler)
        return handler if guard is None else _wrap(handler, guard)


class AuthInterceptor(GuardingInterceptor):
    """Authenticate every call according to an :class:`AccessPolicy`.

    Parameters
    ----------
    token_store
        Where bearer tokens are checked.
    policy
        Per-method requirements (default: every method needs a token, health is public).
    public_methods
        Extra methods that need nothing, merged over ``policy``.
    """

    def __init__(
        self,
        token_store: TokenStore,
        *,
        policy: AccessPolicy | None = None,
        public_methods: Iterable[str] = (),
    ) -> None:
        self._tokens = token_store
        self._policy = policy or AccessPolicy()
        self._public = frozenset(public_methods)

    def guard_for(self, method: str, handler: grpc.RpcMethodHandler) -> Guard | None:
        """Authenticate on the worker thread with the context; public methods pass."""
        need = Requirement.PUBLIC if method in self._public else self._policy.requirement(method)
        if need is Requirement.PUBLIC:
            return None

        @contextlib.contextmanager
        def guard(_request: Any, context: grpc.ServicerContext) -> Iterator[None]:
            with _call_state() as state:
                state.principal = self._authenticate(method, need, context, state)
                yield

        return guard

    def _authenticate(
        self,
        method: str,
        need: Requirement,
        context: grpc.ServicerContext,
        state: _CallState,
    ) -> Principal:
        token = _bearer(context)
        if token is not None and need in (Requirement.TOKEN, Requirement.TOKEN_OR_HOST):
            state.token_hint = _token_id(token)
            try:
                return self._tokens.authenticate(token)
            except SecurityError as exc:
                code, details = status_for(exc)
                _reject(context, method, code, details, reason=type(exc).__name__)
        if need in (Requirement.HOST, Requirement.TOKEN_OR_HOST):
            host = self._policy.host_principal(peer_identity(context))
            if host is not None:
                return host
            if need is Requirement.HOST:
                _reject(
                    context,
                    method,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this method needs a grid host certificate",
                    reason="no_host_cert",
                )
        _reject(
            context,
            method,
            grpc.StatusCode.UNAUTHENTICATED,
            "missing bearer token (metadata 'authorization: Bearer <token>')",
            reason="no_token",
        )
        raise AssertionError("unreachable")  # pragma: no cover - abort raises


class RevocationInterceptor(GuardingInterceptor):
    """Refuse every call (health checks included) of a client whose certificate is revoked.

    Calls without a client certificate pass: whether they may proceed is the
    :class:`AuthInterceptor`'s decision, not this one's.
    """

    def __init__(self, revocations: RevocationList) -> None:
        self._revocations = revocations

    def guard_for(self, method: str, handler: grpc.RpcMethodHandler) -> Guard | None:
        """Check the client certificate on the worker thread with the context."""

        @contextlib.contextmanager
        def guard(_request: Any, context: grpc.ServicerContext) -> Iterator[None]:
            pems = (context.auth_context() or {}).get("x509_pem_cert") or []
            if pems and self._revoked(pems[0]):
                _reject(context, method, grpc.StatusCode.UNAUTHENTICATED,
                        "this certificate has been revoked by the grid CA",
                        reason="revoked_certificate")  # fmt: skip
            yield

        return guard

    def _revoked(self, pem: bytes) -> bool:
        try:
            return self._revocations.is_revoked(pem)
        except ValueError:  # the handshake verified it, so this cannot happen: fail closed
            return True


class AuditInterceptor(GuardingInterceptor):
    """Record every call to ``audited_methods`` in the audit log.

    Parameters
    ----------
    audit_log
        Where rows are appended.
    audited_methods
        Full method names; one ending in ``*`` matches as a prefix
        (``/gridpacs.catalog.v1.CatalogService/Query*``).
    summarizers
        Optional ``{method: request -> dict}`` for a better ``target`` than the generic
        :func:`summarize_request`.
    fail_closed
        When the row cannot be written, fail the call with ``UNAVAILABLE`` instead of
        answering unaudited (the default: an unaudited retrieve is worse than a failed one).
    """

    def __init__(
        self,
        audit_log: AuditLog,
        audited_methods: Iterable[str],
        *,
        summarizers: Mapping[str, Callable[[Any], Mapping[str, Any]]] | None = None,
        fail_closed: bool = True,
    ) -> None:
        self._log = audit_log
        names = list(audited_methods)
        self._exact = frozenset(m for m in names if not m.endswith("*"))
        self._prefixes = tuple(m[:-1] for m in names if m.endswith("*"))
        self._summarizers = dict(summarizers or {})
        self._fail_closed = fail_closed

    def audits(self, method: str) -> bool:
        """True when calls to ``method`` are recorded."""
        return method in self._exact or method.startswith(self._prefixes)

    def guard_for(self, method: str, handler: grpc.RpcMethodHandler) -> Guard | None:
        """Audited methods get a row; others pass through untouched."""
        if not self.audits(method):
            return None
        summarize = self._summarizers.get(method, summarize_request)
        streaming_request = handler.request_streaming

        @contextlib.contextmanager
        def guard(request: Any, context: grpc.ServicerContext) -> Iterator[None]:
            summary = {"stream": True} if streaming_request else _safe_summary(summarize, request)
            with _call_state() as state:
                failed: BaseException | None = None
                try:
                    yield
                except BaseException as exc:
                    failed = exc
                    raise
                finally:
                    self._write(method, summary, context, state, failed)

        return guard

    def _write(
        self,
        method: str,
        summary: Mapping[str, Any],
        context: grpc.ServicerContext,
        state: _CallState,
        failed: BaseException | None,
    ) -> None:
        code = outcome_of(context, failed)
        target: dict[str, Any] = {"request": dict(summary)}
        if state.principal is not None and state.principal.token_id:
            target["token_id"] = state.principal.token_id
        elif state.principal is None and state.token_hint is not None:
            target["presented_token_id"] = state.token_hint  # unverified: auth failed
        if code is not grpc.StatusCode.OK:
            details: str | bytes | None = context.details()
            if isinstance(details, bytes):  # gRPC keeps details as bytes once set
                details = details.decode("utf-8", "replace")
            if details:
                target["details"] = details[:_MAX_STR]
        try:
            self._log.record(_actor(state, context), method, target, context.peer(), code.name)
        except AuditError as exc:
            log.error("event=audit_write_failed method=%s error=%s", method, exc)
            if self._fail_closed and failed is None:
                context.abort(grpc.StatusCode.UNAVAILABLE, "audit log unavailable")


def summarize_request(message: Any, *, _depth: int = 0) -> dict[str, Any]:
    """A bounded, JSON-able summary of a protobuf request for the audit log.

    Scalars are kept (strings cut at 256 characters), bytes become their length, repeated
    fields and maps their count, nested messages one level deep. Anything that is not a
    protobuf message is named by its type only.
    """
    list_fields = getattr(message, "ListFields", None)
    if list_fields is None:
        return {"type": type(message).__name__}
    summary: dict[str, Any] = {}
    for fd, value in list_fields()[:_MAX_FIELDS]:
        if fd.is_repeated:
            summary[fd.name] = {"count": len(value)}
        elif fd.type == fd.TYPE_BYTES:
            summary[fd.name] = {"bytes": len(value)}
        elif fd.type == fd.TYPE_MESSAGE:
            summary[fd.name] = (
                summarize_request(value, _depth=_depth + 1) if _depth < 1 else {"set": True}
            )
        elif fd.type == fd.TYPE_ENUM:
            number = fd.enum_type.values_by_number.get(value)
            summary[fd.name] = number.name if number is not None else value
        elif isinstance(value, str):
            summary[fd.name] = value[:_MAX_STR]
        else:
            summary[fd.name] = value
    return summary


# -- internals -------------------------------------------------------------------------------

Guard = Callable[[Any, grpc.ServicerContext], contextlib.AbstractContextManager[None]]


def _wrap(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """A copy of ``handler`` whose behaviour runs inside ``guard(request, context)``."""

    def unary_response(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with guard(request, context):
                return behavior(request, context)

        return run

    def stream_response(
        behavior: Callable[[Any, Any], Iterator[Any]],
    ) -> Callable[[Any, Any], Iterator[Any]]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with guard(request, context):
                yield from behavior(request, context)

        return run

    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary_response(handler.unary_unary), **kw)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream_response(handler.unary_stream), **kw)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary_response(handler.stream_unary), **kw)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(stream_response(handler.stream_stream), **kw)
    return handler


@contextlib.contextmanager
def _call_state() -> Iterator[_CallState]:
    """The call's shared state: joined if an outer interceptor made it, else created."""
    state = _state.get()
    if state is not None:
        yield state
        return
    state = _CallState()
    token = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(token)


def _bearer(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == AUTHORIZATION and isinstance(value, str):
            if value[: len(_BEARER)].lower() == _BEARER:
                return value[len(_BEARER) :].strip()
            return None
    return None


def _token_id(token: str) -> str | None:
    parts = token.split("_", 2)
    if len(parts) == 3 and parts[0] == "gpt" and len(parts[1]) == 12:
        return parts[1]
    return None


def _reject(
    context: grpc.ServicerContext,
    method: str,
    code: grpc.StatusCode,
    details: str,
    *,
    reason: str,
) -> None:
    log.warning(
        "event=auth_rejected method=%s peer=%s code=%s reason=%s",
        method,
        context.peer(),
        code.name,
        reason,
    )
    context.abort(code, details)


def _actor(state: _CallState, context: grpc.ServicerContext) -> str:
    if state.principal is not None:
        return state.principal.name
    peer = peer_identity(context)
    if peer is not None:
        return peer.label
    if state.token_hint is not None:
        return f"unverified-token:{state.token_hint}"
    return "anonymous"


def outcome_of(context: grpc.ServicerContext, failed: BaseException | None) -> grpc.StatusCode:
    code = context.code()  # set by abort() / set_code(); None when the servicer left it
    if isinstance(code, grpc.StatusCode):
        return code
    if failed is None:
        return grpc.StatusCode.OK
    if isinstance(failed, GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _safe_summary(summarize: Callable[[Any], Mapping[str, Any]], request: Any) -> Mapping[str, Any]:
    try:
        return summarize(request)
    except Exception as exc:  # a broken summarizer must not fail the call
        log.error("event=audit_summary_failed error=%r", exc)
        return {"type": type(request).__name__, "summary_error": True}


def _signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        return False
    return issued_by(cert, ca)
