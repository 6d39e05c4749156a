"""Catalog replica memory while streaming a large result set (issue: RSS stays bounded).

Starts a replica (`gridpacs catalog serve`, SQLite) as a separate process, publishes N
instances through PublishChanges, then streams every instance back with QueryInstances
while sampling the server's RSS. Run at two sizes: a bounded server shows the same peak.

    python bench/catalog_stream_rss.py --instances 50000 200000
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from catalog import (
    Change,
    ChangeKind,
    GrpcCatalogClient,
    InstanceRecord,
    NodeInfo,
    QueryFilter,
)

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _changes(start: int, count: int) -> list[Change]:
    out = []
    for seq in range(start, start + count):
        study = seq // 50
        out.append(
            Change(
                seq=seq,
                kind=ChangeKind.INSTANCE_ADDED,
                record=InstanceRecord(
                    sop_instance_uid=f"1.2.999.{seq}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    study_instance_uid=f"1.2.998.{study}",
                    series_instance_uid=f"1.2.997.{study}",
                    patient_id=f"P{study % 5000:05d}",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    blob_key=f"{seq:064x}",
                    size=1400,
                    collection="local",
                    attributes={
                        "PatientName": f"DOE^{study}",
                        "StudyDate": "20240615",
                        "Modality": "CT",
                        "InstanceNumber": seq % 50,
                    },
                ),
            )
        )
    return out


def measure(instances: int, workdir: Path) -> dict[str, float]:
    port = _free_port()
    log = (workdir / f"catalog-{instances}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridpacs", "catalog", "serve", "--name", "bench",
         "--port", str(port), "--db-url", f"sqlite:///{workdir}/c{instances}.sqlite",
         "--insecure", "--log-level", "WARNING"],
        cwd=REPO, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    client = GrpcCatalogClient([f"127.0.0.1:{port}"], timeout=30, stream_timeout=600)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.register_node(NodeInfo(name="bench-node", ae_title="BENCH"))
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for start in range(1, instances + 1, 1000):
            client.publish_changes("bench-node", _changes(start, min(1000, instances - start + 1)))
        before = _rss_mib(proc.pid)
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss_mib(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        streamed = sum(1 for _ in client.query_instances(QueryFilter()))
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        return {"instances": instances, "streamed": streamed, "rss_before": before,
                "rss_peak": peak, "rss_after": _rss_mib(proc.pid),
                "rows_per_s": streamed / seconds}  # fmt: skip
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, nargs="+", default=[50_000, 200_000])
    args = parser.parse_args()
    table = Table(title="catalog RSS while streaming QueryInstances over everything")
    for col in ("instances", "streamed", "RSS before MiB", "RSS peak MiB", "RSS after MiB",
                "rows/s"):  # fmt: skip
        table.add_column(col, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.instances:
            r = measure(n, Path(tmp))
            table.add_row(f"{n:,}", f"{int(r['streamed']):,}", f"{r['rss_before']:.0f}",
                          f"{r['rss_peak']:.0f}", f"{r['rss_after']:.0f}",
                          f"{r['rows_per_s']:,.0f}")  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
