"""Where each packed record lives: sealed packs in a SQLite table, the rest in memory.

Why: a dict entry per packed blob (~150 bytes) made the node's memory grow with every small
instance stored (~150 MB per million). Sealed packs never change, so their records are
merged, once each and in pack order, into ``<packs>/locations.sqlite``; only the records of
the packs still being appended to (the open pack and at most a spare: a few thousand) stay
in memory. Memory no longer grows with the count; a lookup that misses memory costs one
indexed SQLite read.

The table is derived data. The packs (and their sidecars) stay the truth: a pack is merged
together with its ``merged`` row in one transaction, and a pack with a sidecar but no such
row (a crash between the two, or a store written before this table existed) is merged at
the next open. So the table is written without ``fsync`` (WAL, ``synchronous=NORMAL``): a
power loss can cost its last merges, which the next open redoes, never its consistency.

Last one wins, as in the packs: packs are merged in id order, and a digest's entry in
memory (a newer record, or a tombstone from an unsealed pack) shadows the table.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Protocol

KIND_BLOB = 1
KIND_TOMBSTONE = 2
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS loc (digest BLOB PRIMARY KEY, pack INTEGER NOT NULL,"
    " offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS suspect (digest BLOB PRIMARY KEY, pack INTEGER NOT NULL,"
    " offset INTEGER NOT NULL, length INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS merged (pack INTEGER PRIMARY KEY)",
)


class PackRecord(Protocol):
    """What a merge needs of a record (``storage.packs.Record``)."""

    @property
    def kind(self) -> int: ...

    @property
    def ok(self) -> bool: ...

    @property
    def digest(self) -> bytes: ...

    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...


def packed(pack: int, offset: int, length: int) -> int:
    """A location as one int (pack, offset of the header, payload length)."""
    return pack << 64 | offset << 32 | length


def unpacked(value: int) -> tuple[int, int, int]:
    return value >> 64, value >> 32 & 0xFFFFFFFF, value & 0xFFFFFFFF


def _open_read_only(db_path: str) -> sqlite3.Connection | None:
    """The table as another process sees it, or None when it cannot be read (none yet, a
    writer mid-creation): then every pack is read into memory, as before the table."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        db.execute("SELECT 1 FROM merged LIMIT 1")
        db.execute("SELECT 1 FROM suspect LIMIT 1")
    except sqlite3.Error:
        db.close()
        return None
    return db


def _tombstone(pack: int) -> int:
    return -(pack + 1)


class Locations:
    """digest → location of its intact record, and the suspects (torn or rotted records).

    Thread-safe: every method takes the object's lock (SQLite calls included).
    """

    def __init__(self, db_path: str, *, writable: bool) -> None:
        self._lock = threading.Lock()
        self._recent: dict[bytes, int] = {}
        """Records of unsealed (or not yet merged) packs; a negative value: a tombstone."""
        self._suspects: dict[bytes, int] = {}
        self._db: sqlite3.Connection | None = None
        if writable:
            self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
        else:
            self._db = _open_read_only(db_path)
        if self._db is not None:
            self._suspects = {
                digest: packed(pack, offset, length)
                for digest, pack, offset, length in self._db.execute("SELECT * FROM suspect")
            }

    # -- lookups --------------------------------------------------------------------

    def get(self, digest: bytes) -> int | None:
        """The location of *digest*'s intact record, or None."""
        with self._lock:
            return self._get(digest)

    def _get(self, digest: bytes) -> int | None:
        value = self._recent.get(digest)
        if value is not None:
            return value if value >= 0 else None
        if self._db is None:
            return None
        row = self._db.execute(
            "SELECT pack, offset, length FROM loc WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None else packed(*row)

    def suspect(self, digest: bytes) -> int | None:
        with self._lock:
            return self._suspects.get(digest)

    def digests(self) -> list[bytes]:
        """Every digest held, suspects included (scrub must see them)."""
        with self._lock:
            found = {d for d, v in self._recent.items() if v >= 0}
            shadowed = {d for d, v in self._recent.items() if v < 0}
            if self._db is not None:
                found.update(
                    d for (d,) in self._db.execute("SELECT digest FROM loc") if d not in shadowed
                )
            return [*found, *(d for d in self._suspects if d not in found)]

    def merged_packs(self) -> set[int]:
        with self._lock:
            if self._db is None:
                return set()
            return {pack for (pack,) in self._db.execute("SELECT pack FROM merged")}

    def in_memory(self) -> int:
        """Entries held in memory (bounded by the unsealed packs' records)."""
        with self._lock:
            return len(self._recent)

    # -- changes --------------------------------------------------------------------

    def put(self, digest: bytes, value: int) -> None:
        """A new intact record (in an unsealed pack)."""
        with self._lock:
            self._recent[digest] = value
            self._suspects.pop(digest, None)

    def remove(self, digest: bytes, pack: int) -> None:
        """A tombstone written to *pack* (unsealed)."""
        with self._lock:
            self._recent[digest] = _tombstone(pack)
            self._suspects.pop(digest, None)

    def apply(self, pack: int, records: Iterable[PackRecord]) -> None:
        """Records of an unmerged pack, in offset order (packs in id order), into memory."""
        with self._lock:
            for record in records:
                digest = record.digest
                if record.kind == KIND_TOMBSTONE:
                    self._recent[digest] = _tombstone(pack)
                elif record.ok:
                    self._recent[digest] = packed(pack, record.offset, record.length)
                elif self._get(digest) is None:
                    self._suspects[digest] = packed(pack, record.offset, record.length)
                    continue
                self._suspects.pop(digest, None)

    def merge(self, pack: int, records: Sequence[PackRecord]) -> None:
        """Move a sealed pack's records (offset order) into the table, then out of memory.

        Packs must be merged in id order (the caller's duty): later records win.
        """
        with self._lock:
            db = self._db
            if db is None:
                raise RuntimeError("pack locations opened read-only")
            db.execute("BEGIN IMMEDIATE")
            try:
                for record in records:
                    key = record.digest
                    if record.kind == KIND_TOMBSTONE:
                        db.execute("DELETE FROM loc WHERE digest = ?", (key,))
                        db.execute("DELETE FROM suspect WHERE digest = ?", (key,))
                        self._suspects.pop(key, None)
                    elif record.ok:
                        db.execute(
                            "INSERT OR REPLACE INTO loc VALUES (?, ?, ?, ?)",
                            (key, pack, record.offset, record.length),
                        )
                        db.execute("DELETE FROM suspect WHERE digest = ?", (key,))
                        self._suspects.pop(key, None)
                    elif not db.execute("SELECT 1 FROM loc WHERE digest = ?", (key,)).fetchone():
                        db.execute(
                            "INSERT OR REPLACE INTO suspect VALUES (?, ?, ?, ?)",
                            (key, pack, record.offset, record.length),
                        )
                        self._suspects[key] = packed(pack, record.offset, record.length)
                db.execute("INSERT OR IGNORE INTO merged VALUES (?)", (pack,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            # what memory held for this pack is in the table now (newer packs' entries stay)
            tomb = _tombstone(pack)
            for digest in [
                d for d, v in self._recent.items() if v == tomb or (v >= 0 and v >> 64 == pack)
            ]:
                del self._recent[digest]

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
