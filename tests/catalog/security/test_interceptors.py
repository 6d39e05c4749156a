"""Auth and audit interceptors on a real mTLS gRPC server with real tokens and audit rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog.security.audit import AuditLog
from catalog.security.principal import PrincipalKind
from catalog.security.tokens import TokenStore
from catalog.server.interceptors import (
    AccessPolicy,
    AuditInterceptor,
    AuthInterceptor,
    Requirement,
    current_principal,
    summarize_request,
)
from tests.catalog.security.conftest import (
    FAIL,
    PEPPER,
    PUBLISH,
    PULL,
    QUERY,
    SERVICE,
    TIMEOUT,
    Grid,
    RunningServer,
    ServerFactory,
    call,
    call_stream,
)

POLICY = AccessPolicy(rules={PUBLISH: Requirement.HOST, PULL: Requirement.TOKEN_OR_HOST})
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
Secured = tuple[RunningServer, TokenStore, AuditLog]


@pytest.fixture
def secured(
    start_server: ServerFactory, sqlite_engine: sa.Engine
) -> tuple[RunningServer, TokenStore, AuditLog]:
    tokens = TokenStore(sqlite_engine, PEPPER)
    audit = AuditLog(sqlite_engine)
    server = start_server(
        interceptors=[
            AuditInterceptor(audit, [f"/{SERVICE}/*", HEALTH_CHECK]),
            AuthInterceptor(tokens, policy=POLICY),
        ]
    )
    return server, tokens, audit


def _code(fn: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    code: grpc.StatusCode = err.value.code()
    return code


def test_a_valid_token_reaches_the_servicer_as_its_principal(
    secured, grid: Grid, channel_for
) -> None:
    server, tokens, audit = secured
    issued = tokens.create("alice", {"lung": "reader"}, dt.timedelta(days=1))
    channel = channel_for(server.address, grid.researcher)
    assert call(channel, QUERY, b"q", token=issued.plaintext) == b"alice|q"
    (principal,) = server.seen.principals
    assert principal is not None and principal.can_read("lung") and not principal.can_read("x")
    (row,) = audit.query()
    assert (row.actor, row.action, row.outcome) == ("alice", QUERY, "OK")
    assert row.target["token_id"] == issued.info.id
    assert row.target["request"] == {"type": "bytes"}  # named, never the bytes
    assert row.peer.startswith("ipv4:127.0.0.1:")
    assert current_principal() is None  # nothing leaks out of the call


def test_missing_invalid_revoked_and_expired_tokens_are_unauthenticated(
    secured, grid: Grid, channel_for
) -> None:
    server, tokens, audit = secured
    channel = channel_for(server.address, grid.researcher)
    revoked = tokens.create("bob", {"lung": "reader"}, None)
    tokens.revoke(revoked.info.id)
    assert _code(lambda: call(channel, QUERY)) is grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: call(channel, QUERY, token="gpt_garbage")) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert _code(lambda: call(channel, QUERY, token=revoked.plaintext)) is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert server.seen.principals == []  # the servicer never ran
    rows = audit.query()
    assert [r.outcome for r in rows] == ["UNAUTHENTICATED"] * 3
    assert rows[0].actor == "cert:alice"  # the researcher's client certificate
    assert rows[2].actor == "cert:alice"
    assert rows[2].target["presented_token_id"] == revoked.info.id
    assert "presented_token_id" not in rows[1].target  # garbage carries no id


def test_an_expired_token_is_refused_with_a_vague_message(
    start_server: ServerFactory, sqlite_engine: sa.Engine, grid: Grid, channel_for
) -> None:
    from tests.catalog.security.conftest import FakeClock

    clock = FakeClock()
    clock.now = dt.datetime.now(dt.UTC)
    tokens = TokenStore(sqlite_engine, PEPPER, clock=clock)
    server = start_server(interceptors=[AuthInterceptor(tokens, policy=POLICY)])
    token = tokens.create("carol", {"lung": "reader"}, dt.timedelta(minutes=5)).plaintext
    channel = channel_for(server.address, grid.researcher)
    assert call(channel, QUERY, token=token) == b"carol|x"
    clock.now += dt.timedelta(minutes=6)
    with pytest.raises(grpc.RpcError) as err:
        call(channel, QUERY, token=token)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "invalid or expired token"


def test_a_node_publishes_with_its_host_certificate_and_no_token(
    secured, grid: Grid, channel_for
) -> None:
    server, _tokens, audit = secured
    assert call(channel_for(server.address, grid.node), PUBLISH, b"c") == b"cert:node1|c"
    (principal,) = server.seen.principals
    assert principal is not None and principal.kind is PrincipalKind.HOST
    assert audit.query()[-1].actor == "cert:node1"


def test_a_researcher_certificate_or_token_cannot_publish(secured, grid: Grid, channel_for) -> None:
    server, tokens, _audit = secured
    admin = tokens.create("alice", {"*": "admin"}, None).plaintext
    channel = channel_for(server.address, grid.researcher)  # OU=user, not a host
    assert _code(lambda: call(channel, PUBLISH, token=admin)) is grpc.StatusCode.UNAUTHENTICATED
    assert server.seen.principals == []


def test_a_host_certificate_alone_cannot_query(secured, grid: Grid, channel_for) -> None:
    server, _tokens, _audit = secured
    channel = channel_for(server.address, grid.node)
    assert _code(lambda: call(channel, QUERY)) is grpc.StatusCode.UNAUTHENTICATED


def test_the_host_allowlist_and_ca_recheck_narrow_who_is_a_host(
    start_server: ServerFactory, sqlite_engine: sa.Engine, grid: Grid, channel_for
) -> None:
    tokens = TokenStore(sqlite_engine, PEPPER)
    only_node2 = AccessPolicy(rules={PUBLISH: Requirement.HOST}, allowed_hosts=frozenset({"node2"}))
    other_ca = AccessPolicy(
        rules={PUBLISH: Requirement.HOST}, ca_pem=grid.rogue.ca_cert.read_bytes()
    )
    same_ca = AccessPolicy(rules={PUBLISH: Requirement.HOST}, ca_pem=grid.ca.read_bytes())
    for policy, expected in ((only_node2, False), (other_ca, False), (same_ca, True)):
        server = start_server(interceptors=[AuthInterceptor(tokens, policy=policy)])
        channel = channel_for(server.address, grid.node)
        if expected:
            assert call(channel, PUBLISH) == b"cert:node1|x"
        else:
            with pytest.raises(grpc.RpcError) as err:
                call(channel, PUBLISH)
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_streaming_pull_accepts_a_token_or_a_host_and_is_audited_once(
    secured, grid: Grid, channel_for
) -> None:
    server, tokens, audit = secured
    token = tokens.create("alice", {"lung": "reader"}, None).plaintext
    assert call_stream(channel_for(server.address, grid.node), PULL, b"n") == [b"n0", b"n1", b"n2"]
    researcher = channel_for(server.address, grid.researcher)
    assert call_stream(researcher, PULL, b"r", token=token) == [b"r0", b"r1", b"r2"]
    assert [p.name if p else None for p in server.seen.principals] == ["cert:node1", "alice"]
    assert [(r.actor, r.action, r.outcome) for r in audit.query()] == [
        ("cert:node1", PULL, "OK"),
        ("alice", PULL, "OK"),
    ]


def test_health_is_public_and_a_protobuf_request_is_summarised(
    secured, grid: Grid, channel_for
) -> None:
    server, _tokens, audit = secured
    stub = health_pb2_grpc.HealthStub(channel_for(server.address, grid.node))
    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        stub.Check(health_pb2.HealthCheckRequest(service="lung"), timeout=TIMEOUT)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    rows = audit.query(action=HEALTH_CHECK)
    assert [(r.actor, r.outcome) for r in rows] == [
        ("cert:node1", "OK"),
        ("cert:node1", "NOT_FOUND"),
    ]
    assert rows[1].target["request"] == {"service": "lung"}


def test_error_codes_set_by_the_servicer_are_the_recorded_outcome(
    secured, grid: Grid, channel_for
) -> None:
    server, tokens, audit = secured
    token = tokens.create("alice", {"lung": "reader"}, None).plaintext
    channel = channel_for(server.address, grid.researcher)
    assert _code(lambda: call(channel, FAIL, token=token)) is grpc.StatusCode.NOT_FOUND
    row = audit.query()[-1]
    assert (row.actor, row.outcome, row.target["details"]) == (
        "alice",
        "NOT_FOUND",
        "no such study",
    )


def test_an_unwritable_audit_log_fails_the_call_closed(
    start_server: ServerFactory,
    sqlite_engine: sa.Engine,
    sqlite_url: str,
    grid: Grid,
    channel_for,
    tmp_path,
) -> None:
    tokens = TokenStore(sqlite_engine, PEPPER)
    token = tokens.create("alice", {"lung": "reader"}, None).plaintext
    broken = sa.create_engine(f"sqlite:///{tmp_path}/no-tables.sqlite")  # no audit table
    try:
        server = start_server(
            interceptors=[
                AuditInterceptor(AuditLog(broken), [QUERY]),
                AuthInterceptor(tokens, policy=POLICY),
            ]
        )
        channel = channel_for(server.address, grid.researcher)
        assert _code(lambda: call(channel, QUERY, token=token)) is grpc.StatusCode.UNAVAILABLE
        open_server = start_server(
            interceptors=[
                AuditInterceptor(AuditLog(broken), [QUERY], fail_closed=False),
                AuthInterceptor(tokens, policy=POLICY),
            ]
        )
        channel = channel_for(open_server.address, grid.researcher)
        assert call(channel, QUERY, token=token) == b"alice|x"
    finally:
        broken.dispose()


def test_unaudited_methods_leave_no_rows(
    start_server: ServerFactory, sqlite_engine: sa.Engine, grid: Grid, channel_for
) -> None:
    tokens = TokenStore(sqlite_engine, PEPPER)
    audit = AuditLog(sqlite_engine)
    token = tokens.create("alice", {"lung": "reader"}, None).plaintext
    server = start_server(
        interceptors=[AuditInterceptor(audit, [PUBLISH]), AuthInterceptor(tokens, policy=POLICY)]
    )
    call(channel_for(server.address, grid.researcher), QUERY, token=token)
    assert audit.query() == []


def test_summaries_keep_scalars_and_count_collections() -> None:
    from google.protobuf import descriptor_pb2

    msg = descriptor_pb2.FileDescriptorProto(
        name="a.proto", package="x" * 1000, dependency=["b", "c"]
    )
    msg.options.java_package = "org.example"
    msg.options.optimize_for = descriptor_pb2.FileOptions.SPEED
    summary = summarize_request(msg)
    assert summary["name"] == "a.proto" and len(summary["package"]) == 256
    assert summary["dependency"] == {"count": 2}
    assert summary["options"] == {"java_package": "org.example", "optimize_for": "SPEED"}
    assert summarize_request(b"\x00" * 10) == {"type": "bytes"}


def test_channel_credentials_with_a_token_send_the_bearer_header(
    secured: Secured, grid: Grid
) -> None:
    from catalog.security.tls import channel_credentials, with_token

    server, tokens, _audit = secured
    token = tokens.create("dora", {"lung": "reader"}, None).plaintext
    creds = with_token(
        channel_credentials(grid.researcher.cert, grid.researcher.key, grid.ca), token
    )
    with grpc.secure_channel(server.address, creds) as channel:
        assert call(channel, QUERY) == b"dora|x"
