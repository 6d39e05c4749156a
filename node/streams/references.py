"""Study references: how a job names a study whose UID may not leave the site.

DICOM PS3.15 counts UIDs as identifiers. A study in a collection the node does not publish
(the identified default collection without ``publish_identified``) must not be named to
the catalog by its StudyInstanceUID, yet the scheduler still needs a job per study. The
trigger therefore submits ``ref:`` + HMAC-SHA-256 of the UID under a secret of this node
(the first 48 hex digits: 192 bits, and at most 64 characters like a UID), after keeping
reference -> UID in the node index. Only this node can map it back; the catalog places
such a job only on its origin node anyway.

The secret is this node's own (``<data_dir>/secrets/stream-ref.secret``, generated at
first start, mode 0600), not the anonymizer's pseudonym secret: with that one a job's
reference could be matched against the pseudonymous UIDs of the research collections.
Losing it only changes the references of later jobs; earlier ones still resolve from the
index.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Protocol

from anonymizer import AnonymizationError, generate_secret, load_secret
from catalog.jobs.records import STUDY_REFERENCE_PREFIX, is_study_reference
from node.errors import ConfigError
from node.structlog import log_event

LOG = logging.getLogger("gridpacs.node.streams.references")

REFERENCE_HEX_DIGITS = 48
_DOMAIN = b"gridpacs-stream-study-reference\x00"


class ReferenceIndex(Protocol):
    def remember_study_reference(
        self, reference: str, study_instance_uid: str, collection: str
    ) -> None: ...

    def study_of_reference(self, reference: str) -> str | None: ...


def load_or_create_secret(path: Path) -> bytes:
    """The node's reference secret, created (0600, in a 0700 folder) when missing."""
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            generate_secret(path)
            log_event(LOG, "secret_generated", what="stream_reference", path=str(path))
        return load_secret(path)
    except (AnonymizationError, OSError) as exc:
        raise ConfigError(f"stream reference secret: {exc}") from exc


class StudyReferences:
    """Makes references (remembered before they are handed out) and resolves them."""

    def __init__(self, secret: bytes, index: ReferenceIndex) -> None:
        self._secret = secret
        self._index = index

    def reference(self, study_instance_uid: str) -> str:
        """The reference of a study (the same study always gets the same one)."""
        digest = hmac.new(
            self._secret, _DOMAIN + study_instance_uid.encode("utf-8"), "sha256"
        ).hexdigest()
        return STUDY_REFERENCE_PREFIX + digest[:REFERENCE_HEX_DIGITS]

    def refer(self, study_instance_uid: str, collection: str) -> str:
        """The reference to submit instead of the UID, durably mapped back first.

        A value that already is a reference is returned as it is. Raises the index's
        errors (:class:`node.index.IndexUnavailable`): the caller retries later.
        """
        if is_study_reference(study_instance_uid):
            return study_instance_uid
        ref = self.reference(study_instance_uid)
        self._index.remember_study_reference(ref, study_instance_uid, collection)
        return ref

    def resolve(self, reference: str) -> str | None:
        """The StudyInstanceUID, or None when this node did not make ``reference``."""
        return self._index.study_of_reference(reference)
