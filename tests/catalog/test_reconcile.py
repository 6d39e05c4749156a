"""The pure comparison of a reconciliation: periods, counts, missing both ways, factors,
and the repair plan (republish, copy from another holder, or retract)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from catalog.reconcile import Held, Period, compare_node, plan_repairs, reconcile

JUNE = Period.parse("2024-06")


def held(uid: str, *, study_date: str = "20240615", received: datetime | None = None,
         collection: str = "research") -> Held:  # fmt: skip
    return Held(sop_instance_uid=uid, collection=collection, study_instance_uid="1.2.3",
                study_date=study_date, received_at=received)  # fmt: skip


def test_periods_parse_months_days_and_ranges() -> None:
    assert (JUNE.start, JUNE.end) == (date(2024, 6, 1), date(2024, 6, 30))
    assert JUNE.label == "2024-06" and (JUNE.start_text, JUNE.end_text) == ("20240601", "20240630")
    assert Period.parse("202402").end == date(2024, 2, 29)  # leap year
    assert Period.parse("2024-06-03") == Period(date(2024, 6, 3), date(2024, 6, 3))
    assert Period.parse("20240601-20240615").end == date(2024, 6, 15)
    assert Period.parse("2024-06-01..2024-07-15").label == "2024-06-01..2024-07-15"
    for bad in ("2024-13", "June", "20240615-20240601", "2024-02-30", ""):
        with pytest.raises(ValueError):
            Period.parse(bad)
    assert [p.label for p in Period.months_back(date(2024, 1, 20), 3)] == [
        "2024-01", "2023-12", "2023-11"]  # fmt: skip


def test_received_is_compared_by_utc_date_with_an_exclusive_end() -> None:
    assert JUNE.has_received(datetime(2024, 6, 1, 0, 0, tzinfo=UTC))
    assert JUNE.has_received(datetime(2024, 6, 30, 23, 59, 59, tzinfo=UTC))
    assert not JUNE.has_received(datetime(2024, 7, 1, tzinfo=UTC))
    assert not JUNE.has_received(None)
    assert JUNE.has_study_date("20240630") and not JUNE.has_study_date("20240701")
    assert not JUNE.has_study_date("")


def test_a_node_is_compared_both_ways_and_counted_by_both_dates() -> None:
    june = datetime(2024, 6, 20, tzinfo=UTC)
    node = [held("1"), held("2"), held("3", study_date="20240501", received=june)]
    catalog = [held("2"), held("3", study_date="20240501", received=june), held("4")]
    report = compare_node("site-a", JUNE, node, catalog)
    assert [h.sop_instance_uid for h in report.unpublished] == ["1"]
    assert [h.sop_instance_uid for h in report.lost] == ["4"]
    assert report.held is not None
    assert (report.held.by_study_date, report.held.by_received) == (2, 1)
    assert (report.catalog.by_study_date, report.catalog.by_received) == (2, 1)
    assert report.discrepancies == 2


def test_same_uid_in_two_collections_is_two_instances() -> None:
    report = compare_node("a", JUNE, [held("1", collection="x")], [held("1", collection="y")])
    assert len(report.unpublished) == len(report.lost) == 1


def test_grid_wide_reconciliation_plans_republish_copy_and_retract() -> None:
    catalog = [
        ("a", held("1")), ("a", held("2")), ("a", held("3")),
        ("b", held("2")), ("b", held("5")),
    ]  # fmt: skip
    nodes = {
        "a": [held("1"), held("3"), held("9")],  # lost 2 (b has it), 9 unpublished
        "b": [held("2")],  # lost 5: nobody has it
    }
    result = reconcile(JUNE, catalog, nodes)
    by_node = {r.node: r for r in result.reports}
    assert [h.sop_instance_uid for h in by_node["a"].unpublished] == ["9"]
    assert [h.sop_instance_uid for h in by_node["a"].lost] == ["2"]
    assert [h.sop_instance_uid for h in by_node["b"].lost] == ["5"]
    assert result.holders[("research", "2")] == ("b",)
    # factor 1: only 5 (nobody holds it) is short
    assert [(u.item.sop_instance_uid, u.holders) for u in result.under_replicated] == [("5", ())]
    plans = {p.node: p for p in plan_repairs(result)}
    assert [h.sop_instance_uid for h in plans["a"].republish] == ["9"]
    assert [(h.sop_instance_uid, src) for h, src in plans["a"].pull] == [("2", ("b",))]
    assert [h.sop_instance_uid for h in plans["b"].retract] == ["5"]
    assert result.discrepancies == 4


def test_replication_factors_per_collection_and_unreachable_nodes() -> None:
    catalog = [("a", held("1")), ("b", held("1")), ("a", held("2", collection="other"))]
    result = reconcile(JUNE, catalog, {"a": [held("1"), held("2", collection="other")],
                                       "b": "unreachable: b:1 UNAVAILABLE"},
                       factors={"research": 3}, default_factor=1)  # fmt: skip
    by_node = {r.node: r for r in result.reports}
    assert by_node["b"].held is None and by_node["b"].error.startswith("unreachable")
    # b is believed to hold 1 (its own listing is missing): 2 holders < 3
    [short] = result.under_replicated
    assert (short.item.sop_instance_uid, short.holders, short.factor) == ("1", ("a", "b"), 3)
    assert {p.node for p in plan_repairs(result)} == set()  # nothing to do; b is left alone


def test_clean_grid_and_json_form() -> None:
    items = [held("1"), held("2")]
    result = reconcile(JUNE, [("a", h) for h in items], {"a": items, "b": []})
    assert result.discrepancies == 0 and plan_repairs(result) == []
    data = result.to_dict()
    assert data["period"] == "2024-06" and data["discrepancies"] == 0
    assert [n["node"] for n in data["nodes"]] == ["a", "b"]
    assert data["nodes"][0]["node_counts"] == {"by_study_date": 2, "by_received": 0}
