"""Mutual TLS on a real gRPC server with certificates from our own PKI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from catalog.security.errors import TlsConfigError
from catalog.security.tls import (
    PeerIdentity,
    channel_credentials,
    peer_identity,
    server_credentials,
)
from tests.catalog.security.conftest import (
    QUERY,
    TIMEOUT,
    Grid,
    ServerFactory,
    call,
)


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    status: int = stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status
    return status


class Capture(grpc.ServerInterceptor):
    """Records ``peer_identity(context)`` of each unary call, as an interceptor would."""

    def __init__(self, captured: list[PeerIdentity | None]) -> None:
        self.captured = captured

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        assert handler is not None

        def run(request: Any, context: grpc.ServicerContext) -> Any:
            self.captured.append(peer_identity(context))
            return handler.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(run)


def test_a_client_with_a_grid_certificate_is_served(
    grid: Grid, start_server: ServerFactory, channel_for
) -> None:
    server = start_server()
    assert _health(channel_for(server.address, grid.node)) == (
        health_pb2.HealthCheckResponse.SERVING
    )


def test_a_client_certificate_from_another_ca_is_refused(
    grid: Grid, start_server: ServerFactory, channel_for
) -> None:
    server = start_server()
    # The rogue cert trusts the right server CA but was signed by another CA.
    channel = channel_for(server.address, grid.rogue, ca=grid.ca)
    with pytest.raises(grpc.RpcError) as err:
        _health(channel)
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_client_without_a_certificate_is_refused(
    grid: Grid, start_server: ServerFactory, channel_for
) -> None:
    server = start_server()
    with pytest.raises(grpc.RpcError) as err:
        _health(channel_for(server.address, None))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_plaintext_client_is_refused(
    grid: Grid, start_server: ServerFactory, channel_for
) -> None:
    server = start_server()
    with pytest.raises(grpc.RpcError) as err:
        _health(channel_for(server.address, None, plaintext=True))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_client_that_trusts_another_ca_refuses_the_server(
    grid: Grid, start_server: ServerFactory, channel_for
) -> None:
    server = start_server()
    rogue_ca = grid.rogue.ca_cert
    with pytest.raises(grpc.RpcError) as err:
        _health(channel_for(server.address, grid.node, ca=rogue_ca))
    assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_peer_identity_names_the_verified_client_certificate(
    grid: Grid, start_server: ServerFactory, channel_for
) -> None:
    captured: list[PeerIdentity | None] = []
    server = start_server(interceptors=[Capture(captured)])
    call(channel_for(server.address, grid.node), QUERY)
    call(channel_for(server.address, grid.researcher), QUERY)
    node, researcher = captured
    assert node is not None and node.common_name == "node1"
    assert node.organizational_unit == "host" and node.label == "cert:node1"
    assert researcher is not None and researcher.organizational_unit == "user"


def test_peer_identity_is_none_on_plaintext(start_server: ServerFactory, channel_for) -> None:
    captured: list[PeerIdentity | None] = []
    server = start_server(interceptors=[Capture(captured)], plaintext=True)
    call(channel_for(server.address, None, plaintext=True), QUERY)
    assert captured == [None]


def test_missing_and_unreadable_files_are_named(grid: Grid, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    with pytest.raises(TlsConfigError, match=r"certificate not found: .*nope\.crt"):
        server_credentials(missing, grid.server.key, grid.ca)
    with pytest.raises(TlsConfigError, match="CA certificate not found"):
        channel_credentials(grid.node.cert, grid.node.key, tmp_path / "ca.crt")
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    with pytest.raises(TlsConfigError, match="private key is empty"):
        server_credentials(grid.server.cert, empty, grid.ca)
    unreadable = tmp_path / "dir.key"
    unreadable.mkdir()
    with pytest.raises(TlsConfigError, match="cannot read private key"):
        server_credentials(grid.server.cert, unreadable, grid.ca)


def test_a_key_that_does_not_match_its_certificate_is_refused_at_start(grid: Grid) -> None:
    with pytest.raises(TlsConfigError, match="is not the key of"):
        server_credentials(grid.server.cert, grid.node.key, grid.ca)
    with pytest.raises(TlsConfigError, match="both a client certificate and its key"):
        channel_credentials(grid.node.cert, None, grid.ca)
