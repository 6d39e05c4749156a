"""Prometheus metrics of a node: every structured event counted, what it holds and owes.

Why events: every DICOM request, refusal, rejection, report and replication step already
goes through :func:`node.structlog.log_event` as one line with its ``status`` and, when
timed, its ``ms``. Counting those lines (``gridpacs_node_events_total{event,status}``) and
their durations (``gridpacs_node_event_duration_seconds{event}``) gives a metric for each
of them with one hook, names that match the log an admin greps, and no second set of
call sites to keep in step. The state (instances held, reports owed, blobs queued, the
publish backlog) is read from the index when Prometheus scrapes, at most every
``state_ttl`` seconds: counting a large index is not free.

Served by prometheus-client's own HTTP server on ``[metrics] host:port``, loopback by
default: the figures (AE titles, counts) are for the site's monitoring, not the world.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from node.index.errors import IndexFailure, IndexUnavailable
from node.structlog import log_event, set_event_sink

LOG = logging.getLogger("gridpacs.node.metrics")

#: Event durations, in seconds: a packed C-STORE takes ~1 ms, a large C-MOVE minutes.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0)  # fmt: skip


class EventMetrics:
    """Counts each :func:`log_event` by name and status, and observes its ``ms``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "gridpacs_node_events",
            "Structured events the node logged (DICOM requests, refusals, reports …), by "
            "event name and DICOM status where the event has one.",
            ["event", "status"],
            registry=registry,
        )
        self.durations = Histogram(
            "gridpacs_node_event_duration_seconds",
            "Duration of timed events (the ms field of their log line).",
            ["event"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def __call__(self, event: str, fields: Mapping[str, object]) -> None:
        status = fields.get("status")
        self.events.labels(event, "" if status is None else str(status)).inc()
        ms = fields.get("ms")
        if isinstance(ms, (int, float)):
            self.durations.labels(event).observe(ms / 1000.0)


class NodeState(Collector):
    """Gauges of what the node holds and owes, read on scrape (cached ``ttl`` seconds)."""

    def __init__(self, read: Callable[[], Mapping[str, float]], *, ttl: float = 30.0) -> None:
        self._read = read
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: Mapping[str, float] = {}
        self._read_at = float("-inf")

    def collect(self) -> Iterable[Metric]:
        with self._lock:  # one reader at a time; scrapes in between get the cached values
            if time.monotonic() - self._read_at >= self._ttl:
                try:
                    self._cached = dict(self._read())
                    self._read_at = time.monotonic()
                except (IndexUnavailable, IndexFailure) as exc:
                    log_event(LOG, "metrics_state_unavailable", level=logging.WARNING,
                              error=str(exc))  # fmt: skip
                    up = GaugeMetricFamily("gridpacs_node_index_up", "1 if the index answered")
                    up.add_metric([], 0)
                    yield up
                    return
            values = dict(self._cached)
        up = GaugeMetricFamily("gridpacs_node_index_up", "1 if the index answered")
        up.add_metric([], 1)
        yield up
        for name, value in sorted(values.items()):
            help_text = STATE_HELP.get(name, name.replace("_", " "))
            gauge = GaugeMetricFamily(f"gridpacs_node_{name}", help_text)
            gauge.add_metric([], value)
            yield gauge


STATE_HELP = {
    "patients": "Patients indexed (per collection).",
    "studies": "Studies indexed.",
    "series": "Series indexed.",
    "instances": "Instances indexed.",
    "bytes": "Bytes of the instances indexed, as received.",
    "rejected": "Instances rejected here (refused from then on).",
    "blobs_queued_for_removal": "Blobs of removed instances not deleted yet.",
    "commitment_reports_owed": "Storage Commitment reports recorded and not delivered yet.",
    "commitment_reports_abandoned": "Storage Commitment reports given up on.",
    "quarantined": "Refused inputs kept in quarantine.",
    "outbox_backlog": "Index changes the catalog has not acknowledged yet.",
    "audit_export_behind": "Audit rows not handed to the site's audit repository yet.",
}


class MetricsServer:
    """The node's registry and its HTTP endpoint (``/metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU, memory, open files of the node
        PlatformCollector(registry=self.registry)
        self.events = EventMetrics(self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def watch(self, read_state: Callable[[], Mapping[str, float]], ttl: float = 30.0) -> None:
        self.registry.register(NodeState(read_state, ttl=ttl))

    def start(
        self,
        host: str,
        port: int,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        ca_file: Path | None = None,
    ) -> int:
        """Serve ``/metrics`` (HTTPS with ``cert_file``; only scrapers with a client
        certificate ``ca_file`` signed, when given) and count events from now on; the
        bound port."""
        tls: dict[str, Any] = {}
        if cert_file is not None:
            tls = {"certfile": str(cert_file), "keyfile": str(key_file)}
            if ca_file is not None:
                tls.update(client_cafile=str(ca_file), client_auth_required=True)
        self._server, self._thread = start_http_server(
            port, addr=host, registry=self.registry, **tls
        )
        set_event_sink(self.events)
        bound = int(self._server.server_address[1])
        scheme = "https" if tls else "http"
        log_event(LOG, "metrics_serving", host=host, port=bound, scheme=scheme,
                  client_certificates="required" if ca_file else "no")  # fmt: skip
        return bound

    def stop(self) -> None:
        set_event_sink(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

