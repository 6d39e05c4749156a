"""Pruning the catalog's change log: how fast, and what it costs publishing meanwhile.

    python bench/log_compaction.py [--instances 100000] [--backends sqlite,postgresql]
        [--markdown]

Per backend, a fresh database gets ``--instances`` adds from one origin, then the first
half of them again (re-published: their first adds go stale), then deletes of a fifth
(from the other half: their adds go stale too): a log of 1.7x the instances. Then:

* publishing alone: batches of 10 new instances for 3 s, one after another (latency of
  each ``apply_changes``);
* the same while :meth:`Repository.compact_change_log` runs once over the whole log, as
  the background task does (pages of 1,000 entries, each its own transaction under the
  origin's writer lock), with no peers (every delete entry may go).

The table gives the log's size before and after, the compaction's time and entries
examined per second, and publish latency p50/p99 alone and during compaction. There is no
peer to compare with: neither Orthanc nor DCMTK keeps a replication log.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from catalog_query import Corpus, Database, percentile
from machine import describe
from report import Report, show

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from catalog.db import Repository, open_database  # noqa: E402
from catalog.records import Change, ChangeKind, InstanceRecord  # noqa: E402
from catalog.service import CatalogService  # noqa: E402

ORIGIN = "site-bench"
COLUMNS = ["backend", "entries before", "after", "stale adds / deletes pruned", "s",
           "entries/s", "publish p50/p99 ms alone", "during"]  # fmt: skip
BATCH = 5000


def load(service: CatalogService, corpus: Corpus, instances: int) -> int:
    """Adds, re-adds of the first half, deletes of a fifth; the origin's last seq."""
    records = []
    while len(records) < instances:
        records += corpus.study()
    records = records[:instances]
    seq = 0

    def publish(kind: ChangeKind, items: list[InstanceRecord]) -> None:
        nonlocal seq
        for start in range(0, len(items), BATCH):
            chunk = items[start : start + BATCH]
            service.apply_changes(ORIGIN, [Change(seq + 1 + k, kind, r) for k, r in
                                           enumerate(chunk)])  # fmt: skip
            seq += len(chunk)

    publish(ChangeKind.INSTANCE_ADDED, records)
    renumbered = [replace(r, size=r.size + 1) for r in records[: instances // 2]]
    publish(ChangeKind.INSTANCE_ADDED, renumbered)
    publish(ChangeKind.INSTANCE_DELETED, records[-(instances // 5) :])
    return seq


class Publisher(threading.Thread):
    """Publishes batches of 10 new instances one after another; keeps each latency."""

    def __init__(self, service: CatalogService, corpus: Corpus, first_seq: int) -> None:
        super().__init__(daemon=True)
        self.service, self.corpus, self.seq = service, corpus, first_seq
        self.latencies: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        pending: list[InstanceRecord] = []
        while not self.stop.is_set():
            while len(pending) < 10:
                pending += self.corpus.study()
            batch, pending = pending[:10], pending[10:]
            changes = [Change(self.seq + 1 + k, ChangeKind.INSTANCE_ADDED, r)
                       for k, r in enumerate(batch)]  # fmt: skip
            started = time.perf_counter()
            self.service.apply_changes(ORIGIN, changes)
            self.latencies.append((time.perf_counter() - started) * 1000)
            self.seq += len(changes)


def publishing(
    service: CatalogService, corpus: Corpus, seq: int, during: Callable[[], Any] | None
) -> tuple[list[float], Any, float, int]:
    """Latencies (ms) of publishing while ``during()`` runs (or for 3 s), its result, its
    seconds and the origin's last seq."""
    publisher = Publisher(service, corpus, seq)
    publisher.start()
    started = time.perf_counter()
    result = during() if during is not None else time.sleep(3)
    seconds = time.perf_counter() - started
    publisher.stop.set()
    publisher.join()
    return publisher.latencies, result, seconds, publisher.seq


def run(backend: str, instances: int, work: Path) -> list[str]:
    db = Database(backend, work)
    engine = open_database(db.url)
    try:
        service = CatalogService("bench", Repository(engine))
        corpus = Corpus(seed=3)
        started = time.perf_counter()
        seq = load(service, corpus, instances)
        print(f"{backend}: log of {seq:,} entries loaded in {time.perf_counter() - started:.0f} s",
              flush=True)  # fmt: skip
        repo = service.repository
        alone, _, _, seq = publishing(service, corpus, seq, None)
        before = repo.change_log_size()[ORIGIN]
        during, pruned, seconds, seq = publishing(
            service, corpus, seq, lambda: repo.compact_change_log(None)
        )
        after = repo.change_log_size()[ORIGIN]
        gone = pruned[ORIGIN]
        print(f"{backend}: pruned {gone.total:,} in {seconds:.1f} s", flush=True)
        return [
            backend,
            f"{before:,}",
            f"{after:,}",
            f"{gone.superseded:,} / {gone.deleted:,}",
            f"{seconds:.1f}",
            f"{before / seconds:,.0f}",
            f"{statistics.median(alone):.1f} / {percentile(alone, 0.99):.1f}",
            f"{statistics.median(during):.1f} / {percentile(during, 0.99):.1f}",
        ]
    finally:
        engine.dispose()
        db.drop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--markdown", action="store_true")
    opts = parser.parse_args()
    machine = describe()
    report = Report(
        title=f"Pruning a change log of {1.7 * opts.instances:,.0f} entries "
        f"({opts.instances:,} instances)",
        columns=COLUMNS,
        caption=f"{machine['cpu']}, {machine['nproc']} cores, load {machine['loadavg']}, "
        f"{machine['date']}",
        left=1,
    )
    with tempfile.TemporaryDirectory(prefix="compact-") as tmp:
        for backend in opts.backends.split(","):
            report.add_row(*run(backend.strip(), opts.instances, Path(tmp)))
    show(report, opts.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
