"""The only module that imports deid: parses recipe files and runs deid's own pipeline.

deid is used for what it is good at, reading and validating its recipe format
(``FORMAT dicom``, ``%header``, ``REPLACE/REMOVE/BLANK/KEEP/ADD/JITTER``, and ``%filter``
groups of labelled criteria with pixel rectangles, turned here into
:mod:`anonymizer.screening`'s objects), and for the filters it ships (CTP's known devices,
:func:`packaged_filters`). Two of its habits are fenced off here: it calls ``sys.exit``
on a bad recipe, and it silently falls back to its default recipe when a file is not found.
Both become our own errors (``RecipeError``, ``ProfileNotFound``), so a broken recipe is
reported, never replaced.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anonymizer.errors import ProfileNotFound, RecipeError
from anonymizer.screening import CRITERIA, VALUED, Clause, Condition, FilterItem, Region

#: Header actions our engine can apply (deid's header LABEL is not).
SUPPORTED_ACTIONS = ("ADD", "BLANK", "JITTER", "KEEP", "REPLACE", "REMOVE")
_REGION_WORDS = ("ctpkeepcoordinates", "ctpcoordinates", "keepcoordinates", "coordinates")
_SECTION = re.compile(r"^%\s*(\w+)")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class RecipeLine:
    """One header action of a recipe, as deid parsed it."""

    action: str
    field: str
    value: str | None
    source: str


@dataclass(frozen=True)
class ParsedRecipe:
    """A recipe file's header actions and filter items, in file order."""

    header: list[RecipeLine]
    filters: list[FilterItem]


def parse_recipe(path: Path) -> ParsedRecipe:
    """Parse and validate one deid recipe file into its header actions and filters.

    Raises
    ------
    ProfileNotFound
        ``path`` does not exist (deid would have used its default recipe).
    RecipeError
        The file is not a valid recipe, or uses a feature our engine does not apply.
    """
    if not path.is_file():
        raise ProfileNotFound(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe: {exc}") from exc
    expected, labels = _precheck(path, text)
    config = _load_with_deid(path)
    header = list(config.get("header", []))
    if len(header) != expected:
        # deid skips lines it does not understand with a warning: we refuse instead.
        raise RecipeError(
            f"{path}: deid kept {len(header)} of {expected} header actions; "
            "a line was not understood"
        )
    lines = [
        RecipeLine(
            action=str(item["action"]).upper(),
            field=str(item["field"]),
            value=_clean_value(item.get("value")),
            source=str(path),
        )
        for item in header
    ]
    return ParsedRecipe(lines, _filter_items(path, config.get("filter") or {}, labels))


def packaged_filters() -> list[FilterItem]:
    """The filters deid ships in its default recipe (``deid.dicom``): CTP's and Stanford's
    knowledge of where devices burn text in, read from the installed package (its header
    actions are deid's own defaults and are not taken)."""
    from deid.config.utils import get_deid

    with _captured_deid_output():
        found = get_deid("dicom", exit_on_fail=False, quiet=True)
    if not found:
        raise RecipeError("deid's packaged recipe deid.dicom is not installed")
    path = Path(str(found))
    text = path.read_text(encoding="utf-8")
    header_at = re.search(r"^%header", text, re.MULTILINE)
    filters_only = text[: header_at.start()] if header_at else text
    _, labels = _precheck(path, filters_only)
    config = _load_with_deid(path)
    return _filter_items(path, config.get("filter") or {}, labels, name="deid.dicom (deid)")


def _filter_items(
    path: Path, groups: Mapping[str, Any], labels: int, name: str | None = None
) -> list[FilterItem]:
    """deid's parsed ``%filter`` groups as :class:`FilterItem` objects, checked."""
    recipe = name or path.name
    items: list[FilterItem] = []
    for group, members in groups.items():
        for member in members:
            label = re.sub(r"(?i)^\s*label\s*", "", str(member.get("name", ""))).split("#")[0]
            clauses = tuple(_clause(path, entry) for entry in member.get("filters", []))
            regions = tuple(_region(path, label, c) for c in member.get("coordinates", []))
            items.append(FilterItem(str(group), label.strip(), clauses, regions, recipe))
    if len(items) != labels:
        raise RecipeError(
            f"{path}: deid kept {len(items)} of {labels} filter items; a line was not understood"
        )
    return items


def _clause(path: Path, entry: Mapping[str, Any]) -> Clause:
    """One criteria line. deid lists the values of the valued criteria apart from the
    criteria; they are given back in order (deid itself pairs them by position)."""
    actions = [str(a).lower() for a in entry.get("action", [])]
    fields = [str(f) for f in entry.get("field", [])]
    values = [str(v) for v in entry.get("value", [])]
    conditions = []
    for action, name in zip(actions, fields, strict=True):
        value = values.pop(0) if action in VALUED and values else None
        if action not in CRITERIA or (action in VALUED and value is None):
            raise RecipeError(f"{path}: filter '{action} {name}' is incomplete")
        conditions.append(Condition(action, name, value))
    return Clause(
        tuple(conditions), tuple(str(o) for o in entry.get("InnerOperators", [])),
        entry.get("operator"),
    )  # fmt: skip


def _region(path: Path, label: str, coordinate: Sequence[Any]) -> Region:
    keep, raw = bool(coordinate[0]), str(coordinate[1]).strip()
    if raw.lower() == "all":
        return Region(keep)
    if raw.startswith("from:"):
        return Region(keep, source=raw[len("from:") :].strip())
    try:
        x0, y0, x1, y1 = (int(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise RecipeError(
            f"{path}: {label!r}: coordinates {raw!r} are not x0,y0,x1,y1, 'all' or from:Field"
        ) from None
    if min(x0, y0, x1, y1) < 0:
        raise RecipeError(f"{path}: {label!r}: negative coordinates {raw!r}")
    return Region(keep, (x0, y0, x1, y1))


def _clean_value(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _precheck(path: Path, text: str) -> tuple[int, int]:
    """Reject what deid would skip or exit on; return the numbers of header actions and of
    filter items (``LABEL`` lines of ``%filter`` sections)."""
    seen_format = False
    section: str | None = None
    actions = labels = 0
    labelled = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        if line.upper().startswith("FORMAT"):
            if line.split(None, 1)[-1].strip().lower() != "dicom":
                raise RecipeError(f"{where}: only 'FORMAT dicom' is supported")
            seen_format = True
        elif not seen_format:
            raise RecipeError(f"{where}: a recipe starts with 'FORMAT dicom'")
        elif match := _SECTION.match(line):
            section = match.group(1).lower()
            if section not in ("header", "filter"):
                raise RecipeError(
                    f"{where}: section %{section} is not supported (only %header, %filter)"
                )
            if section == "filter" and len(line.split()) != 2:
                raise RecipeError(f"{where}: a filter section is named: '%filter graylist'")
            labelled = False
        elif section == "filter":
            labelled = _check_filter_line(where, line, labelled)
            labels += line.split()[0].upper() == "LABEL"
        else:
            _check_action(where, line, section)
            actions += 1
    if not seen_format:
        raise RecipeError(f"{path}: empty recipe (no 'FORMAT dicom')")
    return actions, labels


def _check_filter_line(where: str, line: str, labelled: bool) -> bool:
    """A ``LABEL``, a criteria line (``contains Modality US``, ``+ equals Rows 600``,
    ``|| missing ImageType``) or a rectangle line; deid warns and drops anything else.
    Returns whether a LABEL has been seen in the section."""
    words = line.split()
    if words[0].upper() == "LABEL":
        return True
    if not labelled:
        raise RecipeError(f"{where}: a filter line before the first LABEL")
    if words[0].lower() in _REGION_WORDS:
        if len(words) < 2:
            raise RecipeError(f"{where}: {words[0]} needs x0,y0,x1,y1, 'all' or from:Field")
        return True
    if words[0] in ("+", "||"):
        words = words[1:]
    elif words[0].startswith(("+", "||")):
        words[0] = words[0].lstrip("+|")
    if not words or words[0].lower() not in CRITERIA:
        raise RecipeError(f"{where}: not a filter criterion: {line!r}")
    valued = words[0].lower() in VALUED
    if len(words) < (3 if valued else 2):
        wanted = "a field and a value" if valued else "a field"
        raise RecipeError(f"{where}: {words[0]} needs {wanted}")
    return True


def _check_action(where: str, line: str, section: str | None) -> None:
    parts = line.split()
    word = parts[0].upper()
    if word not in SUPPORTED_ACTIONS:
        raise RecipeError(f"{where}: not a recognised action: {line!r}")
    if section != "header":
        raise RecipeError(f"{where}: action outside a %header section")
    if len(parts) < 2:
        raise RecipeError(f"{where}: {word} needs a field")
    if word in ("ADD", "REPLACE", "JITTER") and len(parts) < 3:
        raise RecipeError(f"{where}: {word} needs a value")


@contextmanager
def _captured_deid_output() -> Iterator[io.StringIO]:
    """Collect what deid prints while it runs, to quote it in our error."""
    from deid.logger import bot

    buffer = io.StringIO()
    with _LOCK:
        saved = (bot.errorStream, bot.outputStream)
        bot.errorStream = bot.outputStream = buffer
        try:
            yield buffer
        finally:
            bot.errorStream, bot.outputStream = saved


def _load_with_deid(path: Path) -> Mapping[str, Any]:
    from deid.config.utils import load_deid

    with _captured_deid_output() as output:
        try:
            config = load_deid(str(path))
        except SystemExit as exc:
            message = " ".join(output.getvalue().split()) or f"exit status {exc.code}"
            raise RecipeError(f"{path}: deid rejected the recipe: {message}") from None
        except Exception as exc:  # deid raises bare errors on some malformed lines
            raise RecipeError(f"{path}: deid could not parse the recipe: {exc}") from exc
    if not isinstance(config, Mapping) or config.get("format") != "dicom":
        raise RecipeError(f"{path}: not a dicom recipe")
    return config


DeidFunction = Callable[..., Any]


def run_reference_pipeline(
    files: Sequence[Path],
    recipes: Sequence[Path],
    functions: Mapping[str, DeidFunction],
    output_folder: Path,
) -> int:
    """Run deid's own ``replace_identifiers`` on ``files`` (the benchmark's baseline).

    ``functions`` resolves the recipe's ``func:NAME`` values, as deid's ``ids`` lookup.
    Returns the number of files written.
    """
    from deid.config import DeidRecipe
    from deid.dicom import replace_identifiers

    for recipe in recipes:
        parse_recipe(recipe)  # fail loudly instead of deid's silent default
    deid_recipe = DeidRecipe(deid=[str(p) for p in recipes], base=False)
    names = [str(p) for p in files]
    ids = {name: dict(functions) for name in names}
    with _captured_deid_output():
        written = replace_identifiers(
            dicom_files=names,
            deid=deid_recipe,
            ids=ids,
            save=True,
            overwrite=True,
            output_folder=str(output_folder),
            remove_private=True,
        )
    return len(written)


class ReferenceCleaner:
    """deid's own pixel cleaner (``DicomCleaner``: detect with its default recipe's filters,
    blank, save), one file at a time: the benchmark's baseline for pixel cleaning."""

    def __init__(self, output_folder: Path) -> None:
        from deid.dicom.pixels import DicomCleaner

        with _captured_deid_output():
            self._cleaner = DicomCleaner(output_folder=str(output_folder), deid="dicom")
        self._output = output_folder

    def clean(self, source: Path) -> Path | None:
        """The cleaned file deid wrote, or None when deid flagged nothing to clean."""
        with _captured_deid_output():
            found = self._cleaner.detect(str(source))
            if not found.get("flagged"):
                return None
            self._cleaner.clean()
            return Path(self._cleaner.save_dicom(output_folder=str(self._output)))
