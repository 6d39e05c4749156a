"""Benchmark STUDY-level C-FIND on the node index, on SQLite and PostgreSQL.

Loads ``--studies`` studies x ``--per-study`` instances (default 2,000 x 50 = 100,000)
and prints p50/p95 per query and backend, plus what ``add_instance`` costs per instance
(durable commit included) on the loaded database.

The data goes in through ``SqlIndex.add_instances`` (the grouped bulk path: one
upsert per patient/study/series per chunk, one commit per 500 instances); the
``add_instance`` figure is the C-STORE hot path, one durable commit per instance, shown
next to the cost of a bare one-row durable commit on the same disk at the same time.
Usage::

    python bench/index_find.py                       # both backends
    python bench/index_find.py --backend sqlite --studies 200
    GRIDPACS_BENCH_PG=postgresql+psycopg2://postgres@127.0.0.1:5432/test python ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.index import IndexQuery, InstanceRecord, Level, SqlIndex

PG_ADMIN = os.environ.get("GRIDPACS_BENCH_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
SURNAMES = [
    "DOE", "SMITH", "JONES", "BROWN", "TAYLOR", "WILSON", "DAVIES", "EVANS", "THOMAS",
    "JOHNSON", "ROBERTS", "WALKER", "WRIGHT", "ROBINSON", "THOMPSON", "WHITE", "HUGHES",
    "EDWARDS", "GREEN", "HALL", "WOOD", "HARRIS", "LEWIS", "MARTIN", "JACKSON", "CLARKE",
    "CLARK", "TURNER", "HILL", "SCOTT", "COOPER", "MORRIS", "WARD", "MOORE", "KING",
    "WATSON", "BAKER", "HARRISON", "MORGAN", "PATEL", "YOUNG", "ALLEN", "MITCHELL",
    "JAMES", "ANDERSON", "PHILLIPS", "LEE", "BELL", "PARKER", "DOEBLER",
]  # fmt: skip
MODALITIES = ["CT", "MR", "US", "CR", "PT"]
COLLECTION = "research"
FIRST_DAY = date(2020, 1, 1)
STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)


def study_spec(n: int) -> dict[str, Any]:
    """Deterministic identity of study ``n`` (two studies per patient)."""
    p = n // 2
    day = FIRST_DAY + timedelta(days=(n * 7919) % 1826)
    return {
        "patient_id": f"PID{p:06d}",
        "name": f"{SURNAMES[p % len(SURNAMES)]}^GIVEN{p}",
        "study_uid": f"1.2.826.0.1.3680043.10.1.{n}",
        "date": day.strftime("%Y%m%d"),
        "accession": f"ACC{n:07d}",
        "modalities": (MODALITIES[n % 5], MODALITIES[(n + 1) % 5]),
    }


def records(n: int, per_study: int) -> Iterator[InstanceRecord]:
    """The instance records of study ``n``: two series, ``per_study`` instances."""
    spec = study_spec(n)
    for i in range(per_study):
        s = i % 2
        yield InstanceRecord(
            sop_instance_uid=f"{spec['study_uid']}.{s + 1}.{i}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_instance_uid=spec["study_uid"],
            series_instance_uid=f"{spec['study_uid']}.{s + 1}",
            patient_id=spec["patient_id"],
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            blob_key=uuid.uuid5(uuid.NAMESPACE_OID, f"{n}.{i}").hex,
            size=524_288,
            collection=COLLECTION,
            attributes={
                "PatientName": spec["name"],
                "PatientSex": "MF"[n % 2],
                "PatientBirthDate": "19600101",
                "StudyDate": spec["date"],
                "StudyTime": "101500",
                "AccessionNumber": spec["accession"],
                "StudyDescription": "BENCH STUDY",
                "Modality": spec["modalities"][s],
                "SeriesNumber": s + 1,
                "InstanceNumber": i + 1,
                "Rows": 512,
                "Columns": 512,
            },
            received_at=datetime.now(UTC),
            calling_ae="BENCH",
        )


def answers_of(index: SqlIndex, query: IndexQuery) -> Callable[[], int]:
    """A run for :func:`timed`: the whole C-FIND answer, counted."""
    return lambda: sum(1 for _ in index.find(query))


def timed(run: Callable[[], int], repeat: int) -> tuple[float, float, int]:
    """p50 and p95 in ms of ``run`` (which consumes a whole answer), and its row count."""
    run()  # warm caches
    samples = []
    rows = 0
    for _ in range(repeat):
        t = time.perf_counter()
        rows = run()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1], rows


def fsync_baseline(index: SqlIndex) -> str:
    """What one durable one-row commit costs on this disk right now (the floor)."""
    samples = []
    with index.engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS bench_fsync (v INTEGER)")
        conn.commit()
        for k in range(200):
            t = time.perf_counter()
            conn.exec_driver_sql(f"INSERT INTO bench_fsync VALUES ({k})")
            conn.commit()
            samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return (
        f"{'sqlite':10} {'1-row durable commit (disk floor)':36} "
        f"{statistics.median(samples):7.2f} {samples[int(len(samples) * 0.95) - 1]:7.2f} "
        f"{len(samples):6}"
    )


def bench_backend(url: str, studies: int, per_study: int, repeat: int) -> list[str]:
    """Load, query and measure one backend; one table row per measurement."""
    index = SqlIndex.open(url)
    backend = index.engine.dialect.name
    lines = []
    try:
        t = time.perf_counter()
        index.add_instances(r for n in range(studies) for r in records(n, per_study))
        with index.engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
        load_s = time.perf_counter() - t
        stats = index.stats()
        lines.append(
            f"{backend:10} load {stats['instances']:>7} instances / {stats['studies']} studies "
            f"in {load_s:.1f} s through add_instances"
        )
        target = study_spec(studies // 3)
        queries = {
            "PatientID": {"PatientID": target["patient_id"]},
            "StudyDate range (1 month)": {"StudyDate": "20230301-20230331"},
            "PatientName DOE*": {"PatientName": "DOE*"},
            "PatientName doe* + StudyDate year": {
                "PatientName": "doe*",
                "StudyDate": "20230101-20231231",
            },
            "AccessionNumber": {"AccessionNumber": target["accession"]},
            "ModalitiesInStudy PT": {"ModalitiesInStudy": "PT", "StudyDate": "20240101-"},
        }
        for name, filters in queries.items():
            query = IndexQuery(
                level=Level.STUDY,
                filters=filters,
                requested=STUDY_KEYS,
                collections=(COLLECTION,),
            )
            p50, p95, rows = timed(answers_of(index, query), repeat)
            lines.append(f"{backend:10} {name:36} {p50:7.2f} {p95:7.2f} {rows:6}")
        adds = []
        for k, rec in enumerate(records(studies + 1, 200)):
            t = time.perf_counter()
            index.add_instance(rec)
            adds.append((time.perf_counter() - t) * 1000)
            if k == 199:
                break
        adds.sort()
        lines.append(
            f"{backend:10} {'add_instance (durable commit)':36} "
            f"{statistics.median(adds):7.2f} {adds[int(len(adds) * 0.95) - 1]:7.2f} {len(adds):6}"
        )
        if backend == "sqlite":
            lines.append(fsync_baseline(index))
    finally:
        index.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--per-study", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    lines = [f"{'backend':10} {'query (STUDY level)':36} {'p50 ms':>7} {'p95 ms':>7} {'rows':>6}"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.backend in ("sqlite", "both"):
            url = f"sqlite:///{tmp}/bench.sqlite"
            lines += bench_backend(url, args.studies, args.per_study, args.repeat)
        if args.backend in ("postgresql", "both"):
            name = f"gridpacs_bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            try:
                url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
                lines += bench_backend(url, args.studies, args.per_study, args.repeat)
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
