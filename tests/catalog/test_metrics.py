"""Prometheus metrics of a real catalog replica process: every RPC counted by method and
code and timed, and the replica's state (nodes, change log, jobs) on scrape."""

from __future__ import annotations

import re
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from catalog import GrpcCatalogClient, NodeInfo
from catalog.errors import CatalogError, ConfigError
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.processes import ReplicaProcess, free_port

pytestmark = pytest.mark.timeout(60)

SERVICE = "/gridpacs.catalog.v1.CatalogService"


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[tuple[ReplicaProcess, int]]:
    metrics_port = free_port()
    process = ReplicaProcess("metrics", tmp_path)
    process.extra_args = ["--metrics-port", str(metrics_port)]
    process.start()
    try:
        yield process, metrics_port
    finally:
        process.stop()


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"no {sample} in:\n{text[:3000]}"
    return float(match.group(1))


def test_rpcs_are_counted_and_timed_and_the_state_is_shown(
    replica: tuple[ReplicaProcess, int],
) -> None:
    process, port = replica
    records = StudyBuilder("M1", collection="lung").instances(5)
    with GrpcCatalogClient([process.address], timeout=5) as client:
        client.register_node(NodeInfo("site-a", "SITEA", peer_address="site-a:1"))
        client.publish_changes("site-a", Outbox("site-a").added(records))
        with pytest.raises(CatalogError):  # locate without UIDs: INVALID_ARGUMENT
            list(client.locate_instances())

    text = _scrape(port)
    register = f"{SERVICE}/RegisterNode"
    assert _value(text, f'gridpacs_catalog_rpcs_total{{code="OK",method="{register}"}}') == 1
    locate = (
        f'gridpacs_catalog_rpcs_total{{code="INVALID_ARGUMENT",method="{SERVICE}/LocateInstances"}}'
    )
    assert _value(text, locate) == 1
    publish = f'gridpacs_catalog_rpc_duration_seconds_count{{method="{SERVICE}/PublishChanges"}}'
    assert _value(text, publish) == 1
    assert _value(text, "gridpacs_catalog_nodes") == 1
    assert _value(text, "gridpacs_catalog_nodes_live") == 1
    assert _value(text, 'gridpacs_catalog_change_log_entries{origin="site-a"}') == 5
    assert _value(text, 'gridpacs_catalog_jobs{state="queued"}') == 0
    assert _value(text, "gridpacs_catalog_database_up") == 1
    assert _value(text, "process_resident_memory_bytes") > 0
    assert "event=metrics_serving" in process.log_path.read_text()


def test_calls_refused_before_the_servicer_are_counted_too(sqlite_url: str, tmp_path: Path) -> None:
    """The metrics interceptor is outermost: a call without credentials on a secured
    replica is refused by the auth interceptor and still counted, UNAUTHENTICATED."""
    from catalog.app import build_app
    from catalog.config import build_config
    from catalog.security.tokens import write_pepper

    config = build_config({
        "name": "secured", "port": 0, "db_url": sqlite_url, "insecure": True,
        "security": {"pepper_file": str(write_pepper(tmp_path / "pepper"))},
        "metrics": {"enabled": True, "port": 0},
    })  # fmt: skip
    app = build_app(config)
    app.start()
    try:
        client = GrpcCatalogClient([f"127.0.0.1:{app.port}"], timeout=5)
        with client, pytest.raises(CatalogError):
            client.register_node(NodeInfo("site-a", "SITEA", peer_address="site-a:1"))
        assert app.metrics is not None
        text = _scrape(app.metrics.port)
    finally:
        app.stop(grace=0)
    refused = f'code="UNAUTHENTICATED",method="{SERVICE}/RegisterNode"'
    assert _value(text, f"gridpacs_catalog_rpcs_total{{{refused}}}") == 1


def test_metrics_over_mtls_with_the_replicas_own_certificate(tmp_path: Path) -> None:
    from catalog.app import build_app
    from catalog.config import build_config
    from catalog.security import init_ca, issue

    init_ca(tmp_path / "ca", "testgrid")
    replica = issue(tmp_path / "ca", tmp_path / "replica", "127.0.0.1", ip_addresses=["127.0.0.1"])
    scraper = issue(tmp_path / "ca", tmp_path / "prom", "prometheus", roles=("client",))
    tls = {"cert": str(replica.cert), "key": str(replica.key), "ca": str(replica.ca_cert)}
    config = build_config({
        "name": "tls", "port": 0, "db_url": f"sqlite:///{tmp_path}/c.sqlite", "tls": tls,
        "metrics": {"enabled": True, "port": 0, "tls": True},
    })  # fmt: skip
    app = build_app(config)
    app.start()
    try:
        assert app.metrics is not None
        url = f"https://127.0.0.1:{app.metrics.port}/metrics"
        trusted = ssl.create_default_context(cafile=str(replica.ca_cert))
        trusted.load_cert_chain(str(scraper.cert), str(scraper.key))
        with urllib.request.urlopen(url, context=trusted, timeout=10) as reply:
            assert b"gridpacs_catalog_database_up 1.0" in reply.read()
        anonymous = ssl.create_default_context(cafile=str(replica.ca_cert))
        with pytest.raises((ssl.SSLError, OSError)):
            urllib.request.urlopen(url, context=anonymous, timeout=10).read()
    finally:
        app.stop(grace=0)
    with pytest.raises(ConfigError, match=r"metrics\.tls needs"):
        build_config({"name": "x", "insecure": True, "metrics": {"tls": True}})
