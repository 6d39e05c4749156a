"""``gridpacs retrieve`` end to end: a catalog and two nodes as OS processes with mTLS, a
researcher with a token and a user certificate, grants verified by the holding nodes.

- a token for a de-identified collection gets the study, byte-identical to the stored copy,
  and a second run fetches nothing (resume);
- a token without access gets nothing and a clear error;
- an identified collection is refused (PERMISSION_DENIED) unless the role allows it (admin);
- a certificate without a grant is refused by the node;
- a holder killed with SIGKILL: the other copy serves the retrieve.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from catalog.security import TokenStore, channel_credentials, load_pepper
from catalog.security.audit import AuditLog
from catalog.security.grants import GrantSigner, load_signing_key
from gridpacs.retrieve import renew_expired
from gridpacs.retrieve_fetch import Authorizer, Fetcher, Outcome
from node.peer.client import PeerClient, PeerTransferError
from storage import open_store
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import Node, gridpacs_cli
from tests.integration.secure_grid import GridKeys, SecureReplica, node_config
from tests.integration.test_grid_catalog import _store, _wait_for

pytestmark = pytest.mark.timeout(120)


@dataclass
class Grid:
    keys: GridKeys
    replica: SecureReplica
    site_a: Node
    site_b: Node
    deid_study: str
    identified_study: str
    tokens: dict[str, str]


def _published(replica: SecureReplica, keys: GridKeys, study: str, holders: int) -> bool:
    from catalog.client import GrpcCatalogClient
    from catalog.records import QueryFilter

    host = keys.host("probe")
    creds = channel_credentials(host.cert, host.key, host.ca_cert)
    with GrpcCatalogClient([replica.address], credentials=creds, timeout=2) as client:
        found = list(client.query_studies(QueryFilter(study_instance_uids=(study,))))
    return bool(found) and len({h.node for h in found[0].holders}) == holders


@pytest.fixture(scope="module")
def grid(module_node_factory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grid]:
    root = tmp_path_factory.mktemp("secure-grid")
    keys = GridKeys.create(root)
    replica = SecureReplica("cat1", keys, root, identified=("local",)).start()
    try:
        a_cfg = node_config(root / "a.toml", keys, "site-a", [replica.address],
                            publish_identified=True, routes={"LUNG": "lung"})  # fmt: skip
        b_cfg = node_config(root / "b.toml", keys, "site-b", [replica.address],
                            publish_identified=True)  # fmt: skip
        site_a = module_node_factory(ae_title="SITEA", args=["--config", str(a_cfg)])
        site_b = module_node_factory(ae_title="SITEB", args=["--config", str(b_cfg)])
        deid = StudySpec(patient_id="REAL-PATIENT-7", patient_name="REAL^NAME")
        assert _store(site_a.port, "LUNG", [make_dataset(deid, instance_number=n)
                                             for n in (1, 2, 3)]) == [0] * 3  # fmt: skip
        ident = StudySpec(patient_id="IDENT-1")
        sent = [make_dataset(ident, instance_number=n) for n in (1, 2, 3)]
        assert _store(site_a.port, "SITEA", sent) == [0] * 3
        assert _store(site_b.port, "SITEB", sent) == [0] * 3
        # the de-identified study has new UIDs: find it by its collection
        from catalog.client import GrpcCatalogClient
        from catalog.records import QueryFilter

        host = keys.host("probe")
        creds = channel_credentials(host.cert, host.key, host.ca_cert)

        def lung_study() -> str | None:
            with GrpcCatalogClient([replica.address], credentials=creds, timeout=2) as client:
                found = list(client.query_studies(QueryFilter(collections=("lung",))))
            return found[0].study_instance_uid if found else None

        deid_uid = _wait_for(lung_study, 30, "the de-identified study in the catalog")
        _wait_for(lambda: _published(replica, keys, ident.study_uid, 2), 30, "both copies")
        store = TokenStore(sa.create_engine(replica.db_url), load_pepper(keys.pepper))
        day = dt.timedelta(days=1)
        tokens = {
            name: store.create("alice", grants, day).plaintext
            for name, grants in {
                "lung": {"lung": "reader"},
                "stranger": {"brain": "reader"},
                "local_reader": {"local": "reader"},
                "local_admin": {"local": "admin"},
            }.items()
        }
        yield Grid(keys, replica, site_a, site_b, deid_uid, ident.study_uid, tokens)
    finally:
        replica.stop()


def _retrieve(grid: Grid, token: str, out: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = gridpacs_cli(
        "retrieve", "--catalog", grid.replica.address, "--token", grid.tokens[token],
        "--out", str(out), "--json", *grid.keys.researcher_args(), *args,
    )  # fmt: skip
    summary = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.returncode, summary, result.stderr


def _blob(node: Node, key: str) -> bytes:
    # Through the store: small instances are packed, not one file each (a read-only
    # snapshot next to the running node).
    return open_store(node.data_dir / "blobs", create=False).get(key)


def _node_audit(node: Node) -> list[Any]:
    return AuditLog(sa.create_engine(f"sqlite:///{node.data_dir / 'audit.sqlite'}")).query(
        limit=1000
    )


def _sop(data: bytes) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return str(dcmread(BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def test_token_for_a_deidentified_collection_gets_the_study_and_resumes(
    grid: Grid, tmp_path: Path
) -> None:
    code, summary, err = _retrieve(grid, "lung", tmp_path, "--study", grid.deid_study)
    assert code == 0, err
    assert summary["fetched"] == 3 and summary["failed"] == 0
    files = sorted(tmp_path.rglob("*.dcm"))
    assert len(files) == 3
    for path in files:
        assert path.parent.parent.name == grid.deid_study
        data = path.read_bytes()
        assert data == _blob(grid.site_a, hashlib.sha256(data).hexdigest())
        assert b"REAL-PATIENT-7" not in data and b"REAL^NAME" not in data
    assert not list(tmp_path.rglob("*.part"))
    # the holding node recorded each instance that left it, and for whom, before sending
    fetched = [r for r in _node_audit(grid.site_a) if r.action == "grid.researcher_fetch"
               and r.target.get("study") == grid.deid_study]  # fmt: skip
    assert len(fetched) == 3 and {r.actor for r in fetched} == {"alice"}
    assert {r.outcome for r in fetched} == {"served"}
    assert {r.target["sop_instance_uid"] for r in fetched} == {
        _sop(path.read_bytes()) for path in files
    }

    code, summary, err = _retrieve(grid, "lung", tmp_path, "--study", grid.deid_study)
    assert code == 0, err
    assert (summary["fetched"], summary["present"]) == (0, 3)

    files[0].write_bytes(b"truncated")  # a damaged file is fetched again; the table says so
    table = gridpacs_cli(
        "retrieve", "--catalog", grid.replica.address, "--token", grid.tokens["lung"],
        "--out", str(tmp_path), "--study", grid.deid_study, *grid.keys.researcher_args(),
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "1 fetched, 2 already present, 0 failed" in " ".join(table.stdout.split())
    restored = files[0].read_bytes()
    assert restored == _blob(grid.site_a, hashlib.sha256(restored).hexdigest())


def test_token_without_access_gets_nothing_and_a_clear_error(grid: Grid, tmp_path: Path) -> None:
    code, _, err = _retrieve(grid, "stranger", tmp_path, "--study", grid.deid_study)
    assert code == 1
    assert "NOT_FOUND" in err and "may read" in err
    code, _, err = _retrieve(grid, "stranger", tmp_path, "--patient-id", "*")
    assert code == 1 and "no study matches" in err
    assert not list(tmp_path.rglob("*"))
    engine = sa.create_engine(grid.replica.db_url)
    rows = AuditLog(engine).query(action="/gridpacs.catalog.v1.AccessService/*")
    assert any(r.outcome == "NOT_FOUND" and grid.deid_study in r.target["request"]["studies"]
               for r in rows)  # fmt: skip


def test_identified_collection_needs_a_role_that_allows_it(grid: Grid, tmp_path: Path) -> None:
    code, _, err = _retrieve(grid, "local_reader", tmp_path / "r", "--study",
                             grid.identified_study)  # fmt: skip
    assert code == 1
    assert "PERMISSION_DENIED" in err and "identified" in err
    assert not list((tmp_path / "r").rglob("*.dcm"))
    rows = AuditLog(sa.create_engine(grid.replica.db_url)).query(
        action="/gridpacs.catalog.v1.AccessService/*"
    )
    assert any(r.outcome == "PERMISSION_DENIED" and r.actor == "alice" for r in rows)

    code, summary, err = _retrieve(grid, "local_admin", tmp_path / "a", "--study",
                                   grid.identified_study)  # fmt: skip
    assert code == 0, err
    assert summary["fetched"] == 3


def test_nodes_enforce_the_grant_whatever_the_catalog_knows(grid: Grid) -> None:
    """A grant for ``local`` without ``identified_allowed`` (as a catalog that does not list
    the collection as identified would sign it) is refused by the node that holds it."""
    signer = GrantSigner(load_signing_key(grid.keys.grant.private))
    r = grid.keys.researcher
    peers = PeerClient(channel_credentials(r.cert, r.key, r.ca_cert), timeout=5)
    address = _peer_address(grid, "site-a")
    sop = _sop_uid(grid)
    try:
        for identified, expect in ((False, "PERMISSION_DENIED"), (True, None)):
            grant, _ = signer.sign(user="alice", token_id="t", studies=[grid.identified_study],
                                   collections={"local": identified})  # fmt: skip
            if expect is None:
                assert peers.fetch(address, sop, grant=grant).startswith(b"\0" * 128 + b"DICM")
            else:
                with pytest.raises(PeerTransferError) as refused:
                    peers.fetch(address, sop, grant=grant)
                assert refused.value.code == expect
        assert "researcher_fetch_refused" in grid.site_a.log_text()
        refused = [r for r in _node_audit(grid.site_a) if r.action == "grid.researcher_fetch"
                   and r.outcome == "PERMISSION_DENIED"]  # fmt: skip
        assert refused and refused[-1].target["sop_instance_uid"] == sop
        assert "identified" in refused[-1].target["reason"]
    finally:
        peers.close()


def test_a_certificate_without_a_grant_fetches_nothing(grid: Grid) -> None:
    r = grid.keys.researcher
    peers = PeerClient(channel_credentials(r.cert, r.key, r.ca_cert), timeout=5)
    address = _peer_address(grid, "site-a")
    try:
        with pytest.raises(PeerTransferError) as refused:
            peers.fetch(address, "1.2.3.4")
        assert refused.value.code == "UNAUTHENTICATED"
        with pytest.raises(PeerTransferError) as forged:
            peers.fetch(address, "1.2.3.4", grant="gpg1.e30.AAAA")
        assert forged.value.code == "UNAUTHENTICATED"
    finally:
        peers.close()


def test_instances_refused_for_an_expired_grant_are_fetched_with_a_fresh_one(
    grid: Grid, tmp_path: Path
) -> None:
    r = grid.keys.researcher
    creds = channel_credentials(r.cert, r.key, r.ca_cert)
    authorizer = Authorizer([grid.replica.address], creds, grid.tokens["lung"])
    auth = authorizer.authorize([grid.deid_study])
    old, _ = GrantSigner(load_signing_key(grid.keys.grant.private), ttl_s=60).sign(
        user="alice", token_id="t", studies=[grid.deid_study], collections={"lung": False},
        now=time.time() - 3600,
    )  # fmt: skip
    stale = [dataclasses.replace(item, grant=old) for item in auth.items]
    peers = PeerClient(creds, timeout=10)
    fetcher = Fetcher(tmp_path, peers)
    try:
        with ThreadPoolExecutor(2) as pool:
            batch = list(pool.map(fetcher.retrieve, stale))
            assert all("grant expired" in result.error for result in batch)
            renewed = renew_expired(batch, [grid.deid_study], (), authorizer, fetcher, pool)
    finally:
        peers.close()
    assert [result.outcome for result in renewed] == [Outcome.FETCHED] * len(stale)


def test_a_holder_killed_mid_retrieve_fails_over_and_the_rerun_resumes(
    grid: Grid, tmp_path: Path
) -> None:
    """The CLI's own fetcher, driven step by step: one instance from site A, then site A is
    killed with SIGKILL, the next instance comes from site B under the same grant; a rerun
    of the command keeps what is there and fetches the rest from site B."""
    r = grid.keys.researcher
    creds = channel_credentials(r.cert, r.key, r.ca_cert)
    auth = Authorizer([grid.replica.address], creds, grid.tokens["local_admin"]).authorize(
        [grid.identified_study]
    )
    assert [h.node for h in auth.items[0].holders] == ["site-a", "site-b"]
    peers = PeerClient(creds, timeout=10)
    fetcher = Fetcher(tmp_path, peers)
    try:
        first = fetcher.retrieve(auth.items[0])
        assert (first.outcome, first.source) == (Outcome.FETCHED, "site-a")
        grid.site_a.kill()  # SIGKILL: the first holder is gone without a word
        second = fetcher.retrieve(auth.items[1])
        assert (second.outcome, second.source) == (Outcome.FETCHED, "site-b"), second.error
    finally:
        peers.close()
    code, summary, err = _retrieve(grid, "local_admin", tmp_path, "--study",
                                   grid.identified_study)  # fmt: skip
    assert code == 0, err
    assert (summary["present"], summary["fetched"]) == (2, 1)
    assert summary["sources"] == {"site-b": 1}
    assert len(list(tmp_path.rglob("*.dcm"))) == 3


def _sop_uid(grid: Grid) -> str:
    from catalog.client import GrpcCatalogClient

    host = grid.keys.host("probe")
    creds = channel_credentials(host.cert, host.key, host.ca_cert)
    with GrpcCatalogClient([grid.replica.address], credentials=creds, timeout=2) as client:
        [loc, *_] = client.locate_instances(study_instance_uids=[grid.identified_study])
    return loc.sop_instance_uid


def _peer_address(grid: Grid, node_name: str) -> str:
    from catalog.client import GrpcCatalogClient

    host = grid.keys.host("probe")
    creds = channel_credentials(host.cert, host.key, host.ca_cert)
    with GrpcCatalogClient([grid.replica.address], credentials=creds, timeout=2) as client:
        [loc, *_] = client.locate_instances(study_instance_uids=[grid.identified_study])
    return loc.peer_addresses[[h.node for h in loc.holders].index(node_name)]
