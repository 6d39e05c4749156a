"""The leak test: planted PHI never survives a profile that is supposed to remove it.

Every combination of options runs over instances in three character sets (ASCII,
ISO_IR 192, ISO 2022 IR 87 Japanese) with PHI planted in every Table E.1-1 attribute,
nested sequences, private tags and free text; the checker searches the output *bytes*.
"""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.uid import ImplicitVRLittleEndian

from anonymizer import OPTIONS, Deidentifier, load_profile
from anonymizer.part10 import write_part10
from tests.anonymizer.conftest import SITE_A
from tests.anonymizer.corpus import (
    SAFE_B_VALUE,
    Corpus,
    all_option_sets,
    find_leaks,
    find_structural_leaks,
    table_tags,
)

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
        tuple(o for o in OPTIONS if o != "retain-longitudinal-full-dates"),
        tuple(o for o in OPTIONS if o != "retain-longitudinal-modified-dates"),
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
