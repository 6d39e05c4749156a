"""Build and run the catalog's gRPC server: servicer, health service, interceptors, TLS.

Security plugs in from outside: ``interceptors`` (authentication, audit) and
``server_credentials`` (mTLS) are passed by the composition root (:mod:`catalog.app`), so
this module knows nothing about tokens or certificates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from catalog.jobs.service import JobsService
from catalog.server.holdings import HoldingsServicer
from catalog.server.jobs_servicer import JobServicer
from catalog.server.servicer import CatalogServicer, ScopeResolver
from catalog.service import CatalogService
from catalog.v1 import catalog_pb2, catalog_pb2_grpc, holdings_pb2_grpc, jobs_pb2, jobs_pb2_grpc

log = logging.getLogger("catalog.server")

SERVICE_NAME = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
JOBS_SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name
MAX_MESSAGE = 64 * 1024 * 1024


class ServerError(RuntimeError):
    """The server could not bind its port."""


@dataclass
class CatalogServer:
    """A built server: ``port`` is the bound port (useful with port 0)."""

    server: grpc.Server
    health: health.HealthServicer
    port: int
    jobs: bool = False

    def start(self) -> None:
        self.server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        if self.jobs:
            self.health.set(JOBS_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        log.info("event=catalog_listening port=%d", self.port)

    def stop(self, grace: float | None = 2.0) -> None:
        """Report NOT_SERVING, then stop accepting and finish in-flight calls within grace."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


def build_server(
    service: CatalogService,
    *,
    port: int,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    server_credentials: grpc.ServerCredentials | None = None,
    host: str = "127.0.0.1",
    scope: ScopeResolver | None = None,
    max_workers: int = 16,
    jobs: JobsService | None = None,
) -> CatalogServer:
    """A sync gRPC server serving the catalog and ``grpc.health.v1`` on ``host:port``.

    ``port=0`` picks a free port (read it back from :attr:`CatalogServer.port`);
    ``server_credentials=None`` serves plaintext (local development only); ``jobs`` adds
    the ``JobService`` (the scheduler of processing streams) next to the catalog.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="catalog-rpc"),
        interceptors=list(interceptors),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(
        CatalogServicer(service, scope=scope), server
    )
    holdings_pb2_grpc.add_HoldingsServiceServicer_to_server(
        HoldingsServicer(service, scope=scope), server
    )
    if jobs is not None:
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(jobs), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    try:
        if server_credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, server_credentials)
    except RuntimeError as exc:
        raise ServerError(f"cannot listen on {address}: {exc}") from exc
    if bound == 0:
        raise ServerError(f"cannot listen on {address}")
    return CatalogServer(server=server, health=health_servicer, port=bound, jobs=jobs is not None)
