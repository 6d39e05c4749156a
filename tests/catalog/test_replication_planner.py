"""Replication planning over a real catalog database (SQLite and PostgreSQL), and the
store reset a node publishes when its disk was emptied."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from catalog.db import Repository, open_database
from catalog.placement import PullPlanner, ReplicationPolicy
from catalog.records import Change, ChangeKind, NodeInfo, QueryFilter
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder


def _register(service: CatalogService, *names: str) -> None:
    for name in names:
        service.register_node(NodeInfo(name=name, ae_title=name.upper(), peer_address=f"{name}:1"))


def _planner(
    service: CatalogService, later: timedelta = timedelta(0), **policy: object
) -> PullPlanner:
    now = datetime.now(UTC) + later
    return PullPlanner(service.repository, ReplicationPolicy(**policy), clock=lambda: now)  # type: ignore[arg-type]


def _uids(pulls: list) -> set[str]:  # type: ignore[type-arg]
    return {p.holding.sop_instance_uid for p in pulls}


def test_under_replicated_instances_are_planned_once_across_nodes(service: CatalogService) -> None:
    _register(service, "a", "b", "c")
    lung = StudyBuilder(collection="lung").instances(30)
    other = StudyBuilder(collection="clinical").instances(5)
    service.apply_changes("a", Outbox("a").added(lung + other))
    planner = _planner(service, factors={"lung": 2})
    plans = {n: planner.plan(n) for n in ("a", "b", "c")}
    assert plans["a"] == []
    assert _uids(plans["b"]).isdisjoint(_uids(plans["c"]))
    assert _uids(plans["b"]) | _uids(plans["c"]) == {r.sop_instance_uid for r in lung}
    pull = plans["b"][0]
    assert pull.factor == 2 and pull.copies == 1
    assert [(s.node, s.peer_address) for s in pull.sources] == [("a", "a:1")]
    assert pull.holding.collection == "lung" and pull.holding.study_instance_uid
    assert len(planner.plan("b", limit=3)) == 3
    assert planner.plan("unknown-node") == []


def test_a_copy_published_by_the_target_satisfies_the_factor(service: CatalogService) -> None:
    _register(service, "a", "b")
    lung = StudyBuilder(collection="lung").instances(4)
    service.apply_changes("a", Outbox("a").added(lung))
    planner = _planner(service, factors={"lung": 2})
    assert len(planner.plan("b")) == 4
    service.apply_changes("b", Outbox("b").added(lung[:3]))
    assert _uids(planner.plan("b")) == {lung[3].sop_instance_uid}


def test_a_lost_node_is_replaced_and_a_refused_collection_goes_elsewhere(
    service: CatalogService,
) -> None:
    _register(service, "a", "b", "c")
    records = StudyBuilder(collection="lung").instances(6)
    service.apply_changes("a", Outbox("a").added(records))
    service.apply_changes("b", Outbox("b").added(records))
    lost_after = timedelta(seconds=60)
    assert _planner(service, factors={"lung": 2}, lost_after=lost_after).plan("c") == []
    # two hours on, a and c still heartbeat, b was never heard of again: b is lost
    later = datetime.now(UTC) + timedelta(hours=2)
    service.repository.merge_nodes(
        [NodeInfo(name=n, ae_title=n.upper(), peer_address=f"{n}:1", updated_at=later,
                  last_seen=later) for n in ("a", "c")]
    )  # fmt: skip
    planner = PullPlanner(service.repository, ReplicationPolicy(factors={"lung": 2},
                          lost_after=lost_after), clock=lambda: later)  # fmt: skip
    pulls = planner.plan("c")
    assert _uids(pulls) == {r.sop_instance_uid for r in records}
    assert all([s.node for s in p.sources] == ["a"] and p.copies == 1 for p in pulls)
    assert planner.plan("b") == []  # the lost node asking again is live, but holds them all
    # c refuses the collection: nobody else can take it, so nothing is planned for anyone
    assert planner.plan("c", refused_collections=["lung"]) == []
    assert planner.plan("a") == []


def test_store_reset_forgets_the_origin_and_replicates_in_order(
    service: CatalogService, db_url: str, tmp_path: object
) -> None:
    _register(service, "a", "b")
    records = StudyBuilder(collection="lung").instances(5)
    outbox_b = Outbox("b")
    service.apply_changes("a", Outbox("a").added(records))
    service.apply_changes("b", outbox_b.added(records))
    planner = _planner(service, factors={"lung": 2})
    assert planner.plan("b") == []
    # b comes back with an empty disk: it publishes a reset above the catalog's mark
    reset_seq = service.high_water_mark("b") + 1
    result = service.apply_changes("b", [Change(seq=reset_seq, kind=ChangeKind.STORE_RESET,
                                                record=None)])  # fmt: skip
    assert result.applied == 1
    holders = {h.node for m in service.query_instances(QueryFilter()) for h in m.holders}
    assert holders == {"a"}
    assert not [s for s in service.query_studies(QueryFilter()) if {h.node for h in s.holders}
                == {"b"}]  # fmt: skip
    assert _uids(planner.plan("b")) == {r.sop_instance_uid for r in records}
    # the log serves the reset to peers: a fresh replica replaying it ends identical
    log = list(service.pull_changes("b", 0, 100))
    assert [c.kind for c in log][-1] is ChangeKind.STORE_RESET
    other = open_database(f"sqlite:///{tmp_path}/other.sqlite")
    try:
        peer = CatalogService("replica-b", Repository(other))
        peer.apply_changes("b", log, via="replication")
        peer.apply_changes("a", list(service.pull_changes("a", 0, 100)), via="replication")
        assert sorted(m.sop_instance_uid for m in peer.query_instances(QueryFilter())) == sorted(
            r.sop_instance_uid for r in records
        )
        assert {h.node for m in peer.query_instances(QueryFilter()) for h in m.holders} == {"a"}
    finally:
        other.dispose()
    # re-published copies after the reset count again
    outbox_b.seq = reset_seq
    service.apply_changes("b", outbox_b.added(records))
    assert planner.plan("b") == []


def test_steady_state_skips_the_aggregate_until_something_changes(service: CatalogService) -> None:
    _register(service, "a", "b")
    calls: list[str] = []
    repository = service.repository
    original = repository.under_replicated

    def counted(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append("scan")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    repository.under_replicated = counted  # type: ignore[method-assign]
    planner = _planner(service, factors={"lung": 2})
    assert planner.plan("b") == [] and planner.plan("b") == []
    assert len(calls) == 1  # nothing published since: the second answer needed no scan
    records = StudyBuilder(collection="lung").instances(2)
    service.apply_changes("a", Outbox("a").added(records))
    assert _uids(planner.plan("b")) == {r.sop_instance_uid for r in records}
    assert len(calls) == 2


def test_a_rejection_removes_every_copy_and_stops_replication(service: CatalogService) -> None:
    """INSTANCE_REJECTED from one holder: its row goes, the other holder is told to remove
    its copy (PlanRemovals) and nobody is asked to copy the instance again, even though
    it is now below its factor; the rejection is served to peers with its reason."""
    _register(service, "a", "b", "c")
    lung = StudyBuilder(collection="lung").instances(4)
    service.apply_changes("a", Outbox("a").added(lung))
    b = Outbox("b")
    service.apply_changes("b", b.added(lung))  # factor 2 reached
    planner = _planner(service, factors={"lung": 3})
    assert _uids(planner.plan("c")) == {r.sop_instance_uid for r in lung}
    a = Outbox("a")
    a.seq = 4
    service.apply_changes("a", a.rejected(lung[:2], reason="113037"))

    rejected = {r.sop_instance_uid for r in lung[:2]}
    assert {m.sop_instance_uid for m in planner.removals("a")} == set()
    removals = planner.removals("b")
    assert {m.sop_instance_uid for m in removals} == rejected
    assert {(m.collection, m.reason, m.rejected_by) for m in removals} == {("lung", "113037", "a")}
    assert removals[0].study_instance_uid == lung[0].study_instance_uid
    assert _uids(planner.plan("c")) == {r.sop_instance_uid for r in lung[2:]}
    # b still holds its copies, but the catalog no longer finds or locates them
    kept = {r.sop_instance_uid for r in lung[2:]}
    assert {m.sop_instance_uid for m in service.query_instances(QueryFilter())} == kept
    study = QueryFilter(study_instance_uids=(lung[0].study_instance_uid,))
    assert {m.sop_instance_uid for m in service.locate_instances(study)} == kept

    service.apply_changes("b", b.rejected(lung[:2], reason="113037"))  # b removed its copies
    assert planner.removals("b") == []
    assert {m.sop_instance_uid for m in service.query_instances(QueryFilter())} == {
        r.sop_instance_uid for r in lung[2:]
    }
    pulled = [c for c in service.pull_changes("a", 4) if c.kind is ChangeKind.INSTANCE_REJECTED]
    assert [(c.record.sop_instance_uid, c.reason) for c in pulled if c.record] == [
        (r.sop_instance_uid, "113037") for r in lung[:2]
    ]
    assert pulled[0].record is not None and pulled[0].record.collection == "lung"


def test_a_study_rejected_whole_is_not_found_while_another_holder_still_has_it(
    service: CatalogService,
) -> None:
    """The wrong-patient case: a rejects the whole study; b has not removed its copy yet.
    Neither study nor series queries find it under that patient any more; a study with
    one instance rejected is still found (its counts catch up when b removes it)."""
    _register(service, "a", "b")
    wrong = StudyBuilder(patient_id="WRONG", collection="lung")
    study = wrong.instances(2) + wrong.instances(1)  # two series
    partly = StudyBuilder(patient_id="WRONG", collection="lung").instances(3)
    a, b = Outbox("a"), Outbox("b")
    service.apply_changes("a", a.added(study + partly))
    service.apply_changes("b", b.added(study + partly))
    by_patient = QueryFilter(patient_id="WRONG")
    assert len(list(service.query_studies(by_patient))) == 2
    assert len(list(service.query_series(by_patient))) == 3

    service.apply_changes("a", a.rejected([*study, partly[0]], reason="113037"))

    found = list(service.query_studies(by_patient))
    assert [m.study_instance_uid for m in found] == [partly[0].study_instance_uid]
    assert [h.node for h in found[0].holders] == ["a", "b"]
    series = list(service.query_series(by_patient))
    assert [m.series_instance_uid for m in series] == [partly[0].series_instance_uid]
    assert {m.sop_instance_uid for m in service.query_instances(by_patient)} == {
        r.sop_instance_uid for r in partly[1:]
    }


def test_copies_are_counted_on_distinct_live_sites(service: CatalogService) -> None:
    _register(service, "a1", "a2", "b")
    records = StudyBuilder(collection="lung").instances(3)
    uids = [r.sop_instance_uid for r in records]
    service.apply_changes("a1", Outbox("a1").added(records))
    service.apply_changes("a2", Outbox("a2").added(records[:2]))
    service.apply_changes("b", Outbox("b").added(records[:1]))
    same_site = {"a1": "hospital-a", "a2": "hospital-a"}
    planner = _planner(service, factors={"lung": 2}, sites=same_site)
    # two nodes of one hospital are one site; b's copy makes the second
    assert planner.copies_of("lung", [*uids, "1.2.999"]) == {
        uids[0]: 2, uids[1]: 1, uids[2]: 1, "1.2.999": 0,
    }  # fmt: skip
    assert planner.copies_of("clinical", uids[:1]) == {uids[0]: 0}
    # hours later with nobody heard from since, no copy is live
    lost = _planner(service, timedelta(hours=2), sites=same_site, lost_after=timedelta(hours=1))
    assert lost.copies_of("lung", uids[:1]) == {uids[0]: 0}
