"""Ingest benchmark: storescu → gridpacs node, Orthanc and DCMTK storescp, in one run.

    python bench/ingest.py [--small 1000] [--ct 200] [--repeat 3] [--servers ...] [--json]

Each measurement starts a fresh server (empty store, free port), sends a whole set with one
``storescu`` association and times the association. Repeats are interleaved (the server order
rotates every round) so a noisy neighbour on this shared machine hits every server alike; the
table shows medians. The node's RSS is sampled from ``/proc`` all along each transfer.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from corpus import DataSet, ingest_set
from machine import describe, fsync_ms
from peers import (
    SERVERS,
    PeerError,
    RssSampler,
    baseline_node,
    exclusive_run,
    terminate_on_sigterm,
)
from report import Report, show
from rich.console import Console
from storescu import send

C_STORE_MS = re.compile(r"event=c_store\b.*?\bms=([0-9.]+)")


@dataclass(frozen=True)
class Measurement:
    """One transfer of one set to one fresh server."""

    set_name: str
    server: str
    instances: int
    megabytes: float
    seconds: float
    cpu_s: float  # the server process's user + system CPU during the transfer
    failed: int
    rss_kib: tuple[int, int, int, int]  # before, middle, end, peak
    store_ms: tuple[float, float, float] | None  # node-logged p50, p99, max per C-STORE
    errors: tuple[str, ...]

    @property
    def per_s(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU milliseconds per instance."""
        return self.cpu_s * 1000 / self.instances

    @property
    def mb_per_s(self) -> float:
        """Megabytes (10^6 bytes of Part 10 files) per second."""
        return self.megabytes / self.seconds


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _node_store_ms(log: Path) -> tuple[float, float, float] | None:
    values = [float(m.group(1)) for m in C_STORE_MS.finditer(log.read_text(errors="replace"))]
    if not values:
        return None
    return _percentile(values, 0.5), _percentile(values, 0.99), max(values)


NODES = ("gridpacs", "baseline")


def measure(data: DataSet, set_name: str, server_name: str, base: str) -> Measurement:
    """Start a fresh ``server_name`` under ``base``, send ``data`` on one association, stop it."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{server_name}-", dir=base) as tmp:
        with SERVERS[server_name](Path(tmp)) as server:
            cpu_before = server.cpu_s()
            with RssSampler(server.pid) as rss:
                run = send(server, data.parts)
            cpu_s = server.cpu_s() - cpu_before
            server.check_alive()
            store_ms = _node_store_ms(server.log_path) if server_name in NODES else None
        rss_points = (rss.samples[0][1], rss.at_fraction(0.5), rss.samples[-1][1], rss.peak())
    failed = run.failed + max(0, data.instances - run.succeeded - run.failed)
    return Measurement(
        set_name, server_name, data.instances, data.total_bytes / 1e6, run.association_s,
        cpu_s, failed, rss_points, store_ms, run.errors[:5],
    )  # fmt: skip


def _median(ms: list[Measurement], attr: str) -> float:
    return statistics.median(getattr(m, attr) for m in ms)


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def _store_ms(ms: list[Measurement]) -> str:
    logged = [m.store_ms for m in ms if m.store_ms]
    if not logged:
        return "—"
    p50 = statistics.median(v[0] for v in logged)
    p99 = statistics.median(v[1] for v in logged)
    return f"{p50:.1f}/{p99:.1f}/{max(v[2] for v in logged):.1f}"


def table(results: dict[tuple[str, str], list[Measurement]], caption: str) -> Report:
    """Medians per (set, server) and the ratio to Orthanc."""
    out = Report(
        "Ingest: one storescu association, medians of the repeats",
        ["set", "server", "n", "s", "inst/s", "MB/s", "x Orthanc", "server CPU ms/inst",
         "RSS MiB start→mid→end (peak), last round", "node ms/C-STORE p50/p99/max", "failed"],
        caption,
    )  # fmt: skip
    for (set_name, server), ms in results.items():
        orthanc = results.get((set_name, "orthanc"))
        ratio = f"{_median(ms, 'per_s') / _median(orthanc, 'per_s'):.2f}" if orthanc else "—"
        last = ms[-1]
        rss = "→".join(_mib(k) for k in last.rss_kib[:3]) + f" ({_mib(last.rss_kib[3])})"
        store = _store_ms(ms)
        out.add_row(
            set_name, server, str(last.instances), f"{_median(ms, 'seconds'):.2f}",
            f"{_median(ms, 'per_s'):.0f}", f"{_median(ms, 'mb_per_s'):.1f}", ratio,
            f"{_median(ms, 'cpu_ms'):.2f}", rss, store,
            str(sum(m.failed for m in ms)),
        )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="64x64 instances (0: skip)")
    parser.add_argument("--ct", type=int, default=200, help="512x512 instances (0: skip)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per server")
    parser.add_argument(
        "--servers",
        default="gridpacs,orthanc,storescp",
        help=f"comma-separated, of {','.join(SERVERS)}",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also measure the node from this source tree (e.g. an exported "
        "older commit) as server 'baseline': before/after in one run",
    )
    parser.add_argument(
        "--workdir",
        default=tempfile.gettempdir(),
        help="where the servers store (e.g. /dev/shm: fsync becomes free)",
    )
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    if args.baseline is not None:
        SERVERS["baseline"] = baseline_node(args.baseline)
        servers.insert(1, "baseline")
    console = Console(stderr=True)
    sets = [(name, ingest_set(kind, n)) for name, kind, n in
            (("64x64", "small", args.small), ("512x512", "ct", args.ct)) if n > 0]  # fmt: skip
    for _, data in sets:  # read once so no server pays for the first read from disk
        for part in data.parts:
            for f in part.rglob("*.dcm"):
                f.read_bytes()
    machine = describe()
    fsync_before = fsync_ms(args.workdir)
    results: dict[tuple[str, str], list[Measurement]] = {}
    for round_ in range(args.repeat):
        order = servers[round_ % len(servers) :] + servers[: round_ % len(servers)]
        for set_name, data in sets:
            for server in order:
                try:
                    m = measure(data, set_name, server, args.workdir)
                except PeerError as exc:
                    console.print(f"[red]{server}: {exc}[/red]")
                    return 2
                console.print(
                    f"round {round_ + 1} {set_name:8} {server:9} "
                    f"{m.per_s:7.0f} inst/s {m.mb_per_s:7.1f} MB/s failed={m.failed}"
                )
                results.setdefault((set_name, server), []).append(m)
    results = dict(
        sorted(results.items(), key=lambda kv: (kv[0][0] != "64x64", servers.index(kv[0][1])))
    )
    fsync_after = fsync_ms(args.workdir)
    if args.json:
        print(json.dumps({
            "machine": machine,
            "workdir": args.workdir,
            "fsync_ms_p50_p90": {"before": fsync_before, "after": fsync_after},
            "measurements": [{**asdict(m), "per_s": m.per_s, "mb_per_s": m.mb_per_s,
                              "cpu_ms": m.cpu_ms}
                             for ms in results.values() for m in ms],
        }, indent=1))  # fmt: skip
    else:
        caption = (
            f"{machine['date']}, {machine['nproc']} x {machine['cpu']}, load "
            f"{machine['loadavg']}; servers store in {args.workdir}; "
            "12 KB write+fsync+dir fsync p50/p90: "
            f"{fsync_before[0]:.1f}/{fsync_before[1]:.1f} ms before, "
            f"{fsync_after[0]:.1f}/{fsync_after[1]:.1f} ms after"
        )
        show(table(results, caption), args.markdown)
    return 0


if __name__ == "__main__":
    terminate_on_sigterm()
    try:
        with exclusive_run(Path(__file__).name):
            sys.exit(main())
    except PeerError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        sys.exit(3)
