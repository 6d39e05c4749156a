"""Profiles and recipes: names, combination, custom recipes, and broken recipes reported."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.tag import Tag

from anonymizer import (
    OPTIONS,
    Deidentifier,
    ProfileNotFound,
    RecipeError,
    load_profile,
)
from anonymizer._deid import _load_with_deid, parse_recipe
from anonymizer.actions import Action
from anonymizer.profiles import PROFILES
from tests.anonymizer.conftest import SITE_A
from tests.factories import make_dataset, to_bytes

VALID = "FORMAT dicom\n\n%header\n\n"


def _recipe(tmp_path: Path, text: str, name: str = "deid.site") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_every_shipped_recipe_parses_and_the_basic_one_covers_table_e11() -> None:
    for method in [*PROFILES.values(), *OPTIONS.values()]:
        assert parse_recipe(method.recipe), method.name
    table = load_profile().table
    assert len(table.exact) >= 450
    assert table.private_default is not None
    assert table.private_default.action is Action.REMOVE
    for keyword, action in (
        ("PatientID", Action.PSEUDONYM),
        ("PatientName", Action.PSEUDONYM),
        ("StudyInstanceUID", Action.UID),
        ("AccessionNumber", Action.BLANK),
        ("StudyDescription", Action.REMOVE),
        ("ReferencedImageSequence", Action.KEEP),
        ("ContentSequence", Action.BLANK),
    ):
        rule = table.exact[Tag(keyword)]
        assert rule.action is action, keyword


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ProfileNotFound, match="retain-uids"):
        load_profile(options=["retain-everything"])
    with pytest.raises(ProfileNotFound, match="basic"):
        load_profile(names=["strict"])
    with pytest.raises(ProfileNotFound):
        load_profile(
            options=["retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"]
        )


def test_a_missing_recipe_file_is_reported_not_replaced_by_deids_default(tmp_path: Path) -> None:
    with pytest.raises(ProfileNotFound, match="not found"):
        load_profile(extra_recipes=[tmp_path / "deid.nothing"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("%header\nREMOVE PatientID\n", "FORMAT dicom"),
        ("FORMAT nifti\n%header\n", "FORMAT dicom"),
        (VALID + "REMOVE PatientID\nSCRAMBLE PatientName\n", "not a recognised action"),
        (VALID + "REPLACE PatientName\n", "needs a value"),
        ("FORMAT dicom\n%values cookies\nFIELD startswith:Patient\n", "not supported"),
        (VALID + "REMOVE NoSuchKeywordAnywhere\n", "unknown field"),
        (VALID + "REPLACE PatientID func:mystery\n", "unknown value"),
        (VALID + "JITTER StudyDate soon\n", "JITTER"),
        (VALID + 'KEEP (0010,"ACME",01)\n', "odd group"),
        ("", "empty recipe"),
    ],
)
def test_a_broken_recipe_is_reported(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_profile(extra_recipes=[_recipe(tmp_path, text)])


def test_deids_sys_exit_becomes_a_recipe_error(tmp_path: Path) -> None:
    # Straight into the adapter: deid itself calls sys.exit on an unknown section.
    path = _recipe(tmp_path, "FORMAT dicom\n%nonsense\nREMOVE PatientID\n")
    with pytest.raises(RecipeError, match="deid rejected"):
        _load_with_deid(path)


def test_a_custom_recipe_overrides_and_adds(tmp_path: Path) -> None:
    recipe = _recipe(
        tmp_path,
        VALID
        + "KEEP StudyDescription\n"
        + "REPLACE InstitutionName ACME RESEARCH\n"
        + "BLANK BodyPartExamined\n"
        + "ADD ClinicalTrialProtocolID TRIAL-7\n"
        + "JITTER SeriesDate -3\n",
    )
    profile = load_profile(extra_recipes=[recipe])
    ds = make_dataset()
    ds.InstitutionName = "General Hospital"
    out = dcmread(io.BytesIO(Deidentifier(profile, SITE_A).deidentify_bytes(to_bytes(ds))))
    assert out.StudyDescription == ds.StudyDescription
    assert out.InstitutionName == "ACME RESEARCH"
    assert out.BodyPartExamined == ""
    assert out.ClinicalTrialProtocolID == "TRIAL-7"
    assert out.SeriesDate == "20240612"
    assert "custom recipe deid.site" in list(out.DeidentificationMethod)


def test_options_combine_in_a_fixed_order_whatever_the_order_given() -> None:
    a = load_profile(options=["retain-uids", "clean-descriptors"])
    b = load_profile(options=["clean-descriptors", "retain-uids"])
    assert a.options == b.options == ("retain-uids", "clean-descriptors")
    assert a.table.exact == b.table.exact
