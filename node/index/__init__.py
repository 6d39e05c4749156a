"""The node-local index: what this node stores, queryable by DICOM matching rules.

``SqlIndex`` (SQLite or PostgreSQL by URL) indexes received instances, answers
C-FIND queries by streaming, lists the instances a C-MOVE/C-GET must send, and keeps an
outbox of changes for the catalog publisher.
"""

from .errors import IndexFailure, IndexUnavailable, InvalidQuery, QueryRejected, RecordConflict
from .migrate import current_revision, head_revision, upgrade
from .records import (
    LEVEL_KEYS,
    UNIQUE_KEY,
    AddOutcome,
    Change,
    ChangeKind,
    IndexQuery,
    InstanceRecord,
    Level,
    Model,
    StoredInstance,
)
from .repository import SqlIndex, open_index

__all__ = [
    "LEVEL_KEYS",
    "UNIQUE_KEY",
    "AddOutcome",
    "Change",
    "ChangeKind",
    "IndexFailure",
    "IndexQuery",
    "IndexUnavailable",
    "InstanceRecord",
    "InvalidQuery",
    "Level",
    "Model",
    "QueryRejected",
    "RecordConflict",
    "SqlIndex",
    "StoredInstance",
    "current_revision",
    "head_revision",
    "open_index",
    "upgrade",
]
