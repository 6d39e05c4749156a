"""The leak corpus: datasets with PHI planted in every Table E.1-1 attribute.

Each planted string is unique to its attribute (``own``), or is part of the patient's
identity (``identity``: name components, ID, birth date), which is also embedded in free
text, nested sequences and private tags. :func:`find_leaks` then searches the output
*bytes*, in every encoding the input used, for each string the profile is supposed to
remove, and also checks the decoded output structurally (binary values).
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass, field
from functools import cache

from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from anonymizer.actions import Action, ActionTable
from anonymizer.profiles import HEADER_OPTIONS, OPTIONS, load_profile
from tests.factories import StudySpec, make_dataset

PERSON_NAME = 0x0040A123
REFERENCED_SOP_INSTANCE_UID = 0x00081155
PRIVATE_CREATOR = "ACME PHI"
SAFE_CREATOR = "SIEMENS MR HEADER"
SAFE_B_VALUE = "1000"
UID_ROOT = "1.2.826.0.1.3680043.10.999."


@dataclass(frozen=True)
class Charset:
    """A character set variant of the corpus and the patient it names."""

    name: str
    specific: list[str] | None
    family: str
    given: str
    #: extra identity strings (ideographic/phonetic groups) that must vanish too
    extra: tuple[str, ...] = ()

    @property
    def person_name(self) -> str:
        groups = [f"{self.family}^{self.given}"]
        if self.extra:
            groups += [f"{self.extra[0]}^{self.extra[1]}", f"{self.extra[2]}^{self.extra[3]}"]
        return "=".join(groups)


CHARSETS = (
    Charset("ascii", None, "KOWALSKI", "ZBIGNIEW"),
    Charset("utf8", ["ISO_IR 192"], "MÜLLERSSON", "JÜRGENA"),
    Charset(
        "japanese",
        ["", "ISO 2022 IR 87"],
        "YAMADAKO",
        "TAROUKO",
        ("山田", "太郎", "やまだ", "たろう"),
    ),
)
PATIENT_ID = "PID7734521"
BIRTH_DATE = "19580301"


@dataclass(frozen=True)
class Plant:
    """One planted string; ``path`` is the chain of sequence tags that holds it."""

    tag: int
    token: str
    kind: str  # "own" or "identity"
    path: tuple[int, ...] = ()
    vr: str = ""


@dataclass
class Corpus:
    """A dataset and everything planted in it."""

    charset: Charset
    dataset: Dataset
    plants: list[Plant] = field(default_factory=list)

    @property
    def identity(self) -> list[str]:
        """Strings that identify the patient: never allowed in any output."""
        return [
            self.charset.family,
            self.charset.given,
            *self.charset.extra,
            PATIENT_ID,
            BIRTH_DATE,
        ]


def _vr(tag: int) -> str:
    return dictionary_VR(tag).split(" or ")[0]


def retainable_tags() -> set[int]:
    """Attributes some option keeps verbatim: no patient identity is embedded there."""
    kept: set[int] = set()
    for method in OPTIONS.values():
        table = load_profile(options=[method.name]).table
        for tag, rule in table.exact.items():
            if rule.action is Action.KEEP:
                kept.add(tag)
    return kept


def table_tags() -> list[int]:
    """Every attribute of Table E.1-1 the Basic recipe names (a dataset can hold)."""
    table = load_profile().table
    return sorted(t for t in table.exact if t >> 16 not in (0x0000, 0x0002))


class _Planter:
    def __init__(self, corpus: Corpus, retainable: set[int]) -> None:
        self.corpus = corpus
        self.retainable = retainable
        self.dates = 0
        self.uids = 0

    def text_with_identity(self, tag: int, own: str) -> str:
        cs = self.corpus.charset
        if tag in self.retainable:
            return own
        extra = f" {cs.extra[0]}" if cs.extra else ""
        return f"{own} {cs.family} {PATIENT_ID}{extra}"

    def value(self, tag: int, vr: str, path: tuple[int, ...]) -> tuple[object, str | None]:
        """A planted value and the own token to look for (None: structural only)."""
        code = f"{tag:08X}"
        if vr in ("AE", "CS", "SH"):
            token = f"P{code}"
            return token, token
        if vr in ("LO", "LT", "ST", "UT", "UC"):
            token = f"T{code}"
            return self.text_with_identity(tag, token), token
        if vr == "PN":
            token = f"P{code}"
            return f"{token}^DOC", token
        if vr in ("DA", "DT"):
            self.dates += 1
            day = dt.date(1901, 1, 1) + dt.timedelta(days=5000 * self.dates)
            token = f"{day.year:04d}{day.month:02d}{day.day:02d}"
            return (token + "120000" if vr == "DT" else token), token
        if vr == "TM":
            self.dates += 1
            token = f"235959.{100000 + self.dates:06d}"
            return token, token
        if vr == "UI":
            self.uids += 1
            token = f"{UID_ROOT}{1000 + self.uids}"
            return token, token
        if vr == "AS":
            return "093Y", "093Y"
        if vr == "DS":
            token = f"7{tag & 0xFFF:03X}.25".replace("A", "1").replace("B", "2")
            token = token.translate(str.maketrans("CDEF", "3456"))
            return token, None
        if vr == "IS":
            return "7331", None
        if vr in ("US", "SS", "UL", "SL"):
            return 4242, None
        if vr in ("FD", "FL"):
            return 42.4242, None
        token = f"B{code}"
        return token.encode("ascii"), token  # OB/OW/UN: bytes


def _nested_item(planter: _Planter, sq: int) -> tuple[Dataset, list[Plant]]:
    item = Dataset()
    path = (sq,)
    person = f"Q{sq:08X}"
    item.add_new(PERSON_NAME, "PN", f"{person}^NESTED")
    plants = [Plant(PERSON_NAME, person, "own", path, "PN")]
    planter.uids += 1
    uid = f"{UID_ROOT}{1000 + planter.uids}"
    item.add_new(REFERENCED_SOP_INSTANCE_UID, "UI", uid)
    plants.append(Plant(REFERENCED_SOP_INSTANCE_UID, uid, "own", path, "UI"))
    block = item.private_block(0x0011, PRIVATE_CREATOR, create=True)
    token = f"N{sq:08X}"
    block.add_new(0x01, "LO", f"{token} {planter.corpus.charset.family}")
    plants.append(Plant(0x00111001, token, "private", path, "LO"))
    return item, plants


def build(charset: Charset, retainable: set[int] | None = None) -> Corpus:
    """One instance with PHI planted in every Table E.1-1 attribute."""
    retainable = retainable if retainable is not None else retainable_tags()
    spec = StudySpec(
        patient_id=PATIENT_ID,
        patient_name=charset.person_name,
        birth_date=BIRTH_DATE,
        study_uid=f"{UID_ROOT}1",
        series_uid=f"{UID_ROOT}2",
    )
    ds = make_dataset(spec, sop_uid=f"{UID_ROOT}3", rows=4, columns=4, charset=None)
    if charset.specific is not None:
        ds.SpecificCharacterSet = charset.specific
    corpus = Corpus(charset, ds)
    planter = _Planter(corpus, retainable)
    planter.uids = 10
    for tag in table_tags():
        vr = _vr(tag)
        if tag in (0x00100010, 0x00100020, 0x00100030):
            continue  # the patient's own identity, planted by make_dataset
        if vr == "SQ":
            item, plants = _nested_item(planter, tag)
            ds.add_new(tag, "SQ", Sequence([item]))
            corpus.plants.extend(plants)
            continue
        value, token = planter.value(tag, vr, ())
        ds.add_new(tag, vr, value)
        if token is not None:
            corpus.plants.append(Plant(tag, token, "own", (), vr))
        else:
            corpus.plants.append(Plant(tag, str(value), "binary", (), vr))
    _plant_extra(corpus)
    return corpus


def _plant_extra(corpus: Corpus) -> None:
    """Repeating groups, private blocks (one of them safe), deep nesting."""
    ds = corpus.dataset
    family = corpus.charset.family
    for tag, vr, token in (
        (0x50002500, "LO", "C50002500"),  # Curve Label
        (0x60004000, "LT", "C60004000"),  # Overlay Comments
    ):
        ds.add_new(tag, vr, f"{token} {family}")
        corpus.plants.append(Plant(tag, token, "own", (), vr))
    ds.add_new(0x60003000, "OW", b"C60003000 overlay!")
    corpus.plants.append(Plant(0x60003000, "C60003000", "own", (), "OW"))
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", f"X00091001 {family} {PATIENT_ID}")
    corpus.plants.append(Plant(0x00091001, "X00091001", "private"))
    safe = ds.private_block(0x0019, SAFE_CREATOR, create=True)
    safe.add_new(0x0C, "IS", SAFE_B_VALUE)  # B value: safe, kept by retain-safe-private
    safe.add_new(0x08, "LO", f"X00191008 {family}")  # same creator, not listed: removed
    corpus.plants.append(Plant(0x00191008, "X00191008", "private"))
    # two levels deep: a referenced image inside a referenced series inside a request
    deep = Dataset()
    deep.ReferencedSOPInstanceUID = f"{UID_ROOT}9001"
    deep.add_new(PERSON_NAME, "PN", "QDEEP0001^NESTED")
    mid = Dataset()
    mid.ReferencedImageSequence = Sequence([deep])
    ds.ReferencedSeriesSequence = Sequence([mid])
    corpus.plants.append(
        Plant(REFERENCED_SOP_INSTANCE_UID, f"{UID_ROOT}9001", "own", (0x00081115, 0x00081140))
    )
    corpus.plants.append(Plant(PERSON_NAME, "QDEEP0001", "own", (0x00081115, 0x00081140)))


# -- expectations ------------------------------------------------------------------------

REMOVING = {Action.REMOVE, Action.BLANK, Action.DUMMY, Action.UID, Action.PSEUDONYM}


def must_vanish(plant: Plant, table: ActionTable) -> bool:
    """Whether the profile is supposed to remove ``plant`` from the output."""
    if plant.kind == "private":
        return True  # not in the safe list: removed by every combination
    for sq in plant.path:
        rule = table.rule_for(sq)
        if rule is not None and rule.action not in (Action.KEEP, Action.CLEAN):
            return True  # the enclosing sequence is removed or emptied
    rule = table.rule_for(plant.tag)
    if rule is None or rule.action is Action.KEEP:
        return False
    if rule.action is Action.CLEAN:
        return False  # descriptors are kept, cleaned of the patient's identity
    if rule.action is Action.SHIFT_DATE:
        return plant.vr in ("DA", "DT")
    return rule.action in REMOVING or rule.action is Action.REPLACE


def encoded_forms(text: str, corpus: Corpus) -> frozenset[bytes]:
    """Every byte form ``text`` could take in the output: the input's own character
    set (with ISO 2022 escapes), UTF-8, Latin-1 and the Japanese codecs."""
    return _forms(text, tuple(corpus.charset.specific or ["ISO_IR 6"]))


@cache
def _forms(text: str, specific: tuple[str, ...]) -> frozenset[bytes]:
    forms: set[bytes] = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it has to replace characters
        forms.add(encode_string(text, convert_encodings(list(specific))))
    for codec in ("utf_8", "latin_1", "iso2022_jp", "euc_jp", "shift_jis"):
        try:
            raw = text.encode(codec)
        except UnicodeEncodeError:
            continue
        forms.add(raw)
        if codec == "iso2022_jp" and raw.startswith(b"\x1b$B"):
            forms.add(raw[3:].split(b"\x1b")[0])  # the bare JIS X 0208 bytes
    return frozenset(f for f in forms if f and b"?" not in f)


def find_leaks(output: bytes, corpus: Corpus, table: ActionTable) -> list[str]:
    """Every planted string found in ``output`` that should not be there."""
    leaks = []
    for text in corpus.identity:
        for form in encoded_forms(text, corpus):
            if form in output:
                leaks.append(f"identity {text!r} as {form!r}")
    for plant in corpus.plants:
        if plant.kind == "binary" or not must_vanish(plant, table):
            continue
        for form in encoded_forms(plant.token, corpus):
            if form in output:
                leaks.append(f"{plant.tag:08X} at {plant.path} {plant.token!r}")
    return leaks


def find_structural_leaks(out: Dataset, corpus: Corpus, table: ActionTable) -> list[str]:
    """Binary values (numbers) still present where they should have gone."""
    leaks = []
    for plant in corpus.plants:
        if plant.kind != "binary" or plant.path or not must_vanish(plant, table):
            continue
        elem = out.get(plant.tag)
        if (
            elem is not None
            and elem.value not in (None, "", b"")
            and str(elem.value) == plant.token
        ):
            leaks.append(f"{plant.tag:08X} kept {plant.token}")
    return leaks


def all_option_sets() -> list[tuple[str, ...]]:
    """Every combination of the header options (the two longitudinal options exclude each
    other); pixel cleaning has tests of its own (test_pixel_text.py)."""
    names = list(HEADER_OPTIONS)
    combos = []
    for mask in range(1 << len(names)):
        chosen = tuple(n for i, n in enumerate(names) if mask >> i & 1)
        if {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"} <= set(chosen):
            continue
        combos.append(chosen)
    return combos
