"""DICOM attribute matching (PS3.4 C.2.2.2) translated to SQLAlchemy expressions.

Every value from an identifier becomes a bound parameter; nothing is spliced into SQL.
Supported, per VR:

- universal matching: an empty value or a lone ``*`` puts no constraint;
- single value matching: equality (PN case-insensitively, on the upper-cased column);
- wildcard matching: ``*`` and ``?`` become ``LIKE`` ``%`` and ``_`` with an ``ESCAPE``
  character, so a literal ``%``, ``_`` or ``!`` in the value only matches itself;
- range matching for DA and TM: ``A-B``, ``A-``, ``-B`` (inclusive; a partial time such
  as ``10`` or ``1030`` covers the whole hour or minute);
- list matching: backslash-separated values match any of them (the list of UID matching
  of UI keys, ``CT\\MR`` for Modality / ModalitiesInStudy, and likewise for other VRs).

String comparisons are case-sensitive except for PN, on both backends (SQLite runs with
``case_sensitive_like``, see :mod:`storage.sql`). Absurd inputs are refused with
:class:`QueryRejected` before any SQL is built; malformed ones with :class:`InvalidQuery`.
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from .errors import InvalidQuery, QueryRejected
from .models import Attribute, Series, Study

MAX_VALUE_LENGTH = 1024
"""Longest accepted matching value (per item for UID lists)."""
MAX_LIST_ITEMS = 1000
"""Most values accepted in one backslash-separated list."""

LIKE_ESCAPE = "!"
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")
_INT = re.compile(r"[+-]?\d{1,10}")
_STUDY_SERIES = Series.__table__.alias("study_series")
"""The study's series, for ModalitiesInStudy (an alias: the query may select series too)."""


def condition(attr: Attribute, raw: str) -> sa.ColumnElement[bool] | None:
    """The WHERE condition for ``attr`` matching ``raw``; ``None`` for universal matching.

    Raises
    ------
    QueryRejected
        The value is absurdly long or lists too many values.
    InvalidQuery
        The value is malformed for the attribute's VR (a bad date range, a wildcard in
        a UID, a non-integer for IS/US).
    """
    items = split_value(raw, per_item_limit=attr.vr == "UI")
    if not items or attr.vr == "COUNT":
        return None
    if attr.vr == "UI":
        return _uid_condition(attr, items)
    maybe = [_item_condition(attr, item) for item in items]
    conds = [c for c in maybe if c is not None]
    if len(conds) < len(maybe):
        return None
    if attr.vr == "MODALITIES":
        return (
            sa.exists().where(_STUDY_SERIES.c.study_pk == Study.pk, sa.or_(*conds)).correlate(Study)
        )
    return conds[0] if len(conds) == 1 else sa.or_(*conds)


def split_value(raw: str, *, per_item_limit: bool = False) -> list[str]:
    """Check ``raw``'s size, then split it into its non-empty, stripped values."""
    if not isinstance(raw, str):
        raise InvalidQuery(f"matching value must be a string, not {type(raw).__name__}")
    if not per_item_limit and len(raw) > MAX_VALUE_LENGTH:
        raise QueryRejected(f"matching value of {len(raw)} characters (max {MAX_VALUE_LENGTH})")
    if raw.count("\\") >= MAX_LIST_ITEMS:
        raise QueryRejected(f"more than {MAX_LIST_ITEMS} values in one matching list")
    items = []
    for part in raw.split("\\"):
        item = part.strip(" \x00")
        if len(item) > MAX_VALUE_LENGTH:
            raise QueryRejected(
                f"matching value of {len(item)} characters (max {MAX_VALUE_LENGTH})"
            )
        if "\x00" in item:
            raise InvalidQuery("matching value contains a NUL character")
        if item:
            items.append(item)
    return items


def like_pattern(value: str) -> str:
    """Translate DICOM wildcards to a LIKE pattern escaped with :data:`LIKE_ESCAPE`."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in ("%", "_", LIKE_ESCAPE):
            out.append(LIKE_ESCAPE + ch)
        else:
            out.append(ch)
    return "".join(out)


def normalise_pn(value: str) -> str:
    """The form of a person name used for matching: upper case, no empty trailing parts."""
    groups = [g.rstrip("^ ") for g in value.strip().upper().split("=")]
    return "=".join(groups).rstrip("=")


def normalise_time(value: str) -> str:
    """A TM without the ACR-NEMA colons, so stored and queried times compare as strings."""
    return value.strip().replace(":", "")


def normalise_date(value: str) -> str:
    """A DA without the ACR-NEMA dots."""
    return value.strip().replace(".", "")


def _uid_condition(attr: Attribute, items: list[str]) -> sa.ColumnElement[bool]:
    for item in items:
        if "*" in item or "?" in item:
            if item == "*":
                continue
            raise InvalidQuery(f"{attr.keyword}: wildcards are not allowed in UIDs")
    uids = [i for i in items if i != "*"]
    if len(uids) < len(items):
        return sa.true()
    if len(uids) == 1:
        return attr.column == uids[0]
    return attr.column.in_(uids)


def _item_condition(attr: Attribute, item: str) -> sa.ColumnElement[bool] | None:
    if item == "*":
        return None
    if attr.vr in ("DA", "TM"):
        return _range_condition(attr, item)
    if attr.vr in ("IS", "US"):
        if not _INT.fullmatch(item):
            raise InvalidQuery(f"{attr.keyword}: {item!r} is not an integer")
        return attr.column == int(item)
    column: Any = attr.column
    value = item
    wild = "*" in item or "?" in item
    if attr.vr == "PN":
        column, value = attr.norm, item.upper() if wild else normalise_pn(item)
    elif attr.vr == "MODALITIES":
        column = _STUDY_SERIES.c.modality
    if wild:
        return column.like(like_pattern(value), escape=LIKE_ESCAPE)
    return column == value


def _range_condition(attr: Attribute, item: str) -> sa.ColumnElement[bool] | None:
    is_date = attr.vr == "DA"
    norm = normalise_date if is_date else normalise_time
    if "*" in item or "?" in item:
        raise InvalidQuery(f"{attr.keyword}: wildcards are not allowed in {attr.vr} values")
    if "-" in item:
        parts = item.split("-")
        if len(parts) != 2:
            raise InvalidQuery(f"{attr.keyword}: malformed range {item!r}")
        low, high = norm(parts[0]), norm(parts[1])
    else:
        low = high = norm(item)
    for bound in (low, high):
        if bound and not (_DATE if is_date else _TIME).fullmatch(bound):
            raise InvalidQuery(f"{attr.keyword}: malformed {attr.vr} value {item!r}")
    if low and high and low > high:
        raise InvalidQuery(f"{attr.keyword}: range {item!r} ends before it starts")
    if not is_date and high:
        high = _time_upper_bound(high)
    conds: list[sa.ColumnElement[bool]] = []
    if low:
        conds.append(attr.column >= low)
    if high:
        conds.append(attr.column <= high)
    if not conds:
        return None
    if is_date and low == high:
        return attr.column == low
    return sa.and_(*conds)


def _time_upper_bound(value: str) -> str:
    """The largest time string covered by a (possibly partial) TM: ``10`` -> ``105959...``."""
    whole, _, fraction = value.partition(".")
    return whole.ljust(6, "9") + "." + fraction.ljust(6, "9")
