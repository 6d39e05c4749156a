"""Send the audit log to the site's Audit Record Repository, row after row, without losing
one when the repository is away.

Why a cursor and not a queue: the audit table already is the durable spool. Each exporter
keeps how far it has got (``security_audit_export``, one row per collector, in the audit
log's own database) and sends the rows after it in chain order. The cursor moves only after
a batch was handed to the collector; a repository that is down, a refused TLS handshake or a
killed process leave it where it was, and the same rows go again later. It is written to
disk once a round finds nothing new, every ``cursor_interval`` (5 s) during a burst, when
sending fails and at stop, not after every batch: a query's row is then not followed by a
second disk sync. So delivery is at least once:
after a kill -9, up to the last 5 s of rows are sent again (each message carries the row's
``seq`` as its PROCID so the repository can tell).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, model_validator
from sqlalchemy.exc import SQLAlchemyError

from catalog.security.atna import AuditMessage, to_xml
from catalog.security.audit import AuditLog, AuditRecord
from catalog.security.errors import AuditError
from catalog.security.models import AuditExportCursor
from catalog.security.syslog import SyslogError, SyslogSender, SyslogTarget, format_message
from storage.sql import write_begin

LOG = logging.getLogger("gridpacs.audit.export")
_CURSORS = cast(sa.Table, AuditExportCursor.__table__)


class AuditExportSettings(BaseModel):
    """``[audit.export]`` on a node, ``[security.audit_export]`` on a catalog replica."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    """``tls://arr.hospital.org:6514`` (RFC 5425), ``tcp://…`` or ``udp://…`` (no TLS)."""
    ca_file: Path | None = None
    """CA that signed the repository's certificate (needed for ``tls://``)."""
    cert_file: Path | None = None
    """This system's certificate for mutual TLS (IHE ATNA node authentication)."""
    key_file: Path | None = None
    server_name: str | None = None
    """Name checked in the repository's certificate; default: the URL's host."""
    site_id: str | None = None
    """``AuditEnterpriseSiteID`` of every message; default: the node's or replica's name."""
    batch_size: int = 200
    insecure: bool = False
    """Allow ``tcp://`` and ``udp://``: the rows name patients, and these carry them in clear."""

    @model_validator(mode="after")
    def _consistent(self) -> AuditExportSettings:
        target = SyslogTarget.parse(self.url)  # ValueError names the URL
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if target.scheme == "tls" and self.ca_file is None:
            raise ValueError(f"{self.url}: tls:// needs ca_file (the repository's CA)")
        if target.scheme != "tls" and (self.ca_file or self.cert_file or self.server_name):
            raise ValueError(f"{self.url}: ca_file, cert_file and server_name need tls://")
        if target.scheme != "tls" and not self.insecure:
            raise ValueError(f"{self.url}: audit rows name patients and {target.scheme}:// "
                             "sends them in clear; use tls://, or set insecure = true")  # fmt: skip
        if not 1 <= self.batch_size <= 10_000:
            raise ValueError("batch_size must be between 1 and 10000")
        return self

    @property
    def collector(self) -> str:
        """The collector's name, as its export cursor is keyed (``tls://host:port``)."""
        return str(SyslogTarget.parse(self.url))


def build_sender(settings: AuditExportSettings) -> SyslogSender:
    """The connection :class:`AuditExporter` sends through, TLS material loaded now so a
    wrong path stops the process at start (``ValueError`` naming the file)."""
    target = SyslogTarget.parse(settings.url)
    context = None
    if target.scheme == "tls":
        try:
            context = ssl.create_default_context(cafile=str(settings.ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if settings.cert_file is not None and settings.key_file is not None:
                context.load_cert_chain(str(settings.cert_file), str(settings.key_file))
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(str(f) for f in (settings.ca_file, settings.cert_file) if f)
            raise ValueError(f"audit export TLS material ({files}): {exc}") from exc
    return SyslogSender(target, ssl_context=context, server_name=settings.server_name)


def exporter_for(
    log: AuditLog,
    settings: AuditExportSettings,
    to_message: Callable[[AuditRecord], AuditMessage],
    *,
    app_name: str,
    emit: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> AuditExporter:
    """The exporter a node or a replica runs for ``settings``, nudged by every append
    (``ValueError`` naming an unreadable TLS file: the process stops at start)."""
    exporter = AuditExporter(log, build_sender(settings), to_message, app_name=app_name,
                             batch_size=settings.batch_size, emit=emit)  # fmt: skip
    log.on_append(exporter.nudge)
    return exporter


@dataclass(frozen=True)
class ExportStatus:
    """What ``node status`` and the metrics show: how many rows the collector is owed."""

    collector: str
    exported_seq: int
    head_seq: int
    last_error: str | None
    last_sent_at: dt.datetime | None

    @property
    def behind(self) -> int:
        return max(0, self.head_seq - self.exported_seq)


def read_cursor(engine: sa.Engine, name: str) -> int:
    """The last ``seq`` handed to collector ``name`` (0: nothing yet)."""
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(_CURSORS.c.seq).where(_CURSORS.c.name == name)
        ).scalar_one_or_none()
    return int(value or 0)


def write_cursor(engine: sa.Engine, name: str, seq: int) -> None:
    """Move collector ``name``'s cursor to ``seq`` (never backwards)."""
    now = dt.datetime.now(dt.UTC)
    with engine.connect() as conn, write_begin(conn).begin():  # SQLite: lock at BEGIN
        moved = conn.execute(
            sa.update(_CURSORS)
            .where(_CURSORS.c.name == name, _CURSORS.c.seq < seq)
            .values(seq=seq, updated_at=now)
        ).rowcount
        if not moved:
            exists = conn.execute(
                sa.select(_CURSORS.c.seq).where(_CURSORS.c.name == name)
            ).scalar_one_or_none()
            if exists is None:
                conn.execute(sa.insert(_CURSORS).values(name=name, seq=seq, updated_at=now))


class AuditExporter:
    """A daemon thread sending rows after the cursor, in batches, with a growing pause
    after failures (``retry_min`` doubling up to ``retry_max``)."""

    def __init__(
        self,
        log: AuditLog,
        sender: SyslogSender,
        to_message: Callable[[AuditRecord], AuditMessage],
        *,
        app_name: str,
        hostname: str | None = None,
        batch_size: int = 200,
        poll_interval: float = 1.0,
        linger: float = 0.2,
        cursor_interval: float = 5.0,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
        emit: Callable[[str, int, dict[str, Any]], None] | None = None,
    ) -> None:
        self._log = log
        self._emit = emit or log_line
        self._engine = log.engine
        self._sender = sender
        self._to_message = to_message
        self._app_name = app_name
        self._hostname = hostname or socket.gethostname()
        self._batch_size = batch_size
        self._poll = poll_interval
        self._linger = linger
        self._cursor_interval = cursor_interval
        self._persisted_at = time.monotonic()
        self._retry_min = retry_min
        self._retry_max = retry_max
        self.collector = str(sender.target)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self._last_sent_at: dt.datetime | None = None
        self._cursor = read_cursor(self._engine, self.collector)
        self._persisted = self._cursor

    def nudge(self) -> None:
        """A row was appended: send it without waiting for the next poll."""
        self._wake.set()

    def export_once(self, *, interruptible: bool = False, persist: bool = True) -> int:
        """Send the rows owed, batch after batch; returns how many were sent.

        ``interruptible``: return between batches once :meth:`stop` was called.
        ``persist``: write the cursor when done (the thread writes it every
        ``cursor_interval`` instead: a query's own row is not followed by a second disk sync
        for the cursor; a kill -9 re-sends at most that interval's rows). Raises
        :class:`SyslogError` (collector away) or :class:`AuditError` (log unreadable); the
        cursor then stays at the last batch handed over.
        """
        sent = 0
        while not (interruptible and self._stop.is_set()):
            rows = self._log.after(self._cursor, self._batch_size)
            if not rows:
                break
            self._sender.send([self._format(row) for row in rows])
            self._cursor = rows[-1].seq
            self._last_sent_at = dt.datetime.now(dt.UTC)
            sent += len(rows)
        if persist:
            self.persist_cursor()
        return sent

    def persist_cursor(self) -> None:
        """Write how far the collector has got (nothing when it has not moved)."""
        if self._cursor == self._persisted:
            return
        try:
            write_cursor(self._engine, self.collector, self._cursor)
        except SQLAlchemyError as exc:  # sent: the worst is sending the rows again
            raise AuditError(f"cannot move the export cursor: {exc}") from exc
        self._persisted = self._cursor
        self._persisted_at = time.monotonic()

    @property
    def exported_seq(self) -> int:
        """The last row handed to the collector (rows after it are owed)."""
        return self._cursor

    def status(self) -> ExportStatus:
        head, _ = self._log.head()
        return ExportStatus(
            self.collector, self._cursor, head, self._last_error, self._last_sent_at
        )

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-export", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is owed once more (the stop's own rows too), then stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._sender.close()

    def _format(self, row: AuditRecord) -> bytes:
        return format_message(
            to_xml(self._to_message(row)),
            at=row.at,
            hostname=self._hostname,
            app_name=self._app_name,
            procid=str(row.seq),
        )

    def _run(self) -> None:
        delay = self._retry_min
        failing_since: float | None = None
        while True:
            self._wake.clear()
            stopping = self._stop.is_set()  # then one last round, not interrupted
            try:
                sent = self.export_once(interruptible=not stopping, persist=stopping)
                if not sent or time.monotonic() - self._persisted_at >= self._cursor_interval:
                    self.persist_cursor()  # quiet, or due: the disk sync bothers nobody
            except (SyslogError, AuditError) as exc:
                self._last_error = str(exc)
                with contextlib.suppress(AuditError):
                    self.persist_cursor()  # what was handed over before the failure
                if failing_since is None:
                    failing_since = time.monotonic()
                    self._emit("audit_export_failed", logging.WARNING,
                               {"collector": self.collector, "exported_seq": self._cursor,
                                "error": str(exc)})  # fmt: skip
                if stopping:
                    return
                self._stop.wait(delay)
                delay = min(self._retry_max, delay * 2)
                continue
            if failing_since is not None:
                self._emit("audit_export_resumed", logging.INFO,
                           {"collector": self.collector, "exported_seq": self._cursor,
                            "down_s": round(time.monotonic() - failing_since, 1)})  # fmt: skip
                failing_since = None
            self._last_error = None
            delay = self._retry_min
            if sent:
                self._emit("audit_exported", logging.DEBUG,
                           {"collector": self.collector, "rows": sent,
                            "exported_seq": self._cursor})  # fmt: skip
            if stopping:
                return
            if self._wake.wait(self._poll) and not self._stop.is_set():
                self._stop.wait(self._linger)  # let a burst of rows gather into one batch


def log_line(event: str, level: int, fields: dict[str, Any]) -> None:
    """One structured line, ``event=… key=value …``, like the rest of the logs."""
    parts = [f"event={event}"] + [f"{k}={_value(v)}" for k, v in fields.items()]
    LOG.log(level, " ".join(parts))


def _value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "\\\n='):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
