"""What `gridpacs node reject` selects: held instances named by study, series or SOP
Instance UID (a union), only in the collections asked for, and the UIDs that matched
nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

from node.index import SqlIndex
from node.services.selection import Selection, held, not_held

from .conftest import record


def _uids(index: SqlIndex, selection: Selection) -> list[str]:
    return [r.sop_instance_uid for r in held(index, selection)]


def test_a_selection_is_a_union_within_the_collections_asked(index: SqlIndex) -> None:
    index.add_instances([
        record("1.1", study="7.1", series="7.1.1"),
        record("1.2", study="7.1", series="7.1.2"),
        record("1.3", study="7.2", series="7.2.1"),
        record("1.4", study="7.3", series="7.3.1", patient_id="P9", collection="research"),
        record("1.5", study="7.4", series="7.4.1"),
    ])  # fmt: skip
    union = Selection(studies=("7.1",), series=("7.2.1",), instances=("1.4", "1.1"))
    assert _uids(index, union) == ["1.1", "1.2", "1.3", "1.4"]
    assert not_held(union, held(index, union)) == []
    only_c1 = Selection(studies=("7.1", "7.3"), collections=("c1",))
    assert _uids(index, only_c1) == ["1.1", "1.2"]
    assert not_held(only_c1, held(index, only_c1)) == ["7.3"]
    many = Selection(instances=(*(f"9.{n}" for n in range(250)), "1.5"))
    assert _uids(index, many) == ["1.5"]  # split into several UID lists
    assert len(not_held(many, held(index, many))) == 250
    assert Selection().is_empty() and not union.is_empty()
