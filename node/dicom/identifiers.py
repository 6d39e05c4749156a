"""C-FIND/C-MOVE/C-GET identifiers ↔ index queries and response datasets.

The SCU's identifier is decoded by pydicom with its SpecificCharacterSet, so values reach
the index as ``str``; responses are encoded as UTF-8 (ISO_IR 192) whenever a value is not
plain ASCII.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from node.errors import InvalidIdentifier
from node.index.records import IndexQuery, Level, Model

_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}
MAX_IDENTIFIER_ELEMENTS = 256


def to_query(identifier: Dataset, model: Model) -> IndexQuery:
    """Translate an identifier into an :class:`IndexQuery` (raises InvalidIdentifier)."""
    raw_level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise InvalidIdentifier(
            f"QueryRetrieveLevel {raw_level!r} is not PATIENT, STUDY, SERIES or IMAGE"
        ) from None
    if model is Model.STUDY_ROOT and level is Level.PATIENT:
        raise InvalidIdentifier("PATIENT level is not part of the Study Root model")
    if len(identifier) > MAX_IDENTIFIER_ELEMENTS:
        raise InvalidIdentifier(f"identifier has more than {MAX_IDENTIFIER_ELEMENTS} elements")
    filters: dict[str, str] = {}
    requested: list[str] = []
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or keyword in _NOT_KEYS or elem.tag.group == 0x0002:
            continue
        requested.append(keyword)
        if elem.VR == "SQ":
            continue  # sequence matching is not supported; returned empty (PS3.4 C.2.2.1)
        text = _matching_text(elem)
        if text:
            filters[keyword] = text
    return IndexQuery(level=level, model=model, filters=filters, requested=tuple(requested))


def _matching_text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        raise InvalidIdentifier(f"{elem.keyword} has a binary value; it cannot be matched")
    return str(value).strip()


def to_response(match: Mapping[str, object], query: IndexQuery, retrieve_ae_title: str) -> Dataset:
    """The pending C-FIND response identifier for one index match."""
    ds = Dataset()
    ds.QueryRetrieveLevel = query.level.value
    non_ascii = False
    for keyword in query.requested:
        value = match.get(keyword)
        _set(ds, keyword, value)
        non_ascii = non_ascii or _has_non_ascii(value)
    holders = match.get("RetrieveAETitle")
    ds.RetrieveAETitle = list(holders) if isinstance(holders, list) else retrieve_ae_title
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _set(ds: Dataset, keyword: str, value: object) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    vr = dictionary_VR(tag)
    if vr == "SQ":
        ds.add_new(tag, vr, Sequence())
        return
    if value is None:
        ds.add_new(tag, vr, None)
    elif isinstance(value, list | tuple):
        ds.add_new(tag, vr, [str(v) for v in value])
    else:
        ds.add_new(tag, vr, value if isinstance(value, int) and vr in {"US", "UL"} else str(value))


def _has_non_ascii(value: object) -> bool:
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        return any(isinstance(v, str) and not v.isascii() for v in value)
    return False
