"""A syslog collector for tests: a real TCP (optionally mutual-TLS) listener that reads
octet-counted RFC 5425 frames, the way an Audit Record Repository does, and can be stopped
and started again on the same port (a repository that goes away and comes back)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from xml.etree import ElementTree as ET

BOM = b"\xef\xbb\xbf"


class Collector:
    def __init__(self, *, context: ssl.SSLContext | None = None, port: int = 0) -> None:
        self._context = context
        self.port = port
        self.messages: list[bytes] = []
        self.peers_certs: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    def start(self) -> Collector:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(8)
        self.port = server.getsockname()[1]
        self._server = server
        thread = threading.Thread(target=self._accept, args=(server,), daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Close the listener and every connection (the repository goes down)."""
        if self._server is not None:
            # wakes the accept() blocked in the other thread and stops listening now
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self._lock:
            raise AssertionError(f"{len(self.messages)} messages arrived, {count} expected")

    def documents(self) -> list[ET.Element]:
        """Each message's XML payload, parsed."""
        with self._lock:
            return [ET.fromstring(m.split(BOM, 1)[1]) for m in self.messages]

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            try:
                if self._context is not None:
                    conn = self._context.wrap_socket(conn, server_side=True)
                    cert = conn.getpeercert()
                    if cert:
                        self.peers_certs.append(dict(cert))
            except (OSError, ssl.SSLError):
                conn.close()
                continue
            self._conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b" " in buffer:
                length_text, rest = buffer.split(b" ", 1)
                length = int(length_text)
                if len(rest) < length:
                    break
                with self._lock:
                    self.messages.append(rest[:length])
                buffer = rest[length:]
