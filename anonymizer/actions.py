"""Compile parsed recipe lines ONCE into an action table keyed by tag.

The engine then looks each element up in a dict instead of re-reading the recipe for
every file, which is where deid's per-file pipeline spends its time.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import tag_for_keyword

from anonymizer._deid import RecipeLine
from anonymizer.errors import RecipeError


class Action(enum.Enum):
    """What happens to one attribute (PS3.15 letter in brackets)."""

    REMOVE = "X"
    BLANK = "Z"
    DUMMY = "D"
    UID = "U"
    PSEUDONYM = "P"
    CLEAN = "C"
    SHIFT_DATE = "S"
    REPLACE = "R"  # a literal value from the recipe
    KEEP = "K"


@dataclass(frozen=True)
class Rule:
    """One compiled action; ``value`` is the literal for REPLACE, days for SHIFT_DATE."""

    action: Action
    value: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Mask:
    """A repeating-group field such as ``(60xx,3000)``: tag & mask == match."""

    mask: int
    match: int
    rule: Rule


PrivateKey = tuple[int, str, int]  # (group, private creator, element byte)


@dataclass
class ActionTable:
    """Everything the engine needs, resolved to tags."""

    exact: dict[int, Rule] = field(default_factory=dict)
    masks: list[Mask] = field(default_factory=list)
    private_default: Rule | None = None
    private: dict[PrivateKey, Rule] = field(default_factory=dict)
    additions: dict[int, Rule] = field(default_factory=dict)

    @property
    def uses_clean(self) -> bool:
        """True when some rule needs the identifying strings of the instance."""
        rules = [*self.exact.values(), *(m.rule for m in self.masks)]
        return any(r.action is Action.CLEAN for r in rules)

    def rule_for(self, tag: int) -> Rule | None:
        """The rule of a public tag (exact first, then repeating-group masks)."""
        rule = self.exact.get(tag)
        if rule is None:
            for mask in self.masks:
                if tag & mask.mask == mask.match:
                    return mask.rule
        return rule


_TAG = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?$")
_MASKED = re.compile(r"^\(\s*([0-9A-Fa-fXx]{4})\s*,\s*([0-9A-Fa-fXx]{4})\s*\)$")
_PRIVATE = re.compile(r'^\(\s*([0-9A-Fa-f]{4})\s*,\s*"([^"]+)"\s*,\s*([0-9A-Fa-f]{2})\s*\)$')
_FUNCS = {
    "func:dummy": Action.DUMMY,
    "func:uid": Action.UID,
    "func:pseudonym": Action.PSEUDONYM,
    "func:clean": Action.CLEAN,
}


def compile_actions(lines: Iterable[RecipeLine]) -> ActionTable:
    """Resolve every line's field to a tag; later lines override earlier ones."""
    table = ActionTable()
    for line in lines:
        rule = _rule(line)
        _place(table, line, rule)
    return table


def _rule(line: RecipeLine) -> Rule:
    where = f"{line.source}: {line.action} {line.field}"
    if line.action == "REMOVE":
        if line.value is not None:
            raise RecipeError(f"{where}: conditional REMOVE is not supported")
        return Rule(Action.REMOVE, source=line.source)
    if line.action == "BLANK":
        return Rule(Action.BLANK, source=line.source)
    if line.action == "KEEP":
        return Rule(Action.KEEP, source=line.source)
    value = line.value or ""
    if line.action == "JITTER":
        if value == "func:date_shift":
            return Rule(Action.SHIFT_DATE, source=line.source)
        try:
            return Rule(Action.SHIFT_DATE, value=str(int(value)), source=line.source)
        except ValueError:
            raise RecipeError(f"{where}: JITTER takes func:date_shift or days") from None
    if value.startswith(("func:", "var:", "deid_func:")):
        action = _FUNCS.get(value)
        if action is None:
            known = ", ".join(sorted(_FUNCS))
            raise RecipeError(f"{where}: unknown value {value!r} (known: {known})")
        return Rule(action, source=line.source)
    return Rule(Action.REPLACE, value=value, source=line.source)


def _place(table: ActionTable, line: RecipeLine, rule: Rule) -> None:
    name = line.field.strip()
    where = f"{line.source}: {line.action} {name}"
    if line.action == "ADD":
        table.additions[_public_tag(name, where)] = rule
        return
    if name.lower() == "private":
        table.private_default = rule
        return
    private = _PRIVATE.match(name)
    if private:
        group = int(private.group(1), 16)
        if group % 2 == 0:
            raise RecipeError(f"{where}: a private creator field needs an odd group")
        key = (group, private.group(2).strip(), int(private.group(3), 16))
        table.private[key] = rule
        return
    masked = _MASKED.match(name)
    if masked and "x" in name.lower():
        digits = masked.group(1) + masked.group(2)
        mask = int("".join("0" if c in "xX" else "F" for c in digits), 16)
        match = int("".join("0" if c in "xX" else c for c in digits), 16)
        table.masks = [m for m in table.masks if (m.mask, m.match) != (mask, match)]
        table.masks.append(Mask(mask, match, rule))
        return
    table.exact[_public_tag(name, where)] = rule


def _public_tag(name: str, where: str) -> int:
    match = _TAG.match(name)
    if match:
        return int(match.group(1) + match.group(2), 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise RecipeError(f"{where}: unknown field (not a DICOM keyword or tag)")
    return tag
