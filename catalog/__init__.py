"""The replicated, federated catalog of gridpacs.

Public API: the plain service (:class:`CatalogService`), the typed client with failover
(:class:`GrpcCatalogClient`, role :class:`CatalogClient`), the server builder
(:func:`build_server`), replication (:class:`Replicator`), configuration, the domain values
of :mod:`catalog.records` and the errors of :mod:`catalog.errors`.
"""

from catalog.client import GrpcCatalogClient
from catalog.config import CatalogConfig, load_config
from catalog.errors import (
    CatalogError,
    CatalogRejected,
    CatalogUnavailable,
    ConfigError,
    InvalidChange,
    InvalidFilter,
    UnknownNode,
)
from catalog.interfaces import CatalogClient
from catalog.records import (
    Change,
    ChangeKind,
    Holder,
    InstanceLocation,
    InstanceMatch,
    InstanceRecord,
    NodeInfo,
    PublishResult,
    QueryFilter,
    SeriesMatch,
    StudyMatch,
    Watermarks,
)
from catalog.replication import Peer, Replicator
from catalog.server.serve import CatalogServer, build_server
from catalog.service import CatalogService

__all__ = [
    "CatalogClient",
    "CatalogConfig",
    "CatalogError",
    "CatalogRejected",
    "CatalogServer",
    "CatalogService",
    "CatalogUnavailable",
    "Change",
    "ChangeKind",
    "ConfigError",
    "GrpcCatalogClient",
    "Holder",
    "InstanceLocation",
    "InstanceMatch",
    "InstanceRecord",
    "InvalidChange",
    "InvalidFilter",
    "NodeInfo",
    "Peer",
    "PublishResult",
    "QueryFilter",
    "Replicator",
    "SeriesMatch",
    "StudyMatch",
    "UnknownNode",
    "Watermarks",
    "build_server",
    "load_config",
]
