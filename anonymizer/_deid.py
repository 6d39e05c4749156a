"""The only module that imports deid: parses recipe files and runs deid's own pipeline.

deid is used for what it is good at, reading and validating its recipe format
(``FORMAT dicom``, ``%header``, ``REPLACE/REMOVE/BLANK/KEEP/ADD/JITTER``). Two of its
habits are fenced off here: it calls ``sys.exit`` on a bad recipe, and it silently falls
back to its default recipe when a file is not found. Both become our own errors
(``RecipeError``, ``ProfileNotFound``), so a broken recipe is reported, never replaced.
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

#: Header actions our engine can apply (deid's LABEL and filter sections are not).
SUPPORTED_ACTIONS = ("ADD", "BLANK", "JITTER", "KEEP", "REPLACE", "REMOVE")
_SECTION = re.compile(r"^%\s*(\w+)")
_LOCK = threading.Lock()


@dataclass(frozen=True)
class RecipeLine:
    """One header action of a recipe, as deid parsed it."""

    action: str
    field: str
    value: str | None
    source: str


def parse_recipe(path: Path) -> list[RecipeLine]:
    """Parse and validate one deid recipe file into its header actions.

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
    expected = _precheck(path, text)
    config = _load_with_deid(path)
    header = list(config.get("header", []))
    if len(header) != expected:
        # deid skips lines it does not understand with a warning: we refuse instead.
        raise RecipeError(
            f"{path}: deid kept {len(header)} of {expected} header actions; "
            "a line was not understood"
        )
    return [
        RecipeLine(
            action=str(item["action"]).upper(),
            field=str(item["field"]),
            value=_clean_value(item.get("value")),
            source=str(path),
        )
        for item in header
    ]


def _clean_value(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _precheck(path: Path, text: str) -> int:
    """Reject what deid would skip or exit on; return the number of header actions."""
    seen_format = False
    section: str | None = None
    actions = 0
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
            if section != "header":
                raise RecipeError(f"{where}: section %{section} is not supported (only %header)")
        else:
            _check_action(where, line, section)
            actions += 1
    if not seen_format:
        raise RecipeError(f"{path}: empty recipe (no 'FORMAT dicom')")
    return actions


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
