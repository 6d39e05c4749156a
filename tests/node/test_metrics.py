"""The node's metrics without a process: events reach the counters whatever the log
level, and an index that does not answer is a gauge at 0, not a failed scrape."""

from __future__ import annotations

import logging
import ssl
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from catalog.security import pki
from node.config import load_config
from node.errors import ConfigError
from node.index import SqlIndex
from node.metrics import MetricsServer
from node.structlog import log_event, set_event_sink
from tests.integration.processes import free_port


def test_every_event_is_counted_even_below_the_log_level() -> None:
    server = MetricsServer()
    quiet = logging.getLogger("gridpacs.test.quiet")
    quiet.setLevel(logging.ERROR)  # an operator who runs with --log-level ERROR
    set_event_sink(server.events)
    try:
        log_event(quiet, "c_store", status="0x0000", ms=2.5)
        log_event(quiet, "c_store", status="0xA700", ms=0.4)
        log_event(quiet, "association_rejected", calling_ae="X")
    finally:
        set_event_sink(None)
    log_event(quiet, "c_store", status="0x0000", ms=1.0)  # after stop: not counted
    text = generate_latest(server.registry).decode()
    assert 'gridpacs_node_events_total{event="c_store",status="0x0000"} 1.0' in text
    assert 'gridpacs_node_events_total{event="c_store",status="0xA700"} 1.0' in text
    assert 'gridpacs_node_events_total{event="association_rejected",status=""} 1.0' in text
    assert 'gridpacs_node_event_duration_seconds_count{event="c_store"} 2.0' in text
    assert 'gridpacs_node_event_duration_seconds_bucket{event="c_store",le="0.001"} 1.0' in text


def test_an_index_that_does_not_answer_is_reported_not_raised() -> None:
    # the database went away after the node started (open() would refuse to start)
    dead = SqlIndex(sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x"))
    server = MetricsServer()
    server.watch(dead.stats, ttl=0)
    try:
        text = generate_latest(server.registry).decode()
    finally:
        dead.close()
    assert "gridpacs_node_index_up 0.0" in text
    assert "gridpacs_node_instances" not in text
    assert "process_cpu_seconds_total" in text  # the rest of the scrape still works


def test_metrics_over_mutual_tls_with_the_grid_pki(tmp_path: Path) -> None:
    """Beyond loopback the endpoint speaks HTTPS with the node's grid certificate and
    answers only scrapers holding a certificate of the grid CA."""
    pki.init_ca(tmp_path / "ca", "test grid CA")
    node = pki.issue(tmp_path / "ca", tmp_path / "node", "node", ip_addresses=["127.0.0.1"])
    scraper = pki.issue(tmp_path / "ca", tmp_path / "prom", "prometheus", roles=("client",))
    server = MetricsServer()
    port = server.start("127.0.0.1", 0, cert_file=node.cert, key_file=node.key,
                        ca_file=node.ca_cert)  # fmt: skip
    url = f"https://127.0.0.1:{port}/metrics"
    try:
        trusted = ssl.create_default_context(cafile=str(node.ca_cert))
        trusted.load_cert_chain(str(scraper.cert), str(scraper.key))
        with urllib.request.urlopen(url, context=trusted, timeout=10) as reply:
            assert reply.status == 200 and b"process_cpu_seconds_total" in reply.read()
        anonymous = ssl.create_default_context(cafile=str(node.ca_cert))
        with pytest.raises((ssl.SSLError, OSError)):  # no client certificate: refused
            _read(url, anonymous)
        with pytest.raises((ssl.SSLError, OSError)):  # plain HTTP: nothing served
            _read(f"http://127.0.0.1:{port}/metrics", None)
    finally:
        server.stop()


def test_metrics_tls_settings_must_be_complete() -> None:
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_config(None, {"metrics": {"enabled": True, "cert_file": "/x.crt"}})
    with pytest.raises(ConfigError, match=r"ca_file .* needs cert_file"):
        load_config(None, {"metrics": {"enabled": True, "ca_file": "/ca.crt"}})


def _read(url: str, context: ssl.SSLContext | None) -> bytes:
    with urllib.request.urlopen(url, context=context, timeout=10) as reply:
        return bytes(reply.read())
