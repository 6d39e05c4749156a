"""Translate a :class:`~catalog.records.QueryFilter` into SQL conditions.

Every user value becomes a bound parameter; DICOM wildcards (``*``, ``?``) become ``LIKE``
patterns with ``\\`` escaping, so a literal ``%`` or ``_`` in a name matches only itself.
Names and descriptions are matched case-insensitively through upper-cased key columns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, exists, select, true

from catalog.db.models import InstanceRow, SeriesRow, StudyRow
from catalog.errors import InvalidFilter
from catalog.records import QueryFilter

_DATE = re.compile(r"^\d{8}$")
MAX_LIST = 10_000


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """DICOM wildcard string -> SQL LIKE pattern with ``\\`` as the escape character."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def match_text(column: SQLColumnExpression[str], value: str) -> ColumnElement[bool]:
    """Equality, or LIKE when ``value`` holds DICOM wildcards."""
    if has_wildcard(value):
        return column.like(like_pattern(value), escape="\\")
    return column == value


def parse_date_range(value: str) -> tuple[str | None, str | None]:
    """``"20240101-20240131"`` / ``"-20240131"`` / ``"20240101-"`` / ``"20240101"``."""
    text = value.strip()
    if "-" in text:
        low, _, high = text.partition("-")
    else:
        low = high = text
    bounds = (low.strip() or None, high.strip() or None)
    for bound in bounds:
        if bound is not None and not _DATE.match(bound):
            raise InvalidFilter(
                f"study date {value!r}: expected YYYYMMDD or a YYYYMMDD-YYYYMMDD range"
            )
    if bounds == (None, None):
        raise InvalidFilter(f"study date {value!r}: a range needs at least one bound")
    if bounds[0] and bounds[1] and bounds[0] > bounds[1]:
        raise InvalidFilter(f"study date {value!r}: the range ends before it starts")
    return bounds


@dataclass(frozen=True, slots=True)
class Scope:
    """Collections a caller may see (``None`` = all), set by the auth layer."""

    collections: frozenset[str] | None = None


def validate(query: QueryFilter) -> None:
    """Reject filters that cannot be answered, before touching the database."""
    if query.limit < 0:
        raise InvalidFilter("limit must be >= 0")
    for name in ("study_instance_uids", "series_instance_uids", "sop_instance_uids"):
        values = getattr(query, name)
        if len(values) > MAX_LIST:
            raise InvalidFilter(f"{name}: at most {MAX_LIST} values")
        if any(not v.strip() for v in values):
            raise InvalidFilter(f"{name}: empty UID in list")
    if query.study_date:
        parse_date_range(query.study_date)


def effective_collections(query: QueryFilter, scope: Scope) -> tuple[str, ...] | None:
    """Collections to restrict to: the filter's, intersected with the caller's scope."""
    wanted = set(query.collections) if query.collections else None
    if scope.collections is not None:
        wanted = set(scope.collections) if wanted is None else wanted & scope.collections
    return None if wanted is None else tuple(sorted(wanted))


def study_conditions(query: QueryFilter, scope: Scope) -> list[ColumnElement[bool]]:
    """Conditions on :class:`StudyRow` (with EXISTS subqueries for series/instance filters)."""
    validate(query)
    conds: list[ColumnElement[bool]] = []
    if query.patient_id:
        conds.append(match_text(StudyRow.patient_id, query.patient_id))
    if query.patient_name:
        conds.append(match_text(StudyRow.patient_name_key, query.patient_name.upper()))
    if query.study_description:
        conds.append(match_text(StudyRow.study_description_key, query.study_description.upper()))
    if query.accession_number:
        conds.append(match_text(StudyRow.accession_number, query.accession_number))
    if query.study_date:
        low, high = parse_date_range(query.study_date)
        if low:
            conds.append(StudyRow.study_date >= low)
        if high:
            conds.append(StudyRow.study_date <= high)
    if query.study_instance_uids:
        conds.append(StudyRow.study_instance_uid.in_(query.study_instance_uids))
    collections = effective_collections(query, scope)
    if collections is not None:
        conds.append(StudyRow.collection.in_(collections))
    return conds


def series_conditions(query: QueryFilter) -> list[ColumnElement[bool]]:
    """Conditions on :class:`SeriesRow`."""
    conds: list[ColumnElement[bool]] = []
    if query.modalities:
        conds.append(SeriesRow.modality.in_(query.modalities))
    if query.series_instance_uids:
        conds.append(SeriesRow.series_instance_uid.in_(query.series_instance_uids))
    return conds


def instance_conditions(query: QueryFilter) -> list[ColumnElement[bool]]:
    """Conditions on :class:`InstanceRow`."""
    if query.sop_instance_uids:
        return [InstanceRow.sop_instance_uid.in_(query.sop_instance_uids)]
    return []


def study_level_where(query: QueryFilter, scope: Scope) -> ColumnElement[bool]:
    """Everything a study-level query needs, series/instance filters as EXISTS."""
    conds = study_conditions(query, scope)
    series_conds = series_conditions(query)
    inst_conds = instance_conditions(query)
    if inst_conds:
        sub = (
            select(InstanceRow.id)
            .join(SeriesRow, SeriesRow.id == InstanceRow.series_id)
            .where(SeriesRow.study_id == StudyRow.id, *series_conds, *inst_conds)
        )
        conds.append(exists(sub))
    elif series_conds:
        conds.append(
            exists(select(SeriesRow.id).where(SeriesRow.study_id == StudyRow.id, *series_conds))
        )
    return and_(true(), *conds)


def series_level_where(query: QueryFilter, scope: Scope) -> ColumnElement[bool]:
    """Conditions for a query joining series to studies."""
    conds = study_conditions(query, scope) + series_conditions(query)
    inst_conds = instance_conditions(query)
    if inst_conds:
        sub = select(InstanceRow.id).where(InstanceRow.series_id == SeriesRow.id, *inst_conds)
        conds.append(exists(sub))
    return and_(true(), *conds)


def instance_level_where(query: QueryFilter, scope: Scope) -> ColumnElement[bool]:
    """Conditions for a query joining instances, series and studies."""
    conds = study_conditions(query, scope) + series_conditions(query) + instance_conditions(query)
    return and_(true(), *conds)
