"""Send each retrieved instance in a transfer syntax the receiving association accepted.

The archive keeps what the modality sent (JPEG Lossless, JPEG-LS, JPEG 2000 …), and a
C-MOVE or C-GET offers that syntax first. A workstation, a viewer or a research tool may
accept only uncompressed syntaxes. pynetdicom converts between uncompressed syntaxes
itself but sends compressed bytes only under their own syntax, so such an instance used
to fail its sub-operation and never arrive. Here it is decoded to Explicit VR Little
Endian by pydicom's decoders (Pillow, GDCM) and keeps its SOP Instance UID: a change of
transfer syntax is not a new instance, and decoding loses nothing more than the stored
bytes already had. An instance no accepted context can carry is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from node.errors import NodeError
from node.services.retrieve import StoredDataset

#: SOP Class UID → transfer syntaxes the peer accepted for us to send it in.
Accepted = Mapping[str, frozenset[str]]


class CannotSend(NodeError):
    """No accepted presentation context can carry this instance; the message says why."""


def accepted_for_sending(contexts: Iterable[PresentationContext]) -> dict[str, frozenset[str]]:
    """Per SOP class, the syntaxes of the accepted contexts in which this side may send a
    C-STORE (its SCU role: a C-MOVE's own association, a C-GET requestor's SCP roles)."""
    found: dict[str, set[str]] = {}
    for cx in contexts:
        if cx.as_scu and cx.abstract_syntax and cx.transfer_syntax:
            found.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return {sop_class: frozenset(syntaxes) for sop_class, syntaxes in found.items()}


class StoreAssociation:
    """Catches the association pynetdicom opens to a C-MOVE destination (its
    ``EVT_ACCEPTED`` fires before ``associate`` returns), so the sub-operations can see
    what the destination accepted."""

    def __init__(self) -> None:
        self.accepted: dict[str, frozenset[str]] = {}

    def on_accepted(self, event: Event) -> None:
        self.accepted = accepted_for_sending(event.assoc.accepted_contexts)


def fit_to(dataset: Dataset, accepted: Accepted) -> tuple[Dataset, bool]:
    """``dataset`` in a syntax ``accepted`` for its SOP class, and whether it was decoded.

    Uncompressed data goes as it is (pynetdicom converts between those). Compressed data
    goes as stored when its syntax was accepted, else decoded when an uncompressed syntax
    was. Raises :class:`CannotSend` when neither holds or the pixels do not decode.
    """
    syntax = UID(str(dataset.file_meta.get("TransferSyntaxUID", "")))
    if not syntax.is_compressed:
        return dataset, False
    offered = accepted.get(str(dataset.get("SOPClassUID", "")), frozenset())
    if syntax in offered:
        return dataset, False
    if not any(not UID(t).is_compressed for t in offered):
        raise CannotSend(
            f"the destination accepted neither {syntax.name} nor an uncompressed syntax "
            f"for {UID(str(dataset.get('SOPClassUID', ''))).name}"
        )
    if isinstance(dataset, StoredDataset):
        dataset = dataset.parsed()
    try:
        dataset.decompress(generate_instance_uid=False)
    except Exception as exc:  # the decoder plug-ins raise what their libraries raise
        raise CannotSend(
            f"the destination accepted only uncompressed syntaxes and {syntax.name} "
            f"does not decode here: {exc}"
        ) from exc
    return dataset, True
