"""CatalogService without transport: publishing, idempotency, deletions, queries, locate."""

from __future__ import annotations

import pytest

from catalog.db.filters import Scope
from catalog.errors import InvalidChange, InvalidFilter, UnknownNode
from catalog.records import Change, ChangeKind, NodeInfo, QueryFilter
from catalog.service import CatalogService
from tests.catalog.builders import Outbox, StudyBuilder


def _register(service: CatalogService, name: str, ae: str) -> None:
    service.register_node(NodeInfo(name, ae, "127.0.0.1", 11112, "127.0.0.1:7001"))


def test_publish_is_idempotent_by_origin_and_seq(service: CatalogService) -> None:
    node = Outbox("site-a")
    changes = node.added(StudyBuilder().instances(5))
    first = service.apply_changes("site-a", changes)
    again = service.apply_changes("site-a", changes)
    partial = service.apply_changes("site-a", changes[2:])
    assert (first.high_water_mark, first.applied, first.skipped) == (5, 5, 0)
    assert (again.high_water_mark, again.applied, again.skipped) == (5, 0, 5)
    assert partial.applied == 0
    [study] = service.query_studies(QueryFilter())
    assert study.number_of_instances == 5
    assert service.high_water_mark("site-a") == 5
    assert service.high_water_mark("unknown") == 0


def test_overlapping_batch_applies_only_the_new_tail(service: CatalogService) -> None:
    node = Outbox("site-a")
    changes = node.added(StudyBuilder().instances(6))
    service.apply_changes("site-a", changes[:4])
    result = service.apply_changes("site-a", changes[2:])
    assert (result.high_water_mark, result.applied, result.skipped) == (6, 2, 2)
    assert len(list(service.query_instances(QueryFilter()))) == 6


def test_deletions_propagate_and_empty_levels_disappear(service: CatalogService) -> None:
    node = Outbox("site-a")
    study = StudyBuilder()
    ct = study.instances(3, modality="CT")
    mr = study.instances(2, modality="MR")
    service.apply_changes("site-a", node.added(ct + mr))
    [match] = service.query_studies(QueryFilter())
    assert match.modalities_in_study == ("CT", "MR")
    assert (match.number_of_series, match.number_of_instances) == (2, 5)

    service.apply_changes("site-a", node.deleted(mr))
    [match] = service.query_studies(QueryFilter())
    assert match.modalities_in_study == ("CT",)
    assert (match.number_of_series, match.number_of_instances) == (1, 3)
    assert list(service.query_studies(QueryFilter(modalities=("MR",)))) == []

    service.apply_changes("site-a", node.deleted(ct))
    assert list(service.query_studies(QueryFilter())) == []
    assert list(service.query_series(QueryFilter())) == []


def test_readding_an_instance_updates_it(service: CatalogService) -> None:
    node = Outbox("site-a")
    [record] = StudyBuilder(patient_name="OLD^NAME").instances(1)
    service.apply_changes("site-a", node.added([record]))
    renamed = StudyBuilder(patient_name="NEW^NAME", study_uid=record.study_instance_uid)
    [fresh] = renamed.instances(1, series_uid=record.series_instance_uid)
    fresh = type(fresh)(
        **{
            **{f: getattr(fresh, f) for f in fresh.__slots__},
            "sop_instance_uid": record.sop_instance_uid,
        }
    )
    service.apply_changes("site-a", node.added([fresh]))
    [match] = service.query_studies(QueryFilter())
    assert match.attributes["PatientName"] == "NEW^NAME"
    assert match.number_of_instances == 1


def test_changes_must_ascend_and_carry_uids(service: CatalogService) -> None:
    node = Outbox("site-a")
    changes = node.added(StudyBuilder().instances(2))
    with pytest.raises(InvalidChange):
        service.apply_changes("site-a", list(reversed(changes)))
    with pytest.raises(InvalidChange):
        service.apply_changes("", changes)
    bad = Change(seq=9, kind=ChangeKind.INSTANCE_ADDED, record=None)
    with pytest.raises(InvalidChange):
        service.apply_changes("site-a", [bad])
    assert service.high_water_mark("site-a") == 0


def test_holders_merge_across_nodes_and_locate(service: CatalogService) -> None:
    _register(service, "site-a", "SITE_A")
    _register(service, "site-b", "SITE_B")
    study = StudyBuilder()
    records = study.instances(3)
    service.apply_changes("site-a", Outbox("site-a").added(records))
    service.apply_changes("site-b", Outbox("site-b").added(records[:1]))
    [match] = service.query_studies(QueryFilter())
    assert {(h.node, h.ae_title) for h in match.holders} == {
        ("site-a", "SITE_A"),
        ("site-b", "SITE_B"),
    }
    locations = list(service.locate_instances(QueryFilter(study_instance_uids=(study.study_uid,))))
    assert len(locations) == 3
    by_uid = {loc.sop_instance_uid: loc for loc in locations}
    shared = by_uid[records[0].sop_instance_uid]
    assert [h.node for h in shared.holders] == ["site-a", "site-b"]
    assert shared.peer_addresses == ("127.0.0.1:7001", "127.0.0.1:7001")
    assert [h.node for h in by_uid[records[1].sop_instance_uid].holders] == ["site-a"]
    with pytest.raises(InvalidFilter):
        service.locate_instances(QueryFilter())


def _load_query_corpus(service: CatalogService) -> dict[str, StudyBuilder]:
    studies = {
        "smith": StudyBuilder("P1", "SMITH^JOHN", "20240110", "A1", "CT CHEST"),
        "smythe": StudyBuilder("P2", "SMYTHE^ANN", "20240220", "A2", "MR BRAIN"),
        "percent": StudyBuilder("P3", "100%_DOE", "20230105", "A3", "CT ABDOMEN"),
        "research": StudyBuilder("R1", "ANON", "20240115", "A4", "CT CHEST", collection="lung"),
    }
    node = Outbox("site-a")
    for key, study in studies.items():
        modality = "MR" if key == "smythe" else "CT"
        service.apply_changes("site-a", node.added(study.instances(2, modality=modality)))
    return studies


def _ids(matches: object) -> set[str]:
    return {m.attributes["PatientID"] for m in matches}  # type: ignore[attr-defined]


def test_study_filters(service: CatalogService) -> None:
    studies = _load_query_corpus(service)
    q = service.query_studies
    assert _ids(q(QueryFilter(patient_id="P1"))) == {"P1"}
    assert _ids(q(QueryFilter(patient_id="P?"))) == {"P1", "P2", "P3"}
    assert _ids(q(QueryFilter(patient_name="SM*"))) == {"P1", "P2"}
    assert _ids(q(QueryFilter(patient_name="sm?th^*"))) == {"P1"}
    assert _ids(q(QueryFilter(patient_name="smith^john"))) == {"P1"}
    # % and _ are literal characters in DICOM matching, not SQL wildcards
    assert _ids(q(QueryFilter(patient_name="100%_*"))) == {"P3"}
    assert _ids(q(QueryFilter(patient_name="1%"))) == set()
    assert _ids(q(QueryFilter(study_date="20240101-20240131"))) == {"P1", "R1"}
    assert _ids(q(QueryFilter(study_date="-20231231"))) == {"P3"}
    assert _ids(q(QueryFilter(study_date="20240201-"))) == {"P2"}
    assert _ids(q(QueryFilter(study_date="20240220"))) == {"P2"}
    assert _ids(q(QueryFilter(study_date="20240101-20241231", modalities=("CT",)))) == {"P1", "R1"}
    assert _ids(q(QueryFilter(modalities=("MR", "PT")))) == {"P2"}
    assert _ids(q(QueryFilter(accession_number="A3"))) == {"P3"}
    assert _ids(q(QueryFilter(study_description="*CHEST"))) == {"P1", "R1"}
    assert _ids(q(QueryFilter(collections=("lung",)))) == {"R1"}
    uids = (studies["smith"].study_uid, studies["percent"].study_uid)
    assert _ids(q(QueryFilter(study_instance_uids=uids))) == {"P1", "P3"}
    assert len(list(q(QueryFilter(limit=2)))) == 2


def test_series_and_instance_levels(service: CatalogService) -> None:
    _load_query_corpus(service)
    series = list(service.query_series(QueryFilter(modalities=("MR",))))
    assert len(series) == 1 and series[0].attributes["Modality"] == "MR"
    assert series[0].number_of_instances == 2
    by_series = service.query_instances(
        QueryFilter(series_instance_uids=(series[0].series_instance_uid,))
    )
    instances = list(by_series)
    assert len(instances) == 2
    assert {i.attributes["InstanceNumber"] for i in instances} == {1, 2}
    assert instances[0].attributes["Columns"] is None
    one = service.query_instances(QueryFilter(sop_instance_uids=(instances[0].sop_instance_uid,)))
    assert [i.sop_instance_uid for i in one] == [instances[0].sop_instance_uid]
    studies = service.query_studies(QueryFilter(sop_instance_uids=(instances[0].sop_instance_uid,)))
    assert _ids(studies) == {"P2"}


def test_scope_restricts_collections(service: CatalogService) -> None:
    _load_query_corpus(service)
    lung_only = Scope(collections=frozenset({"lung"}))
    assert _ids(service.query_studies(QueryFilter(), lung_only)) == {"R1"}
    asked = QueryFilter(collections=("clinical",))
    assert _ids(service.query_studies(asked, lung_only)) == set()


@pytest.mark.parametrize(
    "bad",
    [
        QueryFilter(study_date="2024-01-01"),
        QueryFilter(study_date="20240131-20240101"),
        QueryFilter(study_date="-"),
        QueryFilter(study_instance_uids=("",)),
        QueryFilter(limit=-1),
    ],
)
def test_bad_filters_are_rejected(service: CatalogService, bad: QueryFilter) -> None:
    with pytest.raises(InvalidFilter):
        service.query_studies(bad)


def test_pull_serves_the_log_with_superseded_entries(service: CatalogService) -> None:
    node = Outbox("site-a")
    records = StudyBuilder().instances(3)
    service.apply_changes("site-a", node.added(records))
    service.apply_changes("site-a", node.deleted(records[:1]))
    service.apply_changes("site-a", node.added(records[1:2]))
    pulled = list(service.pull_changes("site-a", 0))
    assert [c.seq for c in pulled] == [1, 2, 3, 4, 5]
    kinds = [c.kind for c in pulled]
    assert kinds == [
        ChangeKind.SUPERSEDED,  # deleted at 4
        ChangeKind.SUPERSEDED,  # re-added at 5
        ChangeKind.INSTANCE_ADDED,
        ChangeKind.INSTANCE_DELETED,
        ChangeKind.INSTANCE_ADDED,
    ]
    assert pulled[2].record == records[2]
    assert pulled[4].record == records[1]
    assert [c.seq for c in service.pull_changes("site-a", 3, limit=1)] == [4]


def test_nodes_register_heartbeat_and_merge(service: CatalogService) -> None:
    assert service.register_node(NodeInfo("site-a", "SITE_A", "10.0.0.1", 104, "h:1")) == 0
    service.apply_changes("site-a", Outbox("site-a").added(StudyBuilder().instances(2)))
    assert service.heartbeat("site-a") == 2
    with pytest.raises(UnknownNode):
        service.heartbeat("nobody")
    [known] = service.nodes()
    older = NodeInfo("site-a", "STALE", updated_at=known.updated_at.replace(year=2000))  # type: ignore[union-attr]
    assert service.repository.merge_nodes([older]) == 0
    assert service.nodes()[0].ae_title == "SITE_A"
    newer = NodeInfo("site-a", "RENAMED", updated_at=known.updated_at.replace(year=2100))  # type: ignore[union-attr]
    assert service.repository.merge_nodes([newer]) == 1
    assert service.nodes()[0].ae_title == "RENAMED"
