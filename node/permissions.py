"""What each calling AE title may ask of the node.

Why: the calling-AE allowlist lets a modality in, and with it every service: a CT scanner
that only has to store could C-FIND every patient of the hospital and C-MOVE their images
anywhere the node sends. A site gives each AE title the services its role needs (a
modality stores and asks for commitment, a reading workstation queries and retrieves),
as Orthanc's per-modality ``AllowStore``/``AllowFind``/… and DCMTK's ``dcmqrscp`` access
rules do. Verification (C-ECHO) is always allowed: it reveals nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Service(StrEnum):
    """A service a calling AE title may be granted."""

    STORE = "store"
    FIND = "find"
    MOVE = "move"
    GET = "get"
    COMMIT = "commit"


EVERY_SERVICE = frozenset(Service)
DEFAULT_KEY = "*"
"""The ``[dicom.permissions]`` key that sets what AE titles not listed may do."""


@dataclass(frozen=True)
class Permissions:
    """Services by calling AE title; AE titles not listed get ``default``."""

    by_ae: Mapping[str, frozenset[Service]] = field(default_factory=dict)
    default: frozenset[Service] = EVERY_SERVICE

    @classmethod
    def from_config(cls, table: Mapping[str, Iterable[str]]) -> Permissions:
        """From ``[dicom.permissions]`` (validated there): ``{AE: [service, …], "*": […]}``."""
        granted = {ae: frozenset(Service(s) for s in services) for ae, services in table.items()}
        default = granted.pop(DEFAULT_KEY, EVERY_SERVICE)
        return cls(granted, default)

    def allows(self, calling_ae: str, service: Service) -> bool:
        return service in self.by_ae.get(calling_ae.strip(), self.default)
