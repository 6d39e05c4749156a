"""The re-identification map: pseudonym -> original value, encrypted, kept at the site.

A SQLite file whose rows hold the pseudonym in clear (it is public anyway) and the
original value sealed with AES-256-GCM; the row's kind and pseudonym are the associated
data, so a ciphertext moved to another row does not decrypt. Each new mapping is written
in its own short transaction, so several ingest threads can share one map.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anonymizer.errors import AnonymizationError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mapping (
    kind TEXT NOT NULL,
    pseudonym TEXT NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (kind, pseudonym)
)
"""


@dataclass(frozen=True)
class Mapping:
    """One re-identified value."""

    kind: str
    pseudonym: str
    original: str


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
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

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

    def lookup(self, pseudonym: str) -> list[Mapping]:
        """Every original value recorded for ``pseudonym`` (usually one)."""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT kind, nonce, sealed FROM mapping WHERE pseudonym = ? ORDER BY kind",
                (pseudonym.strip(),),
            ).fetchall()
        except sqlite3.Error as exc:
            raise AnonymizationError(f"cannot read re-identification map: {exc}") from exc
        finally:
            conn.close()
        found = []
        for kind, nonce, sealed in rows:
            try:
                plain = self._aead.decrypt(nonce, sealed, _aad(kind, pseudonym.strip()))
            except InvalidTag:
                raise AnonymizationError(
                    "re-identification map does not decrypt with this key"
                ) from None
            found.append(Mapping(kind, pseudonym.strip(), plain.decode("utf-8")))
        return found


def _aad(kind: str, pseudonym: str) -> bytes:
    return f"{kind}\x00{pseudonym}".encode()
