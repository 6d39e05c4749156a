#!/usr/bin/env python3
"""Catalog benchmark: query latency at scale, publish throughput, replication lag.

Plain script printing tables (not a test). Run from the repository root:

    python bench/catalog_query.py [--instances 1000000] [--load-seconds 300]
        [--backends sqlite,postgresql] [--queries 100] [--publish 30000] [--lag-seconds 20]
        [--lag-rate 1000] [--steps query,publish,lag]

1. Bulk load: a synthetic grid corpus (50 instances per study in 2 series, ~2 studies per
   patient, 10 years of dates, CT/MR/CR/US/PT) applied through ``CatalogService.apply_changes``
   (the same idempotent path PublishChanges uses) in batches of 5,000, until ``--instances``
   or ``--load-seconds``, whichever comes first; then ``ANALYZE``.
2. Study-level queries through gRPC against a replica started as a user would
   (``python -m gridpacs catalog serve``): PatientID exact, a one-month StudyDate range +
   Modality CT, a PatientName prefix wildcard (``SMI*``-like). p50/p95/max, mean matches.
3. PublishChanges throughput over gRPC to a fresh replica, batches of 250.
4. Replication lag: a publisher writes continuously to replica A; replica B pulls from A
   (interval 0.5 s); lag = time from A's acknowledgement of a seq to B's watermark reaching it.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from catalog.client import GrpcCatalogClient  # noqa: E402
from catalog.db import Repository, open_database  # noqa: E402
from catalog.records import Change, ChangeKind, InstanceRecord, QueryFilter  # noqa: E402
from catalog.service import CatalogService  # noqa: E402

PG_ADMIN = os.environ.get("GRIDPACS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
SURNAMES = [
    "SMITH",
    "JONES",
    "TAYLOR",
    "BROWN",
    "WILLIAMS",
    "WILSON",
    "JOHNSON",
    "DAVIES",
    "ROBINSON",
    "WRIGHT",
    "THOMPSON",
    "EVANS",
    "WALKER",
    "WHITE",
    "ROBERTS",
    "GREEN",
    "HALL",
    "WOOD",
    "JACKSON",
    "CLARKE",
    "MULLER",
    "SCHMIDT",
    "SCHNEIDER",
    "FISCHER",
    "WEBER",
    "MEYER",
    "WAGNER",
    "BECKER",
    "SCHULZ",
    "HOFFMANN",
    "MARTIN",
    "BERNARD",
    "DUBOIS",
    "THOMAS",
    "PETIT",
    "DURAND",
    "LEROY",
    "MOREAU",
    "SIMON",
    "LAURENT",
    "ROSSI",
    "RUSSO",
    "FERRARI",
    "ESPOSITO",
    "BIANCHI",
    "ROMANO",
    "COLOMBO",
    "RICCI",
    "MARINO",
    "GRECO",
    "GARCIA",
    "FERNANDEZ",
    "GONZALEZ",
    "RODRIGUEZ",
    "LOPEZ",
    "MARTINEZ",
    "SANCHEZ",
    "PEREZ",
    "GOMEZ",
    "NOVAK",
    "SVOBODA",
    "DVORAK",
    "KOWALSKI",
    "NOWAK",
    "WISNIEWSKI",
    "JANSEN",
    "DEVRIES",
    "BAKKER",
    "VISSER",
    "SMIT",
    "MEIJER",
    "PETERS",
    "HANSEN",
    "NIELSEN",
    "JENSEN",
    "LARSEN",
    "ANDERSEN",
    "JOHANSSON",
    "KARLSSON",
    "NILSSON",
    "ERIKSSON",
    "LARSSON",
    "OLSSON",
    "PERSSON",
    "VIRTANEN",
    "KORHONEN",
    "NIEMINEN",
    "MAKINEN",
    "HAMALAINEN",
    "OBRIEN",
    "MURPHY",
    "KELLY",
    "WALSH",
    "BYRNE",
    "RYAN",
    "OCONNOR",
    "DOYLE",
    "MCCARTHY",
    "GALLAGHER",
    "SMIRNOV",
    "IVANOV",
]
GIVEN = [
    "JOHN",
    "MARY",
    "ANNA",
    "PETER",
    "LUCAS",
    "EMMA",
    "NOAH",
    "MIA",
    "LEO",
    "SOFIA",
    "PAUL",
    "JULIA",
    "MAX",
    "LINA",
    "TOM",
    "EVA",
    "BEN",
    "IDA",
    "SAM",
    "ZOE",
]
MODALITY_PAIRS = [
    ("CT", "CT"),
    ("MR", "MR"),
    ("CR", "CR"),
    ("CT", "PT"),
    ("US", "US"),
    ("MR", "MR"),
    ("CT", "CT"),
]
START = date(2015, 1, 1)
DAYS = 3652


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Corpus:
    """Deterministic synthetic studies; keeps what the query mix needs to pick from."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.study_no = 0
        self.patient_ids: list[str] = []

    def study(self) -> list[InstanceRecord]:
        rng = self.rng
        self.study_no += 1
        n = self.study_no
        patient_no = (n + 1) // 2
        patient_id = f"PID{patient_no:08d}"
        if n % 2:
            self.patient_ids.append(patient_id)
        prng = random.Random(patient_no)
        name = f"{prng.choice(SURNAMES)}^{prng.choice(GIVEN)}"
        day = (START + timedelta(days=rng.randrange(DAYS))).strftime("%Y%m%d")
        collection = "research" if n % 10 == 0 else "clinical"
        study_uid = f"1.2.826.0.1.3680043.10.1.{n}"
        records = []
        for s, modality in enumerate(rng.choice(MODALITY_PAIRS), start=1):
            series_uid = f"{study_uid}.{s}"
            for i in range(1, 26):
                records.append(
                    InstanceRecord(
                        sop_instance_uid=f"{series_uid}.{i}",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        study_instance_uid=study_uid,
                        series_instance_uid=series_uid,
                        patient_id=patient_id,
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        blob_key=f"{n:032x}{s:016x}{i:016x}",
                        size=525_000,
                        collection=collection,
                        attributes={
                            "PatientName": name,
                            "PatientBirthDate": "19600101",
                            "PatientSex": "F" if patient_no % 2 else "M",
                            "StudyDate": day,
                            "StudyTime": "101500",
                            "AccessionNumber": f"ACC{n:09d}",
                            "StudyDescription": f"{modality} EXAM",
                            "Modality": modality,
                            "SeriesNumber": s,
                            "InstanceNumber": i,
                            "Rows": 512,
                            "Columns": 512,
                        },
                        received_at=datetime(2024, 1, 1, tzinfo=UTC),
                        calling_ae="MODALITY",
                    )
                )
        return records

    def changes(self, start_seq: int, count: int) -> list[Change]:
        records: list[InstanceRecord] = []
        while len(records) < count:
            records += self.study()
        return [Change(start_seq + k, ChangeKind.INSTANCE_ADDED, r) for k, r in enumerate(records)]


class Database:
    """A fresh SQLite file or PostgreSQL database, dropped at the end."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.url = f"sqlite:///{workdir / f'bench-{uuid.uuid4().hex[:6]}.sqlite'}"
            self.name = ""
        else:
            self.name = f"gridpacs_bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            admin.dispose()
            self.url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.name}"

    def drop(self) -> None:
        if self.name:
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            admin.dispose()


class Replica:
    """``python -m gridpacs catalog serve`` as a user runs it."""

    def __init__(
        self,
        name: str,
        db_url: str,
        workdir: Path,
        peers: dict[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.port = port or free_port()
        args = [
            sys.executable,
            "-m",
            "gridpacs",
            "catalog",
            "serve",
            "--name",
            name,
            "--port",
            str(self.port),
            "--db-url",
            db_url,
            "--insecure",
            "--log-level",
            "WARNING",
        ]
        for peer, address in (peers or {}).items():
            args += ["--peer", f"{peer}={address}"]
        self.log = (workdir / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.log, stderr=self.log)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"replica {self.name} exited; see its log")
            try:
                with grpc.insecure_channel(self.address) as channel:
                    health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=0.5
                    )
                return
            except grpc.RpcError:
                time.sleep(0.1)
        raise SystemExit(f"replica {self.name} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bulk_load(url: str, target: int, seconds: float, corpus: Corpus) -> tuple[int, float]:
    engine = open_database(url)
    service = CatalogService("bench", Repository(engine))
    loaded, seq, started = 0, 0, time.perf_counter()
    while loaded < target and time.perf_counter() - started < seconds:
        changes = corpus.changes(seq + 1, min(5000, target - loaded))
        service.apply_changes("site-bench", changes)
        seq += len(changes)
        loaded += len(changes)
        if loaded % 100_000 < len(changes):
            rate = loaded / (time.perf_counter() - started)
            print(f"  loaded {loaded:>9,} instances ({rate:,.0f}/s)", flush=True)
    elapsed = time.perf_counter() - started
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()
    return loaded, elapsed


def query_mix(corpus: Corpus, n: int) -> Iterator[tuple[str, QueryFilter]]:
    rng = random.Random(11)
    for _ in range(n):
        yield "PatientID", QueryFilter(patient_id=rng.choice(corpus.patient_ids))
        day = START + timedelta(days=rng.randrange(DAYS - 31))
        span = f"{day:%Y%m%d}-{day + timedelta(days=30):%Y%m%d}"
        yield "date month + CT", QueryFilter(study_date=span, modalities=("CT",))
        yield "name wildcard", QueryFilter(patient_name=rng.choice(SURNAMES)[:3] + "*")


def measure_queries(
    address: str, corpus: Corpus, n: int
) -> dict[str, tuple[list[float], list[int]]]:
    results: dict[str, tuple[list[float], list[int]]] = {}
    with GrpcCatalogClient([address], timeout=30) as client:
        for i, (kind, query) in enumerate(query_mix(corpus, n + 5)):
            started = time.perf_counter()
            matches = sum(1 for _ in client.query_studies(query))
            elapsed = (time.perf_counter() - started) * 1000
            if i >= 15:  # the first 5 rounds warm caches and the channel
                times, counts = results.setdefault(kind, ([], []))
                times.append(elapsed)
                counts.append(matches)
    return results


def publish_throughput(address: str, total: int, batch: int) -> float:
    corpus = Corpus(seed=99)
    pending = corpus.changes(1, total)
    with GrpcCatalogClient([address], timeout=60) as client:
        started = time.perf_counter()
        for k in range(0, len(pending), batch):
            client.publish_changes("site-pub", pending[k : k + batch])
        return len(pending) / (time.perf_counter() - started)


def replication_lag(a: Replica, b: Replica, seconds: float, rate: float) -> list[float]:
    corpus = Corpus(seed=5)
    acked: list[tuple[int, float]] = []
    seen: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:
        with GrpcCatalogClient([b.address], timeout=2) as client:
            while not stop.is_set():
                try:
                    mark = client.get_watermarks().marks.get("site-lag", 0)
                except Exception:  # a missed sample only delays the measured lag
                    mark = 0
                now = time.monotonic()
                for seq, _ in acked:
                    if seq <= mark and seq not in seen:
                        seen[seq] = now
                time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    batch, seq = 250, 0
    with GrpcCatalogClient([a.address], timeout=10) as client:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            changes = corpus.changes(seq + 1, batch)
            mark = client.publish_changes("site-lag", changes).high_water_mark
            seq = mark
            acked.append((mark, time.monotonic()))
            pause = batch / rate - (time.monotonic() - acked[-1][1])
            time.sleep(max(0.0, (started + len(acked) * batch / rate) - time.monotonic()))
            del pause
    deadline = time.monotonic() + 30
    while len(seen) < len(acked) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    watcher.join()
    return [seen[s] - t for s, t in acked if s in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--load-seconds", type=float, default=300)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--publish", type=int, default=30_000)
    parser.add_argument("--publish-batch", type=int, default=250)
    parser.add_argument("--lag-seconds", type=float, default=20)
    parser.add_argument("--lag-rate", type=float, default=1000, help="instances/s published")
    parser.add_argument(
        "--steps", default="query,publish,lag", help="which of query,publish,lag to run"
    )
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gridpacs-bench-"))
    rows = [["backend", "measure", "value", "p50 ms", "p95 ms", "max ms", "mean matches"]]
    try:
        for backend in opts.backends.split(","):
            for row in run_backend(backend, opts, workdir):
                print("  | " + " | ".join(c for c in row if c), flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def run_backend(backend: str, opts: argparse.Namespace, workdir: Path) -> Iterator[list[str]]:
    steps = opts.steps.split(",")
    if "query" in steps:
        yield from query_rows(backend, opts, workdir)
    if "publish" in steps:
        yield publish_row(backend, opts, workdir)
    if "lag" in steps:
        yield lag_row(backend, opts, workdir)


def query_rows(backend: str, opts: argparse.Namespace, workdir: Path) -> Iterator[list[str]]:
    corpus = Corpus()
    db = Database(backend, workdir)
    try:
        print(f"[{backend}] bulk load up to {opts.instances:,} instances", flush=True)
        loaded, elapsed = bulk_load(db.url, opts.instances, opts.load_seconds, corpus)
        yield (
            [
                backend,
                "bulk load (apply path)",
                f"{loaded:,} inst in {elapsed:.0f} s "
                f"({loaded / elapsed:,.0f}/s), {corpus.study_no:,} studies",
                "",
                "",
                "",
                "",
            ]
        )
        replica = Replica(f"q-{backend}", db.url, workdir)
        try:
            replica.wait()
            for kind, (times, counts) in measure_queries(
                replica.address, corpus, opts.queries
            ).items():
                yield (
                    [
                        backend,
                        f"study query: {kind}",
                        f"n={len(times)}",
                        f"{statistics.median(times):.1f}",
                        f"{percentile(times, 0.95):.1f}",
                        f"{max(times):.1f}",
                        f"{statistics.mean(counts):.1f}",
                    ]
                )
        finally:
            replica.stop()
    finally:
        db.drop()


def publish_row(backend: str, opts: argparse.Namespace, workdir: Path) -> list[str]:
    db = Database(backend, workdir)
    replica = Replica(f"pub-{backend}", db.url, workdir)
    try:
        replica.wait()
        rate = publish_throughput(replica.address, opts.publish, opts.publish_batch)
    finally:
        replica.stop()
        db.drop()
    return [
        backend,
        f"PublishChanges, batches of {opts.publish_batch}",
        f"{rate:,.0f} inst/s ({opts.publish:,} inst)",
        "",
        "",
        "",
        "",
    ]


def lag_row(backend: str, opts: argparse.Namespace, workdir: Path) -> list[str]:
    da, dbb = Database(backend, workdir), Database(backend, workdir)
    port_a, port_b = free_port(), free_port()
    a = Replica(f"lag-a-{backend}", da.url, workdir, {"b": f"127.0.0.1:{port_b}"}, port_a)
    b = Replica(f"lag-b-{backend}", dbb.url, workdir, {"a": f"127.0.0.1:{port_a}"}, port_b)
    try:
        a.wait()
        b.wait()
        lags = [x * 1000 for x in replication_lag(a, b, opts.lag_seconds, opts.lag_rate)]
    finally:
        a.stop()
        b.stop()
        da.drop()
        dbb.drop()
    return [
        backend,
        f"replication lag, {opts.lag_rate:,.0f} inst/s for {opts.lag_seconds:.0f} s",
        f"n={len(lags)} batches",
        f"{statistics.median(lags):.0f}",
        f"{percentile(lags, 0.95):.0f}",
        f"{max(lags):.0f}",
        "",
    ]


if __name__ == "__main__":
    main()
