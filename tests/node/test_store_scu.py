"""Stored data sets go out of C-MOVE and C-GET as their stored bytes, parsed only to change.

End to end, every retrieve test (DCMTK ``movescu``/``getscu``, pynetdicom, the grid) checks
that what arrives is what was stored; these check that the bytes were not parsed and
encoded again to get there, and that a change of encoding still is.
"""

from __future__ import annotations

import io

from pydicom import dcmread
from pynetdicom.dsutils import decode

from node.dicom.store_scu import encode
from node.services.retrieve import StoredDataset
from tests.factories import make_dataset, to_bytes


class _CountingParses(StoredDataset):
    parses = 0

    def parsed(self):  # type: ignore[no-untyped-def]
        type(self).parses += 1
        return super().parsed()


def test_a_stored_data_set_is_sent_as_its_bytes_without_being_parsed() -> None:
    data = to_bytes(make_dataset(rows=128, columns=128))
    _CountingParses.parses = 0
    stored = _CountingParses(data)
    assert (stored.SOPClassUID, stored.SOPInstanceUID) == (
        dcmread(io.BytesIO(data)).SOPClassUID,
        dcmread(io.BytesIO(data)).SOPInstanceUID,
    )
    assert "PixelData" not in stored and "PatientName" not in stored  # nothing else read
    sent = encode(stored, False, True)  # the stored syntax: Explicit VR Little Endian
    assert sent is not None and data.endswith(sent) and len(sent) > 128 * 128 * 2
    assert _CountingParses.parses == 0


def test_another_encoding_is_pydicoms_from_the_whole_data_set() -> None:
    ds = make_dataset()
    data = to_bytes(ds)
    _CountingParses.parses = 0
    implicit = encode(_CountingParses(data), True, True)
    assert _CountingParses.parses == 1
    assert implicit is not None and not data.endswith(implicit)
    back = decode(io.BytesIO(implicit), True, True)  # as the peer reads it
    assert back.PatientName == ds.PatientName and back.PixelData == ds.PixelData


def test_a_file_meta_without_group_length_is_parsed_to_find_its_data_set() -> None:
    data = to_bytes(make_dataset())
    meta_length = int.from_bytes(data[140:144], "little")
    # the same file, its file meta without (0002,0000): nothing says where the data set starts
    bare = data[:132] + data[144:]
    _CountingParses.parses = 0
    stored = _CountingParses(bare)
    assert stored.encoded is None
    assert encode(stored, False, True) == data[144 + meta_length :]
    assert _CountingParses.parses == 1
