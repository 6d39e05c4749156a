"""Replication between sites with separate processes: 3 nodes, 2 catalog replicas.

- a storescu to one node reaches the collection's replication factor on the others;
- a node whose data directory is wiped comes back empty, tells the catalog (store reset) and
  is refilled with its share;
- a node stopped for good is "lost" after ``lost_after_seconds``: its copies are made again
  on the remaining nodes;
- a node cut off in a network namespace during ingest: after the cut heals every
  acknowledged instance reaches the factor;
- a node without one trust domain never receives identified data.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from catalog import CatalogError
from tests.integration.processes import Node, gridpacs_cli
from tests.integration.replication_grid import Grid, NetNs, store_study

pytestmark = pytest.mark.timeout(120)

POLICY = """
[replication]
interval_s = 0.2
lost_after_seconds = {lost_after}
[replication.collections]
local = 2
"""


def _until(check: Callable[[], object], timeout: float, what: str) -> None:
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except CatalogError as exc:  # a replica slow to answer on a loaded machine: again
            last = f"catalog: {exc}"
        if last is True:
            print(f"{what}: {time.monotonic() - started:.1f} s")
            return
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}", False)


def _at_factor(
    grid: Grid,
    patient: str,
    acked: list[str],
    factor: int,
    among: set[str] | None = None,
    replica: int = 0,
) -> Callable[[], object]:
    """A check: every acknowledged instance has ``factor`` holders (among those nodes)."""

    def check() -> object:
        holders = grid.holders(patient, replica)
        short = {
            uid: sorted(holders.get(uid, set()))
            for uid in acked
            if len(holders.get(uid, set()) & (among or set(grid.nodes))) < factor
        }
        return True if not short else f"{len(short)} short, e.g. {next(iter(short.items()))}"

    return check


def _status(node: Node) -> dict[str, object]:
    """``gridpacs node status --json`` of a node, as an operator reads it."""
    result = gridpacs_cli("node", "status", "--config", str(node.config_file), "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[Grid]:
    grid = Grid(tmp_path, POLICY.format(lost_after=60))
    grid.start_catalog()
    yield grid
    grid.stop()


def test_factor_reached_privacy_kept_and_a_wiped_node_refilled(grid: Grid, tmp_path: Path) -> None:
    n1, n2 = grid.add_node("n1", start=False), grid.add_node("n2", start=False)
    # outside the trust domain: refuses the identified default collection
    private = grid.add_node("private", publish_identified=False, start=False)
    grid.start_nodes(n1, n2, private)
    acked = store_study(n1, tmp_path / "study", 24, "REPL-1")
    _until(_at_factor(grid, "REPL-1", acked, 2), 40, "factor 2 after a storescu to n1")
    _until(_at_factor(grid, "REPL-1", acked, 2, replica=1), 20, "the other replica to agree")
    time.sleep(1.0)  # a few more planning rounds: nothing more is copied
    assert all(h == {"n1", "n2"} for h in grid.holders("REPL-1").values())
    assert "event=replica_copied" not in private.log_text()

    n1.terminate()
    before = grid.mark("n1")
    shutil.rmtree(n1.data_dir)  # the disk is gone
    n1.start()
    _until(lambda: grid.mark("n1") > before, 20, "n1's store reset to reach the catalog")
    # the catalog forgot n1's copies: each instance is on n2 only, and n1 (the only other
    # node that takes identified data) pulls every one back
    _until(_at_factor(grid, "REPL-1", acked, 2), 40, "factor 2 again after the wipe")
    assert all(h == {"n1", "n2"} for h in grid.holders("REPL-1").values())
    log = n1.log_text()
    assert "event=store_reset" in log
    assert log.count("event=replica_copied") >= len(acked)
    _until(lambda: _status(n1).get("replication_copied") == len(acked), 10, "node status")
    assert _status(n1)["instances"] == len(acked)
    assert "event=replica_copied" not in private.log_text()


def test_a_node_lost_for_good_is_replaced(tmp_path: Path) -> None:
    grid = Grid(tmp_path, POLICY.format(lost_after=3))
    grid.start_catalog()
    try:
        n1, n2, n3 = (grid.add_node(n, start=False) for n in ("n1", "n2", "n3"))
        grid.start_nodes(n1, n2, n3)
        acked = store_study(n1, tmp_path / "study", 16, "LOST-1")
        _until(_at_factor(grid, "LOST-1", acked, 2), 40, "factor 2")
        n1.kill()  # never comes back: everything it held has one live copy left
        _until(_at_factor(grid, "LOST-1", acked, 2, among={"n2", "n3"}), 40,
               "factor 2 on the remaining nodes after lost_after_seconds")  # fmt: skip
        holders = grid.holders("LOST-1")
        assert all({"n2", "n3"} <= h for h in holders.values())
    finally:
        grid.stop()


def test_node_cut_off_during_ingest_catches_up_after_the_cut_heals(tmp_path: Path) -> None:
    netns = NetNs(str(abs(hash(tmp_path)) % 10_000)).create()
    grid = Grid(tmp_path, POLICY.format(lost_after=60), listen_host="0.0.0.0")
    try:
        grid.start_catalog()
        n1 = grid.add_node("n1", peer_host=netns.host_ip, start=False)
        n2 = grid.add_node("n2", peer_host=netns.host_ip, start=False)
        n3 = grid.add_node("n3", peer_host=netns.ns_ip, catalog_host=netns.host_ip, netns=netns,
                           start=False)  # fmt: skip
        grid.start_nodes(n1, n2, n3)
        warm = store_study(n1, tmp_path / "warm", 4, "CUT-0")
        _until(_at_factor(grid, "CUT-0", warm, 2), 40, "the grid to work before the cut")

        netns.cut()
        outside = store_study(n1, tmp_path / "outside", 20, "CUT-1")
        inside = store_study(n3, tmp_path / "inside", 6, "CUT-2", prefix=netns.prefix())
        time.sleep(2)
        # only what needs no n3 is complete: n3 was planned some copies it cannot make yet
        assert set(grid.holders("CUT-2")) == set()
        netns.heal()

        _until(_at_factor(grid, "CUT-1", outside, 2), 60, "factor 2 for what n1 took in")
        _until(_at_factor(grid, "CUT-2", inside, 2), 60, "factor 2 for what n3 took in alone")
        _until(_at_factor(grid, "CUT-2", inside, 2, replica=1), 20, "the other replica too")
        assert all("n3" in h for h in grid.holders("CUT-2").values())
    finally:
        grid.stop()
        netns.destroy()
