"""Typed, validated node configuration built once at start from TOML plus CLI overrides.

Every setting has one home here; everything below ``node.app`` receives these objects as
constructor arguments and never reads files or the environment itself.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from catalog.security.audit_export import AuditExportSettings
from node.errors import ConfigError
from node.permissions import Service

_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII but backslash


def _check_ae(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_RE.match(stripped):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)"
        )
    return stripped


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Destination(_Strict):
    """A DICOM peer the node may send to (C-MOVE destination, stream results, Storage
    Commitment reports)."""

    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    tls: bool = False
    """Reach this peer over DICOM TLS (PS3.15 Annex B): TLS 1.2 or later, its certificate
    checked against ``ca_file`` and ``server_name``; the node presents its ``[dicom.tls]``
    certificate when it has one (for peers that require a client certificate)."""
    server_name: str | None = None
    """The name (DNS or IP address) the peer's certificate must carry; default ``host``."""
    ca_file: Path | None = None
    """The CA certificates that may sign the peer's certificate; default ``[dicom.tls]
    ca_file`` (a hospital's own CA is often not the grid's)."""

    @model_validator(mode="after")
    def _tls_settings_need_tls(self) -> Destination:
        if not self.tls and (self.server_name is not None or self.ca_file is not None):
            raise ValueError("server_name and ca_file apply to DICOM TLS: set tls = true")
        return self

    @classmethod
    def parse(cls, text: str) -> Destination:
        """Parse ``HOST:PORT``."""
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host=host, port=int(port))


class TlsConfig(_Strict):
    """DICOM TLS (PS3.15 Annex B): certificate and key of the node, CA for peers."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False
    crl_file: Path | None = None
    """The grid CA's revocation list: a client presenting a revoked certificate fails the
    handshake. Read at start (restart the node after copying a new one)."""
    port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """A second listener for DICOM TLS (2762 is the registered port), beside a plain one on
    ``[dicom] port`` for modalities that speak no TLS; None: ``[dicom] port`` is TLS-only.
    0 picks a free port (logged as ``tls_port`` in ``event=node_ready``)."""

    @model_validator(mode="after")
    def _crl_needs_ca(self) -> TlsConfig:
        if self.crl_file is not None and self.ca_file is None:
            raise ValueError("crl_file needs ca_file (the CA that signed the list)")
        return self


class CommitmentConfig(_Strict):
    """Storage Commitment Push Model (PS3.4 Annex J): modalities ask the node to commit
    to instances before they delete their own copies."""

    enabled: bool = True
    verify_bytes: bool = True
    """Read every referenced instance back and check its SHA-256 before committing to it."""
    max_references: Annotated[int, Field(ge=1, le=1_000_000)] = 50_000
    """Instances one request may list (more: refused with 0x0213)."""
    give_up_after: Annotated[float, Field(gt=0)] = 7 * 86400.0
    """Seconds a report is retried while the sender cannot be reached."""
    report_timeout: Annotated[float, Field(gt=0)] = 30.0
    copies: Annotated[int, Field(ge=1, le=16)] = 1
    """Distinct grid sites (counted by the catalog) that must hold an instance before it is
    committed; 1: this node's own durable copy is enough."""
    copies_wait: Annotated[float, Field(gt=0)] = 3600.0
    """Seconds a report waits for the grid's copies; then those instances are reported
    failed (the modality keeps them)."""


class DicomConfig(_Strict):
    """The DICOM gateway: who we are, who may talk to us, and how much they may send."""

    ae_title: str = "GRIDPACS"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    """Empty means any calling AE may associate."""
    destinations: dict[str, Destination] = Field(default_factory=dict)
    """Move/route destinations by AE title."""
    max_associations: Annotated[int, Field(ge=1, le=1000)] = 32
    max_pdu_size: Annotated[int, Field(ge=0)] = 262_144
    """Largest P-DATA PDU we accept (0 = unlimited)."""
    max_instance_bytes: Annotated[int, Field(ge=1024)] = 2 * 1024**3
    network_timeout: Annotated[float, Field(gt=0)] = 60.0
    tls: TlsConfig | None = None
    commitment: CommitmentConfig = Field(default_factory=CommitmentConfig)
    rejecting_aes: tuple[str, ...] = ()
    """Calling AE titles whose IHE IOCM rejection notes (KOS titled 113001, 113037, 113038,
    113039) remove the instances they list; a note from any other AE is refused (0x0124)."""
    permissions: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """What each calling AE title may ask for: ``store``, ``find``, ``move``, ``get``,
    ``commit`` (C-ECHO always). ``"*"`` sets it for AE titles not listed; without ``"*"``
    they may do everything. Anything else is refused with 0x0124 (Not Authorized)."""

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae(value)

    @field_validator("allowed_calling_aes", "rejecting_aes")
    @classmethod
    def _aes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_ae(v) for v in value)

    @field_validator("destinations")
    @classmethod
    def _dest_names(cls, value: dict[str, Destination]) -> dict[str, Destination]:
        return {_check_ae(k): v for k, v in value.items()}

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        services = tuple(service.value for service in Service)
        checked: dict[str, tuple[str, ...]] = {}
        for ae, granted in value.items():
            key = ae.strip() if ae.strip() == "*" else _check_ae(ae)
            unknown = [s for s in granted if s not in services]
            if unknown:
                raise ValueError(
                    f"{key}: {', '.join(map(repr, unknown))} is not one of {', '.join(services)}"
                )
            checked[key] = tuple(dict.fromkeys(granted))
        return checked

    @model_validator(mode="after")
    def _permitted_aes_may_associate(self) -> DicomConfig:
        if self.allowed_calling_aes:
            stray = [
                ae for ae in self.permissions if ae != "*" and ae not in self.allowed_calling_aes
            ]
            if stray:
                raise ValueError(
                    f"permissions name {', '.join(stray)}, which allowed_calling_aes does not "
                    "let associate"
                )
        return self

    @model_validator(mode="after")
    def _tls_destinations_have_a_ca(self) -> DicomConfig:
        node_ca = self.tls.ca_file if self.tls is not None else None
        for name, destination in self.destinations.items():
            if destination.tls and destination.ca_file is None and node_ca is None:
                raise ValueError(
                    f"destination {name} uses TLS but no CA is known to check its "
                    "certificate: set its ca_file or [dicom.tls] ca_file"
                )
        return self


class StorageConfig(_Strict):
    """Where blobs live and whether they are encrypted at rest."""

    encryption_key_file: Path | None = None
    pack_threshold: Annotated[int, Field(ge=0, le=8 * 1024 * 1024)] = 64 * 1024
    """Blobs up to this many bytes are appended to preallocated pack files (one data-only
    sync per instance instead of ~3 journal commits); larger ones get a file each. 0 turns
    packing off (packs already written stay readable)."""


class AnonymizerConfig(_Strict):
    """Site secrets for de-identification; both are generated at first start when unset."""

    secret_file: Path | None = None
    """HMAC secret of this site (default ``<data_dir>/secrets/pseudonym.secret``)."""
    reid_key_file: Path | None = None
    """AES key of the re-identification map (default ``<data_dir>/secrets/reid.key``)."""


class RouteConfig(_Strict):
    """A research route: what arrives at ``ae_title`` is de-identified into ``collection``."""

    ae_title: str
    collection: str
    profile: tuple[str, ...] = ("basic",)
    options: tuple[str, ...] = ()
    recipes: tuple[Path, ...] = ()
    """Extra deid recipe files applied after the profile."""
    keep_original: bool = False
    """Also archive the identified original in the node's default collection."""
    allow_burned_in: bool = False
    """Accept instances with BurnedInAnnotation = YES (their pixels are not cleaned)."""
    allow_documents: bool = False
    """Accept encapsulated documents (PDF, CDA, 3D models): their content is not cleaned."""

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae(value)


class ReplicaPullConfig(_Strict):
    """The node's share of grid replication: copying what the catalog plans for it."""

    enabled: bool = True
    interval: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Pause between asking the catalog for pulls while there is nothing to copy."""
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    """Instances fetched and stored at the same time."""
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 200
    """Pulls asked for per round."""
    max_backoff: Annotated[float, Field(gt=0)] = 60.0
    """Longest wait before retrying an instance that failed (doubles per failure)."""


class CatalogLinkConfig(_Strict):
    """How the node reaches the catalog replicas (publishing and grid queries)."""

    addresses: tuple[str, ...]
    """``host:port`` of catalog replicas, in fail-over order."""
    insecure: bool = False
    """Plaintext gRPC: local development only; production uses mTLS (the files below)."""
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    publish_identified: bool = False
    """Publish the identified default collection too (only where the grid is one trust
    domain); de-identified research collections are always published."""
    grid_ae_title: str = "GRID"
    """The AE title answered from the catalog (grid-wide C-FIND/C-MOVE/C-GET)."""
    peer_host: str = "127.0.0.1"
    """Where other nodes fetch this node's instances (gRPC PeerService)."""
    peer_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """0 picks a free port; the bound address is registered in the catalog."""
    crl_file: Path | None = None
    """The grid CA's revocation list (``gridpacs pki revoke``): the peer service refuses
    calls of a certificate on it; the file is re-read when it is replaced."""
    grant_public_keys: tuple[Path, ...] = ()
    """Catalog grant public keys (``gridpacs pki grant-key``): researchers presenting a grant
    signed by one of them may fetch what it names over the peer service."""
    retrieve_prefetch: Annotated[int, Field(ge=0, le=32)] = 4
    """Grid C-MOVE/C-GET: instances fetched from peers ahead of the one being sent (0: off)."""
    publish_interval: Annotated[float, Field(gt=0)] = 0.5
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 500
    timeout: Annotated[float, Field(gt=0)] = 5.0
    replication: ReplicaPullConfig = Field(default_factory=ReplicaPullConfig)
    anti_entropy_interval: Annotated[float, Field(ge=0)] = 3600.0
    """Seconds between anti-entropy passes (republish what the catalog lost); 0 = off."""
    anti_entropy_months: Annotated[int, Field(ge=1, le=24)] = 2
    """How many recent months (by StudyDate or date received) each pass compares."""

    @field_validator("grid_ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae(value)

    @model_validator(mode="after")
    def _tls_or_insecure(self) -> CatalogLinkConfig:
        if not self.addresses:
            raise ValueError("give at least one catalog address")
        if not self.insecure and self.ca_file is None:
            raise ValueError("set cert_file, key_file and ca_file (mTLS) or insecure = true")
        if self.insecure and self.crl_file is not None:
            raise ValueError("crl_file needs mTLS: it conflicts with insecure = true")
        return self


class WorkerConfig(_Strict):
    """The node's long-lived job worker (processing streams, see docs/streams.md).

    It runs inside ``gridpacs node serve`` when the node has a catalog and at least one
    enabled stream; the limits are reported to the catalog, which places nothing new on a
    node at or over any of them (0 = no limit).
    """

    enabled: bool = True
    max_jobs: Annotated[int, Field(ge=1, le=256)] = 2
    """Jobs run at the same time on this node (one worker thread each)."""
    max_cpu_percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    min_memory_available_mb: Annotated[int, Field(ge=0)] = 0
    work_dir: Path | None = None
    """Where each attempt gets its fresh folder (default ``<data_dir>/jobs``)."""
    keep_work_dirs: bool = False
    """Keep an attempt's folder after it ends (debugging); failed ones are always kept."""
    keep_failed_for: Annotated[float, Field(gt=0)] = 7 * 86400.0
    """Seconds a kept attempt folder (a failed attempt's, or one a crash left) stays once
    untouched; they hold the study's images, so not for ever."""
    keep_logs_for: Annotated[float, Field(gt=0)] = 30 * 86400.0
    """Seconds the attempts' logs kept in ``<work_dir>/logs`` stay."""
    report_interval: Annotated[float, Field(gt=0)] = 2.0
    """Seconds between ReportWorker heartbeats."""
    lease_wait: Annotated[float, Field(gt=0, le=60)] = 5.0
    """Long-poll of LeaseJob in seconds."""
    renew_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """Renew a lease after this fraction of its duration has passed."""
    kill_grace: Annotated[float, Field(ge=0)] = 2.0
    """Seconds between SIGTERM and SIGKILL of a command's process group."""
    finish_retry_seconds: Annotated[float, Field(gt=0)] = 60.0
    """How long FinishJob is retried while the catalog is unreachable."""


class AuditConfig(_Strict):
    """The node's append-only audit trail of DICOM access (``node.audit``)."""

    enabled: bool = True
    db_url: str | None = None
    """SQLAlchemy URL of the audit database; default ``<data_dir>/audit.sqlite``."""
    export: AuditExportSettings | None = None
    """Send every row to the site's Audit Record Repository (syslog, DICOM audit messages)."""
    keep_days: Annotated[int, Field(ge=0, le=36_500)] = 0
    """Prune rows older than this many days, daily (0: keep every row). Rows the export
    has not sent yet are kept."""

    @model_validator(mode="after")
    def _export_needs_trail(self) -> AuditConfig:
        if self.export is not None and not self.enabled:
            raise ValueError("[audit.export] needs the audit trail (enabled = true)")
        return self


class MetricsConfig(_Strict):
    """Prometheus metrics on ``http://host:port/metrics`` (``node.metrics``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    """Loopback by default: the figures are for the site's own monitoring."""
    port: Annotated[int, Field(ge=0, le=65535)] = 9464
    """0 = any free port (logged as ``event=metrics_serving port=…``)."""
    state_ttl: Annotated[float, Field(ge=0)] = 30.0
    """Seconds the index counts are reused between scrapes (counting a large index costs)."""
    cert_file: Path | None = None
    """HTTPS with this certificate (e.g. the node's grid certificate) and ``key_file``."""
    key_file: Path | None = None
    ca_file: Path | None = None
    """Only scrapers with a client certificate this CA signed (mutual TLS); needs HTTPS."""

    @model_validator(mode="after")
    def _tls_complete(self) -> MetricsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.ca_file is not None and self.cert_file is None:
            raise ValueError("ca_file (client certificates) needs cert_file and key_file")
        return self


class NodeConfig(_Strict):
    """The whole configuration of one node process."""

    name: str = "node"
    data_dir: Path = Path("var")
    db_url: str | None = None
    """SQLAlchemy URL of the local index; default SQLite under ``data_dir``."""
    default_collection: str = "local"
    dicom: DicomConfig = Field(default_factory=DicomConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    anonymizer: AnonymizerConfig = Field(default_factory=AnonymizerConfig)
    routes: tuple[RouteConfig, ...] = ()
    catalog: CatalogLinkConfig | None = None
    streams_dir: Path | None = None
    """Folder of processing stream manifests (``*.json`` or ``*/info.json``)."""
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @field_validator("name", "default_collection")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError(f"{value!r}: use letters, digits, '-', '_' or '.' (max 64)")
        return value

    @model_validator(mode="after")
    def _routes_distinct(self) -> NodeConfig:
        seen = {self.dicom.ae_title}
        if self.catalog is not None:
            seen.add(self.catalog.grid_ae_title)
            if self.catalog.grid_ae_title == self.dicom.ae_title:
                raise ValueError("catalog.grid_ae_title must differ from dicom.ae_title")
        for route in self.routes:
            if route.ae_title in seen:
                raise ValueError(f"routes: AE title {route.ae_title!r} is used twice")
            seen.add(route.ae_title)
            if route.collection == self.default_collection:
                raise ValueError(
                    f"routes: {route.ae_title} de-identifies into {route.collection!r}, the "
                    "identified default collection; use a research collection"
                )
        return self

    @model_validator(mode="after")
    def _copies_need_the_grid(self) -> NodeConfig:
        if self.dicom.commitment.copies > 1:
            if self.catalog is None:
                raise ValueError(
                    "dicom.commitment.copies > 1 needs a [catalog]: copies on other sites "
                    "are counted there"
                )
            if not self.catalog.publish_identified:
                raise ValueError(
                    "dicom.commitment.copies > 1 needs [catalog] publish_identified = true: "
                    "the originals a modality sends are replicated only once published"
                )
        return self

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def jobs_dir(self) -> Path:
        return self.worker.work_dir or self.data_dir / "jobs"

    @property
    def trigger_dir(self) -> Path:
        """Stream triggers not yet accepted by the catalog (durable, retried)."""
        return self.data_dir / "stream-triggers"

    @property
    def index_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite').resolve()}"

    @property
    def audit_url(self) -> str:
        if self.audit.db_url:
            return self.audit.db_url
        return f"sqlite:///{(self.data_dir / 'audit.sqlite').resolve()}"


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {path}: {err['msg']}")
    return "\n".join(lines)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Build the node configuration from a TOML file (optional) and CLI overrides.

    Raises :class:`ConfigError` listing every problem with its field path, so an admin
    (or Ansible's ``validate:``) sees all mistakes at once.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        for key in ("data_dir", "streams_dir"):
            if key in data and not Path(data[key]).is_absolute():
                data[key] = str(Path(path).parent / data[key])
    if overrides:
        data = _merge(data, overrides)
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
