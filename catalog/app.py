"""Composition root of a catalog replica: database, service, security, server, replication.

The only module that knows every piece; it builds them from a :class:`CatalogConfig` and
hands them to each other as constructor arguments. Security (``catalog.security``) plugs in
here: mTLS credentials for the server and for pulling from peers, token authentication and
the audit log as interceptors, and the caller's readable collections as the query scope.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import Engine

from catalog.client import GrpcCatalogClient
from catalog.config import CatalogConfig, SecurityConfig
from catalog.db import Repository, open_database
from catalog.db.filters import Scope
from catalog.jobs.scheduler import Scheduler, SchedulerSettings
from catalog.jobs.service import JobsService
from catalog.jobs.store import JobStore
from catalog.log_compaction import LogCompactor
from catalog.placement import PullPlanner, ReplicationPolicy
from catalog.replication import Peer, Replicator
from catalog.security.atna import AuditSource, catalog_message
from catalog.security.audit import AuditLog
from catalog.security.audit_export import AuditExporter, exporter_for
from catalog.security.retention import AuditRetention
from catalog.server.holdings_convert import SERVICE_NAME as HOLDINGS_SERVICE
from catalog.server.metrics import CatalogMetrics, ReplicaState
from catalog.server.replication_servicer import REPLICATION_SERVICE, add_replication_service
from catalog.server.serve import JOBS_SERVICE_NAME, SERVICE_NAME, CatalogServer, build_server
from catalog.service import CatalogService

log = logging.getLogger("catalog.app")
METHOD = f"/{SERVICE_NAME}/"
# Node- and replica-facing methods need a grid host certificate; queries take a researcher
# token or a host certificate (a node's grid AE queries on behalf of DICOM users).
HOST_METHODS = ("RegisterNode", "Heartbeat", "PublishChanges", "GetWatermarks", "PullChanges")
QUERY_METHODS = ("QueryStudies", "QuerySeries", "QueryInstances", "LocateInstances")
JOBS_METHOD = f"/{JOBS_SERVICE_NAME}/"
# A node's worker reports and leases with its host certificate; researchers submit, look and
# act with a token (the jobs service checks their role on the job's collection).
JOB_HOST_METHODS = ("ReportWorker", "LeaseJob", "RenewLease", "FinishJob")
JOB_USER_METHODS = (
    "SubmitJobs",
    "ListJobs",
    "GetJob",
    "GetJobLogs",
    "CancelJob",
    "RetryJob",
)
AUTHORIZE_RETRIEVE = "/gridpacs.catalog.v1.AccessService/AuthorizeRetrieve"
HOLDINGS_METHOD = f"/{HOLDINGS_SERVICE}/ListHoldings"


@dataclass
class CatalogApp:
    """A running (or ready) replica; :meth:`stop` releases everything it started."""

    config: CatalogConfig
    engine: Engine
    service: CatalogService
    server: CatalogServer
    replicator: Replicator
    jobs: JobsService
    compactor: LogCompactor
    closers: list[Callable[[], None]] = field(default_factory=list)
    metrics: CatalogMetrics | None = None
    audit_exporter: AuditExporter | None = None
    audit_retention: AuditRetention | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def start(self) -> None:
        if self.metrics is not None:
            tls = self.config.tls if self.config.metrics.tls else None
            self.metrics.start(self.config.metrics.host, self.config.metrics.port,
                               (tls.cert, tls.key, tls.ca) if tls else None)  # fmt: skip
        if self.audit_exporter is not None:
            self.audit_exporter.start()
        if self.audit_retention is not None:
            self.audit_retention.start()
        self.jobs.scheduler.start()
        self.server.start()
        self.replicator.start()
        self.compactor.start()
        log.info(
            "event=catalog_started name=%s port=%d peers=%d db=%s",
            self.config.name,
            self.port,
            len(self.config.peers),
            self.engine.url.get_backend_name(),
        )

    def stop(self, grace: float = 2.0) -> None:
        self.compactor.stop()
        self.replicator.stop()
        self.jobs.scheduler.stop()
        self.server.stop(grace)
        for close in self.closers:
            close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.audit_retention is not None:
            self.audit_retention.stop()
        if self.audit_exporter is not None:
            self.audit_exporter.stop()  # after the server: the last calls' rows go too
        self.engine.dispose()
        log.info("event=catalog_stopped name=%s", self.config.name)


def _scope_from_principal(_context: grpc.ServicerContext) -> Scope:
    from catalog.security import PrincipalKind
    from catalog.server.interceptors import current_principal

    principal = current_principal()
    if principal is None or principal.kind is PrincipalKind.HOST or principal.reads_all:
        return Scope()
    return Scope(collections=frozenset(principal.readable_collections()))


def _security(
    security: SecurityConfig,
    engine: Engine,
    *,
    before_auth: list[grpc.ServerInterceptor],
) -> tuple[
    list[grpc.ServerInterceptor], Callable[[grpc.ServicerContext], Scope], AuditLog | None
]:
    """The audit (outermost, so refused calls are recorded), ``before_auth`` (revocation),
    then authentication; and the audit log when there is one."""
    from catalog.security import AuditLog, TokenStore, load_pepper
    from catalog.server.interceptors import (
        AccessPolicy,
        AuditInterceptor,
        AuthInterceptor,
        Requirement,
    )

    # the security tables and audit triggers come from migration 0003, like the rest
    rules = {METHOD + m: Requirement.HOST for m in HOST_METHODS}
    rules.update({METHOD + m: Requirement.TOKEN_OR_HOST for m in QUERY_METHODS})
    rules[f"/{REPLICATION_SERVICE}/PlanPulls"] = Requirement.HOST
    rules[f"/{REPLICATION_SERVICE}/PlanRemovals"] = Requirement.HOST
    rules[f"/{REPLICATION_SERVICE}/CountCopies"] = Requirement.HOST
    rules.update({JOBS_METHOD + m: Requirement.HOST for m in JOB_HOST_METHODS})
    rules.update({JOBS_METHOD + m: Requirement.TOKEN_OR_HOST for m in JOB_USER_METHODS})
    rules[HOLDINGS_METHOD] = Requirement.TOKEN_OR_HOST  # reconciliation: operators and nodes
    auth = AuthInterceptor(
        TokenStore(engine, load_pepper(security.pepper_file)), policy=AccessPolicy(rules=rules)
    )
    interceptors: list[grpc.ServerInterceptor] = []
    audit_log = AuditLog(engine) if security.audit else None
    if audit_log is not None:
        interceptors.append(
            AuditInterceptor(
                audit_log,
                security.audited_methods,
                summarizers={AUTHORIZE_RETRIEVE: _retrieve_summary},
            )
        )
    interceptors += before_auth
    interceptors.append(auth)  # audit outermost, so rejected calls are audited too
    return interceptors, _scope_from_principal, audit_log


def _audit_exporter(config: CatalogConfig, audit_log: AuditLog) -> AuditExporter | None:
    """Sends the catalog's audit log to the site's repository (``[security.audit_export]``)."""
    assert config.security is not None
    settings = config.security.audit_export
    if settings is None:
        return None
    source = AuditSource(config.name, settings.site_id or config.name)
    return exporter_for(audit_log, settings, lambda row: catalog_message(row, source),
                        app_name=f"gridpacs-catalog-{config.name}")  # fmt: skip


def _audit_retention(
    config: CatalogConfig, audit_log: AuditLog, exporter: AuditExporter | None
) -> AuditRetention | None:
    """Prunes the audit log past ``[security] audit_keep_days`` (never what is owed)."""
    assert config.security is not None
    if not config.security.audit_keep_days:
        return None
    return AuditRetention(
        audit_log,
        timedelta(days=config.security.audit_keep_days),
        exporter=exporter,
        actor=f"catalog:{config.name}",
    )


def _revocation(crl: Path, ca: Path) -> grpc.ServerInterceptor:
    from catalog.security.revocation import RevocationList
    from catalog.server.interceptors import RevocationInterceptor

    return RevocationInterceptor(RevocationList(crl, ca))


def _retrieve_summary(request: Any) -> dict[str, Any]:
    """The audit row of a retrieve names the studies (the first 50) and collections asked for."""
    studies = list(request.study_instance_uids)
    return {
        "studies": studies[:50],
        "study_count": len(studies),
        "collections": list(request.collections)[:50],
    }


def _add_access_service(
    app_server: CatalogServer, service: CatalogService, config: CatalogConfig
) -> None:
    """Researchers' retrieve authorization (grants), on the same server and interceptors."""
    from catalog.security.grants import GrantSigner, load_signing_key
    from catalog.server.access import AccessServicer
    from catalog.v1 import access_pb2_grpc

    signer = None
    security = config.security
    if security is not None and security.grant_key_file is not None:
        signer = GrantSigner(load_signing_key(security.grant_key_file), ttl_s=security.grant_ttl_s)
    identified = frozenset(security.identified_collections) if security else frozenset()
    access_pb2_grpc.add_AccessServiceServicer_to_server(
        AccessServicer(service, signer, identified=identified), app_server.server
    )


def _credentials(
    config: CatalogConfig,
) -> tuple[grpc.ServerCredentials | None, grpc.ChannelCredentials | None]:
    if config.tls is None:
        return None, None
    from catalog.security import channel_credentials, server_credentials

    tls = config.tls
    return (
        server_credentials(tls.cert, tls.key, tls.ca, require_client_auth=tls.require_client_auth),
        channel_credentials(tls.cert, tls.key, tls.ca),
    )


def _policy(config: CatalogConfig) -> ReplicationPolicy:
    replication = config.replication
    return ReplicationPolicy(
        default_factor=replication.default_factor,
        factors=dict(replication.collections),
        sites=dict(replication.sites),
        lost_after=timedelta(seconds=replication.lost_after_seconds),
    )


def _jobs(config: CatalogConfig, engine: Engine, repository: Repository) -> JobsService:
    settings = SchedulerSettings(
        lease_seconds=config.jobs.lease_s,
        worker_fresh_seconds=config.jobs.worker_fresh_s,
        place_timeout_seconds=config.jobs.place_timeout_s,
        interval_seconds=config.jobs.interval_s,
    )
    store = JobStore(engine)
    return JobsService(
        store, Scheduler(store, settings), repository, max_long_polls=config.jobs.max_long_polls
    )


def build_app(config: CatalogConfig) -> CatalogApp:
    """Open the database (migrating it) and wire a replica; nothing is started yet."""
    engine = open_database(config.db_url)
    try:
        repository = Repository(engine)
        service = CatalogService(config.name, repository)
        jobs = _jobs(config, engine, repository)
        server_creds, channel_creds = _credentials(config)
        scope = None
        exporter: AuditExporter | None = None
        retention: AuditRetention | None = None
        revocation: list[grpc.ServerInterceptor] = []
        if config.tls is not None and config.tls.crl is not None:
            revocation.append(_revocation(config.tls.crl, config.tls.ca))
        interceptors = revocation
        if config.security is not None:
            interceptors, scope, audit_log = _security(
                config.security, engine, before_auth=revocation
            )
            if audit_log is not None:
                exporter = _audit_exporter(config, audit_log)
                retention = _audit_retention(config, audit_log, exporter)
        metrics = _metrics(config, repository, jobs) if config.metrics.enabled else None
        if metrics is not None:  # outermost: refused and audited calls are counted too
            interceptors = [metrics.interceptor, *interceptors]
        server = build_server(
            service,
            port=config.port,
            host=config.listen_host,
            interceptors=interceptors,
            server_credentials=server_creds,
            scope=scope,
            max_workers=config.max_workers + config.jobs.max_long_polls,
            jobs=jobs,
        )
        add_replication_service(server.server, PullPlanner(service.repository, _policy(config)))
        _add_access_service(server, service, config)
        timeout = config.replication.timeout_s

        def connect(address: str) -> GrpcCatalogClient:
            return GrpcCatalogClient(
                [address],
                timeout=timeout,
                stream_timeout=max(60.0, timeout),
                credentials=channel_creds,
            )

        replicator = Replicator(
            service,
            [Peer(p.name, p.address) for p in config.peers],
            connect,
            interval=config.replication.interval_s,
            batch_size=config.replication.batch_size,
        )
        compactor = LogCompactor(
            repository,
            replicator.applied_by_every_peer,
            interval=config.replication.compact_interval_s,
        )
    except BaseException:
        engine.dispose()
        raise
    return CatalogApp(config, engine, service, server, replicator, jobs, compactor,
                      metrics=metrics, audit_exporter=exporter,
                      audit_retention=retention)  # fmt: skip


def _metrics(config: CatalogConfig, repository: Repository, jobs: JobsService) -> CatalogMetrics:
    metrics = CatalogMetrics()
    state = ReplicaState(
        repository.nodes,
        repository.change_log_size,
        jobs.store.state_counts,
        lost_after=timedelta(seconds=config.replication.lost_after_seconds),
        ttl=config.metrics.state_ttl,
    )
    metrics.watch(state)
    return metrics
