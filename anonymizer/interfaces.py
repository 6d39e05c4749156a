"""The narrow roles the anonymizer depends on or offers."""

from __future__ import annotations

from typing import Protocol

from pydicom.dataset import Dataset


class PseudonymStore(Protocol):
    """Where new pseudonym -> original mappings go (``ReidentificationMap`` is one)."""

    def record(self, kind: str, pseudonym: str, original: str) -> None:
        """Remember one mapping; must be idempotent and safe from several threads."""


class DatasetDeidentifier(Protocol):
    """What the node's routing needs from a de-identifier."""

    def deidentify(self, ds: Dataset) -> Dataset:
        """Return a de-identified copy."""

    def deidentify_bytes(self, data: bytes) -> bytes:
        """Part 10 in, Part 10 out."""
