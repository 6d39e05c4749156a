"""Faults with real processes: replicas started through ``python -m gridpacs catalog serve``.

A publisher writes to both replicas while one is frozen (SIGSTOP) or killed (SIGKILL); once it
is back, both replicas hold identical contents. A client whose replica is killed fails over.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from catalog.client import GrpcCatalogClient
from catalog.errors import CatalogError
from catalog.query_cli import query_cmd
from catalog.records import Change, QueryFilter
from tests.catalog.builders import Outbox, StudyBuilder
from tests.catalog.processes import REPO, ReplicaProcess, contents, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[ReplicaProcess, ReplicaProcess]]:
    a, b = ReplicaProcess("cat-a", tmp_path), ReplicaProcess("cat-b", tmp_path)
    a.peers, b.peers = {"cat-b": b.address}, {"cat-a": a.address}
    try:
        a.start(wait=False)  # both boot at once: half the wait
        b.start(wait=False)
        a.wait_serving()
        b.wait_serving()
        yield a, b
    finally:
        a.stop()
        b.stop()


class Publisher:
    """A node's publisher writing to every replica, resuming each from its acknowledgement."""

    def __init__(self, origin: str, addresses: list[str]) -> None:
        self.origin = origin
        self.changes: list[Change] = []
        self.acked = dict.fromkeys(addresses, 0)
        self.clients = {a: GrpcCatalogClient([a], timeout=0.5) for a in addresses}
        self.failures = 0

    def publish(self, changes: list[Change]) -> None:
        self.changes += changes
        for address, client in self.clients.items():
            pending = [c for c in self.changes if c.seq > self.acked[address]]
            try:
                self.acked[address] = client.publish_changes(self.origin, pending).high_water_mark
            except CatalogError:
                self.failures += 1

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def _publish_batches(publisher: Publisher, outbox: Outbox, batches: int) -> None:
    for i in range(batches):
        study = StudyBuilder(patient_id=f"P{outbox.name}{outbox.seq}")
        changes = outbox.added(study.instances(20))
        if i % 4 == 3:  # some deletions ride along
            changes += outbox.deleted([c.record for c in changes[:5] if c.record])
        publisher.publish(changes)


def _converged(a: ReplicaProcess, b: ReplicaProcess, seq: int) -> bool:
    """True when both replicas acknowledge ``seq``; a replica just restarted may not answer
    yet (its clients back off reconnecting for up to a second), which counts as not yet."""
    try:
        return _marks_at(a, b, seq)
    except CatalogError:
        return False


def _marks_at(a: ReplicaProcess, b: ReplicaProcess, seq: int) -> bool:
    with (
        GrpcCatalogClient([a.address], timeout=2) as ca,
        GrpcCatalogClient([b.address], timeout=2) as cb,
    ):
        marks = (ca.get_watermarks().marks, cb.get_watermarks().marks)
    return marks[0].get("site-1") == seq and marks[1].get("site-1") == seq


def test_frozen_replica_catches_up_to_identical_contents(
    pair: tuple[ReplicaProcess, ReplicaProcess],
) -> None:
    a, b = pair
    outbox = Outbox("site-1")
    publisher = Publisher("site-1", [a.address, b.address])
    try:
        _publish_batches(publisher, outbox, 4)
        b.signal(signal.SIGSTOP)
        _publish_batches(publisher, outbox, 4)
        assert publisher.acked[a.address] == outbox.seq
        assert publisher.acked[b.address] < outbox.seq  # b missed these while frozen
        b.signal(signal.SIGCONT)
        _publish_batches(publisher, outbox, 2)
    finally:
        publisher.close()
    assert publisher.failures > 0
    wait_for(lambda: _converged(a, b, outbox.seq), 20, "both replicas at the last seq")
    assert contents(a.address) == contents(b.address)


def test_killed_replica_catches_up_and_clients_fail_over(
    pair: tuple[ReplicaProcess, ReplicaProcess],
) -> None:
    a, b = pair
    outbox = Outbox("site-1")
    publisher = Publisher("site-1", [a.address, b.address])
    try:
        _publish_batches(publisher, outbox, 3)
        a.kill()
        _publish_batches(publisher, outbox, 3)
        a.start()  # same port, same database file
        # a's own publisher acknowledgement is stale; replication from b fills the gap first
        wait_for(lambda: _converged(a, b, outbox.seq), 20, "a to catch up from b")
        _publish_batches(publisher, outbox, 1)
    finally:
        publisher.close()
    wait_for(lambda: _converged(a, b, outbox.seq), 20, "both replicas at the last seq")
    assert contents(a.address) == contents(b.address)

    # a client (and the researcher CLI) whose first replica is killed fails over to the next
    with GrpcCatalogClient([a.address, b.address], timeout=1) as client:
        before = list(client.query_studies(QueryFilter(patient_name="doe*")))
        a.kill()
        assert list(client.query_studies(QueryFilter(patient_name="doe*"))) == before
        result = client.publish_changes("site-1", outbox.added(StudyBuilder().instances(5)))
        assert result.high_water_mark == outbox.seq
    cli = [sys.executable, "-m", "gridpacs", "query", "--catalog", a.address,
           "--catalog", b.address, "--patient-id", str(before[0].attributes["PatientID"]),
           "--timeout", "1", "--json"]  # fmt: skip
    done = subprocess.run(cli, cwd=REPO, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    [study] = json.loads(done.stdout)
    assert study["holders"][0]["node"] == "site-1"
    b.kill()
    down = CliRunner().invoke(_query_app(), cli[4:])
    assert down.exit_code == 1
    assert "no catalog replica answered" in down.output


def _query_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(query_cmd)
    return app
