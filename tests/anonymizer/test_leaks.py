"""The leak test: planted PHI never survives a profile that is supposed to remove it.

Every combination of options runs over instances in three character sets (ASCII,
ISO_IR 192, ISO 2022 IR 87 Japanese) with PHI planted in every Table E.1-1 attribute,
nested sequences, private tags and free text; the checker searches the output *bytes*.
"""

from __future__ import annotations

import io
import struct

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from anonymizer import Deidentifier, load_profile
from anonymizer.files import HEAD_BYTES
from anonymizer.part10 import write_part10
from anonymizer.profiles import HEADER_OPTIONS
from tests.anonymizer.conftest import SITE_A, written_from_head
from tests.anonymizer.corpus import (
    SAFE_B_VALUE,
    Corpus,
    all_option_sets,
    find_leaks,
    find_structural_leaks,
    table_tags,
)
from tests.factories import make_dataset, to_bytes

COMBINATIONS = all_option_sets()


def test_every_table_attribute_is_planted(corpora: list[tuple[Corpus, bytes]]) -> None:
    corpus, _ = corpora[0]
    planted = {p.tag for p in corpus.plants if not p.path} | {
        p.path[0] for p in corpus.plants if p.path
    }
    missing = [f"{t:08X}" for t in table_tags() if t not in planted and t >> 16 != 0x0010]
    assert missing == []
    assert len(COMBINATIONS) == 192


def test_the_checker_finds_the_planted_strings_in_the_input(
    corpora: list[tuple[Corpus, bytes]],
) -> None:
    table = load_profile().table
    for corpus, data in corpora:
        leaks = find_leaks(data, corpus, table)
        assert len(leaks) > 500, corpus.charset.name
        assert any("identity" in leak for leak in leaks)


@pytest.mark.parametrize("options", COMBINATIONS, ids=lambda o: "+".join(o) or "basic")
def test_no_planted_phi_survives(
    options: tuple[str, ...], corpora: list[tuple[Corpus, bytes]]
) -> None:
    profile = load_profile(options=options)
    deid = Deidentifier(profile, SITE_A)
    for corpus, data in corpora:
        output = deid.deidentify_bytes(data)
        assert find_leaks(output, corpus, profile.table) == [], corpus.charset.name
        decoded = dcmread(io.BytesIO(output))
        assert find_structural_leaks(decoded, corpus, profile.table) == []
        assert decoded.PatientIdentityRemoved == "YES"


def test_retain_safe_private_keeps_only_the_listed_private_element(
    corpora: list[tuple[Corpus, bytes]],
) -> None:
    deid = Deidentifier(load_profile(options=["retain-safe-private"]), SITE_A)
    _, data = corpora[0]
    out = dcmread(io.BytesIO(deid.deidentify_bytes(data)))
    block = out.private_block(0x0019, "SIEMENS MR HEADER")
    assert str(block[0x0C].value) == SAFE_B_VALUE
    private = [e.tag for e in out if e.tag.is_private]
    assert sorted(private) == [0x00190010, 0x0019100C]
    plain = dcmread(io.BytesIO(Deidentifier(load_profile(), SITE_A).deidentify_bytes(data)))
    assert [e.tag for e in plain if e.tag.is_private] == []


def test_clean_descriptors_keeps_the_description_without_the_patient(
    corpora: list[tuple[Corpus, bytes]],
) -> None:
    deid = Deidentifier(load_profile(options=["clean-descriptors"]), SITE_A)
    for corpus, data in corpora:
        out = dcmread(io.BytesIO(deid.deidentify_bytes(data)))
        assert out.StudyDescription.startswith("T00081030")
        assert corpus.charset.family not in out.StudyDescription
        assert "PID7734521" not in out.StudyDescription
    basic = dcmread(io.BytesIO(Deidentifier(load_profile(), SITE_A).deidentify_bytes(data)))
    assert "StudyDescription" not in basic


@pytest.mark.parametrize(
    "options",
    [
        (),
        tuple(o for o in HEADER_OPTIONS if o != "retain-longitudinal-full-dates"),
        tuple(o for o in HEADER_OPTIONS if o != "retain-longitudinal-modified-dates"),
    ],
    ids=["basic", "all-modified-dates", "all-full-dates"],
)
def test_implicit_vr_and_the_dataset_path_leak_nothing_either(
    options: tuple[str, ...], corpora: list[tuple[Corpus, bytes]]
) -> None:
    # The node decodes what it received and calls deidentify(ds) + write_part10.
    profile = load_profile(options=options)
    deid = Deidentifier(profile, SITE_A)
    for corpus, data in corpora:
        implicit = dcmread(io.BytesIO(data))
        implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        buffer = io.BytesIO()
        implicit.save_as(buffer, enforce_file_format=True)
        for source in (data, buffer.getvalue()):
            ds = dcmread(io.BytesIO(source))
            output = write_part10(deid.deidentify(ds))
            assert find_leaks(output, corpus, profile.table) == [], corpus.charset.name
            assert deid.deidentify_bytes(source) == output


def _with_command_elements(data: bytes, elements: list[tuple[int, bytes, bytes]]) -> bytes:
    """``data`` (explicit VR little endian) with group 0000 elements put first in its data
    set, as files written from captured DIMSE traffic have them (pydicom refuses to)."""
    position = 132
    while data[position : position + 2] == b"\x02\x00":  # the file meta: skip it
        vr = data[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            position += 12 + struct.unpack_from("<I", data, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", data, position + 6)[0]
    encoded = b""
    for element, vr, value in elements:
        value += (b"\x00" if vr == b"UI" else b" ") * (len(value) % 2)
        encoded += struct.pack("<HH2sH", 0, element, vr, len(value)) + value
    return data[:position] + encoded + data[position:]


# pydicom guesses implicit VR for a data set that starts with group 0000 (as command sets
# are encoded), then finds explicit VR, says so and reads it right.
@pytest.mark.filterwarnings("ignore:Expected implicit VR, but found explicit VR")
def test_command_elements_in_a_stored_file_are_dropped_on_every_path() -> None:
    # Group 0000 has no place in a stored instance; Table E.1-1 lists only two of its UIDs,
    # yet Error Comment is free text and the AE titles name sites.
    deid = Deidentifier(load_profile(), SITE_A)
    for rows in (64, 512):  # the whole file in memory; a CT-size file read from its head
        ds = make_dataset(rows=rows, columns=rows)
        reference = Dataset()  # a sequence the profile keeps, its items de-identified
        reference.add_new(0x00000902, "LO", "NESTED ERROR FOR SMITH^JOHN")
        reference.ReferencedSOPClassUID = ds.SOPClassUID
        reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        ds.ReferencedImageSequence = Sequence([reference])
        nested = b"NESTED ERROR FOR SMITH^JOHN"
        planted = [
            (0x0600, b"AE", b"ST-MARYS-PACS"),
            (0x0902, b"LO", b"ERROR SEEN FOR SMITH^JOHN"),
            (0x1000, b"UI", ds.SOPInstanceUID.encode()),
            (0x1030, b"AE", b"ST-MARYS-CT"),
        ]  # in tag order, as the fast path needs
        data = _with_command_elements(to_bytes(ds), planted)  # top level: by hand
        planted.append((0x0902, b"LO", nested))  # written by pydicom, in the item
        assert all(value in data for _, _, value in planted)
        read = dcmread(io.BytesIO(data))
        assert read[0x00000902].value == "ERROR SEEN FOR SMITH^JOHN"  # pydicom reads them
        fast = deid._direct(data, None)
        assert fast is not None  # the fast path took it
        outputs = {
            "fast": fast.data,
            "general": deid.deidentify_general(data).data,
            "dataset": write_part10(deid.deidentify(read)),
        }
        head = deid.deidentify_head(data[:HEAD_BYTES], len(data))
        if head is not None and head.source_tail is not None:
            outputs["head"] = written_from_head(head, data)
        assert (rows == 512) == ("head" in outputs)  # the head path did run for the CT
        for path, output in outputs.items():
            leaked = [value for _, _, value in planted if value in output]
            assert leaked == [], (rows, path)
            written = dcmread(io.BytesIO(output))
            assert not [e.tag for e in written if e.tag.group == 0], path
            item = written.ReferencedImageSequence[0]  # kept, and the reference remapped
            assert [e.tag.group for e in item] == [0x0008, 0x0008], path
            assert item.ReferencedSOPInstanceUID == written.SOPInstanceUID != ds.SOPInstanceUID
        assert outputs["general"] == fast.data and outputs.get("head", fast.data) == fast.data
