"""Syslog transport of audit messages: RFC 5424 messages over TLS (RFC 5425), TCP (RFC 6587
octet counting) or UDP (RFC 5426).

Why not :class:`logging.handlers.SysLogHandler`: it writes the older BSD format, cannot speak
TLS, frames TCP with a trailing newline (which an XML payload may contain) and swallows
errors. An exporter that must not lose a row needs the opposite: the standard framing, mutual
TLS as IHE ATNA asks (ITI-19), and an exception when a message was not handed over, so the
row is tried again.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"tls": 6514, "tcp": 514, "udp": 514}
#: ``<85>``: facility 10 (security/authorization), severity 5 (notice), as IHE ITI-20 asks.
AUDIT_PRIORITY = 10 * 8 + 5
#: The MSGID IHE ITI-20 gives DICOM audit messages.
AUDIT_MSGID = "IHE+RFC-3881"
_BOM = b"\xef\xbb\xbf"
MAX_UDP_BYTES = 65_000


class SyslogError(OSError):
    """A message was not handed over to the collector (the caller keeps it and retries)."""


@dataclass(frozen=True)
class SyslogTarget:
    """Where messages go: ``tls://arr.example.org:6514``, ``tcp://…``, ``udp://…``."""

    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> SyslogTarget:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"syslog URL {url!r}: the scheme must be tls, tcp or udp")
        if not parts.hostname:
            raise ValueError(f"syslog URL {url!r} names no host")
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as exc:
            raise ValueError(f"syslog URL {url!r}: {exc}") from exc
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"syslog URL {url!r}: only scheme://host:port")
        return cls(scheme, parts.hostname, port)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def format_message(
    payload: bytes,
    *,
    at: dt.datetime,
    hostname: str,
    app_name: str,
    procid: str = "-",
    msgid: str = AUDIT_MSGID,
    priority: int = AUDIT_PRIORITY,
) -> bytes:
    """One RFC 5424 message: header, no structured data, a UTF-8 payload marked by its BOM."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    stamp = at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = " ".join(
        (
            f"<{priority}>1",
            stamp,
            _field(hostname, 255),
            _field(app_name, 48),
            _field(procid, 128),
            _field(msgid, 32),
            "-",
        )
    )
    return header.encode("ascii") + b" " + _BOM + payload


def frame(message: bytes) -> bytes:
    """Octet-counting framing (RFC 5425 §4.3, RFC 6587 §3.4.1): ``LEN SP MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class SyslogSender:
    """A connection to one collector, opened on first use and again after a failure."""

    def __init__(
        self,
        target: SyslogTarget,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if target.scheme == "tls" and ssl_context is None:
            raise ValueError("a tls:// collector needs an SSL context")
        self.target = target
        self._context = ssl_context
        self._server_name = server_name or target.host
        self._timeout = timeout
        self._sock: socket.socket | None = None

    def send(self, messages: Iterable[bytes]) -> int:
        """Hand every message to the collector; raises :class:`SyslogError` otherwise.

        A stream connection is used for all of them and kept; on any error it is closed, so
        the next call starts afresh. Returns the number of bytes written.
        """
        try:
            if self.target.scheme == "udp":
                return self._send_datagrams(messages)
            data = b"".join(frame(m) for m in messages)
            sock = self._connected()
            sock.sendall(data)
            return len(data)
        except (OSError, ssl.SSLError) as exc:
            self.close()
            raise SyslogError(f"syslog {self.target}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _connected(self) -> socket.socket:
        if self._sock is not None and _peer_closed(self._sock, self._timeout):
            self.close()  # the collector hung up since the last batch: reconnect, do not lose
        if self._sock is None:
            raw = socket.create_connection((self.target.host, self.target.port), self._timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.target.scheme == "tls":
                assert self._context is not None
                try:
                    raw = self._context.wrap_socket(raw, server_hostname=self._server_name)
                except BaseException:
                    raw.close()
                    raise
            self._sock = raw
        return self._sock

    def _send_datagrams(self, messages: Iterable[bytes]) -> int:
        sent = 0
        with socket.socket(_family(self.target.host), socket.SOCK_DGRAM) as sock:
            sock.settimeout(self._timeout)
            for message in messages:
                if len(message) > MAX_UDP_BYTES:
                    raise SyslogError(
                        f"syslog {self.target}: a message of {len(message)} bytes does not fit "
                        "a datagram; use tls:// or tcp://"
                    )
                sent += sock.sendto(message, (self.target.host, self.target.port))
        return sent


def _peer_closed(sock: socket.socket, timeout: float) -> bool:
    """True when the collector closed the connection (a read would return EOF now).

    Collectors never write on a syslog connection, so anything readable is its end.
    """
    try:
        sock.setblocking(False)
        try:
            raw = sock.recv(1)
        finally:
            sock.settimeout(timeout)
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:
        return True
    return raw == b""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _field(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces, ``-`` when empty."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"
