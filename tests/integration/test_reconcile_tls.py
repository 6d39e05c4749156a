"""``gridpacs reconcile`` on a grid with mTLS and tokens (in-process catalog and node): an
operator's host certificate lists and repairs, a researcher's certificate cannot, and the
catalog audits every holdings listing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from catalog.app import CatalogApp, build_app
from catalog.client import GrpcCatalogClient
from catalog.config import CatalogConfig, SecurityConfig, TlsConfig
from catalog.records import NodeInfo
from catalog.security import AuditLog, TokenStore, channel_credentials, load_pepper, pki
from catalog.security.tokens import write_pepper
from gridpacs.reconcile.cli import reconcile_cmd
from node.publisher import to_catalog_change
from tests.catalog.processes import free_port
from tests.factories import StudySpec
from tests.node.test_inventory import Site, _site, _store

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[tuple[CatalogApp, Site, dict[str, pki.CertFiles]]]:
    ca = tmp_path / "ca"
    pki.init_ca(ca, "testgrid")
    certs = {name: pki.issue(ca, tmp_path / name, name, ip_addresses=["127.0.0.1"])
             for name in ("catalog1", "site-a", "ops")}  # fmt: skip
    certs["alice"] = pki.issue(ca, tmp_path / "alice", "alice", roles=("client",))
    files = certs["catalog1"]
    app = build_app(CatalogConfig(
        name="catalog1", port=free_port(), db_url=f"sqlite:///{tmp_path}/catalog.sqlite",
        tls=TlsConfig(cert=files.cert, key=files.key, ca=files.ca_cert),
        security=SecurityConfig(pepper_file=write_pepper(tmp_path / "pepper")),
    ))  # fmt: skip
    app.start()
    site = _site(tmp_path, "site-a", certs["site-a"])
    try:
        yield app, site, certs
    finally:
        site.server.stop(0)
        site.peers.close()
        site.index.close()
        app.stop(grace=0)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(reconcile_cmd)
    return app


def _args(app: CatalogApp, files: pki.CertFiles, *extra: str) -> list[str]:
    return ["--catalog", f"127.0.0.1:{app.port}", "--period", "2024-06", "--json",
            "--ca", str(files.ca_cert), "--cert", str(files.cert), "--key", str(files.key),
            *extra]  # fmt: skip


def test_operator_repairs_over_mtls_and_a_researcher_cannot(
    grid: tuple[CatalogApp, Site, dict[str, pki.CertFiles]],
) -> None:
    app, site, certs = grid
    uids = _store(site, StudySpec(study_date="20240605"), "lung", 3)
    files = certs["site-a"]
    creds = channel_credentials(files.cert, files.key, files.ca_cert)
    address = [f"127.0.0.1:{app.port}"]
    with GrpcCatalogClient(address, credentials=creds) as publisher:
        publisher.register_node(NodeInfo("site-a", "SITEA", "127.0.0.1", 104, site.address))
        changes = site.index.changes_since(0)
        publisher.publish_changes("site-a", [to_catalog_change(c) for c in changes[:2]])
        runner = CliRunner()

        found = runner.invoke(_cli(), _args(app, certs["ops"]))
        assert found.exit_code == 1, found.output
        [node] = json.loads(found.stdout)["nodes"]
        assert [m["sop_instance_uid"] for m in node["missing_in_catalog"]] == [uids[2]]

        fixed = runner.invoke(_cli(), _args(app, certs["ops"], "--repair"))
        assert fixed.exit_code == 0, fixed.output
        assert json.loads(fixed.stdout)["repair"]["republished"] == 1
        # what the node's publisher would do next: send the re-enqueued change
        [again] = site.index.changes_since(changes[-1].seq)
        publisher.publish_changes("site-a", [to_catalog_change(again)])
        clean = runner.invoke(_cli(), _args(app, certs["ops"]))
        assert clean.exit_code == 0 and json.loads(clean.stdout)["discrepancies"] == 0

    assert app.config.security is not None
    token = TokenStore(app.engine, load_pepper(app.config.security.pepper_file)).create(
        "alice", {"*": "reader"}, None).plaintext  # fmt: skip
    refused = CliRunner().invoke(_cli(), _args(app, certs["alice"], "--token", token))
    assert refused.exit_code == 2 and "UNAUTHENTICATED" in refused.output  # nodes: hosts only
    actions = [r.action for r in AuditLog(app.engine).query()]
    assert actions.count("/gridpacs.catalog.v1.HoldingsService/ListHoldings") == 3
