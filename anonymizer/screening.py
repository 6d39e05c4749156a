"""Which instances may show PHI in their pixels, and where: a deid recipe's ``%filter``.

Text burned into pixels (an ultrasound's patient banner, a CT dose report, a screen save)
is out of reach of every header rule. deid's recipes, after CTP's DicomPixelAnonymizer,
hold what is known about it: filter *groups* of labelled criteria on header values, with
the rectangles where known devices write text. This module decides, for one data set,
which group the instance belongs to and which rectangles to blank; it reads only the
header and never touches pixels (:mod:`anonymizer.blanking` does).

The recipe syntax is deid's, and so is the order of decision: groups are tried in the order
of the recipes, the first group with a matching item takes the instance ("an image is
attributed to the filter group that comes first"). What a group means is decided here:

* ``whitelist``: nothing to clean;
* ``blacklist``: refused, whatever rectangles its items name;
* any other group (deid's ``graylist``): the rectangles of its matching items are blanked;
  when none names one (deid's "flags only" items), the instance is refused.

One difference from deid, on purpose: deid combines the *lines* of an item with AND even
when a line starts with ``||`` (its detector drops the line operators), so an item such as
``contains ImageType SAVE`` / ``|| contains BurnedInAnnotation YES`` never fires on the
second line alone. Here ``+`` means AND and ``||`` means OR, left to right, as deid's
documentation writes them; a line with neither is joined with AND, as in deid.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

#: Criteria that compare a value; the others only look at presence.
VALUED = frozenset({"contains", "notcontains", "equals", "notequals"})
CRITERIA = VALUED | {"missing", "present", "empty"}
WHITELIST, BLACKLIST = "whitelist", "blacklist"

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Condition:
    """One test on one attribute, e.g. ``contains ImageType SAVE``."""

    action: str
    field: str
    value: str | None = None

    @cached_property
    def tag(self) -> int | None:
        """The attribute's tag (a keyword or ``0xGGGGEEEE``), None when unknown."""
        if self.field.lower().startswith("0x"):
            try:
                return int(self.field, 16)
            except ValueError:
                return None
        return tag_for_keyword(self.field)

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """``contains`` is a case-insensitive regular expression search, as in deid."""
        return re.compile((self.value or "").strip(), re.IGNORECASE)

    def holds(self, facts: _Facts) -> bool:
        if self.action == "missing":
            return not facts.present(self.tag)
        if self.action == "present":
            return facts.present(self.tag)
        if self.action == "empty":
            return facts.present(self.tag) and facts.empty(self.tag)
        texts = facts.texts(self.tag)
        if self.action in ("contains", "notcontains"):
            found = any(self.pattern.search(text) for text in texts)
            return found if self.action == "contains" else not found
        term = (self.value or "").strip().lower()
        equal = any(text.strip().lower() == term for text in texts)
        return equal if self.action == "equals" else not equal


@dataclass(frozen=True)
class Clause:
    """One criteria line: conditions joined by ``+``/``||`` inside the line, and how the
    line joins the ones before it (``and``, ``or``; None for a line with neither)."""

    conditions: tuple[Condition, ...]
    operators: tuple[str, ...] = ()
    joiner: str | None = None

    def holds(self, facts: _Facts) -> bool:
        return _fold([c.holds for c in self.conditions], self.operators, facts)


@dataclass(frozen=True)
class Region:
    """A rectangle to blank (``coordinates``) or to keep (``keepcoordinates``).

    ``box`` is ``(x0, y0, x1, y1)``, the right and bottom edges excluded, as deid's; None
    means the whole frame (``all``). ``source`` names a sequence of regions in the data set
    (``from:SequenceOfUltrasoundRegions``), whose corners are read per instance.
    """

    keep: bool
    box: Box | None = None
    source: str | None = None


@dataclass(frozen=True)
class FilterItem:
    """A labelled item of a filter group: criteria lines and rectangles."""

    group: str
    label: str
    clauses: tuple[Clause, ...] = ()
    regions: tuple[Region, ...] = ()
    recipe: str = ""

    def holds(self, facts: _Facts) -> bool:
        """Whether the item matches; an item with rectangles and no criteria always does."""
        if not self.clauses:
            return bool(self.regions)
        operators = [c.joiner or "and" for c in self.clauses[1:]]
        return _fold([c.holds for c in self.clauses], operators, facts)

    @cached_property
    def conjunction(self) -> tuple[Condition, ...] | None:
        """Every condition in order when all are joined with AND (104 of deid's 118
        items), else None."""
        joined = [c.joiner for c in self.clauses[1:]] + [
            o for c in self.clauses for o in c.operators
        ]
        if any(j == "or" for j in joined):
            return None
        return tuple(c for clause in self.clauses for c in clause.conditions)


@dataclass(frozen=True)
class Verdict:
    """What the filters say of one instance."""

    group: str | None = None
    labels: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()
    refused: bool = False
    reason: str = ""

    @property
    def cleans(self) -> bool:
        return bool(self.regions) and not self.refused


class _Member(NamedTuple):
    """An item as a screen evaluates it: its place in the recipes, and the conditions it
    needs, all of them (indices of the screen's distinct conditions; None: the item has
    an OR, and is evaluated as written)."""

    order: int
    item: FilterItem
    needs: tuple[int, ...] | None


class _Bucket(NamedTuple):
    """Items of a group that all need one condition (None: no such condition)."""

    first: int | None
    members: tuple[_Member, ...]


@dataclass(frozen=True)
class PixelScreen:
    """Filter items in recipe order, evaluated group by group.

    Every instance of a route with filters is screened, a CT as much as an ultrasound, so
    the items are compiled once: deid's 463 conditions are 186 different ones, each
    evaluated at most once per instance, and the items that need the same first
    condition (``contains Modality US`` opens 60 of them) are skipped together when it
    fails. What matches, and in which order, is what evaluating every item gives.
    """

    items: tuple[FilterItem, ...]
    _groups: tuple[tuple[str, tuple[_Bucket, ...]], ...] = field(init=False, repr=False)
    _conditions: tuple[Condition, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index: dict[Condition, int] = {}
        groups: dict[tuple[str, str], dict[int | None, list[_Member]]] = {}
        for order, item in enumerate(self.items):
            conjunction = item.conjunction if item.clauses else None
            needs = None
            if conjunction is not None:
                needs = tuple(index.setdefault(c, len(index)) for c in conjunction)
            first = needs[0] if needs else None
            # one run per (recipe, group), in order of appearance
            buckets = groups.setdefault((item.recipe, item.group), {})
            buckets.setdefault(first, []).append(_Member(order, item, needs))
        compiled = tuple(
            (key[1], tuple(_Bucket(first, tuple(m)) for first, m in buckets.items()))
            for key, buckets in groups.items()
        )
        object.__setattr__(self, "_groups", compiled)
        object.__setattr__(self, "_conditions", tuple(index))

    def __bool__(self) -> bool:
        return bool(self.items)

    @cached_property
    def tags(self) -> frozenset[int]:
        """Every attribute a criterion reads (unknown names left out: never present)."""
        return frozenset(
            condition.tag
            for item in self.items
            for clause in item.clauses
            for condition in clause.conditions
            if condition.tag is not None
        )

    def verdict(self, ds: Dataset) -> Verdict:
        """The first group with a matching item decides (see the module's docstring)."""
        facts = _Facts(ds)
        conditions = self._conditions
        held: list[bool | None] = [None] * len(conditions)

        def met(number: int) -> bool:
            value = held[number]
            if value is None:
                value = held[number] = conditions[number].holds(facts)
            return value

        for group, buckets in self._groups:
            matched: list[_Member] = []
            for first, members in buckets:
                if first is not None and not met(first):
                    continue
                for member in members:
                    needs = member.needs
                    if member.item.holds(facts) if needs is None else all(map(met, needs)):
                        matched.append(member)
            if matched:
                matched.sort()
                return _decide(group, [member.item for member in matched], ds)
        return Verdict()


def _decide(group: str, matched: Sequence[FilterItem], ds: Dataset) -> Verdict:
    labels = tuple(item.label for item in matched)
    named = "; ".join(f"{item.label!r} ({item.recipe or 'recipe'})" for item in matched)
    kind = group.lower()
    if kind == WHITELIST:
        return Verdict(group, labels)
    regions = tuple(regions_of((r for item in matched for r in item.regions), ds))
    if kind == BLACKLIST:
        reason = f"filter group {group!r} flags the pixels as showing PHI: {named}"
        return Verdict(group, labels, regions, refused=True, reason=reason)
    if not any(not r.keep for r in regions):
        reason = (
            f"filter group {group!r} flags the pixels as possibly showing PHI and names no "
            f"place to clean: {named}"
        )
        return Verdict(group, labels, regions, refused=True, reason=reason)
    return Verdict(group, labels, regions, reason=f"cleaned as {group!r}: {named}")


def regions_of(regions: Iterable[Region], ds: Dataset) -> list[Region]:
    """``regions`` with every ``from:`` source replaced by the boxes it names in ``ds``.

    DICOM's RegionLocationMaxX1/MaxY1 are inclusive: the box takes them in, one pixel more
    than deid keeps.
    """
    out: list[Region] = []
    for region in regions:
        if region.source is None:
            out.append(region)
            continue
        tag = tag_for_keyword(region.source)
        value = None if tag is None else ds.get(tag)
        items = value.value if value is not None and isinstance(value.value, DicomSequence) else []
        for item in items:
            corners = [
                item.get(k)
                for k in (
                    "RegionLocationMinX0",
                    "RegionLocationMinY0",
                    "RegionLocationMaxX1",
                    "RegionLocationMaxY1",
                )
            ]
            if all(c is not None for c in corners):
                x0, y0, x1, y1 = (int(c) for c in corners)
                out.append(Region(region.keep, (x0, y0, x1 + 1, y1 + 1)))
    return out


def _fold(
    tests: Sequence[Callable[[_Facts], bool]], operators: Sequence[str], facts: _Facts
) -> bool:
    """Left to right, ``((a op b) op c)``, a missing operator being AND; a test whose
    result cannot change the value so far is not run."""
    if not tests:
        return False
    value = tests[0](facts)
    for index, test in enumerate(tests[1:]):
        operator = operators[index] if index < len(operators) else "and"
        value = (value or test(facts)) if operator == "or" else (value and test(facts))
    return value


_NO_META = Dataset()


class _Facts:
    """One data set's attributes as the filters read them, each decoded once per verdict."""

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._meta = getattr(ds, "file_meta", None) or _NO_META
        self._texts: dict[int | None, list[str]] = {}

    def _holder(self, tag: int) -> Dataset:
        """File meta attributes (group 0002, e.g. ImplementationVersionName, which names
        some devices) are read from the file meta."""
        return self._meta if tag >> 16 == 2 else self._ds

    def present(self, tag: int | None) -> bool:
        return tag is not None and tag in self._holder(tag)

    def empty(self, tag: int | None) -> bool:
        return tag is not None and _is_empty(self._holder(tag)[tag].value)

    def texts(self, tag: int | None) -> list[str]:
        try:
            return self._texts[tag]
        except KeyError:
            found: list[str] = []
            if tag is not None and self.present(tag):
                found = _texts(self._holder(tag)[tag].value)
            self._texts[tag] = found
            return found


def _texts(value: Any) -> list[str]:
    """Each value of a (multi-valued) element as text, and for several values also the
    whole, backslash-joined as encoded; sequences and bytes have no text."""
    if isinstance(value, DicomSequence | bytes | bytearray):
        return []
    if isinstance(value, MultiValue | list | tuple):
        parts = [str(v) for v in value]
        return [*parts, "\\".join(parts)] if len(parts) > 1 else parts
    return [] if value is None else [str(value)]


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, DicomSequence | MultiValue | list | tuple | bytes | bytearray):
        return len(value) == 0
    return str(value).strip() == ""
