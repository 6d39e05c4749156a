"""Fixtures of the anonymizer tests: site secrets and the leak corpus (built once)."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from anonymizer import Deidentifier
from anonymizer.part10 import write_part10
from tests.anonymizer.corpus import CHARSETS, Corpus, build, retainable_tags
from tests.factories import to_bytes

SITE_A = bytes(range(32))
SITE_B = bytes(range(100, 132))


def both_paths(deid: Deidentifier, data: bytes) -> dict[str, bytes]:
    """``data`` de-identified on the byte path and on the data-set path, which must agree."""
    outputs = {
        "bytes": deid.deidentify_part10(data).data,
        "dataset": write_part10(deid.deidentify(dcmread(io.BytesIO(data)))),
    }
    assert outputs["bytes"] == outputs["dataset"]
    return outputs


@pytest.fixture(scope="session")
def corpora() -> list[tuple[Corpus, bytes]]:
    """One PHI-laden instance per character set, with its Part 10 bytes."""
    kept = retainable_tags()
    built = [build(cs, kept) for cs in CHARSETS]
    return [(c, to_bytes(c.dataset)) for c in built]
