"""Placement as a pure function: holders first, limits, priorities, FIFO, stream versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.jobs.placement import UNLIMITED_WAITING, QueuedJob, place, stream_settings
from catalog.jobs.records import JobPriority, StreamInfo
from tests.catalog.jobs_helpers import SEGMENT, report

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OTHER = StreamInfo(name="convert", version="2")


def job(
    n: int,
    *,
    study: str = "",
    priority: JobPriority = JobPriority.NORMAL,
    stream: str = "segment",
    at: int | None = None,
) -> QueuedJob:
    return QueuedJob(
        id=str(n),
        stream=stream,
        study_instance_uid=study or f"1.2.{n}",
        priority=priority,
        created_at=T0 + timedelta(seconds=n if at is None else at),
        seq=n,
    )


def nodes_of(placements: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {p.job_id: p.node for p in placements}


def test_a_node_holding_the_study_wins_even_when_busier() -> None:
    workers = [report("a", max_jobs=4), report("b", max_jobs=4)]
    [p] = place([job(1, study="S")], workers, {"b": 3}, {"S": ["b", "elsewhere"]})
    assert (p.node, p.holds_data, p.holders) == ("b", True, ("b", "elsewhere"))


def test_without_a_holder_the_least_loaded_node_fetches() -> None:
    workers = [report("a", max_jobs=4, cpu=5), report("b", max_jobs=4, cpu=1)]
    [p] = place([job(1)], workers, {"a": 1}, {})
    assert (p.node, p.holds_data) == ("b", False)
    # equal slots: lower CPU wins; all equal: the name decides (deterministic)
    assert place([job(1)], workers, {}, {})[0].node == "b"
    same = [report("b", max_jobs=4), report("a", max_jobs=4)]
    assert place([job(1)], same, {}, {})[0].node == "a"


def test_a_study_the_grid_cannot_see_runs_only_on_the_node_that_submitted_it() -> None:
    """Identified data stays home: no holder in the catalog + an origin node = that node only."""
    from dataclasses import replace

    workers = [report("a", max_jobs=1), report("b", max_jobs=4)]
    local = replace(job(1, study="S"), origin_node="a")
    [p] = place([local], workers, {}, {})
    assert (p.node, p.holds_data) == ("a", False)
    # the origin is full: the job waits for it instead of going to a node that cannot read it
    assert place([local], workers, {"a": 1}, {}) == []
    # once the catalog knows holders, the usual rules apply again
    [p] = place([local], workers, {"a": 1}, {"S": ["b"]})
    assert p.node == "b"


def test_jobs_spread_as_slots_fill_within_one_round() -> None:
    workers = [report("a", max_jobs=2), report("b", max_jobs=2), report("c", max_jobs=2)]
    placements = place([job(n) for n in range(1, 9)], workers, {}, {})
    counts = {n: list(nodes_of(placements).values()).count(n) for n in "abc"}
    assert counts == {"a": 2, "b": 2, "c": 2}  # 6 slots, 2 jobs stay queued
    assert sorted(nodes_of(placements), key=int) == [str(n) for n in range(1, 7)]


def test_a_node_at_or_over_a_limit_gets_nothing() -> None:
    jobs = [job(1, study="S")]
    holders = {"S": ["a"]}
    full = [report("a", max_jobs=2), report("b", max_jobs=2)]
    assert place(jobs, full, {"a": 2}, holders)[0].node == "b"  # max_jobs reached
    hot = [report("a", cpu=95, max_cpu=90), report("b")]
    assert place(jobs, hot, {}, holders)[0].node == "b"  # CPU limit
    low = [report("a", memory_mb=500, min_memory_mb=1000), report("b")]
    assert place(jobs, low, {}, holders)[0].node == "b"  # memory floor
    assert place(jobs, [report("a", max_jobs=1)], {"a": 1}, holders) == []
    # a stream's declared memory is taken off what the node has left, within the round
    big = StreamInfo(name="segment", memory_mb=3000)
    one = [report("a", streams=(big,), max_jobs=0, memory_mb=7000, min_memory_mb=1000)]
    assert len(place([job(1), job(2), job(3)], one, {}, {})) == 2


def test_no_max_jobs_means_unbounded_running_but_no_hoarding() -> None:
    workers = [report("a", max_jobs=0), report("b", streams=(OTHER,))]
    jobs = [job(n) for n in range(1, 6)]
    # 50 running, nothing waiting: takes UNLIMITED_WAITING more, not the whole queue
    placements = place(jobs, workers, {"a": 50}, {}, {"a": 0})
    assert nodes_of(placements) == {"1": "a", "2": "a"} and UNLIMITED_WAITING == 2
    assert place(jobs, workers, {"a": 52}, {}, {"a": 2}) == []  # its worker has not leased
    assert place([job(1, stream="unknown")], workers, {}, {}) == []  # b lacks the stream


def test_urgent_jobs_first_then_fifo() -> None:
    jobs = [
        job(1, at=10),
        job(2, at=5),
        job(3, priority=JobPriority.URGENT, at=30),
        job(4, at=5),  # same time as 2: submission order decides
    ]
    placements = place(jobs, [report("a", max_jobs=3)], {}, {})
    assert [p.job_id for p in placements] == ["3", "2", "4"]


def test_a_job_nobody_can_run_does_not_block_the_queue() -> None:
    jobs = [job(1, stream="convert", priority=JobPriority.URGENT), job(2)]
    [p] = place(jobs, [report("a", max_jobs=1)], {}, {})
    assert p.job_id == "2"


def test_nothing_is_placed_without_workers() -> None:
    assert place([job(1)], [], {}, {"1.2.1": ["a"]}) == []


def test_the_highest_stream_version_reported_sets_the_attempts() -> None:
    workers = [
        report("a", streams=(StreamInfo("segment", "1.9", max_attempts=2),)),
        report("b", streams=(StreamInfo("segment", "1.10", max_attempts=4), OTHER)),
        report("c", streams=(SEGMENT,)),
    ]
    chosen = stream_settings(workers, "segment")
    assert chosen is not None and (chosen.version, chosen.max_attempts) == ("1.10", 4)
    assert stream_settings(workers, "nope") is None


def test_a_study_reference_runs_only_on_its_origin_even_if_a_uid_like_it_is_held() -> None:
    from dataclasses import replace

    ref = "ref:" + "ab" * 24
    workers = [report("a", max_jobs=1), report("b", max_jobs=4)]
    queued = replace(job(1, study=ref), origin_node="a")
    [p] = place([queued], workers, {}, {ref: ["b"]})
    assert (p.node, p.holds_data) == ("a", False)
    assert place([queued], workers, {"a": 1}, {ref: ["b"]}) == [], "waits for its origin"
