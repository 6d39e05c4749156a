"""Composition root: builds every part of a node from its configuration and wires them.

Nothing else in the node constructs collaborators; tests and the CLI build a
:class:`NodeApp` and call :meth:`start` / :meth:`stop`.
"""

from __future__ import annotations

import logging

from catalog import GrpcCatalogClient, NodeInfo
from catalog.security.tls import channel_credentials
from node.config import CatalogLinkConfig, NodeConfig
from node.dicom.handlers import Gateway
from node.dicom.server import DicomServer, configure_pynetdicom
from node.grid import GridQueryService
from node.index import SqlIndex, open_index
from node.publisher import Publisher
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
    routes = [Route(ae_title=config.dicom.ae_title, collection=config.default_collection)]
    routes.extend(build_research_routes(config))
    if config.catalog is not None:
        grid_ae = config.catalog.grid_ae_title
        routes.append(Route(ae_title=grid_ae, collection="", grid=True, description="grid"))
    return routes


def build_catalog_client(link: CatalogLinkConfig) -> GrpcCatalogClient:
    """One client (one channel per replica) for publishing and grid queries."""
    credentials = None
    if not link.insecure:
        assert link.ca_file is not None  # validated by CatalogLinkConfig
        credentials = channel_credentials(link.cert_file, link.key_file, link.ca_file)
    return GrpcCatalogClient(link.addresses, timeout=link.timeout, credentials=credentials)


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
        self.catalog: GrpcCatalogClient | None = None
        self.publisher: Publisher | None = None
        if config.catalog is not None:
            self.catalog = build_catalog_client(config.catalog)
            self.gateway.grid_query = GridQueryService(self.catalog)
        self.dicom = DicomServer(config.dicom, self.gateway)

    def _publishable(self, collection: str) -> bool:
        link = self.config.catalog
        if collection != self.config.default_collection:
            return True  # research collections hold de-identified data only
        return link is not None and link.publish_identified

    def start(self) -> None:
        configure_pynetdicom()
        self.dicom.start()
        if self.catalog is not None and self.config.catalog is not None:
            me = NodeInfo(
                name=self.config.name,
                ae_title=self.config.dicom.ae_title,
                dicom_host=self.config.dicom.host,
                dicom_port=self.dicom.port,
            )
            self.publisher = Publisher(
                self.index,
                self.catalog,
                me,
                publishable=self._publishable,
                batch_size=self.config.catalog.batch_size,
                interval=self.config.catalog.publish_interval,
            )
            self.gateway.on_stored = self.publisher.nudge
            self.publisher.start()
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
        if self.publisher is not None:
            self.publisher.stop()
        if self.catalog is not None:
            self.catalog.close()
        self.index.close()
        log_event(LOG, "node_stopped", name=self.config.name)
