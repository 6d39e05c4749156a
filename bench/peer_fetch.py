"""Peer transfer cost: one gRPC call per instance (``FetchInstance``) vs. batches
(``FetchInstances``), wall time and CPU on both ends.

    python bench/peer_fetch.py [--instances 200] [--batch 32] [--repeat 5] [--markdown]

A holder runs in its own process (a real index, blob store and ``PeerServer``, plaintext on
loopback) holding CT-size instances (512x512 16-bit, ~525 KB); this process fetches all of
them with ``PeerClient``, alternating the two ways round after round. CPU per instance is
this process's CPU time and the holder's (from ``/proc/<pid>/stat``). Medians of the rounds.
Why: the grid C-MOVE (``bench/grid_move.py``) pays this per instance on top of the local
path, and on 2 cores the CPU of both nodes is what a grid retrieve waits for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe
from peers import free_port
from report import Report, show

REPO = Path(__file__).resolve().parent.parent
HOLDER = """
import sys, time
from pathlib import Path
from node.index import open_index
from node.peer import PeerServer
from node.peer.server import PeerServicer
from node.services.ingest import IngestService, StoreRequest
from storage import Quarantine, open_store
from tests.factories import StudySpec, make_dataset, to_bytes

root, count, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
index = open_index(f"sqlite:///{root}/index.sqlite")
store = open_store(root / "blobs")
ingest = IngestService(store, index, Quarantine(root / "q"), max_instance_bytes=10**7)
spec = StudySpec(patient_id="PEER-BENCH")
uids = []
for n in range(count):
    ds = make_dataset(spec, instance_number=n + 1, rows=512, columns=512)
    ingest.store(StoreRequest(to_bytes(ds), "BENCH", "HOLDER", ds.SOPClassUID,
                              ds.SOPInstanceUID), collection="research")
    uids.append(ds.SOPInstanceUID)
(root / "uids").write_text("\\n".join(uids))
server = PeerServer(PeerServicer(index, store, servable=lambda c: True), "127.0.0.1", port, None)
server.start()
print("ready", flush=True)
time.sleep(3600)
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from node.peer import PeerClient  # the repository's code, as the holder runs it

    machine = describe()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="peer-bench-") as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, tmp, str(args.instances), str(port)],
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            assert holder.stdout is not None
            if holder.stdout.readline().strip() != "ready":
                raise SystemExit("the holder did not start")
            uids = (Path(tmp) / "uids").read_text().split()
            address = f"127.0.0.1:{port}"
            client = PeerClient(None)

            def per_call() -> None:
                for uid in uids:
                    client.fetch(address, uid)

            def batched() -> None:
                for first in range(0, len(uids), args.batch):
                    for _uid, result in client.fetch_many(
                        address, uids[first : first + args.batch]
                    ):
                        if not isinstance(result, bytes):
                            raise SystemExit(f"batch fetch failed: {result}")

            ways = {"FetchInstance, one call per instance": per_call,
                    f"FetchInstances, {args.batch} per call": batched}  # fmt: skip
            figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ways}
            per_call()  # warm-up: connection, page cache
            for _ in range(args.repeat):
                for name, way in ways.items():
                    wall, cpu, held = (
                        time.perf_counter(),
                        time.process_time(),
                        _cpu_seconds(holder.pid),
                    )
                    way()
                    n = len(uids)
                    figures[name].append((
                        (time.perf_counter() - wall) / n * 1000,
                        (time.process_time() - cpu) / n * 1000,
                        (_cpu_seconds(holder.pid) - held) / n * 1000,
                    ))  # fmt: skip
            client.close()
        finally:
            holder.kill()
            holder.wait()
    report = Report(
        f"Peer fetch of {args.instances} CT instances (525 KB), plaintext loopback",
        ["way", "wall ms/instance", "fetcher CPU ms", "holder CPU ms", "CPU ms, both"],
        caption=(
            f"medians of {args.repeat} alternating rounds; {machine['date']}, {machine['cpu']} "
            f"({machine['nproc']} cores), load {machine['loadavg']}, Python {machine['python']}"
        ),
        left=1,
    )
    for name, rows in figures.items():
        wall, fetcher, held = (statistics.median(r[i] for r in rows) for i in range(3))
        report.add_row(name, f"{wall:.2f}", f"{fetcher:.2f}", f"{held:.2f}",
                       f"{fetcher + held:.2f}")  # fmt: skip
    show(report, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
