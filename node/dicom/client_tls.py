"""DICOM TLS (PS3.15 Annex B) on the associations the node opens itself: C-MOVE
sub-operations, stream results and Storage Commitment reports.

A workstation that listens only on its TLS port would otherwise never receive what it
asked for, and a C-MOVE across the hospital network would carry PHI in clear. The client
contexts are built once, at start, so a missing or unreadable CA or certificate stops the
node with its path instead of failing the first move of the day.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from node.config import Destination, TlsConfig
from node.errors import ConfigError

TlsArgs = tuple[ssl.SSLContext, str]
"""What pynetdicom's ``AE.associate(tls_args=…)`` takes: the context and the server name."""


def client_context(ca_file: Path, identity: tuple[Path, Path] | None) -> ssl.SSLContext:
    """A context that trusts only ``ca_file``, checks the peer's name, speaks TLS 1.2 or
    later (BCP 195), and presents ``identity`` (certificate, key) when the peer asks."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if identity is not None:
        cert_file, key_file = identity
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


def destination_tls(
    destinations: Mapping[str, Destination], node_tls: TlsConfig | None
) -> dict[str, TlsArgs]:
    """The TLS arguments of every destination with ``tls = true``, by AE title.

    Destinations that trust the same CA share one context. Raises :class:`ConfigError`
    naming the destination and the file when a context cannot be built.
    """
    identity = (node_tls.cert_file, node_tls.key_file) if node_tls is not None else None
    shared: dict[Path, ssl.SSLContext] = {}
    found: dict[str, TlsArgs] = {}
    for name, destination in destinations.items():
        if not destination.tls:
            continue
        ca_file = destination.ca_file or (node_tls.ca_file if node_tls is not None else None)
        if ca_file is None:  # the configuration's validator refuses this; say so anyway
            raise ConfigError(f"[dicom.destinations.{name}] tls: no CA to check it against")
        if ca_file not in shared:
            try:
                shared[ca_file] = client_context(ca_file, identity)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"[dicom.destinations.{name}] TLS: cannot use {ca_file}"
                    + (f" with the node's certificate {identity[0]}" if identity else "")
                    + f": {exc}"
                ) from exc
        found[name] = (shared[ca_file], destination.server_name or destination.host)
    return found
