#!/usr/bin/env python3
"""Job scheduling benchmark: 1,000 short jobs across 3 nodes' workers, catalog as scheduler.

Plain script printing tables (not a test). Run from the repository root:

    python bench/jobs_scheduling.py [--jobs 1000] [--nodes 3] [--slots 4]
        [--run-ms 10-50] [--trickle 200 --rate 20] [--backends sqlite,postgresql]

For each back-end, side by side in the same run:

1. A catalog replica as a user starts it (``python -m gridpacs catalog serve``) holds one
   study per job, spread round-robin over the nodes (so placement near the data can be seen).
2. ``--nodes`` worker processes (this script with ``worker``) report their load every second
   and run ``--slots`` threads that lease through the real ``JobsClient`` (long poll),
   "run" the job (sleep ``--run-ms``), and finish it.
3. Burst: ``--jobs`` jobs submitted in one ``SubmitJobs``; measured until the last succeeds:
   jobs/s, how busy the worker slots stay (time running / (slots x makespan)), the idle gap of
   a slot between finishing one job and holding the next, and how many jobs ran where their
   study is held.
4. Trickle: ``--trickle`` jobs submitted one at a time at ``--rate``/s while slots are free:
   placement latency (placed_at - created_at, the catalog's own clock) and submit-to-running.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import itertools  # noqa: E402

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from catalog.client import GrpcCatalogClient  # noqa: E402
from catalog.jobs.records import (  # noqa: E402
    Job,
    JobState,
    Outcome,
    StreamInfo,
    WorkerLimits,
    WorkerLoad,
    WorkerReport,
)
from catalog.jobs_client import JobsClient  # noqa: E402
from catalog.records import Change, ChangeKind, InstanceRecord  # noqa: E402

PG_ADMIN = os.environ.get("GRIDPACS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
STREAM = StreamInfo(name="bench", version="1", ae_title="BENCH", max_attempts=1)
ACTIVE = (JobState.QUEUED, JobState.PLACED, JobState.RUNNING)
JOBS_TOML = """\
[jobs]
lease_s = 30.0
worker_fresh_s = 15.0
place_timeout_s = 60.0
interval_s = 0.5
"""


# -- worker process ----------------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> None:
    """One node's long-lived worker: a reporter thread and ``slots`` leasing threads."""
    lo, hi = (float(x) / 1000 for x in args.run_ms.split("-"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = JobsClient([args.catalog], timeout=10)
    running = [0]
    lock = threading.Lock()
    records: list[dict[str, Any]] = []

    def report() -> None:
        with lock:
            now_running = running[0]
        client.report_worker(
            WorkerReport(
                node=args.node,
                load=WorkerLoad(cpu_percent=0.0, memory_available_mb=0, running_jobs=now_running),
                limits=WorkerLimits(max_jobs=args.slots),
                streams=(STREAM,),
            )
        )

    def reporter() -> None:
        while not stop.wait(1.0):
            report()

    def slot(index: int) -> None:
        rng = random.Random(f"{args.node}-{index}")
        while not stop.is_set():
            lease = client.lease_job(args.node, wait_seconds=1.0)
            if lease is None:
                continue
            leased = time.time()
            with lock:
                running[0] += 1
            run = rng.uniform(lo, hi)
            time.sleep(run)
            client.finish_job(lease.job.id, lease.token, Outcome(succeeded=True))
            finished = time.time()
            with lock:
                running[0] -= 1
                records.append(
                    {
                        "slot": index,
                        "job": lease.job.id,
                        "leased": leased,
                        "run": run,
                        "done": finished,
                    }
                )

    report()
    print("ready", flush=True)
    threads = [threading.Thread(target=reporter, daemon=True)]
    threads += [threading.Thread(target=slot, args=(i,), daemon=True) for i in range(args.slots)]
    for thread in threads:
        thread.start()
    while not stop.wait(0.2):
        pass
    for thread in threads[1:]:
        thread.join(15)
    Path(args.out).write_text(json.dumps(records))


# -- driver ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def study_changes(nodes: int, count: int) -> dict[str, list[Change]]:
    """One single-instance study per job, held by node ``i % nodes``."""
    per_node: dict[str, list[Change]] = {f"node-{n}": [] for n in range(nodes)}
    for i in range(count):
        node = f"node-{i % nodes}"
        uid = f"1.2.826.0.1.3680043.10.77.{i + 1}"
        record = InstanceRecord(
            sop_instance_uid=f"{uid}.1.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_instance_uid=uid,
            series_instance_uid=f"{uid}.1",
            patient_id=f"PID{i:06d}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob_key=f"{i:064x}",
            size=1000,
            collection="research",
            attributes={"StudyDate": "20240101", "Modality": "CT"},
            received_at=datetime(2024, 1, 1, tzinfo=UTC),
        )
        changes = per_node[node]
        changes.append(Change(len(changes) + 1, ChangeKind.INSTANCE_ADDED, record))
    return per_node


class Catalog:
    def __init__(self, db_url: str, workdir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        config = workdir / "catalog.toml"
        config.write_text(JOBS_TOML)
        self.log = (workdir / "catalog.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "gridpacs", "catalog", "serve", "--name", "bench",
                "--port", str(self.port), "--db-url", db_url, "--insecure",
                "--config", str(config), "--log-level", "WARNING",
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=self.log,
            stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not self._serving():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"catalog did not start, see {workdir / 'catalog.log'}")
            time.sleep(0.2)

    def _serving(self) -> bool:
        try:
            with grpc.insecure_channel(self.address) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=0.5
                )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def wait_done(client: JobsClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while client.list_jobs(states=ACTIVE, limit=1):
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not finish in time")
        time.sleep(0.1)


def seconds(a: datetime | None, b: datetime | None) -> float:
    assert a is not None and b is not None
    return (b - a).total_seconds()


def run_backend(name: str, db_url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    catalog = Catalog(db_url, workdir)
    workers: list[tuple[subprocess.Popen[str], Path]] = []
    try:
        with GrpcCatalogClient([catalog.address], timeout=60) as publisher:
            for node, changes in study_changes(args.nodes, args.jobs).items():
                for start in range(0, len(changes), 1000):
                    publisher.publish_changes(node, changes[start : start + 1000])
        for n in range(args.nodes):
            out = workdir / f"worker-{n}.json"
            proc = subprocess.Popen(
                [
                    sys.executable, __file__, "worker", "--node", f"node-{n}",
                    "--catalog", catalog.address, "--slots", str(args.slots),
                    "--run-ms", args.run_ms, "--out", str(out),
                ],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            workers.append((proc, out))
        for proc, _ in workers:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        uids = [f"1.2.826.0.1.3680043.10.77.{i + 1}" for i in range(args.jobs)]
        with JobsClient([catalog.address], timeout=60) as client:
            cpu0 = catalog.cpu_seconds()
            t0 = time.time()
            burst = client.submit_jobs("bench", study_instance_uids=uids)
            submit_s = time.time() - t0
            wait_done(client, 600)
            t1 = time.time()
            cpu_burst = catalog.cpu_seconds() - cpu0
            burst_jobs = {j.id: client.get_job(j.id) for j in burst}

            trickle: list[Job] = []
            for i in range(args.trickle):
                [job] = client.submit_jobs("bench", study_instance_uids=[uids[i % len(uids)]])
                trickle.append(job)
                time.sleep(1.0 / args.rate)
            wait_done(client, 120)
            trickle = [client.get_job(j.id) for j in trickle]
    finally:
        for proc, _ in workers:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in workers:
            proc.wait(30)
        catalog.stop()

    runs = [r for _, out in workers for r in json.loads(out.read_text())]
    burst_ids = set(burst_jobs)
    burst_runs = [r for r in runs if r["job"] in burst_ids]
    first = min(r["leased"] for r in burst_runs)
    makespan = t1 - t0
    slots = args.nodes * args.slots
    gaps: list[float] = []
    by_slot: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for n, (_, out) in enumerate(workers):
        for r in json.loads(out.read_text()):
            if r["job"] in burst_ids:
                by_slot.setdefault((n, r["slot"]), []).append(r)
    for records in by_slot.values():
        records.sort(key=lambda r: r["leased"])
        gaps += [b["leased"] - a["done"] for a, b in itertools.pairwise(records)]
    near = sum(1 for j in burst_jobs.values() if j.node in j.input_holders)
    placement = [seconds(j.created_at, j.placed_at) for j in trickle]
    to_running = [seconds(j.created_at, j.started_at) for j in trickle]
    return {
        "backend": name,
        "jobs": len(burst_jobs),
        "succeeded": sum(j.state is JobState.SUCCEEDED for j in burst_jobs.values()),
        "submit_s": submit_s,
        "makespan_s": makespan,
        "jobs_per_s": len(burst_jobs) / makespan,
        "ideal_jobs_per_s": slots / statistics.mean(r["run"] for r in burst_runs),
        "busy_run": sum(r["run"] for r in burst_runs) / (slots * (t1 - first)),
        "busy_held": sum(r["done"] - r["leased"] for r in burst_runs) / (slots * (t1 - first)),
        "gap_p50_ms": pct(gaps, 0.5) * 1000,
        "gap_p99_ms": pct(gaps, 0.99) * 1000,
        "near_data": near / len(burst_jobs),
        "catalog_cpu_per_job_ms": cpu_burst / len(burst_jobs) * 1000,
        "place_p50_ms": pct(placement, 0.5) * 1000,
        "place_p99_ms": pct(placement, 0.99) * 1000,
        "running_p50_ms": pct(to_running, 0.5) * 1000,
        "running_p99_ms": pct(to_running, 0.99) * 1000,
        "trickle": len(trickle),
    }


def pg_database() -> tuple[str, str]:
    import sqlalchemy as sa

    name = f"gridpacs_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return name, PG_ADMIN.rsplit("/", 1)[0] + "/" + name


def drop_pg(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rows = [
        ("jobs succeeded", "{succeeded}/{jobs}"),
        ("SubmitJobs of the burst (s)", "{submit_s:.2f}"),
        ("burst makespan (s)", "{makespan_s:.2f}"),
        ("jobs/s scheduled and run", "{jobs_per_s:.0f}"),
        ("ideal jobs/s (slots / mean run time)", "{ideal_jobs_per_s:.0f}"),
        ("slots busy running (%)", "{busy_run:.0%}"),
        ("slots holding a lease (%)", "{busy_held:.0%}"),
        ("slot idle gap finish -> next lease p50 (ms)", "{gap_p50_ms:.1f}"),
        ("slot idle gap p99 (ms)", "{gap_p99_ms:.1f}"),
        ("ran on a node holding the study (%)", "{near_data:.0%}"),
        ("catalog CPU per job (ms)", "{catalog_cpu_per_job_ms:.1f}"),
        (f"placement latency p50 (ms), {args.trickle} at {args.rate:g}/s", "{place_p50_ms:.1f}"),
        ("placement latency p99 (ms)", "{place_p99_ms:.1f}"),
        ("submit -> running p50 (ms)", "{running_p50_ms:.1f}"),
        ("submit -> running p99 (ms)", "{running_p99_ms:.1f}"),
    ]  # fmt: skip
    width = max(len(label) for label, _ in rows)
    header = f"| {'metric':<{width}} | " + " | ".join(r["backend"] for r in results) + " |"
    print(header)
    print(
        "|"
        + "-" * (width + 2)
        + "|"
        + "|".join("-" * (len(r["backend"]) + 2) for r in results)
        + "|"
    )
    for label, fmt in rows:
        cells = " | ".join(fmt.format(**r).rjust(len(r["backend"])) for r in results)
        print(f"| {label:<{width}} | {cells} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker")
    worker.add_argument("--node", required=True)
    worker.add_argument("--catalog", required=True)
    worker.add_argument("--slots", type=int, default=4)
    worker.add_argument("--run-ms", default="10-50")
    worker.add_argument("--out", required=True)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--slots", type=int, default=4, help="concurrent jobs per node")
    parser.add_argument("--run-ms", default="10-50", help="a job's run time, uniform LO-HI ms")
    parser.add_argument("--trickle", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    if args.command == "worker":
        worker_main(args)
        return
    sys.path.insert(0, str(REPO / "bench"))
    from machine import describe

    machine = describe()
    print(
        f"# {machine.get('date', datetime.now(UTC).isoformat())} {machine['cpu']} "
        f"x{machine['nproc']}, load {machine['loadavg']}"
    )
    print(
        f"# {args.jobs} jobs, {args.nodes} nodes x {args.slots} slots, run {args.run_ms} ms, "
        f"trickle {args.trickle} at {args.rate}/s"
    )
    results = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-jobs-{backend}-") as tmp:
            if backend == "sqlite":
                results.append(
                    run_backend("SQLite", f"sqlite:///{tmp}/catalog.sqlite", args, Path(tmp))
                )
            else:
                name, url = pg_database()
                try:
                    results.append(run_backend("PostgreSQL", url, args, Path(tmp)))
                finally:
                    drop_pg(name)
    print_table(results, args)


if __name__ == "__main__":
    main()
