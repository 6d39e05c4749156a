"""C-FIND benchmark: STUDY-level query latency, gridpacs node vs Orthanc, same data.

    python bench/cfind.py [--instances 100000] [--queries 200] [--parallel 4] [--reuse] [--json]

Loads the same generated corpus (studies of tiny 16x16 images, varied patients, names, dates
and modalities; cached under ``bench/out/``) into each server with parallel ``storescu``
processes and reports the load time, then sends the same STUDY-level queries to every server
over one pynetdicom association each, interleaved query by query: PatientID exact, a two-week
StudyDate range, and a PatientName prefix wildcard (``SMI*``). Every answer count is checked
against the count computed from the corpus manifest, so a fast wrong answer shows up.

``--reuse`` keeps the loaded servers' data under ``bench/out/cfind-<n>/`` and skips the load
on the next run (the load figures then come from the run that did it).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path

from corpus import DAY_SPAN, FIRST_DAY, OUT_DIR, SURNAMES, DataSet, StudyRow, query_corpus
from findscu import run_findscu
from machine import describe, fsync_ms
from peers import SERVERS, PeerError, RssSampler, Server, exclusive_run, terminate_on_sigterm
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import
    StudyRootQueryRetrieveInformationModelFind,
)
from report import Report, show
from rich.console import Console
from storescu import send_parallel

from node.dicom.reactor import install_race_free_loop

KINDS = ("PatientID", "StudyDate range", "PatientName wildcard")
RETURN_KEYS = ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "AccessionNumber",
               "StudyDescription")  # fmt: skip
WARMUP = 5


@dataclass(frozen=True)
class Query:
    """One STUDY-level query and the number of studies that must match."""

    kind: str
    keyword: str
    value: str
    expected: int

    def identifier(self) -> Dataset:
        """The C-FIND identifier: the filter plus empty return keys."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for key in RETURN_KEYS:
            setattr(ds, key, "")
        setattr(ds, self.keyword, self.value)
        return ds


@dataclass
class ServerResult:
    """What one server did: load figures and per-kind latencies (ms)."""

    name: str
    load_s: float | None = None
    loaded: int = 0
    load_failed: int = 0
    rss_kib_after_load: int = 0
    rss_kib_during_load: tuple[int, int, int, int] = (0, 0, 0, 0)  # start, mid, end, peak
    cpu_ms_per_query: float = 0.0  # the server process's CPU over all measured queries
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    wrong_counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def build_queries(studies: list[StudyRow], per_kind: int, seed: int = 7) -> list[Query]:
    """``per_kind`` queries of each kind, with expected counts, shuffled together."""
    rng = random.Random(seed)
    queries: list[Query] = []
    for _ in range(per_kind):
        pid = rng.choice(studies).patient_id
        queries.append(Query(KINDS[0], "PatientID", pid,
                             sum(s.patient_id == pid for s in studies)))  # fmt: skip
        first = FIRST_DAY + timedelta(days=rng.randrange(DAY_SPAN - 14))
        lo, hi = first.strftime("%Y%m%d"), (first + timedelta(days=13)).strftime("%Y%m%d")
        queries.append(Query(KINDS[1], "StudyDate", f"{lo}-{hi}",
                             sum(lo <= s.study_date <= hi for s in studies)))  # fmt: skip
        pattern = rng.choice(SURNAMES)[:3] + "*"
        queries.append(Query(KINDS[2], "PatientName", pattern,
                             sum(fnmatchcase(s.patient_name, pattern) for s in studies)))
    rng.shuffle(queries)
    return queries


def associate(server: Server) -> Association:
    """One Study Root FIND association, with Nagle off on the SCU socket."""
    install_race_free_loop()  # stock pynetdicom SCUs now and then drop a pending response
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    if not assoc.is_established:
        raise PeerError(f"{server.name}: association not established")
    # pynetdicom 3.0 leaves Nagle on: the identifier would wait for the delayed ACK.
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def run_query(assoc: Association, query: Query) -> tuple[float, int, str | None]:
    """Latency in ms (request to final response), matches, and an error if any."""
    started = time.perf_counter()
    matches, error = 0, None
    for status, identifier in assoc.send_c_find(query.identifier(),
                                                StudyRootQueryRetrieveInformationModelFind):
        code = getattr(status, "Status", None)
        if code is None:
            error = "no response (association aborted or timed out)"
        elif code in (0xFF00, 0xFF01):
            matches += identifier is not None
        elif code != 0x0000:
            error = f"status 0x{code:04X} {getattr(status, 'ErrorComment', '')}"
    return (time.perf_counter() - started) * 1000, matches, error


def _load(
    server: Server, corpus: DataSet, parallel: int, result: ServerResult, marker: Path
) -> None:
    studies = sorted(d for part in corpus.parts for d in part.iterdir())
    groups = [studies[i::parallel] for i in range(parallel)]
    with RssSampler(server.pid, interval_s=0.5) as rss:
        run = send_parallel(server, groups)
    server.check_alive()
    result.rss_kib_during_load = (rss.samples[0][1], rss.at_fraction(0.5), rss.samples[-1][1],
                                  rss.peak())
    result.load_s, result.loaded, result.load_failed = run.association_s, run.succeeded, (
        corpus.instances - run.succeeded)
    result.failures.extend(run.errors[:5])
    marker.write_text(json.dumps({"load_s": result.load_s, "loaded": result.loaded,
                                  "load_failed": result.load_failed,
                                  "rss_kib_during_load": result.rss_kib_during_load}))


def start_loaded(
    stack: ExitStack, name: str, corpus: DataSet, args: argparse.Namespace, console: Console
) -> tuple[Server, ServerResult]:
    """Start ``name`` on its data under bench/out, loading the corpus unless reused."""
    workdir = OUT_DIR / f"cfind-{corpus.instances}" / name
    marker = workdir / "loaded.json"
    result = ServerResult(name)
    if not (args.reuse and marker.exists()):
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    server = stack.enter_context(SERVERS[name](workdir))
    if marker.exists():
        data = json.loads(marker.read_text())
        result.load_s, result.loaded, result.load_failed = (
            data["load_s"], data["loaded"], data["load_failed"])
        result.rss_kib_during_load = tuple(data["rss_kib_during_load"])
        console.print(f"{name}: reusing the load of {result.loaded} instances")
    else:
        console.print(f"{name}: loading {corpus.instances} instances "
                      f"with {args.parallel} parallel storescu ...")
        _load(server, corpus, args.parallel, result, marker)
        assert result.load_s is not None
        start, mid, end, peak = (k // 1024 for k in result.rss_kib_during_load)
        console.print(f"{name}: loaded {result.loaded} in {result.load_s:.1f} s "
                      f"({result.loaded / result.load_s:.0f} inst/s), failed {result.load_failed}"
                      f"; RSS MiB {start}→{mid}→{end} (peak {peak})")
    result.rss_kib_after_load = server.rss_kib()
    return server, result


def measure(servers: list[tuple[Server, ServerResult]], queries: list[Query]) -> None:
    """Send every query to every server in turn; record latency and count mismatches."""
    assocs = [associate(server) for server, _ in servers]
    try:
        for assoc in assocs:
            for query in queries[:WARMUP]:
                run_query(assoc, query)
        cpu_before = [server.cpu_s() for server, _ in servers]
        for query in queries:
            for assoc, (_, result) in zip(assocs, servers, strict=True):
                _record(result, query, run_query(assoc, query))
        for (server, result), before in zip(servers, cpu_before, strict=True):
            result.cpu_ms_per_query = (server.cpu_s() - before) * 1000 / len(queries)
    finally:
        for assoc in assocs:
            assoc.release()


def _record(result: ServerResult, query: Query, outcome: tuple[float, int, str | None]) -> None:
    ms, matches, error = outcome
    result.latencies_ms.setdefault(query.kind, []).append(ms)
    if error is not None:
        result.failures.append(f"{query.keyword}={query.value}: {error}")
    elif matches != query.expected:
        result.wrong_counts[query.kind] = result.wrong_counts.get(query.kind, 0) + 1
        if len(result.failures) < 10:
            result.failures.append(f"{query.keyword}={query.value}: {matches} "
                                   f"matches, expected {query.expected}")


def measure_findscu(servers: list[tuple[Server, ServerResult]], queries: list[Query]) -> list[
        ServerResult]:  # fmt: skip
    """The same queries through DCMTK findscu, one association per server, one server at a time."""
    results = []
    for server, loaded in servers:
        result = ServerResult(f"{loaded.name} (findscu)")
        outcomes = run_findscu(server, [q.identifier() for q in queries])
        for query, outcome in zip(queries, outcomes, strict=True):
            _record(result, query, outcome)
        results.append(result)
    return results


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(
    results: list[ServerResult], queries: list[Query], instances: int, caption: str
) -> Report:
    """p50/p95 per query kind per server, expected match counts, load figures."""
    out = Report(
        f"STUDY-level C-FIND, {instances} instances indexed (ms)",
        ["server", "query", "n", "mean matches", "p50", "p95", "max", "wrong counts",
         "server CPU ms/query (all kinds)", "load s", "load inst/s",
         "load RSS MiB start→mid→end"],
        caption,
    )  # fmt: skip
    for r in results:
        for kind in KINDS:
            lat = r.latencies_ms.get(kind, [])
            if not lat:
                continue
            mean = statistics.mean(q.expected for q in queries if q.kind == kind)
            load = kind == KINDS[0] and r.load_s is not None
            out.add_row(
                r.name, kind, str(len(lat)), f"{mean:.1f}", f"{percentile(lat, 0.5):.1f}",
                f"{percentile(lat, 0.95):.1f}", f"{max(lat):.1f}",
                str(r.wrong_counts.get(kind, 0)),
                f"{r.cpu_ms_per_query:.1f}" if kind == KINDS[0] and r.cpu_ms_per_query else "",
                f"{r.load_s:.0f}" if load and r.load_s else "",
                f"{r.loaded / r.load_s:.0f}" if load and r.load_s else "",
                "→".join(f"{k / 1024:.0f}" for k in r.rss_kib_during_load[:3])
                if kind == KINDS[0] and r.load_s else "",
            )  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Load, query, print the table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--per-study", type=int, default=50)
    parser.add_argument("--queries", type=int, default=200, help="per query kind")
    parser.add_argument("--parallel", type=int, default=4, help="storescu processes")
    parser.add_argument("--servers", default="gridpacs,orthanc", help="comma-separated")
    parser.add_argument("--reuse", action="store_true", help="keep/reuse loaded servers")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--findscu", action="store_true",
                        help="also time the queries with DCMTK findscu (C++ SCU)")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    started = time.perf_counter()
    corpus = query_corpus(args.instances, args.per_study)
    console.print(f"corpus: {corpus.instances} instances, {len(corpus.studies)} studies, "
                  f"{corpus.total_bytes / 1e6:.0f} MB ({time.perf_counter() - started:.0f} s)")
    queries = build_queries(corpus.studies, args.queries)
    machine = describe()
    fsync = fsync_ms(str(OUT_DIR))
    results: list[ServerResult] = []
    try:
        with ExitStack() as stack:
            servers = [start_loaded(stack, name, corpus, args, console)
                       for name in args.servers.split(",") if name]  # fmt: skip
            results = [r for _, r in servers]
            measure(servers, queries)
            if args.findscu:
                results += measure_findscu(servers, queries)
            for server, _ in servers:
                server.check_alive()
    except PeerError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    finally:
        if not args.reuse:
            shutil.rmtree(OUT_DIR / f"cfind-{corpus.instances}", ignore_errors=True)
    if args.json:
        print(json.dumps({"machine": machine, "fsync_ms_p50_p90": fsync,
                          "servers": [r.__dict__ for r in results]}))
    else:
        caption = (f"{machine['date']}, {machine['nproc']} x {machine['cpu']}, load "
                   f"{machine['loadavg']}; {len(corpus.studies)} studies; 12 KB write+fsync+dir "
                   f"fsync p50/p90 {fsync[0]:.1f}/{fsync[1]:.1f} ms")
        show(table(results, queries, corpus.instances, caption), args.markdown)
        for r in results:
            for failure in r.failures[:10]:
                console.print(f"[yellow]{r.name}: {failure}[/yellow]")
    return 0


if __name__ == "__main__":
    terminate_on_sigterm()
    try:
        with exclusive_run(Path(__file__).name):
            sys.exit(main())
    except PeerError as exc:
        Console(stderr=True).print(f"[red]{exc}[/red]")
        sys.exit(3)
