"""The re-identification map: pseudonym -> original value, encrypted, kept at the site.

A SQLite file whose rows hold the pseudonym in clear (it is public anyway) and the
original value sealed with AES-256-GCM; the row's kind and pseudonym are the associated
data, so a ciphertext moved to another row does not decrypt. Each new mapping is written
in its own short transaction, so several ingest threads can share one map.

Every lookup is recorded in the same file before anything is decrypted — who, when, why
(sealed like the originals: staff may name the patient in it), which pseudonym, how many
values — and a lookup whose record cannot be written returns
nothing. The records form a chain: each holds an HMAC, under a key derived from the map's
key, of the one before it and its own fields, so a record edited or deleted by someone
without the key breaks the chain (:meth:`ReidentificationMap.verify_lookups`). Removing the
newest records is not detectable this way; the site's own log collection is for that.
"""

from __future__ import annotations

import hmac
import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anonymizer.errors import AnonymizationError

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS mapping (
    kind TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (kind, pseudonym)
)
""",
    """
CREATE TABLE IF NOT EXISTS lookup_log (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    reason BLOB NOT NULL,
    pseudonym TEXT NOT NULL,
    found INTEGER NOT NULL,
    chain BLOB NOT NULL
)
""",
)
#: What the lookup records' HMAC key is derived from the map's key with.
_LOG_KEY_LABEL = b"gridpacs re-identification lookup log"


@dataclass(frozen=True)
class Mapping:
    """One re-identified value."""

    kind: str
    pseudonym: str
    original: str


@dataclass(frozen=True)
class Lookup:
    """The record of one lookup: who asked, when (UTC, ISO 8601), why, for what, and how
    many values were found (never the values)."""

    seq: int
    at: str
    actor: str
    reason: str
    pseudonym: str
    found: int


class ReidentificationMap:
    """Encrypted pseudonym -> original store (never published).

    Parameters
    ----------
    path
        SQLite file, created if missing.
    key
        AES key (16, 24 or 32 bytes; :func:`anonymizer.load_secret` reads a key file).
    """

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise AnonymizationError("the re-identification key must be 16, 24 or 32 bytes")
        self._path = Path(path)
        self._aead = AESGCM(key)
        self._log_key = hmac.digest(key, _LOG_KEY_LABEL, "sha256")
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            for statement in _SCHEMA:
                conn.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        # A connection per call: cheap for SQLite, and safe from any thread.
        conn = sqlite3.connect(self._path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def record(self, kind: str, pseudonym: str, original: str) -> None:
        """Store one mapping (idempotent) in its own short transaction."""
        key = (kind, pseudonym)
        with self._lock:
            if key in self._known:
                return
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, original.encode("utf-8"), _aad(kind, pseudonym))
        conn = self._connect()
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT OR IGNORE INTO mapping (kind, pseudonym, nonce, sealed) "
                    "VALUES (?, ?, ?, ?)",
                    (kind, pseudonym, nonce, sealed),
                )
        except sqlite3.Error as exc:
            raise AnonymizationError(f"cannot write re-identification map: {exc}") from exc
        finally:
            conn.close()
        with self._lock:
            self._known.add(key)

    def lookup(self, pseudonym: str, *, actor: str, reason: str) -> list[Mapping]:
        """Every original value recorded for ``pseudonym`` (usually one), once the lookup
        is recorded: ``actor`` asked, for ``reason`` (both required). Nothing is returned
        when the record cannot be written, when the key does not decrypt the map, or when
        the newest record does not verify with it (a wrong key, or an edited record)."""
        pseudonym, actor, reason = pseudonym.strip(), actor.strip(), reason.strip()
        if not actor or not reason:
            raise AnonymizationError("a lookup needs who asks and why (actor and reason)")
        conn = self._connect()
        try:
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                rows = conn.execute(
                    "SELECT kind, nonce, sealed FROM mapping WHERE pseudonym = ? ORDER BY kind",
                    (pseudonym,),
                ).fetchall()
                found = [self._open(kind, pseudonym, nonce, sealed) for kind, nonce, sealed in rows]
                if not found:  # the key is checked on any mapping before a record is chained
                    for kind, other, nonce, sealed in conn.execute(
                        "SELECT kind, pseudonym, nonce, sealed FROM mapping LIMIT 1"
                    ):
                        self._open(kind, other, nonce, sealed)
                newest = conn.execute(
                    "SELECT seq, at, actor, reason, pseudonym, found, chain FROM lookup_log "
                    "ORDER BY seq DESC LIMIT 2"
                ).fetchall()
                previous = b""
                if newest:
                    before = newest[1][6] if len(newest) > 1 else b""
                    if self._chain(before, newest[0][:6]) != newest[0][6]:
                        raise AnonymizationError(
                            "the newest lookup record does not verify with this key "
                            "(a wrong key, or the record was changed)"
                        )
                    previous = newest[0][6]
                seq = newest[0][0] + 1 if newest else 1
                at = datetime.now(UTC).isoformat(timespec="seconds")
                fields = (seq, at, actor, self._seal_reason(seq, reason), pseudonym, len(found))
                conn.execute(
                    "INSERT INTO lookup_log (seq, at, actor, reason, pseudonym, found, chain) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*fields, self._chain(previous, fields)),
                )
        except sqlite3.Error as exc:
            raise AnonymizationError(f"cannot record the lookup, nothing returned: {exc}") from exc
        finally:
            conn.close()
        return found

    def lookups(self) -> list[Lookup]:
        """Every lookup recorded, oldest first."""
        return [
            Lookup(seq, at, actor, self._open_reason(seq, reason), pseudonym, found)
            for seq, at, actor, reason, pseudonym, found, _ in self._log_rows()
        ]

    def verify_lookups(self) -> int | None:
        """The sequence number of the first lookup record that does not verify with this
        map's key (edited, or one before it deleted), or None when the chain is intact."""
        rows = self._log_rows()
        previous = b""
        for expected_seq, row in enumerate(rows, start=1):
            if row[0] != expected_seq or self._chain(previous, row[:6]) != row[6]:
                return int(row[0])
            previous = row[6]
        return None

    def _log_rows(self) -> list[tuple[Any, ...]]:
        """Every lookup record, its chain value last, oldest first."""
        conn = self._connect()
        try:
            return conn.execute(
                "SELECT seq, at, actor, reason, pseudonym, found, chain FROM lookup_log "
                "ORDER BY seq"
            ).fetchall()
        except sqlite3.Error as exc:
            raise AnonymizationError(f"cannot read the lookup records: {exc}") from exc
        finally:
            conn.close()

    def _open(self, kind: str, pseudonym: str, nonce: bytes, sealed: bytes) -> Mapping:
        try:
            plain = self._aead.decrypt(nonce, sealed, _aad(kind, pseudonym))
        except InvalidTag:
            raise AnonymizationError(
                "re-identification map does not decrypt with this key"
            ) from None
        return Mapping(kind, pseudonym, plain.decode("utf-8"))

    def _seal_reason(self, seq: int, reason: str) -> bytes:
        """The reason as stored: sealed like the originals (staff may name the patient in
        it), bound to its record's number."""
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, reason.encode("utf-8"), _reason_aad(seq))

    def _open_reason(self, seq: int, stored: object) -> str:
        """The reason of record ``seq``, or a note saying it does not decrypt (an edited
        record: :meth:`verify_lookups` reports it)."""
        try:
            if not isinstance(stored, bytes) or len(stored) < 12 + 16:  # nonce, tag
                raise InvalidTag
            plain = self._aead.decrypt(stored[:12], stored[12:], _reason_aad(seq))
        except InvalidTag:
            return "(does not decrypt: a wrong key, or changed or moved from another record)"
        return plain.decode("utf-8")

    def _chain(self, previous: bytes, fields: tuple[object, ...]) -> bytes:
        """The HMAC of a record: the one before it, then its stored fields."""
        shown = [f.hex() if isinstance(f, bytes) else f for f in fields]
        message = previous + json.dumps(shown, ensure_ascii=False).encode("utf-8")
        return hmac.digest(self._log_key, message, "sha256")


def _aad(kind: str, pseudonym: str) -> bytes:
    return f"{kind}\x00{pseudonym}".encode()


def _reason_aad(seq: int) -> bytes:
    return f"lookup-reason\x00{seq}".encode()
