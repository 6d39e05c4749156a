"""Reading IHE IOCM rejection notes: which Key Object Selection documents reject, and
which are refused as unreadable instead of half applied."""

from __future__ import annotations

import pytest

from node.services.rejection import (
    REJECTION_TITLES,
    MalformedRejectionNote,
    note_in,
    read_rejection_note,
)
from tests.factories import StudySpec, make_dataset, make_rejection_note, to_bytes


def _study(n: int = 3) -> list:  # type: ignore[type-arg]
    spec = StudySpec()
    return [make_dataset(spec, instance_number=i + 1) for i in range(n)]


@pytest.mark.parametrize("code", sorted(REJECTION_TITLES))
def test_every_rejection_title_is_read_with_its_references(code: str) -> None:
    study = _study()
    note = read_rejection_note(make_rejection_note(study, code=code))
    assert note is not None and note.reason == code
    assert note.references == tuple(
        (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        for ds in study
    )
    items = note.items("local", "PACSADMIN")
    assert {(i.collection, i.reason, i.note_uid) for i in items} == {
        ("local", code, note.note_uid)
    }


def test_other_key_objects_and_other_instances_are_no_rejection() -> None:
    study = _study(1)
    assert read_rejection_note(make_rejection_note(study, code="113000")) is None  # Of Interest
    assert read_rejection_note(make_rejection_note(study, code="113001", scheme="99X")) is None
    assert read_rejection_note(study[0]) is None
    assert note_in(to_bytes(study[0])) is None
    assert note_in(to_bytes(make_rejection_note(study))) is not None


def test_a_note_that_cannot_be_read_whole_is_refused() -> None:
    study = _study(2)
    empty = make_rejection_note(study)
    del empty.CurrentRequestedProcedureEvidenceSequence
    with pytest.raises(MalformedRejectionNote, match="lists no instance"):
        read_rejection_note(empty)
    bad = make_rejection_note(study)
    series = bad.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    series.ReferencedSOPSequence[1].ReferencedSOPInstanceUID = "1.2.x"
    with pytest.raises(MalformedRejectionNote, match="not a valid UID"):
        read_rejection_note(bad)
