"""Reconciliation with real processes: a catalog replica and two nodes. Discrepancies are made
for real (a publish lost by the catalog, instances lost by a node); ``gridpacs reconcile``
reports exactly those for the period and exits non-zero, ``--repair`` fixes them, a second
run is clean; a node's anti-entropy pass republishes a lost publish on its own."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from catalog.client import GrpcCatalogClient
from catalog.reconcile import Period
from tests.catalog.processes import ReplicaProcess
from tests.factories import StudySpec, make_dataset
from tests.integration.processes import Node, NodeFactory, gridpacs_cli
from tests.integration.test_grid_catalog import _store, _wait_for

pytestmark = pytest.mark.timeout(150)
JUNE = Period.parse("2024-06")
JULY = Period.parse("2024-07")


@pytest.fixture
def replica(tmp_path: Path):  # type: ignore[no-untyped-def]
    rep = ReplicaProcess("c1", tmp_path)
    rep.start()
    yield rep
    rep.stop()


def _node(factory: NodeFactory, tmp: Path, replica: ReplicaProcess, name: str,
          anti_entropy: float) -> Node:  # fmt: skip
    config = tmp / f"{name}.toml"
    config.write_text(f"[catalog]\naddresses = []\nanti_entropy_interval = {anti_entropy}\n"
                      "anti_entropy_months = 1\n")  # fmt: skip
    return factory(
        ae_title=name.upper().replace("-", ""),
        args=["--config", str(config), "--catalog", replica.address, "--insecure-catalog",
              "--publish-identified", "--name", name],
    )  # fmt: skip


def _held(replica: ReplicaProcess, period: Period) -> dict[str, set[str]]:
    with GrpcCatalogClient([replica.address]) as client:
        out: dict[str, set[str]] = {}
        for node, held in client.list_holdings(period):
            out.setdefault(node, set()).add(held.sop_instance_uid)
        return out


def _catalog_forgets(replica: ReplicaProcess, node: str, uid: str) -> None:
    """A publish the catalog lost: its row disappears behind the node's back."""
    with sqlite3.connect(replica.db_url.removeprefix("sqlite:///")) as db:
        gone = db.execute("DELETE FROM catalog_instances WHERE origin = ? AND sop_instance_uid = ?",
                          (node, uid)).rowcount  # fmt: skip
    assert gone == 1


def _node_loses(node: Node, uid: str) -> None:
    """An index accident on the node: the instance row vanishes (reconcile sees the index).

    A blob kept as a file vanishes too; a small one lives in a pack, which only the node
    itself may change, so it stays (unreferenced) — what reconcile compares is unchanged.
    """
    with sqlite3.connect(node.data_dir / "index.sqlite") as db:
        [(key,)] = db.execute("SELECT blob_key FROM instances WHERE sop_instance_uid = ?", (uid,))
        db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (uid,))
    for blob in (node.data_dir / "blobs").rglob(key):
        blob.unlink()


def _reconcile(replica: ReplicaProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return gridpacs_cli("reconcile", "--catalog", replica.address, *args, timeout=60)


def test_reconcile_reports_repairs_and_anti_entropy_republishes(
    replica: ReplicaProcess, node_factory: NodeFactory, tmp_path: Path
) -> None:
    site_a = _node(node_factory, tmp_path, replica, "site-a", anti_entropy=0)
    site_b = _node(node_factory, tmp_path, replica, "site-b", anti_entropy=1)
    a_june = [make_dataset(StudySpec(patient_id="A1", study_date="20240610"), instance_number=n)
              for n in (1, 2, 3)]  # fmt: skip
    a_july = [make_dataset(StudySpec(patient_id="A2", study_date="20240705"), instance_number=n)
              for n in (1, 2)]  # fmt: skip
    b_june = [make_dataset(StudySpec(patient_id="B1", study_date="20240620"), instance_number=n)
              for n in (1, 2)]  # fmt: skip
    b_july = [make_dataset(StudySpec(patient_id="B2", study_date="20240701"))]
    assert _store(site_a.port, "SITEA", a_june + a_july) == [0] * 5
    # site B also keeps a copy of two of A's June instances: another holder to copy from
    assert _store(site_b.port, "SITEB", a_june[:2] + b_june + b_july) == [0] * 5
    uid = lambda ds: str(ds.SOPInstanceUID)  # noqa: E731
    _wait_for(lambda: {k: len(v) for k, v in _held(replica, JUNE).items()} == {"site-a": 3,
              "site-b": 4}, 30, "publication")  # fmt: skip

    _catalog_forgets(replica, "site-a", uid(a_june[2]))  # lost publish, June
    _catalog_forgets(replica, "site-a", uid(a_july[0]))  # lost publish, July: not in June's run
    _node_loses(site_b, uid(a_june[0]))  # site A still has it: copied back
    _node_loses(site_b, uid(b_june[1]))  # nobody else has it: the holding is retracted

    found = _reconcile(replica, "--period", "2024-06", "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    nodes = {n["node"]: n for n in report["nodes"]}
    assert [m["sop_instance_uid"] for m in nodes["site-a"]["missing_in_catalog"]] == [
        uid(a_june[2])]  # fmt: skip
    assert nodes["site-a"]["missing_on_node"] == []
    assert nodes["site-a"]["catalog"] == {"by_study_date": 2, "by_received": 0}
    assert nodes["site-a"]["node_counts"] == {"by_study_date": 3, "by_received": 0}
    assert sorted(m["sop_instance_uid"] for m in nodes["site-b"]["missing_on_node"]) == sorted(
        [uid(a_june[0]), uid(b_june[1])])  # fmt: skip
    assert nodes["site-b"]["missing_in_catalog"] == []
    assert nodes["site-b"]["catalog"]["by_study_date"] == 4
    assert nodes["site-b"]["node_counts"]["by_study_date"] == 2
    assert report["discrepancies"] == 4  # 3 missing + B1's 2nd instance held by nobody

    # the table (what an operator reads) and the repair, in one run
    repaired = _reconcile(replica, "--period", "2024-06", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "site-a" in repaired.stdout and uid(a_june[2]) in repaired.stdout
    assert "4 discrepancy(ies)" in repaired.stdout
    assert "repaired: 1 republished, 1 copied, 1 stale holding(s) retracted, 0 failure(s)" in (
        repaired.stdout)  # fmt: skip

    def clean() -> subprocess.CompletedProcess[str] | None:
        again = _reconcile(replica, "--period", "2024-06", "--json")
        return again if again.returncode == 0 else None

    again = _wait_for(clean, 30, "a clean second run")
    data = json.loads(again.stdout)
    assert data["discrepancies"] == 0
    assert {n["node"]: n["catalog"]["by_study_date"] for n in data["nodes"]} == {
        "site-a": 3, "site-b": 3}  # fmt: skip
    assert uid(a_june[0]) in _held(replica, JUNE)["site-b"]

    # July's lost publish was not part of June's repair; nobody runs the CLI for it:
    # site B's anti-entropy pass republishes its own lost July instance by itself.
    _catalog_forgets(replica, "site-b", uid(b_july[0]))
    _wait_for(lambda: uid(b_july[0]) in _held(replica, JULY).get("site-b", set()), 30,
              "anti-entropy to republish")  # fmt: skip
    assert "event=anti_entropy" in site_b.log_text() and "republished=1" in site_b.log_text()
    # site A runs no anti-entropy: its lost July publish is still lost
    assert _held(replica, JULY)["site-a"] == {uid(a_july[1])}
