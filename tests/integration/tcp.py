"""TCP_NODELAY for the tests' pynetdicom clients (what ``TCP_NODELAY=1`` does for DCMTK).

pynetdicom leaves Nagle's algorithm on and has no option for socket flags; its P-DATA writes
then wait for the peer's delayed ACK (~40-50 ms per C-STORE on Linux), which would make the
test clients, not the node, the bottleneck. Only sockets the tests open are affected.
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.transport import AssociationSocket

from node.dicom.reactor import install_race_free_loop

_installed = False


def disable_nagle_for_pynetdicom_clients() -> None:
    """Wrap pynetdicom's requestor socket factory so every new socket sets TCP_NODELAY."""
    global _installed
    if _installed:
        return
    original = AssociationSocket._create_socket

    def create(self: AssociationSocket, address: Any) -> socket.socket:
        sock = original(self, address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    AssociationSocket._create_socket = create  # type: ignore[method-assign]
    # and the node's race-free association loop: pynetdicom's own loses a response now and
    # then to a server that answers in under a millisecond (node/dicom/reactor.py)
    install_race_free_loop()
    _installed = True
