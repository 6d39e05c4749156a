"""The fast path writes exactly what the general path writes, or steps aside.

``Deidentifier.deidentify_part10`` (and the CLI, from a file's head) go through
``anonymizer/direct.py``; ``deidentify_general`` is the pydicom-based path it must match
byte for byte. Each test checks that the fast path really ran (not None) where it should,
and that it declines (None, so the general path decides) where it should not guess.
"""

from __future__ import annotations

import io
import os
import random
import struct
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from anonymizer import Deidentifier, UnreadableInput, load_profile
from anonymizer.direct import _dataset
from anonymizer.files import HEAD_BYTES, anonymize_file
from anonymizer.profiles import HEADER_OPTIONS
from anonymizer.tail import SourceTail
from tests.anonymizer.conftest import SITE_A, written_from_head
from tests.anonymizer.corpus import Corpus
from tests.factories import make_dataset, to_bytes

#: Basic, each header option alone, and everything at once (both date options); with pixel
#: cleaning the fast path always declines (test_pixel_text.py).
OPTION_SETS = [
    (),
    *((o,) for o in HEADER_OPTIONS),
    tuple(o for o in HEADER_OPTIONS if o != "retain-longitudinal-full-dates"),
    tuple(o for o in HEADER_OPTIONS if o != "retain-longitudinal-modified-dates"),
]


def _implicit(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return to_bytes(ds)


def _same(deid: Deidentifier, data: bytes) -> bytes:
    """The fast path's output, checked against the general path's."""
    fast = deid._direct(data, None)
    assert fast is not None, "the fast path declined"
    general = deid.deidentify_general(data)
    assert fast.data == general.data
    assert (fast.sop_instance_uid, fast.study_instance_uid, fast.patient_id) == (
        general.sop_instance_uid,
        general.study_instance_uid,
        general.patient_id,
    )
    return general.data


def _from_heads(deid: Deidentifier, data: bytes, expected: bytes, cuts: list[int]) -> int:
    """For each cut, the head result is None or the same file; how many were not None."""
    used = 0
    for cut in cuts:
        result = deid.deidentify_head(data[:cut], len(data))
        if result is None:
            continue
        used += 1
        assert written_from_head(result, data) == expected, cut
    return used


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: "+".join(o) or "basic")
def test_leak_corpora_give_the_same_bytes_on_both_paths(
    options: tuple[str, ...], corpora: list[tuple[Corpus, bytes]]
) -> None:
    # Nested sequences, private blocks (one partly safe), repeating groups, a sequence
    # after the pixel data, three character sets; explicit and implicit VR.
    deid = Deidentifier(load_profile(options=options), SITE_A)
    for _, data in corpora:
        _same(deid, data)
        _same(deid, _implicit(data))


def test_ct_size_and_encapsulated_pixels_give_the_same_bytes() -> None:
    deid = Deidentifier(load_profile(), SITE_A)
    ct = to_bytes(make_dataset(rows=512, columns=512))
    expected = _same(deid, ct)
    assert _same(deid, _implicit(ct)) != expected

    jpeg = make_dataset()
    jpeg.BitsAllocated = jpeg.BitsStored = 8
    jpeg.HighBit = 7
    jpeg.PixelData = encapsulate(
        [b"\xff\xd8\xff\xda\x00\x02frame-one\xff\xd9", b"\xff\xd8\xff\xda\x00\x02two\xff\xd9"]
    )
    jpeg["PixelData"].VR = "OB"
    jpeg.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    encapsulated = _same(deid, to_bytes(jpeg))
    assert dcmread(io.BytesIO(encapsulated)).PixelData == jpeg.PixelData


def test_a_file_head_gives_the_same_file_with_the_pixels_left_in_the_source() -> None:
    deid = Deidentifier(load_profile(), SITE_A)
    ct = to_bytes(make_dataset(rows=512, columns=512))
    expected = deid.deidentify_general(ct).data
    head = deid.deidentify_head(ct[:HEAD_BYTES], len(ct))
    assert head is not None and head.source_tail is not None
    assert head.source_tail == SourceTail(len(ct) - 512 * 512 * 2, 512 * 512 * 2)
    with pytest.raises(ValueError):
        _ = head.data  # the pixels are still in the source file
    # Every cut: through the file meta, an element, the pixel data header, the pixels.
    cuts = [*range(0, 2000, 7), HEAD_BYTES, len(ct) - 1]
    assert _from_heads(deid, ct, expected, cuts) > 2


def test_elements_after_the_pixel_data_are_de_identified_too() -> None:
    deid = Deidentifier(load_profile(), SITE_A)
    ds = make_dataset(rows=256, columns=256)
    ds.add_new(0x7FE10010, "LO", "ACME PHI")  # a private block after the pixels
    ds.add_new(0x7FE11001, "LO", "SMITH^AFTER-PIXELS")
    ds.add_new(0xFFFAFFFA, "SQ", Sequence([Dataset()]))  # a sequence after them
    ds[0xFFFAFFFA].value[0].add_new(0x00100010, "PN", "SMITH^IN-SIGNATURE")
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 64)  # trailing padding
    data = to_bytes(ds)
    expected = _same(deid, data)
    assert b"AFTER-PIXELS" not in expected and b"IN-SIGNATURE" not in expected
    # From a head: never the pixels in the source with something after them.
    used = _from_heads(deid, data, expected, [HEAD_BYTES, len(data) - 70, len(data)])
    assert used == 1  # only the whole file


def _undefined_length_items(data: bytes) -> bytes:
    """``data`` with the sequences before the pixel data and all their items written
    with undefined length (after the pixels the fast path declines them, tested above)."""
    ds = dcmread(io.BytesIO(data))
    for elem in ds.iterall():
        if elem.VR == "SQ" and elem.tag < 0x7FE00010:
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    return to_bytes(ds)


def test_undefined_length_sequences_give_the_same_bytes(
    corpora: list[tuple[Corpus, bytes]],
) -> None:
    deid = Deidentifier(load_profile(options=["clean-descriptors"]), SITE_A)
    for _, data in corpora:
        undefined = _undefined_length_items(data)
        assert undefined != data
        expected = _same(deid, undefined)
        _same(deid, _implicit(undefined))
        _from_heads(deid, undefined, expected, [len(undefined) // 3, len(undefined)])


def _swap_first_two_elements(data: bytes) -> bytes:
    """Unsorted tags: the first two data set elements change places."""
    ds = dcmread(io.BytesIO(data))
    offset = 132 + 12 + struct.unpack_from("<I", data, 140)[0]
    lengths = []
    position = offset
    for _ in range(2):
        (length,) = struct.unpack_from("<H", data, position + 6)
        lengths.append(8 + length)
        position += 8 + length
    first = data[offset : offset + lengths[0]]
    second = data[offset + lengths[0] : position]
    assert ds is not None
    return data[:offset] + second + first + data[position:]


def test_unusual_input_is_left_to_the_general_path() -> None:
    deid = Deidentifier(load_profile(), SITE_A)
    for syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        ds = make_dataset()
        ds.file_meta.TransferSyntaxUID = syntax
        data = to_bytes(ds)
        assert deid._direct(data, None) is None
        assert deid.deidentify_part10(data).data == deid.deidentify_general(data).data

    data = to_bytes(make_dataset())
    unsorted = _swap_first_two_elements(data)
    assert deid._direct(unsorted, None) is None
    assert deid.deidentify_bytes(unsorted) == deid.deidentify_general(unsorted).data

    for cut in (300, len(data) - 1000, len(data) - 1):  # truncated: the general path says so
        assert deid._direct(data[:cut], None) is None
        with pytest.raises(UnreadableInput):
            deid.deidentify_bytes(data[:cut])


def test_files_are_written_from_their_head_across_file_systems(tmp_path: Path) -> None:
    # /dev/shm and the test's directory are different file systems where both exist:
    # copy_file_range refuses, sendfile copies.
    deid = Deidentifier(load_profile(), SITE_A)
    sources = [tmp_path]
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        sources.append(Path("/dev/shm"))
    ct = to_bytes(make_dataset(rows=512, columns=512))
    expected = deid.deidentify_general(ct).data
    for n, directory in enumerate(sources):
        source = directory / f"gridpacs-test-direct-{os.getpid()}-{n}.dcm"
        source.write_bytes(ct)
        try:
            outcome = anonymize_file(deid, source, tmp_path / "out")
            assert outcome.ok and outcome.target is not None
            assert outcome.target.read_bytes() == expected
            short = source.with_suffix(".short")
            short.write_bytes(ct[:-2])
            failed = anonymize_file(deid, short, tmp_path / "out")
            assert failed.error_kind == "UnreadableInput" and "truncated" in (failed.error or "")
        finally:
            source.unlink(missing_ok=True)
            source.with_suffix(".short").unlink(missing_ok=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [outcome.target.name]


def test_custom_recipes_that_keep_add_and_remove_match(
    corpora: list[tuple[Corpus, bytes]], tmp_path: Path
) -> None:
    # Keeping what Table E.1-1 removes (a sequence, the PatientID), adding an attribute,
    # removing the character set the other values are decoded with.
    recipe = tmp_path / "site.deid"
    recipe.write_text(
        "FORMAT dicom\n\n%header\n\nKEEP ReferencedStudySequence\nKEEP PatientID\n"
        "ADD ClinicalTrialProtocolID TRIAL-7\nREMOVE SpecificCharacterSet\n"
    )
    deid = Deidentifier(load_profile(extra_recipes=[recipe]), SITE_A)
    for _, data in corpora:
        out = dcmread(io.BytesIO(_same(deid, data)))
        assert out.ClinicalTrialProtocolID == "TRIAL-7" and "SpecificCharacterSet" not in out


def test_light_datasets_share_no_mutable_state() -> None:
    # direct._dataset copies a new Dataset's state instead of running __init__: a pydicom
    # release adding a mutable member must not make two data sets share it.
    first, second = _dataset({}, False, ""), _dataset({}, True, "")
    for name, value in vars(Dataset()).items():
        if isinstance(value, (dict, list, set)):
            assert vars(first)[name] is not vars(second)[name], name
    assert set(vars(first)) == set(vars(Dataset()))
    assert first.original_encoding == (False, True)


def _outcome(run: Any, data: bytes) -> tuple[str, bytes]:
    try:
        return "ok", run(data)
    except Exception as exc:  # compared between the two paths, never swallowed
        return type(exc).__name__, b""


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on damaged text: expected
def test_damaged_input_gets_the_same_answer_from_both_paths() -> None:
    # Bytes overwritten at random in the header (tags, VRs, lengths, values): whatever
    # the fast path accepts, it must write as the general path does; what it declines,
    # the general path answers (the same output, or the same error).
    deid = Deidentifier(load_profile(options=["clean-descriptors"]), SITE_A)
    sources = [to_bytes(make_dataset(charset="ISO_IR 192")), _implicit(to_bytes(make_dataset()))]
    generator = random.Random(20261123)
    accepted = 0
    for n in range(400):
        data = bytearray(sources[n % 2])
        for _ in range(generator.randint(1, 3)):
            data[generator.randrange(132, 700)] = generator.randrange(256)
        damaged = bytes(data)
        fast = _outcome(lambda d: deid.deidentify_part10(d).data, damaged)
        general = _outcome(lambda d: deid.deidentify_general(d).data, damaged)
        assert fast == general, n
        if fast[0] == "ok":
            accepted += deid._direct(damaged, None) is not None
    assert 0 < accepted < 400
