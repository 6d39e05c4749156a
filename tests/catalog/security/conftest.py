"""Fixtures for the security tests: a grid PKI made with our own ``pki`` and a real gRPC server.

The server is a real ``grpc.server`` on 127.0.0.1 with mutual TLS from those certificates.
Its services are the standard health service and a tiny generic echo service, because the
catalog's own servicer is not needed to exercise transport security and interceptors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health, health_pb2_grpc

from catalog.security import pki
from catalog.security.models import create_all
from catalog.security.principal import Principal
from catalog.server.interceptors import current_principal

SERVICE = "gridpacs.test.v1.Echo"
QUERY = f"/{SERVICE}/QueryStudies"  # unary, token
PULL = f"/{SERVICE}/PullChanges"  # server-streaming, token or host
PUBLISH = f"/{SERVICE}/PublishChanges"  # unary, host only
FAIL = f"/{SERVICE}/Fail"  # unary, sets an error code
TIMEOUT = 5.0


@dataclass(frozen=True)
class Grid:
    """Certificates of one test grid plus an unrelated CA's."""

    ca: Path
    server: pki.CertFiles
    node: pki.CertFiles
    researcher: pki.CertFiles  # client-only (OU=user)
    rogue: pki.CertFiles  # a host cert from another CA with the same names


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    """A grid CA, a server, a node and a researcher certificate, and a rogue CA's cert."""
    root = tmp_path_factory.mktemp("pki")
    ca = root / "ca"
    pki.init_ca(ca, "testgrid")
    server = pki.issue(
        ca, root / "catalog1", "catalog1", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    node = pki.issue(ca, root / "node1", "node1")
    researcher = pki.issue(ca, root / "alice", "alice", roles=("client",))
    pki.init_ca(root / "rogue-ca", "testgrid")  # same name, different key
    rogue = pki.issue(root / "rogue-ca", root / "rogue", "node1")
    return Grid(
        ca=ca / pki.CA_CERT_FILE, server=server, node=node, researcher=researcher, rogue=rogue
    )


@dataclass
class Seen:
    """What the echo servicer observed: the principal of each call."""

    principals: list[Principal | None] = field(default_factory=list)


def _echo_handler(seen: Seen) -> grpc.GenericRpcHandler:
    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        principal = current_principal()
        seen.principals.append(principal)
        return (principal.name if principal else "-").encode() + b"|" + request

    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        seen.principals.append(current_principal())
        for i in range(3):
            yield request + str(i).encode()

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, "no such study")
        raise AssertionError("unreachable")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "QueryStudies": grpc.unary_unary_rpc_method_handler(unary),
            "PublishChanges": grpc.unary_unary_rpc_method_handler(unary),
            "PullChanges": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


@dataclass
class RunningServer:
    """A started server and where it listens."""

    server: grpc.Server
    address: str
    seen: Seen


ServerFactory = Callable[..., RunningServer]


@pytest.fixture
def start_server(grid: Grid) -> Iterator[ServerFactory]:
    """Start real mTLS servers (stopped in teardown): ``start_server(interceptors=[...])``."""
    from catalog.security.tls import server_credentials

    started: list[grpc.Server] = []

    def start(*, interceptors: list[Any] | None = None, plaintext: bool = False) -> RunningServer:
        seen = Seen()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors or []
        )
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        server.add_generic_rpc_handlers((_echo_handler(seen),))
        if plaintext:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            creds = server_credentials(grid.server.cert, grid.server.key, grid.ca)
            port = server.add_secure_port("127.0.0.1:0", creds)
        assert port > 0
        server.start()
        started.append(server)
        return RunningServer(server, f"127.0.0.1:{port}", seen)

    yield start
    for server in started:
        server.stop(grace=None).wait(TIMEOUT)


@pytest.fixture
def channel_for(grid: Grid) -> Iterator[Callable[..., grpc.Channel]]:
    """Open client channels (closed in teardown) with a chosen client certificate or none."""
    from catalog.security.tls import channel_credentials

    opened: list[grpc.Channel] = []

    def open_channel(
        address: str,
        files: pki.CertFiles | None,
        *,
        ca: Path | None = None,
        plaintext: bool = False,
    ) -> grpc.Channel:
        if plaintext:
            channel = grpc.insecure_channel(address)
        else:
            creds = channel_credentials(
                files.cert if files else None, files.key if files else None, ca or grid.ca
            )
            channel = grpc.secure_channel(address, creds)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()


def call(
    channel: grpc.Channel, method: str, payload: bytes = b"x", token: str | None = None
) -> bytes:
    """Invoke a unary echo method, with a bearer token when given."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    stub = channel.unary_unary(method)
    result: bytes = stub(payload, timeout=TIMEOUT, metadata=metadata)
    return result


def call_stream(
    channel: grpc.Channel, method: str, payload: bytes = b"x", token: str | None = None
) -> list[bytes]:
    """Invoke a server-streaming echo method and collect the replies."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    stub = channel.unary_stream(method)
    return list(stub(payload, timeout=TIMEOUT, metadata=metadata))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """The security tables on SQLite and on PostgreSQL (``db_url`` is parametrized)."""
    eng = sa.create_engine(db_url)
    create_all(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    """The security tables on SQLite only (for the gRPC tests, to keep them quick)."""
    eng = sa.create_engine(sqlite_url)
    create_all(eng)
    yield eng
    eng.dispose()


PEPPER = b"p" * 16 + b"e" * 16 + b"pper-for-tests"


class FakeClock:
    """A clock the test moves forward (to cross token expiry without sleeping)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now
