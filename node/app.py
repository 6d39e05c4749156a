"""Composition root: builds every part of a node from its configuration and wires them.

Nothing else in the node constructs collaborators; tests and the CLI build a
:class:`NodeApp` and call :meth:`start` / :meth:`stop`.
"""

from __future__ import annotations

import logging

from node.config import NodeConfig
from node.dicom.handlers import Gateway
from node.dicom.server import DicomServer, configure_pynetdicom
from node.index import SqlIndex, open_index
from node.research_routes import build_research_routes
from node.routing import Route, Router
from node.services.ingest import IngestService
from node.services.query import QueryService
from node.services.retrieve import RetrieveService
from node.structlog import log_event
from storage import BlobStore, Quarantine, open_store

LOG = logging.getLogger("gridpacs.node")


def build_routes(config: NodeConfig) -> list[Route]:
    """Every AE title the node answers to and what it does with what arrives there."""
    archive = Route(ae_title=config.dicom.ae_title, collection=config.default_collection)
    return [archive, *build_research_routes(config)]


class NodeApp:
    """One running node: index, blob store, quarantine, DICOM gateway."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: BlobStore = open_store(config.blob_dir, config.storage.encryption_key_file)
        self.quarantine = Quarantine(config.quarantine_dir)
        self.index: SqlIndex = open_index(config.index_url)
        self.router = Router(build_routes(config))
        self.ingest = IngestService(
            self.store,
            self.index,
            self.quarantine,
            max_instance_bytes=config.dicom.max_instance_bytes,
        )
        self.gateway = Gateway(
            ae_title=config.dicom.ae_title,
            router=self.router,
            ingest=self.ingest,
            query=QueryService(self.index),
            retrieve=RetrieveService(self.index, self.store),
            destinations=dict(config.dicom.destinations),
        )
        self.dicom = DicomServer(config.dicom, self.gateway)

    def start(self) -> None:
        configure_pynetdicom()
        self.dicom.start()
        log_event(
            LOG,
            "node_ready",
            name=self.config.name,
            ae_title=self.config.dicom.ae_title,
            host=self.config.dicom.host,
            port=self.dicom.port,
            data_dir=str(self.config.data_dir.resolve()),
            routes=",".join(sorted(self.router.ae_titles)),
        )

    def stop(self) -> None:
        self.dicom.stop()
        self.index.close()
        log_event(LOG, "node_stopped", name=self.config.name)
