"""One anti-entropy pass against a real catalog service: what the catalog lost is
republished, but only once the publisher has sent everything it had when the pass began."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from catalog.db import Repository, open_database
from catalog.service import CatalogService
from node.anti_entropy import AntiEntropy
from node.index import ChangeKind, SqlIndex, open_index
from node.publisher import to_catalog_change
from tests.node.index.conftest import record


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[SqlIndex, CatalogService]]:
    index = open_index(f"sqlite:///{tmp_path}/index.sqlite")
    engine = open_database(f"sqlite:///{tmp_path}/catalog.sqlite")
    yield index, CatalogService("c1", Repository(engine))
    index.close()
    engine.dispose()


def test_pass_republishes_what_the_catalog_lost(parts: tuple[SqlIndex, CatalogService]) -> None:
    index, catalog = parts
    for n in (1, 2, 3):
        index.add_instance(record(f"1.{n}", StudyDate="20240610"))
    index.add_instance(record("2.1", study="1.3", series="1.3.1", collection="local"))
    # the catalog got only the first instance (publishes 2 and 3 were lost)
    [first] = index.changes_since(0, 1)
    catalog.apply_changes("site-a", [to_catalog_change(first)])
    sent = {"up_to": 0}
    nudged: list[int] = []
    entropy = AntiEntropy("site-a", index, catalog, publishable=lambda c: c != "local",
                          published_up_to=lambda: sent["up_to"], nudge=lambda: nudged.append(1),
                          interval=0, months=1)  # fmt: skip

    mark = index.last_change_seq()
    [report] = entropy.run_pass(today=date(2024, 6, 20))
    assert sorted(h.sop_instance_uid for h in report.unpublished) == ["1.2", "1.3"]
    assert report.lost == () and report.held is not None and report.held.by_study_date == 3
    assert index.last_change_seq() == mark and nudged == []  # publisher not caught up: wait

    sent["up_to"] = mark
    entropy.run_pass(today=date(2024, 6, 20))
    changes = index.changes_since(mark)
    assert [(c.kind, c.record.sop_instance_uid) for c in changes] == [
        (ChangeKind.INSTANCE_ADDED, "1.2"), (ChangeKind.INSTANCE_ADDED, "1.3")]  # fmt: skip
    assert nudged == [1] and entropy.passes == 2
    catalog.apply_changes("site-a", [to_catalog_change(c) for c in changes])
    [clean] = entropy.run_pass(today=date(2024, 6, 20))
    assert clean.discrepancies == 0
