"""Per-SOP-Instance-UID transaction locks on PostgreSQL, so a rejection and a C-STORE of
the same instance cannot both win.

Why: a C-STORE checks the ``rejections`` table, then inserts the instance; a rejection
records itself, then removes what is held. Under READ COMMITTED each can miss the other's
uncommitted work, and the instance ends up stored although rejected. Both now take a
transaction-scoped advisory lock on the UID first (stores shared, rejections exclusive),
so one waits for the other's commit and then sees it. On SQLite the database's single
writer already orders them; nothing is taken there.

Keys are the first 8 bytes of the UID's SHA-256 as a signed 64-bit integer: two UIDs that
collide only wait for each other needlessly. A rejection locks its UIDs in ascending key
order, before any row lock, so two rejections cannot deadlock on them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .prepared import Runner

_MANY = {
    "exclusive": sa.text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) k"),
    "shared": sa.text(
        "SELECT pg_advisory_xact_lock_shared(k) FROM unnest(CAST(:keys AS bigint[])) k"
    ),
}


def uid_key(sop_instance_uid: str) -> int:
    """The advisory lock key of a SOP Instance UID."""
    digest = hashlib.sha256(sop_instance_uid.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_LOCKED_CHECK = sa.text(
    "SELECT pg_advisory_xact_lock_shared(:key); "
    "SELECT reason FROM rejections WHERE sop_instance_uid = :uid"
)
"""Two statements sent as one (psycopg2's simple query protocol): one round trip, and the
check still gets its own snapshot, taken after the lock is granted (READ COMMITTED).
Measured: a separate lock statement cost 230 µs per C-STORE on a 2.2 ms PostgreSQL add."""


def rejection_of_stored(run: Runner, check: sa.ClauseElement, sop_instance_uid: str) -> Any:
    """A store's rejection check: ``check`` (one row with the reason, or none), after a
    shared lock on the UID on PostgreSQL."""
    if run.dialect_name == "postgresql":
        return run.one(_LOCKED_CHECK, {"key": uid_key(sop_instance_uid), "uid": sop_instance_uid})
    return run.one(check, {"uid": sop_instance_uid})


def lock_many(conn: Connection, sop_instance_uids: Sequence[str], *, exclusive: bool) -> None:
    """Lock many UIDs in ascending key order (rejections exclusive, bulk adds shared)."""
    if conn.dialect.name != "postgresql" or not sop_instance_uids:
        return
    keys = sorted({uid_key(uid) for uid in sop_instance_uids})
    conn.execute(_MANY["exclusive" if exclusive else "shared"], {"keys": keys})
