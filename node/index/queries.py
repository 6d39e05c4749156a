"""Turn an :class:`IndexQuery` into SELECT statements: which tables, keys and conditions.

Rules (PS3.4 C.6):

- Study Root has no PATIENT level; Patient Root is PATIENT -> STUDY -> SERIES -> IMAGE.
  In both, the attributes of the query level and of every level above it (patient
  attributes included, as Study Root allows them at STUDY level and below) can be
  matched and returned.
- A filter on a keyword the index does not know, or that belongs below the query level,
  is ignored (universal matching); a *requested* unknown keyword comes back as ``None``,
  a requested keyword below the query level is left out.
- Every answer carries the unique keys of the query level and of the levels above it
  in the model's hierarchy (PatientID only in Patient Root).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from .errors import InvalidQuery
from .matching import condition
from .models import ATTRIBUTES, Instance, Patient, Series, Study
from .records import LEVEL_KEYS, UNIQUE_KEY, IndexQuery, Level, Model

LEVEL_ORDER: tuple[Level, ...] = (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE)
ALL_KEYS = frozenset(k for keys in LEVEL_KEYS.values() for k in keys)


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated query: the SELECT to run and how to label its columns."""

    statement: sa.Select[Any]
    keys: tuple[str, ...]
    """Answer keywords, in answer order."""
    selected: tuple[str, ...]
    """The keywords that are columns of ``statement``, in column order."""


def check_level(query: IndexQuery) -> None:
    """Refuse a level the model does not have."""
    if not isinstance(query.level, Level) or not isinstance(query.model, Model):
        raise InvalidQuery(f"unknown level {query.level!r} or model {query.model!r}")
    if query.model is Model.STUDY_ROOT and query.level is Level.PATIENT:
        raise InvalidQuery("the Study Root model has no PATIENT level")
    if query.limit is not None and query.limit < 0:
        raise InvalidQuery("limit must not be negative")


def visible_levels(level: Level) -> tuple[Level, ...]:
    """The query level and the levels above it."""
    return LEVEL_ORDER[: LEVEL_ORDER.index(level) + 1]


def unique_keys(query: IndexQuery) -> tuple[str, ...]:
    """The unique keys every answer carries, root first."""
    first = Level.PATIENT if query.model is Model.PATIENT_ROOT else Level.STUDY
    levels = LEVEL_ORDER[LEVEL_ORDER.index(first) : LEVEL_ORDER.index(query.level) + 1]
    return tuple(UNIQUE_KEY[lv] for lv in levels)


def conditions(query: IndexQuery) -> list[sa.ColumnElement[bool]]:
    """WHERE conditions of the filters and the collection restriction."""
    check_level(query)
    visible = visible_levels(query.level)
    where: list[sa.ColumnElement[bool]] = []
    for keyword, raw in query.filters.items():
        attr = ATTRIBUTES.get(keyword)
        if attr is None or attr.level not in visible:
            continue
        cond = condition(attr, raw)
        if cond is not None:
            where.append(cond)
    if query.collections is not None:
        column = Patient.collection if query.level is Level.PATIENT else Study.collection
        where.append(column.in_(list(query.collections)))
    return where


def joined(level: Level) -> sa.FromClause:
    """The level's table joined to its ancestors."""
    from_: sa.FromClause = Patient.__table__
    if level is Level.PATIENT:
        return from_
    from_ = Study.__table__.join(Patient.__table__, Study.patient_pk == Patient.pk)
    if level is Level.STUDY:
        return from_
    from_ = Series.__table__.join(from_, Series.study_pk == Study.pk)
    if level is Level.SERIES:
        return from_
    return Instance.__table__.join(from_, Instance.series_pk == Series.pk)


def find_plan(query: IndexQuery) -> Plan:
    """The C-FIND statement for ``query``."""
    where = conditions(query)
    visible = visible_levels(query.level)
    keys: list[str] = list(unique_keys(query))
    for keyword in query.requested:
        if keyword in keys:
            continue
        attr = ATTRIBUTES.get(keyword)
        if attr is not None and attr.level not in visible:
            continue
        if attr is None and keyword in ALL_KEYS:  # pragma: no cover - ATTRIBUTES covers all
            continue
        keys.append(keyword)
    selected = tuple(k for k in keys if k in ATTRIBUTES)
    columns = [ATTRIBUTES[k].column.label(f"c{n}") for n, k in enumerate(selected)]
    stmt = sa.select(*columns).select_from(joined(query.level)).where(*where)
    if query.limit is not None:
        stmt = stmt.limit(query.limit)
    return Plan(stmt, tuple(keys), selected)


INSTANCE_COLUMNS: tuple[Any, ...] = (
    Instance.sop_instance_uid,
    Instance.sop_class_uid,
    Instance.transfer_syntax_uid,
    Instance.blob_key,
    Instance.size,
    Study.study_instance_uid,
    Series.series_instance_uid,
)


def instances_statement(query: IndexQuery) -> sa.Select[Any]:
    """Every instance under the entities ``query`` matches (C-MOVE / C-GET)."""
    where = conditions(query)
    stmt = sa.select(*INSTANCE_COLUMNS).select_from(joined(Level.IMAGE)).where(*where)
    return stmt.order_by(Instance.series_pk, Instance.instance_number, Instance.pk)


def count_statement(query: IndexQuery) -> sa.Select[Any]:
    """How many instances :func:`instances_statement` would return."""
    where = conditions(query)
    return sa.select(sa.func.count()).select_from(joined(Level.IMAGE)).where(*where)
