#!/usr/bin/env python3
"""Reconciliation benchmark: one month's counts and missing lists, against the by-hand way.

Plain script printing a table (not a test). Run from the repository root:

    python bench/reconcile.py [--instances 24000] [--rounds 3] [--markdown]

A node (``NodeApp``, in-process, SQLite index) joined to a catalog replica (in-process gRPC
server, SQLite) holds ``--instances`` instances with StudyDates spread over the 12 months of
2024 (50 per study); the node's publisher publishes them all (timed: publish throughput).
Then, for 2024-06 (about 1/12 of them), medians of ``--rounds``, side by side in one run:

* what ``gridpacs reconcile`` does: catalog ``GetWatermarks`` + ``ListHoldings``, the node's
  ``InventoryService/ListInstances``, the comparison (both dates, both directions);
* each listing alone;
* the by-hand way of the Conquest seed: an IMAGE-level C-FIND for the month on the node's
  own AE title and one on its GRID AE title (answered from the catalog), counting answers —
  counts only, no difference computed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from bench.machine import describe
from bench.report import Report, show
from catalog.client import GrpcCatalogClient
from catalog.db import Repository, open_database
from catalog.reconcile import Period
from catalog.server.serve import build_server
from catalog.service import CatalogService
from gridpacs.reconcile.nodes import InventoryClient
from gridpacs.reconcile.run import gather
from node.app import NodeApp
from node.config import load_config
from node.dicom.reactor import install_race_free_loop
from node.index import InstanceRecord

JUNE = Period.parse("2024-06")
PER_STUDY = 50


def records(total: int) -> list[InstanceRecord]:
    out = []
    for n in range(total):
        study = n // PER_STUDY
        month = study % 12 + 1
        out.append(
            InstanceRecord(
                sop_instance_uid=f"1.2.826.0.1.3680043.10.777.{n + 1}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                study_instance_uid=f"1.2.826.0.1.3680043.10.778.{study + 1}",
                series_instance_uid=f"1.2.826.0.1.3680043.10.779.{study + 1}",
                patient_id=f"P{study % 997:04d}",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                blob_key=f"{n:064x}",
                size=500_000,
                collection="local",
                attributes={"PatientName": "BENCH^PATIENT", "StudyDate": f"2024{month:02d}15",
                            "Modality": "CT", "InstanceNumber": n % PER_STUDY + 1},
                received_at=datetime(2024, month, 15, 12, tzinfo=UTC),
                calling_ae="BENCH",
            )
        )  # fmt: skip
    return out


def c_find_count(port: int, called: str) -> int:
    install_race_free_loop()  # stock pynetdicom SCUs now and then drop a pending response
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyDate = f"{JUNE.start_text}-{JUNE.end_text}"
    ident.StudyInstanceUID = ""
    ident.SeriesInstanceUID = ""
    ident.SOPInstanceUID = ""
    count = 0
    try:
        for status, answer in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
            if status is not None and status.Status in (0xFF00, 0xFF01) and answer is not None:
                count += 1
            elif status is not None and status.Status not in (0x0000,):
                raise RuntimeError(f"C-FIND on {called} failed: 0x{status.Status:04X}")
    finally:
        assoc.release()
    return count


def timed(call: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=24_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-reconcile-") as tmp:
        engine = open_database(f"sqlite:///{tmp}/catalog.sqlite")
        server = build_server(CatalogService("c1", Repository(engine)), port=0)
        server.start()
        address = f"127.0.0.1:{server.port}"
        config = load_config(None, {
            "name": "site-a", "data_dir": f"{tmp}/node", "dicom": {"port": 0},
            "catalog": {"addresses": [address], "insecure": True, "publish_identified": True,
                        "anti_entropy_interval": 0, "batch_size": 2000},
        })  # fmt: skip
        node = NodeApp(config)
        node.start()
        try:
            with GrpcCatalogClient([address], stream_timeout=600) as catalog:
                started = time.perf_counter()
                node.index.add_instances(records(args.instances))
                last = node.index.last_change_seq()
                node.publisher.nudge()  # type: ignore[union-attr]
                while catalog.heartbeat("site-a") < last:
                    time.sleep(0.05)
                loaded = time.perf_counter() - started
                rows = run(args.rounds, catalog, node)
        finally:
            node.stop()
            server.stop(0)
            engine.dispose()
    report = Report(
        f"Reconciling one month ({rows[0][2]} of {args.instances:,} instances, 1 node)",
        ["what", "how", "instances", "median ms"],
        caption=f"load + publish {args.instances:,} instances: {loaded:.1f} s; "
        f"machine: {_machine()}; medians of {args.rounds}",
    )
    for row in rows:
        report.add_row(*row)
    show(report, args.markdown)


def _machine() -> str:
    facts = describe()
    return ", ".join(f"{k} {facts[k]}" for k in ("date", "cpu", "nproc", "loadavg", "python")
                     if k in facts)  # fmt: skip


def run(rounds: int, catalog: GrpcCatalogClient, node: NodeApp) -> list[list[str]]:
    assert node.peer_server is not None
    peer = node.peer_server.address
    out: list[list[str]] = []
    with InventoryClient(None) as nodes:
        ms, gathered = timed(lambda: gather(catalog, nodes, JUNE), rounds)
        [report] = gathered.result.reports  # type: ignore[attr-defined]
        assert report.discrepancies == 0, report
        n = report.catalog.by_study_date
        out.append(["gridpacs reconcile (both listings + compare)", "gRPC", str(n), f"{ms:.0f}"])
        ms, listed = timed(lambda: nodes.list_instances(peer, JUNE), rounds)
        out.append(["node listing", "InventoryService", str(len(listed)), f"{ms:.0f}"])  # type: ignore[arg-type]
        ms, held = timed(lambda: list(catalog.list_holdings(JUNE)), rounds)
        out.append(["catalog listing", "HoldingsService", str(len(held)), f"{ms:.0f}"])  # type: ignore[arg-type]
    port = node.dicom.port
    for called, what in ((node.config.dicom.ae_title, "node count by hand"),
                         ("GRID", "catalog count by hand")):  # fmt: skip
        ms, count = timed(lambda called=called: c_find_count(port, called), rounds)
        out.append([what, f"C-FIND IMAGE on {called}", str(count), f"{ms:.0f}"])
    return out


if __name__ == "__main__":
    main()
