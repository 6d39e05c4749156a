"""The audit log sent to an Audit Record Repository: RFC 5424 messages over mutual TLS with
octet counting, in chain order, none lost while the repository is away, none sent twice by a
restarted exporter; the catalog's rows as DICOM audit messages."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from catalog.security.atna import (
    MINOR_FAILURE,
    SERIOUS_FAILURE,
    SUCCESS,
    AuditSource,
    catalog_message,
    network_address,
    outcome_indicator,
    to_xml,
)
from catalog.security.audit import AuditLog
from catalog.security.audit_export import (
    AuditExporter,
    AuditExportSettings,
    build_sender,
    read_cursor,
    write_cursor,
)
from catalog.security.syslog import (
    SyslogError,
    SyslogSender,
    SyslogTarget,
    format_message,
    frame,
)
from tests.catalog.security.collector import BOM, Collector
from tests.catalog.security.conftest import Grid

pytestmark = pytest.mark.timeout(60)
SOURCE = AuditSource("catalog1", "hospital-a")
QUERY = "/gridpacs.catalog.v1.CatalogService/QueryStudies"


def _collector_context(grid: Grid) -> ssl.SSLContext:
    """The repository's side: its certificate, and client certificates of the grid CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(grid.server.cert, grid.server.key)
    context.load_verify_locations(grid.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _settings(grid: Grid, port: int, **extra: object) -> AuditExportSettings:
    return AuditExportSettings(
        url=f"tls://localhost:{port}",
        ca_file=grid.ca,
        cert_file=grid.node.cert,
        key_file=grid.node.key,
        **extra,  # type: ignore[arg-type]
    )


def _exporter(log: AuditLog, settings: AuditExportSettings) -> AuditExporter:
    return AuditExporter(
        log,
        build_sender(settings),
        lambda row: catalog_message(row, SOURCE),
        app_name="gridpacs-catalog",
        hostname="catalog-host",
        poll_interval=0.05,
        retry_min=0.05,
        retry_max=0.2,
    )


def test_a_message_is_rfc5424_with_the_atna_header_and_an_octet_count() -> None:
    at = dt.datetime(2026, 11, 25, 6, 1, 2, 345678, tzinfo=dt.UTC)
    message = format_message(b"<AuditMessage/>", at=at, hostname="node a", app_name="gridpacs",
                             procid="17")  # fmt: skip
    assert message == (
        b"<85>1 2026-11-25T06:01:02.345678Z nodea gridpacs 17 IHE+RFC-3881 - " + BOM
        + b"<AuditMessage/>"
    )  # fmt: skip
    assert frame(message) == str(len(message)).encode() + b" " + message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("syslog://arr:514", "scheme"),
        ("tls://:6514", "no host"),
        ("tls://arr:6514/path", "only scheme"),
        ("tls://arr:99999", "(?i)port out of range"),
    ],
)
def test_collector_urls_are_checked(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SyslogTarget.parse(url)


def test_settings_refuse_what_would_send_in_clear_or_not_at_all(grid: Grid) -> None:
    assert SyslogTarget.parse("tls://arr.example.org").port == 6514
    with pytest.raises(ValidationError, match="needs ca_file"):
        AuditExportSettings(url="tls://arr:6514")
    with pytest.raises(ValidationError, match="need tls://"):
        AuditExportSettings(url="tcp://arr:514", ca_file=grid.ca, insecure=True)
    with pytest.raises(ValidationError, match="sends them in clear"):
        AuditExportSettings(url="udp://arr:514")  # patients' names on the wire, unasked
    assert AuditExportSettings(url="udp://127.0.0.1", insecure=True).collector == (
        "udp://127.0.0.1:514"
    )
    with pytest.raises(ValidationError, match="go together"):
        AuditExportSettings(url="tls://arr:6514", ca_file=grid.ca, cert_file=grid.node.cert)
    with pytest.raises(ValueError, match=r"missing\.pem"):
        build_sender(AuditExportSettings(url="tls://arr", ca_file=Path("/nowhere/missing.pem")))


def test_rows_reach_the_repository_in_order_over_mutual_tls(
    grid: Grid, sqlite_engine: sa.Engine
) -> None:
    log = AuditLog(sqlite_engine)
    for n in range(5):
        log.record(f"alice{n}", QUERY, {"request": {"patient_id": f"P{n}"}},
                   "ipv4:10.0.0.7:5000", "OK")  # fmt: skip
    collector = Collector(context=_collector_context(grid)).start()
    exporter = _exporter(log, _settings(grid, collector.port))
    assert exporter.export_once() == 5
    messages = collector.wait_for(5)
    assert [m.split(b" ")[4] for m in messages] == [b"1", b"2", b"3", b"4", b"5"]  # seq order
    assert collector.peers_certs, "the repository saw the exporter's client certificate"
    doc = collector.documents()[0]
    assert doc.find("EventIdentification/EventID").get("csd-code") == "110112"  # type: ignore[union-attr]
    user = doc.find("ActiveParticipant")
    assert user is not None and user.get("UserID") == "alice0"
    assert user.get("NetworkAccessPointID") == "10.0.0.7"
    assert user.get("NetworkAccessPointTypeCode") == "2"
    assert read_cursor(sqlite_engine, exporter.collector) == 5
    assert exporter.status().behind == 0
    exporter.stop()
    collector.stop()


def test_nothing_is_lost_while_the_repository_is_away_and_a_restart_sends_nothing_twice(
    grid: Grid, sqlite_engine: sa.Engine
) -> None:
    log = AuditLog(sqlite_engine)
    collector = Collector(context=_collector_context(grid)).start()
    port = collector.port
    exporter = _exporter(log, _settings(grid, port))
    log.on_append(exporter.nudge)
    exporter.start()
    log.record("alice", QUERY, {}, "ipv4:10.0.0.7:1", "OK")
    collector.wait_for(1)

    collector.stop()  # the repository goes away; rows keep coming
    for n in range(30):
        log.record(f"bob{n}", QUERY, {}, "ipv4:10.0.0.8:1", "OK")
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while exporter.status().last_error is None and dt.datetime.now() < deadline:
        log.record("carol", QUERY, {}, "ipv4:10.0.0.9:1", "OK")  # written while it is down
    status = exporter.status()
    assert status.last_error is not None and status.behind > 0
    exporter.stop()  # stops while the repository is away: the cursor stays behind
    owed_from = read_cursor(sqlite_engine, exporter.collector)
    assert owed_from < log.head()[0]

    back = Collector(context=_collector_context(grid), port=port).start()
    again = _exporter(log, _settings(grid, port))  # a restarted process
    again.start()
    head = log.head()[0]
    messages = back.wait_for(head - owed_from)
    again.stop()
    seqs = [int(m.split(b" ")[4]) for m in messages]
    assert seqs == list(range(owed_from + 1, head + 1))  # each owed row once, in order
    # whatever the first collector received before it went is the rest: together, all of them
    received = {int(m.split(b" ")[4]) for m in collector.messages} | set(seqs)
    assert received == set(range(1, head + 1))
    assert read_cursor(sqlite_engine, again.collector) == head
    back.stop()


def test_a_collector_that_hung_up_between_batches_gets_the_next_batch_on_a_new_connection(
    grid: Grid,
) -> None:
    collector = Collector().start()
    sender = SyslogSender(SyslogTarget("tcp", "127.0.0.1", collector.port))
    sender.send([b"one"])
    collector.wait_for(1)
    for conn in list(collector._conns):  # the repository restarts its listener's connection
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
    collector._conns.clear()
    sender.send([b"two", b"three"])
    assert collector.wait_for(3) == [b"one", b"two", b"three"]
    collector.stop()
    sender.close()
    with pytest.raises(SyslogError):
        SyslogSender(SyslogTarget("tcp", "127.0.0.1", collector.port)).send([b"lost?"])


def test_a_repository_with_a_certificate_of_another_ca_gets_nothing(
    grid: Grid, sqlite_engine: sa.Engine
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(grid.rogue.cert, grid.rogue.key)
    rogue = Collector(context=context).start()
    log = AuditLog(sqlite_engine)
    log.record("alice", QUERY, {}, "ipv4:10.0.0.7:1", "OK")
    exporter = _exporter(log, _settings(grid, rogue.port, server_name="node1"))
    with pytest.raises(SyslogError, match="CERTIFICATE_VERIFY_FAILED"):
        exporter.export_once()
    assert rogue.messages == [] and read_cursor(sqlite_engine, exporter.collector) == 0
    rogue.stop()


def test_udp_carries_one_message_per_datagram() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(5)
        sender = SyslogSender(SyslogTarget("udp", "127.0.0.1", server.getsockname()[1]))
        sender.send([b"<85>1 a", b"<85>1 b"])
        assert [server.recv(100), server.recv(100)] == [b"<85>1 a", b"<85>1 b"]


@pytest.mark.parametrize(
    ("outcome", "indicator"),
    [
        ("OK", SUCCESS),
        ("served", SUCCESS),
        ("released", SUCCESS),
        ("0x0000", SUCCESS),
        ("0xB000", MINOR_FAILURE),
        ("0x0124", MINOR_FAILURE),
        ("0xA801", MINOR_FAILURE),
        ("PERMISSION_DENIED", MINOR_FAILURE),
        ("0xC000", SERIOUS_FAILURE),
        ("0xA700", SERIOUS_FAILURE),
        ("aborted", SERIOUS_FAILURE),
        ("UNAVAILABLE", SERIOUS_FAILURE),
    ],
)
def test_outcomes_map_to_the_event_outcome_indicator(outcome: str, indicator: int) -> None:
    assert outcome_indicator(outcome) == indicator


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.5:51234", "10.0.0.5"),
        ("10.0.0.5:104", "10.0.0.5"),
        ("ipv6:[::1]:5000", "::1"),
        ("[fe80::1]:104", "fe80::1"),
        ("-", None),
        ("local", None),
    ],
)
def test_peer_addresses_become_network_access_points(peer: str, address: str | None) -> None:
    assert network_address(peer) == address


def test_catalog_rows_become_queries_alerts_and_activities(sqlite_engine: sa.Engine) -> None:
    log = AuditLog(sqlite_engine)
    query = log.record("token:alice", QUERY, {"request": {"patient_id": "P1"}},
                       "ipv4:10.1.1.1:9", "PERMISSION_DENIED")  # fmt: skip
    token = log.record("root", "token.create", {"user": "bob", "token_id": "t1"}, "cli", "OK")
    job = log.record("cert:node1", "/gridpacs.catalog.v1.JobService/SubmitJobs", {}, "-", "OK")
    from xml.etree import ElementTree as ET

    q = ET.fromstring(to_xml(catalog_message(query, SOURCE)))
    assert q.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
    obj = q.find("ParticipantObjectIdentification")
    assert obj is not None and obj.get("ParticipantObjectID") == QUERY
    import base64

    assert b'"patient_id":"P1"' in base64.b64decode(obj.findtext("ParticipantObjectQuery") or "")
    source = q.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditEnterpriseSiteID") == "hospital-a"
    # schema order: event, participants, source, objects
    assert [c.tag for c in q] == ["EventIdentification", "ActiveParticipant",
                                  "ActiveParticipant", "AuditSourceIdentification",
                                  "ParticipantObjectIdentification"]  # fmt: skip

    t = ET.fromstring(to_xml(catalog_message(token, SOURCE)))
    assert t.find("EventIdentification/EventID").get("csd-code") == "110113"  # type: ignore[union-attr]
    assert t.find("EventIdentification/EventTypeCode").get("csd-code") == "110137"  # type: ignore[union-attr]
    assert t.find("ParticipantObjectIdentification").get("ParticipantObjectID") == "bob"  # type: ignore[union-attr]

    j = ET.fromstring(to_xml(catalog_message(job, SOURCE)))
    assert j.find("EventIdentification/EventID").get("csd-code") == "110100"  # type: ignore[union-attr]


def test_cursor_writes_never_make_an_append_fail(tmp_path: Path) -> None:
    """A node's reads are refused when their row cannot be written, so the exporter's own
    writes beside the log must never make an append fail (SQLite: a deferred transaction
    that read before another connection committed cannot take the write lock)."""
    from node.audit import open_audit

    log = open_audit(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    errors: list[BaseException] = []
    done = threading.Event()

    def move_cursors() -> None:
        seq = 0
        while not done.is_set():
            seq += 1
            try:
                write_cursor(log.engine, "tls://arr:6514", seq)
            except BaseException as exc:  # reported below
                errors.append(exc)

    writer = threading.Thread(target=move_cursors)
    writer.start()
    try:
        for n in range(300):
            log.record("WS1", "dicom.find", {"n": n}, "10.0.0.1:1", "served")
    finally:
        done.set()
        writer.join()
    assert errors == []
    assert log.head()[0] == 300
