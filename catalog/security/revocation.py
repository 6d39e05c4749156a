"""The grid CA's revocation list as a server holds it: checked, and re-read when replaced.

gRPC in Python offers no revocation check in the TLS handshake, so a server given a CRL
completes the handshake and then refuses every call of a revoked certificate
(:class:`catalog.server.interceptors.RevocationInterceptor`). The list is re-read when its
file changes (at most once a second), so copying a new ``crl.pem`` to the hosts takes effect
without a restart. A replacement that cannot be read or is not signed by the grid CA is
logged and ignored: the list in force stays, the server is never left with none. Past its
next update the list is still enforced, and a warning is logged (once an hour): an expired
list must not open the grid to every revoked certificate, nor shut it to every host.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from catalog.security.errors import PkiError, TlsConfigError
from catalog.security.pki import CrlInfo, describe_crl, load_certificate, load_crl

log = logging.getLogger("gridpacs.security")

#: Seconds between looks at the file; a replaced list takes effect within this.
RECHECK_SECONDS = 1.0
#: Seconds between two warnings that the list is past its next update.
STALE_WARNING_SECONDS = 3600.0


class RevocationList:
    """The serial numbers a CRL file revokes, kept current with the file.

    Raises :class:`TlsConfigError` at construction when the file is missing, unreadable or
    not signed by ``ca_file``'s CA: a server asked to enforce revocation does not start
    without it.
    """

    def __init__(
        self,
        crl_file: str | os.PathLike[str],
        ca_file: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(crl_file)
        try:
            self._ca = load_certificate(Path(ca_file).read_bytes())
        except (OSError, PkiError) as exc:
            raise TlsConfigError(f"cannot read the CA certificate {ca_file}: {exc}") from exc
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = clock()
        self._warned: float | None = None
        try:
            self._stamp, self._serials, self._next_update = self._read()
        except (OSError, PkiError) as exc:
            raise TlsConfigError(f"revocation list {self.path}: {exc}") from exc
        self._warn_if_stale(self._checked)
        log.info("event=crl_loaded path=%s revoked=%d next_update=%s", self.path,
                 len(self._serials), self._next_update.isoformat())  # fmt: skip

    def is_revoked(self, cert_pem: bytes) -> bool:
        """True when the certificate in ``cert_pem`` is on the list in force."""
        self._refresh()
        return _serial(cert_pem) in self._serials

    def _refresh(self) -> None:
        now = self._clock()
        if now - self._checked < RECHECK_SECONDS:
            return
        with self._lock:
            if now - self._checked < RECHECK_SECONDS:
                return
            self._checked = now
            try:
                if _stamp(self.path) != self._stamp:
                    self._stamp, self._serials, self._next_update = self._read()
                    log.info("event=crl_reloaded path=%s revoked=%d next_update=%s", self.path,
                             len(self._serials), self._next_update.isoformat())  # fmt: skip
            except (OSError, PkiError) as exc:
                log.error("event=crl_reload_failed path=%s error=%r kept_revoked=%d",
                          self.path, str(exc), len(self._serials))  # fmt: skip
            self._warn_if_stale(now)

    def _read(self) -> tuple[tuple[int, int, int], frozenset[int], dt.datetime]:
        stamp = _stamp(self.path)
        info = describe_crl(load_crl(self.path.read_bytes(), self._ca), self.path)
        return stamp, frozenset(int(e.serial, 16) for e in info.revoked), info.next_update

    def _warn_if_stale(self, now: float) -> None:
        if self._next_update > dt.datetime.now(dt.UTC):
            return
        if self._warned is not None and now - self._warned < STALE_WARNING_SECONDS:
            return
        self._warned = now
        _warn_stale(self.path, self._next_update)


def check_crl_file(crl_file: str | os.PathLike[str], ca_file: str | os.PathLike[str]) -> CrlInfo:
    """Read a CRL file and check that the CA in ``ca_file`` signed it, for a server that
    hands the file to OpenSSL (DICOM TLS), whose own errors name neither file. Warns when
    the list is past its next update: OpenSSL then refuses every client certificate.

    Raises
    ------
    TlsConfigError
        A file is missing or unreadable, or the list is not the CA's.
    """
    try:
        ca = load_certificate(Path(ca_file).read_bytes())
        info = describe_crl(load_crl(Path(crl_file).read_bytes(), ca), Path(crl_file))
    except (OSError, PkiError) as exc:
        raise TlsConfigError(f"revocation list {crl_file}: {exc}") from exc
    if info.next_update <= dt.datetime.now(dt.UTC):
        _warn_stale(info.path, info.next_update)
    return info


def _warn_stale(path: Path, next_update: dt.datetime) -> None:
    log.warning("event=crl_stale path=%s next_update=%s hint=%s", path, next_update.isoformat(),
                "'run gridpacs pki crl, then copy crl.pem to every host'")  # fmt: skip


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=1024)
def _serial(cert_pem: bytes) -> int:
    """The serial of a PEM certificate (hosts present the same few: parsed once each)."""
    return int(x509.load_pem_x509_certificate(cert_pem).serial_number)
