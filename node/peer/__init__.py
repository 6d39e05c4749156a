"""Node-to-node transfer over gRPC (``gridpacs.node.v1.PeerService``): chunked, SHA-256
verified end to end, mTLS between nodes of the grid CA."""

from node.peer.client import PeerClient, PeerTransferError
from node.peer.server import PeerServer

__all__ = ["PeerClient", "PeerServer", "PeerTransferError"]
