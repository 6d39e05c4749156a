"""Fixtures of the anonymizer tests: site secrets and the leak corpus (built once)."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread

from anonymizer import Deidentifier
from anonymizer.engine import DeidentifiedInstance
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


def written_from_head(result: DeidentifiedInstance, data: bytes) -> bytes:
    """The file a writer makes of ``result`` (from a head of ``data``): its parts, then its
    source tail, zero runs zeroed, as :func:`anonymizer.files.copy_tail` writes it."""
    written = bytearray(b"".join(result.parts))
    tail = result.source_tail
    if tail is not None:
        assert tail.offset + tail.length == len(data)  # the pixels run to the end
        first = len(written)
        written += data[tail.offset :]
        for start, length in tail.zeros:
            written[first + start : first + start + length] = bytes(length)
    return bytes(written)


@pytest.fixture(scope="session")
def corpora() -> list[tuple[Corpus, bytes]]:
    """One PHI-laden instance per character set, with its Part 10 bytes."""
    kept = retainable_tags()
    built = [build(cs, kept) for cs in CHARSETS]
    return [(c, to_bytes(c.dataset)) for c in built]
