"""The outbox rebase a node makes when the catalog knows more of it than its index does
(its data directory was wiped): numbering continues above the catalog's mark with a store
reset, then one INSTANCE_ADDED per instance really held."""

from __future__ import annotations

from node.index import ChangeKind, SqlIndex

from .conftest import record


def test_rebase_resets_then_republishes_what_is_held(index: SqlIndex) -> None:
    held = [record(sop=f"1.2.3.{n}") for n in (1, 2)]
    for rec in held:
        index.add_instance(rec)
    assert index.last_change_seq() == 2

    reset = index.rebase_outbox(40)  # the catalog had applied 40 changes of ours

    assert reset == 41
    changes = index.changes_since(40)
    assert [c.kind for c in changes] == [
        ChangeKind.STORE_RESET,
        ChangeKind.INSTANCE_ADDED,
        ChangeKind.INSTANCE_ADDED,
    ]
    assert [c.seq for c in changes] == [41, 42, 43]
    assert {c.record.sop_instance_uid for c in changes[1:]} == {r.sop_instance_uid for r in held}
    index.add_instance(record(sop="1.2.3.9"))
    assert index.last_change_seq() == 44  # new changes follow the rebased numbering


def test_rebase_of_an_empty_store_is_just_the_reset(index: SqlIndex) -> None:
    assert index.rebase_outbox(7) == 8
    assert [c.kind for c in index.changes_since(0)] == [ChangeKind.STORE_RESET]
