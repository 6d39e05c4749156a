"""Named profiles and options: recipe files shipped here, selected by name, combined.

Each name maps to a deid recipe file in this directory and to the DCM code that marks it
in ``DeidentificationMethodCodeSequence``. Recipes are applied in a fixed order (profile,
then options in the order of ``OPTIONS``, then the caller's own files), later lines
overriding earlier ones for the same attribute.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from anonymizer._deid import ParsedRecipe, packaged_filters, parse_recipe
from anonymizer.actions import ActionTable, compile_actions
from anonymizer.errors import ProfileNotFound
from anonymizer.screening import FilterItem, PixelScreen

RECIPES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Method:
    """A profile or option: its recipe file and its DCM code (CID 7050)."""

    name: str
    code: str
    meaning: str

    @property
    def recipe(self) -> Path:
        """The recipe file shipped in the package."""
        return RECIPES_DIR / f"deid.{self.name}"


PROFILES: dict[str, Method] = {
    "basic": Method("basic", "113100", "Basic Application Confidentiality Profile"),
}

#: Options in the order their recipes are applied.
OPTIONS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "retain-longitudinal-full-dates",
            "113106",
            "Retain Longitudinal Temporal Information Full Dates Option",
        ),
        Method(
            "retain-longitudinal-modified-dates",
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
        ),
        Method("retain-patient-characteristics", "113108", "Retain Patient Characteristics Option"),
        Method("retain-device-identity", "113109", "Retain Device Identity Option"),
        Method("retain-institution-identity", "113112", "Retain Institution Identity Option"),
        Method("retain-uids", "113110", "Retain UIDs Option"),
        Method("clean-descriptors", "113105", "Clean Descriptors Option"),
        Method("retain-safe-private", "113111", "Retain Safe Private Option"),
        Method("clean-pixel-data", "113101", "Clean Pixel Data Option"),
    )
}

#: The option whose filters are deid's packaged ones (its own recipe file only marks it).
CLEAN_PIXEL_DATA = "clean-pixel-data"
#: The options that act on the header alone (every one but pixel cleaning).
HEADER_OPTIONS: tuple[str, ...] = tuple(name for name in OPTIONS if name != CLEAN_PIXEL_DATA)

_EXCLUSIVE = {"retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"}


@dataclass(frozen=True)
class Profile:
    """A compiled combination of recipes, ready for the engine."""

    names: tuple[str, ...]
    options: tuple[str, ...]
    recipes: tuple[Path, ...]
    table: ActionTable
    methods: tuple[Method, ...]
    #: Filters that screen pixels for burned-in text (``%filter`` of the site's recipes,
    #: then deid's packaged ones with ``clean-pixel-data``); empty: no screening.
    screen: PixelScreen = field(default_factory=lambda: PixelScreen(()))

    @property
    def description(self) -> list[str]:
        """Values of DeidentificationMethod (LO: 64 characters at most, padding included)."""
        values = [m.meaning[:63] for m in self.methods]
        custom = [f"custom recipe {p.name}"[:63] for p in self.recipes[len(self.methods) :]]
        return values + custom

    @property
    def temporal(self) -> str:
        """Value of LongitudinalTemporalInformationModified for this profile."""
        if "retain-longitudinal-modified-dates" in self.options:
            return "MODIFIED"
        if "retain-longitudinal-full-dates" in self.options:
            return "UNMODIFIED"
        return "REMOVED"


def load_profile(
    names: Sequence[str] = ("basic",),
    options: Sequence[str] = (),
    extra_recipes: Sequence[Path] = (),
) -> Profile:
    """Load, validate and compile profiles, options and the caller's own recipe files.

    Parameters
    ----------
    names
        Profile names (``"basic"``).
    options
        Option names such as ``"retain-uids"``; order does not matter.
    extra_recipes
        Paths of the site's own deid recipe files, applied last.

    Raises
    ------
    ProfileNotFound
        An unknown name (the message lists the valid ones) or a missing recipe file.
    RecipeError
        A recipe file is malformed.
    """
    if not names:
        raise ProfileNotFound(f"no profile given; valid profiles: {', '.join(PROFILES)}")
    profiles = [_lookup(PROFILES, n, "profile") for n in dict.fromkeys(names)]
    wanted = {_lookup(OPTIONS, o, "option").name for o in options}
    if wanted >= _EXCLUSIVE:
        raise ProfileNotFound("choose one of the two retain-longitudinal options, not both")
    chosen = [m for m in OPTIONS.values() if m.name in wanted]
    methods = (*profiles, *chosen)
    recipes = (*(m.recipe for m in methods), *(Path(p) for p in extra_recipes))
    parsed = [_parsed(recipe) for recipe in recipes]
    lines = [line for recipe in parsed for line in recipe.header]
    # The site's own filters first: the first group that matches decides.
    filters: list[FilterItem] = [item for recipe in parsed for item in recipe.filters]
    if CLEAN_PIXEL_DATA in wanted:
        filters += _packaged()
    return Profile(
        names=tuple(m.name for m in profiles),
        options=tuple(m.name for m in chosen),
        recipes=recipes,
        table=compile_actions(lines),
        methods=methods,
        screen=PixelScreen(tuple(filters)),
    )


_CACHE: dict[tuple[str, int, int], ParsedRecipe] = {}
_CACHE_LOCK = threading.Lock()
_PACKAGED: list[FilterItem] = []


def _packaged() -> list[FilterItem]:
    with _CACHE_LOCK:
        if not _PACKAGED:
            _PACKAGED.extend(packaged_filters())
        return list(_PACKAGED)


def _parsed(path: Path) -> ParsedRecipe:
    """Parse a recipe once per version of the file (deid's parser is slow)."""
    try:
        stat = path.stat()
    except OSError:
        return parse_recipe(path)  # reports the missing file
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is None:
        cached = parse_recipe(path)
        with _CACHE_LOCK:
            _CACHE[key] = cached
    return cached


def _lookup(catalogue: dict[str, Method], name: str, kind: str) -> Method:
    method = catalogue.get(name.strip().lower())
    if method is None:
        valid = ", ".join(catalogue)
        raise ProfileNotFound(f"unknown {kind} {name!r}; valid {kind}s: {valid}")
    return method
