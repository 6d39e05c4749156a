"""Fixtures of the anonymizer tests: site secrets and the leak corpus (built once)."""

from __future__ import annotations

import pytest

from tests.anonymizer.corpus import CHARSETS, Corpus, build, retainable_tags
from tests.factories import to_bytes

SITE_A = bytes(range(32))
SITE_B = bytes(range(100, 132))


@pytest.fixture(scope="session")
def corpora() -> list[tuple[Corpus, bytes]]:
    """One PHI-laden instance per character set, with its Part 10 bytes."""
    kept = retainable_tags()
    built = [build(cs, kept) for cs in CHARSETS]
    return [(c, to_bytes(c.dataset)) for c in built]
