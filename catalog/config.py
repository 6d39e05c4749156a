"""The catalog process configuration: typed, frozen, validated once at start.

Built from a TOML file (``--config``) with command-line overrides layered on top; every error
names the field path (``replication.interval_s: Input should be greater than 0``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalog.errors import ConfigError
from catalog.security.audit_export import AuditExportSettings


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PeerConfig(_Model):
    """Another replica this one pulls changes from."""

    name: str = Field(min_length=1)
    address: str = Field(description="host:port of the peer's catalog gRPC port")

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port")
        return value


class ReplicationConfig(_Model):
    """Replica-to-replica change pulling, and the grid's replication policy between sites."""

    interval_s: float = Field(default=0.5, gt=0, le=3600, description="pause between pull rounds")
    batch_size: int = Field(default=2000, ge=1, le=50_000, description="changes per pull and apply")
    timeout_s: float = Field(default=5.0, gt=0, description="deadline of each call to a peer")
    default_factor: int = Field(
        default=1, ge=1, le=16, description="copies (on distinct sites) of every collection"
    )
    collections: dict[str, Annotated[int, Field(ge=1, le=16)]] = Field(
        default_factory=dict, description="replication factor per collection"
    )
    sites: dict[str, str] = Field(
        default_factory=dict, description="node name -> site label (default: the node's name)"
    )
    lost_after_seconds: float = Field(
        default=3600.0, gt=0, description="a node silent this long is lost: copy its data"
    )
    compact_interval_s: float = Field(
        default=3600.0, ge=0, le=7 * 86_400,
        description="pause between prunings of the change log (0: never prune)",
    )  # fmt: skip


class TlsConfig(_Model):
    """mTLS material made by ``gridpacs pki`` (paths, never inline keys)."""

    cert: Path
    key: Path
    ca: Path
    require_client_auth: bool = True
    crl: Path | None = None
    """The grid CA's revocation list (``gridpacs pki revoke``): calls of a certificate on it
    are refused; the file is re-read when it is replaced."""


class SecurityConfig(_Model):
    """Token authentication and the audit log (catalog.security)."""

    pepper_file: Path = Field(description="server-side secret mixed into token hashes")
    audit: bool = True
    audited_methods: tuple[str, ...] = (
        "/gridpacs.catalog.v1.CatalogService/Query*",
        "/gridpacs.catalog.v1.CatalogService/LocateInstances",
        "/gridpacs.catalog.v1.CatalogService/RegisterNode",
        # jobs: every action on a job; not the workers' heartbeats, polls and renewals
        "/gridpacs.catalog.v1.JobService/SubmitJobs",
        "/gridpacs.catalog.v1.JobService/FinishJob",
        "/gridpacs.catalog.v1.JobService/ListJobs",
        "/gridpacs.catalog.v1.JobService/GetJob",
        "/gridpacs.catalog.v1.JobService/GetJobLogs",
        "/gridpacs.catalog.v1.JobService/CancelJob",
        "/gridpacs.catalog.v1.JobService/RetryJob",
        "/gridpacs.catalog.v1.AccessService/*",
        "/gridpacs.catalog.v1.HoldingsService/ListHoldings",
    )
    grant_key_file: Path | None = Field(
        default=None,
        description="Ed25519 key signing researchers' retrieve grants (gridpacs pki grant-key)",
    )
    grant_ttl_s: int = Field(default=900, ge=30, le=86_400, description="lifetime of a grant")
    audit_keep_days: int = Field(
        default=0, ge=0, le=36_500,
        description="prune audit rows older than this many days, daily (0: keep every row); "
        "rows the export has not sent are kept",
    )  # fmt: skip
    audit_export: AuditExportSettings | None = Field(
        default=None,
        description="send the audit log to the site's Audit Record Repository (syslog, "
        "DICOM audit messages)",
    )
    identified_collections: tuple[str, ...] = Field(
        default=(),
        description="collections holding identified data (nodes' default collections where "
        "the grid is one trust domain): retrieved by admins of the collection only",
    )

    @model_validator(mode="after")
    def _export_needs_log(self) -> SecurityConfig:
        if self.audit_export is not None and not self.audit:
            raise ValueError("audit_export needs the audit log (audit = true)")
        return self


class JobsConfig(_Model):
    """The scheduler of processing streams' jobs (catalog.jobs)."""

    lease_s: float = Field(default=30.0, gt=0, le=3600, description="a lease's life per renew")
    worker_fresh_s: float = Field(
        default=15.0, gt=0, description="a node not reported for longer gets nothing new"
    )
    place_timeout_s: float = Field(
        default=60.0, gt=0, description="a placed job not leased this long is placed again"
    )
    interval_s: float = Field(default=0.5, gt=0, le=60, description="longest pause between rounds")
    max_long_polls: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="LeaseJob calls that may wait at once (each holds a server thread; the "
        "server gets this many threads on top of max_workers)",
    )


class MetricsConfig(_Model):
    """Prometheus metrics on http://host:port/metrics (catalog.server.metrics)."""

    enabled: bool = False
    host: str = Field(default="127.0.0.1", description="loopback: for the site's monitoring")
    port: int = Field(default=9465, ge=0, le=65535, description="0 = any free port")
    state_ttl: float = Field(
        default=30.0, ge=0, description="seconds the database counts are reused between scrapes"
    )
    tls: bool = Field(
        default=False,
        description="HTTPS with the replica's [tls] certificate; scrapers need a client "
        "certificate of the grid CA",
    )


class CatalogConfig(_Model):
    """Everything one catalog replica needs."""

    name: str = Field(min_length=1, max_length=128, description="this replica's name")
    listen_host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    db_url: str = "sqlite:///catalog.sqlite"
    peers: tuple[PeerConfig, ...] = ()
    replication: ReplicationConfig = ReplicationConfig.model_validate({})
    tls: TlsConfig | None = None
    security: SecurityConfig | None = None
    insecure: bool = Field(default=False, description="plaintext gRPC, for local development only")
    max_workers: int = Field(default=16, ge=2, le=256)
    jobs: JobsConfig = JobsConfig.model_validate({})
    metrics: MetricsConfig = MetricsConfig.model_validate({})

    @field_validator("db_url")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("db_url must be a sqlite:// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _transport(self) -> CatalogConfig:
        if self.tls is None and not self.insecure:
            raise ValueError("configure [tls] (mTLS) or set insecure = true (--insecure)")
        if self.metrics.tls and self.tls is None:
            raise ValueError("metrics.tls needs the replica's [tls] certificate")
        if self.tls is not None and self.insecure:
            raise ValueError("insecure = true conflicts with a [tls] section")
        names = [p.name for p in self.peers]
        if len(set(names)) != len(names):
            raise ValueError("peer names must be unique")
        return self


def _format(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        path = ".".join(str(p) for p in error["loc"]) or "(config)"
        lines.append(f"{path}: {error['msg']}")
    return "; ".join(lines)


def build_config(data: dict[str, Any]) -> CatalogConfig:
    """Validate a plain mapping; :class:`ConfigError` lists every bad field path."""
    try:
        return CatalogConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid catalog configuration: {_format(exc)}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def parse_peer(text: str) -> dict[str, str]:
    """``NAME=HOST:PORT`` (the ``--peer`` option) -> a peer mapping."""
    name, sep, address = text.partition("=")
    if not sep or not name or not address:
        raise ConfigError(f"--peer {text!r}: expected NAME=HOST:PORT")
    return {"name": name, "address": address}


def load_config(path: Path | None, overrides: dict[str, Any]) -> CatalogConfig:
    """The TOML file (if any) with non-None ``overrides`` on top, validated."""
    data = read_toml(path) if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(data)


DEFAULT_CONFIG = """\
# gridpacs catalog replica configuration (every key shown with its default).
name = "catalog-1"              # this replica's name (required)
listen_host = "127.0.0.1"
port = 50051
db_url = "sqlite:///catalog.sqlite"   # or postgresql+psycopg2://user@host/db
insecure = false                # true: plaintext gRPC, local development only
max_workers = 16

# [[peers]]                     # other replicas to pull changes from (repeat)
# name = "catalog-2"
# address = "catalog-2.example.org:50051"

[replication]
interval_s = 0.5
batch_size = 2000
timeout_s = 5.0
default_factor = 1              # copies on distinct sites of every collection
lost_after_seconds = 3600.0     # a node silent this long is lost: its data is copied elsewhere

[replication.collections]       # replication factor per collection, e.g.
# lung = 2

[replication.sites]             # node name -> site label (default: the node's own name)
# node-a1 = "hospital-a"

# [tls]                         # mTLS (files made by `gridpacs pki`)
# cert = "/etc/gridpacs/catalog.crt"
# key = "/etc/gridpacs/catalog.key"
# ca = "/etc/gridpacs/ca.crt"
# crl = "/etc/gridpacs/crl.pem"  # revoked certificates (`gridpacs pki revoke`), re-read on change

[jobs]                          # the scheduler of processing streams' jobs
lease_s = 30.0                  # a worker renews its lease within this
worker_fresh_s = 15.0           # nodes not reported for longer get nothing new
place_timeout_s = 60.0          # a placed job not leased this long is placed again
interval_s = 0.5
max_long_polls = 32             # waiting LeaseJob calls; extra server threads for them

[metrics]                       # Prometheus /metrics (docs/catalog.md)
enabled = false                 # also --metrics-port PORT
host = "127.0.0.1"
port = 9465                     # 0: any free port
state_ttl = 30.0                # seconds the database counts are reused between scrapes
tls = false                     # HTTPS with [tls]'s certificate; scrapers need a grid CA cert

# [security]                    # researcher tokens and the audit log
# pepper_file = "/etc/gridpacs/token-pepper"
# grant_key_file = "/etc/gridpacs/grant.key"   # signs retrieve grants (gridpacs pki grant-key)
# grant_ttl_s = 900
# identified_collections = ["local"]   # identified data: only admins of it may retrieve
"""
