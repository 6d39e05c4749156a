"""Composition root: builds every part of a node from its configuration and wires them.

Nothing else in the node constructs collaborators; tests and the CLI build a
:class:`NodeApp` and call :meth:`start` / :meth:`stop`.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import grpc

from catalog import GrpcCatalogClient, NodeInfo
from catalog.jobs_client import JobsClient
from catalog.placement.client import GrpcPlacementClient
from catalog.security.atna import AuditSource
from catalog.security.audit_export import AuditExporter, exporter_for
from catalog.security.errors import TlsConfigError
from catalog.security.grants import GrantKeyError, GrantVerifier, load_public_key
from catalog.security.retention import AuditRetention
from catalog.security.revocation import RevocationList
from catalog.security.tls import channel_credentials, server_credentials
from catalog.server.interceptors import RevocationInterceptor
from node.anti_entropy import AntiEntropy
from node.audit import DicomAudit, open_audit
from node.audit_atna import node_message
from node.blob_sweeper import QueuedBlobSweeper
from node.commitment_reporter import CommitmentReporter
from node.config import CatalogLinkConfig, Destination, NodeConfig
from node.dicom.client_tls import destination_tls
from node.dicom.commitment import deliverer
from node.dicom.handlers import Gateway
from node.dicom.scu import send_files
from node.dicom.server import DicomServer, configure_pynetdicom
from node.errors import ConfigError
from node.grid import GridQueryService, GridRetrieveService
from node.index import SqlIndex, open_index
from node.metrics import MetricsServer
from node.peer import PeerClient, PeerServer
from node.peer.inventory import InventoryServicer
from node.peer.server import PeerServicer
from node.permissions import Permissions
from node.publisher import Publisher
from node.replicator import Replicator, replication_status_file
from node.research_routes import build_research_routes
from node.routing import Route, Router
from node.services.commitment import CommitmentService
from node.services.ingest import IngestService
from node.services.query import QueryService
from node.services.rejection import RejectionService
from node.services.retrieve import RetrieveService
from node.streams.executor import reap_stale
from node.streams.inputs import InputGatherer
from node.streams.jobs import CatalogSubmitter
from node.streams.pruning import WorkDirPruner
from node.streams.references import StudyReferences, load_or_create_secret
from node.streams.registry import StreamRegistry, load_streams
from node.streams.runner import JobRunner, RunnerSettings
from node.streams.trigger import StreamTrigger
from node.streams.worker import Worker
from node.structlog import log_event
from storage import BlobStore, Quarantine, open_store

LOG = logging.getLogger("gridpacs.node")


def build_routes(config: NodeConfig, streams: StreamRegistry | None = None) -> list[Route]:
    """Every AE title the node answers to and what it does with what arrives there."""
    routes = [Route(ae_title=config.dicom.ae_title, collection=config.default_collection)]
    routes.extend(build_research_routes(config))
    if config.catalog is not None:
        grid_ae = config.catalog.grid_ae_title
        routes.append(Route(ae_title=grid_ae, collection="", grid=True, description="grid"))
    for manifest in streams.enabled if streams is not None else ():
        routes.append(
            Route(
                ae_title=manifest.ae_title,
                collection=manifest.collection or config.default_collection,
                stream=manifest.name,
                description=f"stream {manifest.name}",
            )
        )
    return routes


def reserved_ae_titles(config: NodeConfig) -> set[str]:
    """AE titles a stream may not take: the node's own, the grid's, research routes'."""
    taken = {config.dicom.ae_title, *(r.ae_title for r in config.routes)}
    if config.catalog is not None:
        taken.add(config.catalog.grid_ae_title)
    return taken


def load_node_streams(config: NodeConfig) -> StreamRegistry:
    """The node's streams; without a catalog there is no scheduler, so none are served."""
    registry = load_streams(
        config.streams_dir,
        reserved_ae_titles=reserved_ae_titles(config),
        destinations=set(config.dicom.destinations),
    )
    if registry.streams and config.catalog is None:
        log_event(
            LOG,
            "streams_disabled",
            level=logging.WARNING,
            streams=",".join(registry.streams),
            reason="processing streams need a catalog (the scheduler)",
        )
        return StreamRegistry(problems=registry.problems)
    return registry


def _grid_credentials(
    link: CatalogLinkConfig,
) -> tuple[grpc.ChannelCredentials | None, grpc.ServerCredentials | None]:
    """mTLS with the node's grid certificate, or nothing on an explicitly insecure grid."""
    if link.insecure:
        return None, None
    assert link.ca_file is not None and link.cert_file and link.key_file  # validated
    return (
        channel_credentials(link.cert_file, link.key_file, link.ca_file),
        server_credentials(link.cert_file, link.key_file, link.ca_file),
    )


def _peer_interceptors(link: CatalogLinkConfig) -> list[grpc.ServerInterceptor]:
    """The peer service refuses revoked certificates when the grid's CRL is configured."""
    if link.crl_file is None:
        return []
    assert link.ca_file is not None  # validated: no CRL on an insecure grid
    try:
        return [RevocationInterceptor(RevocationList(link.crl_file, link.ca_file))]
    except TlsConfigError as exc:
        raise ConfigError(str(exc)) from exc


def _grant_verifier(link: CatalogLinkConfig) -> GrantVerifier | None:
    """Verifies researchers' retrieve grants, when the catalog's public keys are configured."""
    if not link.grant_public_keys:
        return None
    try:
        return GrantVerifier([load_public_key(path) for path in link.grant_public_keys])
    except GrantKeyError as exc:
        raise ConfigError(str(exc)) from exc


def _emit(event: str, level: int, fields: dict[str, Any]) -> None:
    """The audit threads' events as the node's structured lines (and metrics)."""
    log_event(LOG, event, level=level, **fields)


class NodeApp:
    """One running node: index, blob store, quarantine, DICOM gateway."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.destination_tls = destination_tls(config.dicom.destinations, config.dicom.tls)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store: BlobStore = open_store(
            config.blob_dir,
            config.storage.encryption_key_file,
            pack_threshold=config.storage.pack_threshold,
        )
        self.quarantine = Quarantine(config.quarantine_dir)
        self.index: SqlIndex = open_index(config.index_url)
        self.audit_log = open_audit(config.audit_url) if config.audit.enabled else None
        self.audit = DicomAudit(self.audit_log)
        self.audit_exporter = self._audit_exporter()
        self.audit_retention = self._audit_retention()
        self.streams = load_node_streams(config)
        self.router = Router(build_routes(config, self.streams))
        self.ingest = IngestService(
            self.store,
            self.index,
            self.quarantine,
            max_instance_bytes=config.dicom.max_instance_bytes,
        )
        retrieve = RetrieveService(self.index, self.store)
        self.rejections = RejectionService(
            self.index, self.store, allowed_aes=config.dicom.rejecting_aes
        )
        self.blob_sweeper = QueuedBlobSweeper(self.rejections)
        self.commitments, self.commitment_reporter = self._storage_commitment()
        self.gateway = Gateway(
            ae_title=config.dicom.ae_title,
            router=self.router,
            ingest=self.ingest,
            query=QueryService(self.index),
            retrieve=retrieve,
            destinations=dict(config.dicom.destinations),
            rejections=self.rejections,
            commitments=self.commitments,
            destination_tls=self.destination_tls,
            permissions=Permissions.from_config(config.dicom.permissions),
            audit=self.audit,
            allowed_calling_aes=frozenset(config.dicom.allowed_calling_aes),
        )
        self.catalog: GrpcCatalogClient | None = None
        self.publisher: Publisher | None = None
        self.peer_server: PeerServer | None = None
        self.peers: PeerClient | None = None
        self.replicator: Replicator | None = None
        self._grid_client_credentials: grpc.ChannelCredentials | None = None
        self.anti_entropy: AntiEntropy | None = None
        self._copies_client: GrpcPlacementClient | None = None
        self.work_dir_pruner: WorkDirPruner | None = None
        self.jobs: JobsClient | None = None
        self.trigger: StreamTrigger | None = None
        self.study_references: StudyReferences | None = None
        self.worker: Worker | None = None
        if config.catalog is not None:
            self._join_grid(config.catalog, retrieve)
        self.dicom = DicomServer(config.dicom, self.gateway)
        self.metrics: MetricsServer | None = None
        if config.metrics.enabled:
            self.metrics = MetricsServer()
            self.metrics.watch(self._state, ttl=config.metrics.state_ttl)

    def _audit_exporter(self) -> AuditExporter | None:
        """Sends the audit trail to the site's repository (``[audit.export]``)."""
        settings = self.config.audit.export
        if settings is None or self.audit_log is None:
            return None
        source = AuditSource(self.config.dicom.ae_title, settings.site_id or self.config.name)
        try:
            return exporter_for(self.audit_log, settings, lambda row: node_message(row, source),
                                app_name=f"gridpacs-{self.config.name}", emit=_emit)  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"[audit.export] {exc}") from exc

    def _audit_retention(self) -> AuditRetention | None:
        """Prunes the trail past ``[audit] keep_days``, never what the export still owes."""
        if self.audit_log is None or not self.config.audit.keep_days:
            return None
        return AuditRetention(
            self.audit_log,
            dt.timedelta(days=self.config.audit.keep_days),
            exporter=self.audit_exporter,
            actor=self.config.dicom.ae_title,
            emit=_emit,
        )

    def _state(self) -> dict[str, float]:
        """What the node holds and owes, for the metrics (read on scrape)."""
        stats = self.index.stats()
        last = stats.pop("last_change_seq")
        commitments = self.index.commitment_counts()
        state: dict[str, float] = {
            **stats,
            **self.index.removal_counts(),
            "commitment_reports_owed": commitments["pending"],
            "commitment_reports_abandoned": commitments["abandoned"],
            "quarantined": self.quarantine.count(),
        }
        if self.publisher is not None and self.publisher.sent_up_to >= 0:
            state["outbox_backlog"] = max(0, last - self.publisher.sent_up_to)
        if self.audit_exporter is not None:
            state["audit_export_behind"] = self.audit_exporter.status().behind
        return state

    def _storage_commitment(
        self,
    ) -> tuple[CommitmentService | None, CommitmentReporter | None]:
        settings = self.config.dicom.commitment
        if not settings.enabled:
            return None, None
        destinations = dict(self.config.dicom.destinations)
        service = CommitmentService(
            self.index,
            self.store,
            self.router,
            destinations,
            verify_bytes=settings.verify_bytes,
            max_references=settings.max_references,
            copies=settings.copies,
        )
        reporter = CommitmentReporter(
            self.index,
            service,
            deliverer(
                destinations,
                self.config.dicom.ae_title,
                settings.report_timeout,
                tls=self.destination_tls,
            ),
            give_up_after=settings.give_up_after,
            copies_wait=settings.copies_wait,
        )
        service.on_recorded = reporter.wake
        return service, reporter

    def _join_grid(self, link: CatalogLinkConfig, local: RetrieveService) -> None:
        client_creds, server_creds = _grid_credentials(link)
        self._grid_client_credentials = client_creds
        self.catalog = GrpcCatalogClient(
            link.addresses, timeout=link.timeout, credentials=client_creds
        )
        self.peers = PeerClient(client_creds)
        inventory = InventoryServicer(
            self.index,
            publishable=self._publishable,
            ingest=self.ingest,
            peers=self.peers,
            ae_title=self.config.dicom.ae_title,
            changed=self._nudge_publisher,
            require_host=not link.insecure,
        )
        self.peer_server = PeerServer(
            PeerServicer(
                self.index,
                self.store,
                servable=self._publishable,
                identified=lambda collection: collection == self.config.default_collection,
                grants=_grant_verifier(link),
                audit=self.audit,
            ),
            link.peer_host,
            link.peer_port,
            server_creds,
            inventory=inventory,
            interceptors=_peer_interceptors(link),
        )
        self.gateway.grid_query = GridQueryService(self.catalog)
        self.gateway.grid_retrieve = GridRetrieveService(
            self.catalog, self.index, local.load, self.peers, prefetch=link.retrieve_prefetch
        )
        if self.streams.enabled:
            self._set_up_streams(link, client_creds)

    def _set_up_streams(
        self, link: CatalogLinkConfig, credentials: grpc.ChannelCredentials | None
    ) -> None:
        """Stream AE titles submit jobs; the worker runs the jobs placed on this node."""
        config = self.config
        self.jobs = JobsClient(link.addresses, timeout=link.timeout, credentials=credentials)
        self.study_references = StudyReferences(
            load_or_create_secret(config.secrets_dir / "stream-ref.secret"), self.index
        )
        self.trigger = StreamTrigger(
            CatalogSubmitter(self.jobs),
            config.trigger_dir,
            origin_node=config.name,
            outbox_position=self.index.last_change_seq,
            published_through=self._published_through,
            name_study=self._job_study_name,
        )
        self.gateway.streams = self.trigger
        if not config.worker.enabled:
            return
        runner = JobRunner(
            RunnerSettings(
                node_name=config.name,
                node_ae_title=config.dicom.ae_title,
                default_collection=config.default_collection,
                work_dir=config.jobs_dir,
                kill_grace=config.worker.kill_grace,
                keep_work_dirs=config.worker.keep_work_dirs,
                may_leave_site=self._publishable,
                resolve_study=self.study_references.resolve,
            ),
            self.streams,
            InputGatherer(self.index, self.store, self.catalog, self.peers),
            self.ingest,
            config.dicom.destinations,
            send=self._send_results,
            on_stored=self._nudge_publisher,
        )
        self.worker = Worker(
            self.jobs, self.streams, runner.run, node_name=config.name, config=config.worker
        )
        self.work_dir_pruner = WorkDirPruner(
            config.jobs_dir,
            keep_failed_for=config.worker.keep_failed_for,
            keep_logs_for=config.worker.keep_logs_for,
        )

    def _job_study_name(self, collection: str, study_instance_uid: str) -> str:
        """The UID when the collection may leave the site, else this node's reference."""
        if self._publishable(collection):
            return study_instance_uid
        assert self.study_references is not None
        return self.study_references.refer(study_instance_uid, collection)

    def _send_results(self, called_ae: str, where: Destination, files: list[Path]) -> int:
        return send_files(
            self.config.dicom.ae_title,
            called_ae,
            where.host,
            where.port,
            files,
            tls=self.destination_tls.get(called_ae),
        )

    def _published_through(self) -> int:
        return self.publisher.sent_up_to if self.publisher is not None else -1

    def _nudge_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.nudge()

    def _publishable(self, collection: str) -> bool:
        link = self.config.catalog
        if collection != self.config.default_collection:
            return True  # research collections hold de-identified data only
        return link is not None and link.publish_identified

    def start(self) -> None:
        configure_pynetdicom()
        if self.metrics is not None:  # first, so every event of the start is counted
            m = self.config.metrics
            self.metrics.start(m.host, m.port, cert_file=m.cert_file, key_file=m.key_file,
                               ca_file=m.ca_file)  # fmt: skip
        self._audit_application("application.start", "started")
        if self.audit_exporter is not None:
            self.audit_exporter.start()
        if self.audit_retention is not None:
            self.audit_retention.start()
        self.rejections.remove_queued_blobs()  # those a crash left after their rejection
        self.blob_sweeper.start()  # those `gridpacs node reject` queues while we run
        if self.commitment_reporter is not None:
            self.commitment_reporter.start()  # reports a crash left owed go first
        self.dicom.start()
        if self.catalog is not None and self.config.catalog is not None:
            assert self.peer_server is not None
            self.peer_server.start()
            me = NodeInfo(
                name=self.config.name,
                ae_title=self.config.dicom.ae_title,
                dicom_host=self.config.dicom.host,
                dicom_port=self.dicom.port,
                peer_address=self.peer_server.address,
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
            if self.config.catalog.replication.enabled:
                self.replicator = self._replicator(self.config.catalog, self.publisher)
                self.replicator.start()
            elif self.config.dicom.commitment.copies > 1:
                self._copies_client = self._placement(self.config.catalog)
            self.anti_entropy = AntiEntropy(
                self.config.name,
                self.index,
                self.catalog,
                publishable=self._publishable,
                published_up_to=lambda: self.publisher.sent_up_to if self.publisher else -1,
                nudge=self._nudge_publisher,
                interval=self.config.catalog.anti_entropy_interval,
                months=self.config.catalog.anti_entropy_months,
            )
            self.anti_entropy.start()
        if self.worker is not None:  # first, so the catalog knows our streams early
            reap_stale(self.config.jobs_dir)
            self.worker.start()
        if self.work_dir_pruner is not None:
            self.work_dir_pruner.start()
        if self.trigger is not None:
            self.trigger.start()
        log_event(
            LOG,
            "node_ready",
            name=self.config.name,
            ae_title=self.config.dicom.ae_title,
            host=self.config.dicom.host,
            port=self.dicom.port,
            **({"tls_port": self.dicom.tls_port} if self.dicom.tls_port is not None else {}),
            data_dir=str(self.config.data_dir.resolve()),
            routes=",".join(sorted(self.router.ae_titles)),
            streams=",".join(sorted(self.streams.streams)) or "-",
            worker="on" if self.worker is not None else "off",
        )

    def _placement(self, link: CatalogLinkConfig) -> GrpcPlacementClient:
        """The catalog's ReplicationService; Storage Commitment counts the grid's copies
        through it too."""
        from catalog.placement.client import GrpcPlacementClient

        plans = GrpcPlacementClient(
            link.addresses,
            timeout=max(10.0, link.timeout),
            credentials=self._grid_client_credentials,
        )
        if self.commitments is not None:
            self.commitments.count_copies = plans.count_copies
        return plans

    def _replicator(self, link: CatalogLinkConfig, publisher: Publisher) -> Replicator:
        assert self.peers is not None
        settings = link.replication
        plans = self._placement(link)
        default = self.config.default_collection
        return Replicator(
            self.config.name,
            self.config.dicom.ae_title,
            plans,
            self.peers,
            self.ingest,
            self.index,
            publishable=self._publishable,
            refused_collections=() if self._publishable(default) else (default,),
            interval=settings.interval,
            concurrency=settings.concurrency,
            batch_size=settings.batch_size,
            max_backoff=settings.max_backoff,
            on_stored=publisher.nudge,
            status_file=replication_status_file(self.config),
            reject=lambda items: self.rejections.reject(items, source="catalog"),
        )

    def stop(self) -> None:
        self.dicom.stop()
        if self.metrics is not None:
            self.metrics.stop()
        stoppable = (self.blob_sweeper, self.commitment_reporter, self.replicator, self.worker,
                     self.work_dir_pruner, self.trigger, self.anti_entropy, self.publisher,
                     self.peer_server)  # fmt: skip
        for part in stoppable:  # in this order: nothing stopped is still used by the next
            if part is not None:
                part.stop()
        for client in (self._copies_client, self.jobs, self.peers, self.catalog):
            if client is not None:
                client.close()
        self.index.close()
        if self.audit_retention is not None:
            self.audit_retention.stop()
        self._audit_application("application.stop", "stopped")
        if self.audit_exporter is not None:
            self.audit_exporter.stop()  # after the last row: it sends what is owed first
        log_event(LOG, "node_stopped", name=self.config.name)

    def _audit_application(self, action: str, outcome: str) -> None:
        """ATNA's Application Activity: when the node began and stopped recording."""
        self.audit.event(action, self.config.dicom.ae_title, "-",
                         {"name": self.config.name}, outcome)  # fmt: skip
