"""Prometheus metrics of a catalog replica: every RPC counted and timed, and its state.

Why an interceptor: every call a node, a researcher or a peer replica makes passes
through the server's interceptors, so one of them counts each by method and final gRPC
code (``gridpacs_catalog_rpcs_total``) and times it
(``gridpacs_catalog_rpc_duration_seconds``, a stream until its last message) without a
line in any servicer. What the replica holds and owes (nodes registered and live,
change log entries per origin, jobs by state) is read when Prometheus scrapes, at most
every ``state_ttl`` seconds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from catalog.errors import CatalogError
from catalog.records import NodeInfo
from catalog.server.interceptors import Guard, GuardingInterceptor, outcome_of

log = logging.getLogger("gridpacs.catalog.metrics")

DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)  # fmt: skip


class RpcMetrics(GuardingInterceptor):
    """Counts and times every call by method and final status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "gridpacs_catalog_rpcs",
            "gRPC calls the replica answered, by method and final status code.",
            ["method", "code"],
            registry=registry,
        )
        self.durations = Histogram(
            "gridpacs_catalog_rpc_duration_seconds",
            "Time from a call's start to its answer (a stream: to its last message).",
            ["method"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def guard_for(self, method: str, handler: grpc.RpcMethodHandler) -> Guard | None:
        @contextlib.contextmanager
        def measured(_request: Any, context: grpc.ServicerContext) -> Iterator[None]:
            started = time.perf_counter()
            failed: BaseException | None = None
            try:
                yield
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self.calls.labels(method, outcome_of(context, failed).name).inc()
                self.durations.labels(method).observe(time.perf_counter() - started)

        return measured


class ReplicaState(Collector):
    """Gauges of what the replica holds and owes, read on scrape (cached ``ttl`` s)."""

    def __init__(
        self,
        nodes: Callable[[], list[NodeInfo]],
        change_log: Callable[[], Mapping[str, int]],
        jobs: Callable[[], Mapping[str, int]],
        *,
        lost_after: timedelta,
        ttl: float = 30.0,
    ) -> None:
        self._nodes = nodes
        self._change_log = change_log
        self._jobs = jobs
        self._lost_after = lost_after
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: list[Metric] = []
        self._read_at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if time.monotonic() - self._read_at >= self._ttl:
                try:
                    self._cached = self._read()
                    self._read_at = time.monotonic()
                except CatalogError as exc:
                    log.warning("event=metrics_state_unavailable error=%r", str(exc))
                    return [_gauge("gridpacs_catalog_database_up", "1 if it answered", 0)]
            return [_gauge("gridpacs_catalog_database_up", "1 if it answered", 1),
                    *self._cached]  # fmt: skip

    def _read(self) -> list[Metric]:
        nodes = self._nodes()
        now = datetime.now(UTC)
        live = sum(
            1 for n in nodes if n.last_seen is not None and now - n.last_seen <= self._lost_after
        )
        metrics = [
            _gauge("gridpacs_catalog_nodes", "Nodes registered.", len(nodes)),
            _gauge("gridpacs_catalog_nodes_live", "Nodes heard from within lost_after.", live),
        ]
        entries = GaugeMetricFamily(
            "gridpacs_catalog_change_log_entries",
            "Change log entries per origin.",
            labels=["origin"],
        )
        for origin, count in sorted(self._change_log().items()):
            entries.add_metric([origin], count)
        jobs = GaugeMetricFamily("gridpacs_catalog_jobs", "Jobs by state.", labels=["state"])
        for state, count in sorted(self._jobs().items()):
            jobs.add_metric([state], count)
        return [*metrics, entries, jobs]


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, help_text)
    gauge.add_metric([], value)
    return gauge


class CatalogMetrics:
    """The replica's registry, its RPC interceptor and its HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.interceptor = RpcMetrics(self.registry)
        self._server: WSGIServer | None = None
        self.port = 0
        """The bound port once started."""

    def watch(self, state: ReplicaState) -> None:
        self.registry.register(state)

    def start(self, host: str, port: int, tls: tuple[Path, Path, Path] | None = None) -> int:
        """Serve ``/metrics`` (HTTPS with ``tls`` = certificate, key and the CA whose
        client certificates alone may scrape); the bound port."""
        options: dict[str, Any] = {}
        if tls is not None:
            cert, key, ca = tls
            options = {"certfile": str(cert), "keyfile": str(key), "client_cafile": str(ca),
                       "client_auth_required": True}  # fmt: skip
        self._server, _thread = start_http_server(
            port, addr=host, registry=self.registry, **options
        )
        self.port = int(self._server.server_address[1])
        log.info("event=metrics_serving host=%s port=%d scheme=%s", host, self.port,
                 "https" if tls else "http")  # fmt: skip
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
