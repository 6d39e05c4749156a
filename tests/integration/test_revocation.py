"""Revoking a certificate while the grid runs: a catalog replica and a node, separate OS
processes, refuse it as soon as the new list is copied over theirs; everyone else is served.

The list is replaced the way Ansible's ``copy`` module does it (a temporary file renamed
over the old one), and nobody is restarted.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa

from catalog.client import GrpcCatalogClient
from catalog.errors import CatalogRejected
from catalog.records import QueryFilter
from catalog.security import CertFiles, TokenStore, channel_credentials, load_pepper, pki
from catalog.security.audit import AuditLog
from tests.catalog.processes import free_port
from tests.integration.processes import Node, gridpacs_cli
from tests.integration.secure_grid import GridKeys, SecureReplica, health_status, node_config

pytestmark = pytest.mark.timeout(120)
QUERY_STUDIES = "/gridpacs.catalog.v1.CatalogService/QueryStudies"


@dataclass
class Grid:
    keys: GridKeys
    crl: Path  # the copy both servers read
    replica: SecureReplica
    node: Node
    peer_address: str
    token: str


@pytest.fixture
def grid(node_factory, tmp_path: Path) -> Iterator[Grid]:  # type: ignore[no-untyped-def]
    keys = GridKeys.create(tmp_path)
    pki.issue_crl(tmp_path / "ca")  # empty: nothing revoked yet
    served = tmp_path / "served" / "crl.pem"
    served.parent.mkdir()
    shutil.copy(tmp_path / "ca" / pki.CRL_FILE, served)
    replica = SecureReplica("cat1", keys, tmp_path, crl=served).start()
    try:
        peer_port = free_port()
        config = node_config(tmp_path / "site.toml", keys, "site-a", [replica.address],
                             crl=served, peer_port=peer_port)  # fmt: skip
        node = node_factory(ae_title="SITEA", args=["--config", str(config)])
        store = TokenStore(sa.create_engine(replica.db_url), load_pepper(keys.pepper))
        token = store.create("alice", {"lung": "reader"}, None).plaintext
        yield Grid(keys, served, replica, node, f"127.0.0.1:{peer_port}", token)
    finally:
        replica.stop()


def _query(grid: Grid, files: CertFiles) -> str:
    creds = channel_credentials(files.cert, files.key, files.ca_cert)
    with GrpcCatalogClient([grid.replica.address], credentials=creds, token=grid.token) as c:
        try:
            list(c.query_studies(QueryFilter()))
        except CatalogRejected as exc:
            return exc.code or "?"
    return "OK"


def _publish_crl(grid: Grid) -> None:
    staged = grid.crl.with_name(".crl.pem.tmp")
    shutil.copy(grid.keys.root / "ca" / pki.CRL_FILE, staged)
    os.replace(staged, grid.crl)


def _until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the servers did not take up the new list"
        time.sleep(0.2)


def test_revoked_certificates_are_refused_by_catalog_and_node_without_restart(
    grid: Grid,
) -> None:
    keys = grid.keys
    victim, bystander = keys.host("decommissioned"), keys.host("bystander")
    for files in (victim, bystander, keys.host("site-a")):
        assert health_status(grid.replica.address, files) == grpc.StatusCode.OK
        assert health_status(grid.peer_address, files) == grpc.StatusCode.OK
    assert _query(grid, keys.researcher) == "OK"

    pki.revoke(keys.root / "ca", victim.cert, reason="cessation-of-operation")
    pki.revoke(keys.root / "ca", keys.researcher.cert, reason="key-compromise")
    _publish_crl(grid)
    _until(lambda: health_status(grid.replica.address, victim) == grpc.StatusCode.UNAUTHENTICATED)
    _until(lambda: health_status(grid.peer_address, victim) == grpc.StatusCode.UNAUTHENTICATED)
    # a valid token does not help a revoked certificate, and the refusal is audited
    assert _query(grid, keys.researcher) == "UNAUTHENTICATED"
    audit = AuditLog(sa.create_engine(grid.replica.db_url))
    [refused] = audit.query(actor="cert:alice", action=QUERY_STUDIES)[-1:]
    assert refused.outcome == "UNAUTHENTICATED"
    # everyone else goes on, the node's own link to the catalog included
    for files in (bystander, keys.host("site-a")):
        assert health_status(grid.replica.address, files) == grpc.StatusCode.OK
        assert health_status(grid.peer_address, files) == grpc.StatusCode.OK
    assert grid.node.running()
    assert "event=crl_reloaded" in grid.node.log_text()

    # a broken copy is ignored: the revocations stay in force
    grid.crl.write_bytes(b"-----BEGIN X509 CRL-----\n")
    time.sleep(1.5)
    assert health_status(grid.peer_address, victim) == grpc.StatusCode.UNAUTHENTICATED
    assert health_status(grid.peer_address, bystander) == grpc.StatusCode.OK
    _until(lambda: "event=crl_reload_failed" in grid.node.log_text())


def test_a_node_whose_list_is_not_the_grid_cas_does_not_start(tmp_path: Path) -> None:
    keys = GridKeys.create(tmp_path / "grid")
    pki.init_ca(tmp_path / "other", "testgrid")
    pki.issue_crl(tmp_path / "other")
    config = node_config(tmp_path / "site.toml", keys, "site-a", ["127.0.0.1:9"],
                         crl=tmp_path / "other" / pki.CRL_FILE)  # fmt: skip
    result = gridpacs_cli("node", "serve", "--config", str(config), "--data-dir",
                          str(tmp_path / "data"), "--port", str(free_port()))  # fmt: skip
    assert result.returncode != 0
    assert "not signed by this grid's CA" in result.stderr
