"""Apply a compiled profile to a pydicom Dataset in one walk (recursing into sequences).

Elements the profile does not touch are carried over as the raw bytes pydicom read
(never decoded, never re-encoded); only listed attributes are decoded and rewritten.
That, and a recipe compiled once per process instead of once per file, is what makes
this engine much faster than deid's per-file pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from anonymizer.actions import Action, ActionTable, Rule
from anonymizer.bitstream import inspected, scrub_encapsulated
from anonymizer.blanking import SUBSAMPLED, CannotBlank, Geometry, blank, decode_to_native
from anonymizer.elements import (
    Encoding,
    ascii_element,
    dictionary_vr,
    empty_element,
    encoding_of,
    shift_date,
    values_of,
)
from anonymizer.errors import (
    BurnedInAnnotation,
    EncapsulatedDocument,
    PixelsFlagged,
    PixelsNotCleanable,
)
from anonymizer.interfaces import PseudonymStore
from anonymizer.marking import marking_elements
from anonymizer.part10 import decode, encode_part10, peek, raw_ascii, read_part10
from anonymizer.profiles import Profile
from anonymizer.pseudonyms import Pseudonymizer
from anonymizer.screening import Verdict
from anonymizer.tail import SourceTail

#: Our implementation class UID (a fixed ``2.25`` UID) written in the file meta.
IMPLEMENTATION_CLASS_UID = "2.25.161440817744233011186347823960658123089"
IMPLEMENTATION_VERSION_NAME = "GRIDPACS_ANON1"

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
BURNED_IN = 0x00280301
ENCAPSULATED_DOCUMENT, DOCUMENT_TYPE = 0x00420011, 0x00420012
TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_DUMMY = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000D",
    "DS": "0",
    "IS": "0",
}
#: Attributes whose values are scrubbed from descriptions kept by the "clean" action.
IDENTIFYING = tuple(
    tag_for_keyword(k) or 0
    for k in (
        "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames",
        "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
        "PatientTelephoneNumbers", "PatientBirthDate", "AccessionNumber",
        "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy",
        "OperatorsName", "InstitutionName", "InstitutionAddress", "MedicalRecordLocator",
        "StudyID", "IssuerOfPatientID", "ResponsiblePerson", "MilitaryRank",
    )
)  # fmt: skip
_PIXEL_DATA = 0x7FE00010
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
#: The verdict where the profile has no filters: nothing flagged, nothing to clean.
_UNSCREENED = Verdict()
#: Top-level UIDs recorded in the re-identification map.
RECORDED = {0x0020000D: "StudyInstanceUID", 0x0020000E: "SeriesInstanceUID"}

Handler = Callable[[Any, str, Dataset, "_Instance", Rule, bool], Any]


@dataclass(frozen=True)
class DeidentifiedInstance:
    """Result of :meth:`Deidentifier.deidentify_part10`: the file and its new identity."""

    parts: tuple[bytes, ...]
    sop_instance_uid: str
    study_instance_uid: str
    patient_id: str
    #: From :meth:`Deidentifier.deidentify_head`: the source file's bytes that follow
    #: ``parts`` (native pixel data, copied as they are but for the zero runs it names).
    source_tail: SourceTail | None = None

    @property
    def data(self) -> bytes:
        """The Part 10 file (joined on each access; ``parts`` avoids the copy)."""
        if self.source_tail is not None:
            raise ValueError("built from a file head: write parts, then the source's tail")
        return b"".join(self.parts)


def _text(ds: Dataset, tag: int) -> str:
    value = peek(ds, tag)
    return "" if value is None else str(value).strip()


@dataclass
class _Instance:
    """Per-call state: the source's identity, its encoding, the mappings made for it."""

    pseudo: Pseudonymizer
    top: Dataset
    encoding: Encoding
    record: bool
    mappings: list[tuple[str, str, str]] = field(default_factory=list)
    _patient: tuple[str, str] | None = None
    _shift: int | None = None
    _scrub: re.Pattern[str] | None = None
    _scrub_done: bool = False
    _key: str | None = None

    def patient_key(self) -> str:
        """What identifies the patient: PatientID, else the name."""
        if self._key is None:
            original = _text(self.top, PATIENT_ID)
            self._key = original or "name:" + _text(self.top, PATIENT_NAME)
        return self._key

    def patient(self) -> str:
        """The pseudonymous PatientID of the top-level dataset (recorded once)."""
        if self._patient is None:
            pseudonym = self.pseudo.patient_id(self.patient_key())
            self._patient = (_text(self.top, PATIENT_ID), pseudonym)
            if self.record:
                self.mappings.append(("PatientID", pseudonym, self._patient[0]))
        return self._patient[1]

    def shift_days(self) -> int:
        if self._shift is None:
            self._shift = self.pseudo.date_shift_days(self.patient_key())
        return self._shift

    def scrub(self) -> re.Pattern[str] | None:
        """A pattern matching every identifying string of this instance."""
        if not self._scrub_done:
            words: set[str] = set()
            for tag in IDENTIFYING:
                for text in values_of(peek(self.top, tag)):
                    words.add(text)
                    words.update(re.split(r"[\^=\s,]+", text))
            ordered = sorted((w for w in words if len(w) >= 2), key=len, reverse=True)
            if ordered:
                self._scrub = re.compile("|".join(map(re.escape, ordered)), re.IGNORECASE)
            self._scrub_done = True
        return self._scrub


class Deidentifier:
    """De-identifies datasets and Part 10 files with one compiled profile.

    Parameters
    ----------
    profile
        From :func:`anonymizer.load_profile`.
    secret
        The site secret (HMAC key, at least 32 bytes).
    reid_map
        Where new pseudonym -> original mappings are recorded (optional).
    allow_burned_in
        Accept instances marked ``BurnedInAnnotation = YES``, and those the profile's
        filters refuse (their pixels are not cleaned; rectangles a filter names still are).
    allow_documents
        Accept instances that hold an Encapsulated Document (a PDF, a CDA, a 3D model:
        its content is not cleaned).

    Thread-safe: one instance can serve several ingest threads.
    """

    def __init__(
        self,
        profile: Profile,
        secret: bytes,
        reid_map: PseudonymStore | None = None,
        allow_burned_in: bool = False,
        allow_documents: bool = False,
    ) -> None:
        self.profile = profile
        self._table: ActionTable = profile.table
        self._pseudo = Pseudonymizer(secret)
        self._reid_map = reid_map
        self._allow_burned_in = allow_burned_in
        self._allow_documents = allow_documents
        self._screen = profile.screen
        self._rules: dict[int, Rule | None] = {}
        #: The fast path's decision per (tag, VR): see anonymizer.direct._decide.
        self._direct_decisions: dict[tuple[int, str | None], tuple[Any, bool]] = {}
        #: The fast path's per-encoding constants (additions, marking, their bytes).
        self._direct_fixed: dict[tuple[Any, ...], Any] = {}
        self._handlers: dict[Action, Handler] = {
            Action.UID: self._uid,
            Action.PSEUDONYM: self._pseudonym,
            Action.CLEAN: self._clean,
            Action.SHIFT_DATE: self._shift,
            Action.REPLACE: self._literal,
            Action.DUMMY: self._dummy,
        }

    # -- public API -------------------------------------------------------------------

    def deidentify(self, ds: Dataset) -> Dataset:
        """Return a de-identified copy of ``ds`` (``file_meta`` included).

        ``ds`` itself is not modified.

        Raises
        ------
        BurnedInAnnotation
            ``ds`` says its pixels carry burned-in text and that was not allowed.
        EncapsulatedDocument
            ``ds`` holds a document whose content is not cleaned, and that was not allowed.
        """
        out, meta = self._deidentified(ds)
        out.file_meta = _file_meta(meta)
        return out

    def _deidentified(self, ds: Dataset) -> tuple[Dataset, dict[int, str]]:
        """The de-identified data set and its new file meta values (not yet a dataset)."""
        verdict = self._screen.verdict(ds) if self._screen else _UNSCREENED
        self._check_content(ds, verdict)
        instance = _Instance(
            self._pseudo, ds, ds.original_encoding, record=self._reid_map is not None
        )
        out = self._walk(ds, instance, top=True)
        for tag, rule in self._table.additions.items():
            out[tag] = DataElement(tag, dictionary_vr(tag), rule.value)
        for tag, elem in marking_elements(self.profile, instance.encoding).items():
            out[tag] = elem
        meta = self._meta_values(ds, out)
        if verdict.cleans:  # first: compressed pixels are decoded (or refused) first
            _blank_regions(out, meta, verdict)
        _blank_bitstream_text(out, meta[0x00020010])
        if self._reid_map is not None:
            for kind, pseudonym, original in instance.mappings:
                if original:
                    self._reid_map.record(kind, pseudonym, original)
        return out, meta

    def deidentify_bytes(self, data: bytes) -> bytes:
        """Part 10 in, Part 10 out; pixel data untouched, transfer syntax kept.

        Raises
        ------
        UnreadableInput
            ``data`` is not a complete Part 10 instance.
        BurnedInAnnotation
            As :meth:`deidentify`.
        """
        return self.deidentify_part10(data).data

    def deidentify_part10(self, data: bytes) -> DeidentifiedInstance:
        """Like :meth:`deidentify_bytes`, also returning the new identifiers."""
        fast = self._direct(data, None)
        if fast is not None:
            return fast
        return self.deidentify_general(data)

    def deidentify_head(self, head: bytes, size: int) -> DeidentifiedInstance | None:
        """De-identify a Part 10 file of ``size`` bytes from its first bytes ``head``.

        For file-to-file work: the native pixel data at the end of the file need not be
        read into memory; the result's ``source_tail`` says which bytes of the source
        file to copy after ``parts``, and which to write as zeros instead (the places a
        filter of the profile cleans). None when more of the file is needed (the header
        does not fit in ``head``, encapsulated pixel data, elements after the pixels,
        anything the fast path leaves to the general one): read the whole file and call
        :meth:`deidentify_part10`. The output is the same either way.
        """
        return self._direct(head, size)

    def _direct(self, data: bytes, size: int | None) -> DeidentifiedInstance | None:
        from anonymizer.direct import deidentify_direct

        fast = deidentify_direct(self, data, size)
        if fast is None:
            return None
        parts, _, texts = fast
        tail = parts.pop() if parts and isinstance(parts[-1], SourceTail) else None
        return DeidentifiedInstance(
            parts=tuple(parts),
            sop_instance_uid=texts[SOP_INSTANCE_UID],
            study_instance_uid=texts[0x0020000D],
            patient_id=texts[PATIENT_ID],
            source_tail=tail,
        )

    def deidentify_general(self, data: bytes) -> DeidentifiedInstance:
        """:meth:`deidentify_part10` by the general path only (pydicom data sets
        throughout); the fast path's output is tested against it."""
        out, meta = self._deidentified(read_part10(data, zero_copy=True))
        return DeidentifiedInstance(
            parts=tuple(encode_part10(out, meta)),
            sop_instance_uid=_text(out, SOP_INSTANCE_UID),
            study_instance_uid=_text(out, 0x0020000D),
            patient_id=_text(out, PATIENT_ID),
        )

    # -- the walk ---------------------------------------------------------------------

    def _check_content(self, ds: Dataset, verdict: Verdict = _UNSCREENED) -> None:
        """Refuse what the header's rules cannot make safe: pixels that say they show text
        (unless a filter cleans them) or that a filter flags, and encapsulated documents."""
        if verdict.refused and not self._allow_burned_in:
            raise PixelsFlagged(f"{verdict.reason}; refused (allow_burned_in=True accepts it)")
        said_yes = _text(ds, BURNED_IN).upper() == "YES"
        if said_yes and not self._allow_burned_in and not verdict.cleans:
            raise BurnedInAnnotation(
                "BurnedInAnnotation is YES: the pixels may show PHI; refused "
                "(allow_burned_in=True accepts it)"
            )
        if not self._allow_documents and ENCAPSULATED_DOCUMENT in ds:
            kind = _text(ds, DOCUMENT_TYPE) or "of no stated type"
            raise EncapsulatedDocument(
                f"an encapsulated document ({kind}) may name the patient and is not "
                "cleaned; refused (allow_documents=True accepts it)"
            )

    def _rule(self, tag: int) -> Rule | None:
        number = int(tag)  # plain ints hash and compare without BaseTag.__eq__
        try:
            return self._rules[number]
        except KeyError:
            rule = self._table.rule_for(number)
            self._rules[number] = rule
            return rule

    def _walk(self, src: Dataset, instance: _Instance, top: bool) -> Dataset:
        """The de-identified copy of ``src``, element by element.

        Group 0000 (command elements) is left out whole: it belongs to DIMSE messages, not
        to stored instances, yet files written from captured traffic carry it, and Table
        E.1-1 lists only two of its UIDs: Error Comment is free text, Move Originator and
        Move Destination are AE titles that name sites.
        """
        elements: dict[BaseTag, Any] = {}
        private_rules: dict[int, Rule | None] | None = None
        for tag, elem in src.items():  # items() keeps raw elements raw
            if tag.group == 0 or (tag.element == 0 and tag.group != 2):
                continue  # command elements (see above); stale, retired group lengths
            if tag.group & 1:
                if private_rules is None:
                    private_rules = self._private_rules(src)
                rule = private_rules.get(tag)
            else:
                rule = self._rule(tag)
            vr = elem.VR or dictionary_vr(tag)
            new = self._apply(rule, tag, elem, vr, src, instance, top)
            if new is not None:
                elements[tag] = new
        out = Dataset(elements, parent_encoding=getattr(src, "_parent_encoding", "iso8859"))
        implicit, little = src.original_encoding
        out.set_original_encoding(implicit, little, src.original_character_set)
        return out

    def _apply(
        self,
        rule: Rule | None,
        tag: BaseTag,
        elem: Any,
        vr: str,
        src: Dataset,
        instance: _Instance,
        top: bool,
    ) -> Any:
        """The element to write for ``elem`` (None: leave it out)."""
        if rule is None or rule.action is Action.KEEP:
            return self._sequence(src, tag, instance) if vr == "SQ" else elem
        action = rule.action
        if action is Action.REMOVE:
            return None
        if vr == "SQ":
            if action is Action.CLEAN:  # keep it, de-identify its items
                return self._sequence(src, tag, instance)
            return DataElement(tag, "SQ", Sequence())
        if action is Action.BLANK:
            return empty_element(tag, vr, encoding_of(elem, instance.encoding))
        return self._handlers[action](elem, vr, src, instance, rule, top)

    def _sequence(self, src: Dataset, tag: BaseTag, instance: _Instance) -> DataElement:
        elem = src.get_item(tag)
        if isinstance(elem, RawDataElement):
            elem = decode(elem, src)
        items = [self._walk(item, instance, top=False) for item in elem.value or ()]
        return DataElement(tag, "SQ", Sequence(items))

    def _private_rules(self, src: Dataset) -> dict[int, Rule | None]:
        """Decide every private element of one dataset level, creators included."""
        default = self._table.private_default
        named = self._table.private
        rules: dict[int, Rule | None] = {}
        creators: dict[tuple[int, int], str] = {}
        for tag in src.keys():  # noqa: SIM118 (iterating a Dataset decodes it)
            if tag.group & 1 and 0x10 <= tag.element <= 0xFF:
                creators[(tag.group, tag.element)] = _text(src, tag)
        for tag in src.keys():  # noqa: SIM118
            if not tag.group & 1:
                continue
            if tag.element <= 0xFF:
                rules.setdefault(tag, default)  # creators: kept below if a member is kept
                continue
            creator = creators.get((tag.group, tag.element >> 8))
            rule = named.get((tag.group, creator or "", tag.element & 0xFF), default)
            rules[tag] = rule
            if creator is not None and (rule is None or rule.action is not Action.REMOVE):
                rules[BaseTag((tag.group << 16) | (tag.element >> 8))] = None
        return rules

    # -- actions ----------------------------------------------------------------------

    def _value(self, elem: Any, src: Dataset) -> Any:
        if isinstance(elem, RawDataElement):
            ascii_values = raw_ascii(elem)
            return ascii_values if ascii_values is not None else decode(elem, src).value
        return elem.value

    def _uid(self, elem: Any, vr: str, src: Dataset, inst: _Instance, rule: Rule, top: bool) -> Any:
        originals = values_of(self._value(elem, src))
        mapped = [self._pseudo.uid(v) for v in originals]
        kind = RECORDED.get(int(elem.tag)) if top and inst.record else None
        if kind and mapped:
            inst.mappings.append((kind, mapped[0], originals[0]))
        return ascii_element(elem.tag, vr, mapped, encoding_of(elem, inst.encoding))

    def _pseudonym(
        self, elem: Any, vr: str, src: Dataset, inst: _Instance, rule: Rule, top: bool
    ) -> Any:
        tag = int(elem.tag)
        encoding = encoding_of(elem, inst.encoding)
        if top and tag == PATIENT_ID:
            return ascii_element(tag, vr, [inst.patient()], encoding)
        if top and tag == PATIENT_NAME:
            pseudonym = self._pseudo.patient_name(inst.patient())
            if inst.record:
                inst.mappings.append(("PatientName", pseudonym, _text(src, PATIENT_NAME)))
            return ascii_element(tag, vr, [pseudonym], encoding)
        values = values_of(self._value(elem, src))
        if tag == PATIENT_ID:
            mapped = [self._pseudo.patient_id(v) for v in values]
        elif vr == "UI":
            mapped = [self._pseudo.uid(v) for v in values]
        else:
            mapped = [self._pseudo.text(f"{tag:08X}", v) for v in values]
            if vr == "PN":
                mapped = [f"ANON^{v}" for v in mapped]
        return ascii_element(tag, vr, mapped, encoding)

    def _clean(
        self, elem: Any, vr: str, src: Dataset, inst: _Instance, rule: Rule, top: bool
    ) -> Any:
        if vr not in TEXT_VRS:
            return None  # only text can be cleaned; anything else is removed
        value = self._value(elem, src)
        pattern = inst.scrub()
        cleaned = values_of(value)
        if pattern is not None:
            cleaned = [pattern.sub("*", v) for v in cleaned]
        return DataElement(elem.tag, vr, cleaned if len(cleaned) > 1 else "".join(cleaned))

    def _shift(
        self, elem: Any, vr: str, src: Dataset, inst: _Instance, rule: Rule, top: bool
    ) -> Any:
        if vr not in ("DA", "DT"):
            return elem if vr == "TM" else None
        days = int(rule.value) if rule.value is not None else inst.shift_days()
        shifted = []
        for value in values_of(self._value(elem, src)):
            moved = shift_date(value, days)
            if moved is None:
                return None  # an unparseable date is removed, never kept
            shifted.append(moved)
        return ascii_element(elem.tag, vr, shifted, encoding_of(elem, inst.encoding))

    def _literal(
        self, elem: Any, vr: str, src: Dataset, inst: _Instance, rule: Rule, top: bool
    ) -> Any:
        return DataElement(elem.tag, vr, rule.value)

    def _dummy(
        self, elem: Any, vr: str, src: Dataset, inst: _Instance, rule: Rule, top: bool
    ) -> Any:
        if vr == "UI":
            return self._uid(elem, vr, src, inst, rule, top)
        encoding = encoding_of(elem, inst.encoding)
        if vr in TEXT_VRS or vr in _DUMMY:
            return ascii_element(elem.tag, vr, [_DUMMY.get(vr, "ANONYMIZED")], encoding)
        return empty_element(elem.tag, vr, encoding)

    # -- file meta --------------------------------------------------------------------

    def _meta_values(self, src: Dataset, out: Dataset) -> dict[int, str]:
        """The new file meta by tag: SOP class and instance, syntax, implementation."""
        old = getattr(src, "file_meta", None)
        sop_class = _text(out, SOP_CLASS_UID)
        if not sop_class and old is not None:
            sop_class = str(peek(old, 0x00020002) or "")
        syntax = str(peek(old, 0x00020010) or "") if old is not None else ""
        if not syntax:
            implicit, _ = src.original_encoding
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        return self._new_meta(sop_class, _text(out, SOP_INSTANCE_UID), str(syntax))

    @staticmethod
    def _new_meta(sop_class: str, sop_instance: str, syntax: str) -> dict[int, str]:
        return {
            0x00020002: sop_class,
            0x00020003: sop_instance,
            0x00020010: syntax,
            0x00020012: IMPLEMENTATION_CLASS_UID,
            0x00020013: IMPLEMENTATION_VERSION_NAME,
        }


def _blank_bitstream_text(out: Dataset, syntax: str) -> None:
    """Blank the comments and application segments of ``out``'s compressed pixel data in
    place (:mod:`anonymizer.bitstream`): JPEG and JPEG 2000 carry text the table does not
    name (EXIF, captions, comments)."""
    if not inspected(syntax) or _PIXEL_DATA not in out:
        return
    elem = out.get_item(_PIXEL_DATA)
    value = elem.value
    if not isinstance(value, bytes | bytearray) or not value:
        return
    blanked = scrub_encapsulated(memoryview(value), syntax)  # copied only if blanked
    if blanked is None:
        return
    if isinstance(elem, RawDataElement):
        out[_PIXEL_DATA] = elem._replace(value=blanked)
    else:
        out[_PIXEL_DATA] = DataElement(
            _PIXEL_DATA, elem.VR, blanked, is_undefined_length=elem.is_undefined_length
        )


def _blank_regions(out: Dataset, meta: dict[int, str], verdict: Verdict) -> None:
    """Zero the rectangles a filter names in ``out``'s pixel data, and say so:
    BurnedInAnnotation becomes NO (as CTP's pixel anonymizer sets it). Compressed or
    chroma-subsampled pixels are decoded first, and the output's transfer syntax becomes
    Explicit VR Little Endian (``meta`` is updated). Raises :class:`PixelsNotCleanable`
    where that cannot be done."""
    if _PIXEL_DATA not in out:
        return  # no pixels, no text in them
    syntax = meta[0x00020010]
    photometric = str(out.get("PhotometricInterpretation", "")).strip().upper()
    native = syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, _EXPLICIT_BIG)
    if not native or photometric in SUBSAMPLED:
        try:
            decode_to_native(out, syntax)
        except CannotBlank as exc:
            raise PixelsNotCleanable(
                f"{verdict.reason}, but the pixels ({_syntax_name(syntax)}, {photometric}) "
                f"cannot be blanked: {exc}; refused"
            ) from exc
        meta[0x00020010] = ExplicitVRLittleEndian
    elem = out.get_item(_PIXEL_DATA)
    try:
        blanked = blank(elem.value or b"", Geometry.of(out), verdict.regions)
    except CannotBlank as exc:
        raise PixelsNotCleanable(f"{verdict.reason}, but {exc}; refused") from exc
    if blanked is not None:
        vr = elem.VR or ("OB" if int(out.get("BitsAllocated", 16)) <= 8 else "OW")
        out[_PIXEL_DATA] = DataElement(_PIXEL_DATA, vr, bytes(blanked))
    out[BURNED_IN] = DataElement(BURNED_IN, "CS", "NO")


def _syntax_name(syntax: str) -> str:
    name = UID(syntax).name
    return f"{name}, {syntax}" if name != syntax else syntax


def _file_meta(values: dict[int, str]) -> FileMetaDataset:
    return FileMetaDataset(
        {
            BaseTag(tag): ascii_element(
                tag, "SH" if tag == 0x00020013 else "UI", [value], (False, True)
            )
            for tag, value in values.items()
        }
    )
