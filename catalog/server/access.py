"""``gridpacs.catalog.v1.AccessService``: authorize a researcher's retrieve and sign a grant.

The catalog is where tokens, roles and the audit log live, so it decides; the nodes that hold
the data only verify the signed grant (:mod:`catalog.security.grants`). The call itself is
audited by the :class:`~catalog.server.interceptors.AuditInterceptor` like every query.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import replace

import grpc

from catalog.db.filters import Scope
from catalog.records import InstanceLocation, QueryFilter
from catalog.security.errors import SecurityError
from catalog.security.grants import GrantSigner
from catalog.security.principal import Principal, PrincipalKind
from catalog.security.tls import peer_identity
from catalog.server import convert
from catalog.server.interceptors import current_principal
from catalog.service import CatalogService
from catalog.v1 import access_pb2 as pb
from catalog.v1 import access_pb2_grpc as pb_grpc

log = logging.getLogger("catalog.access")
MAX_STUDIES = 100
PAGE = 200
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class AccessDenied(Exception):
    """Carries the status a refusal is answered with."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


def is_uid(text: str) -> bool:
    """True for a DICOM UID (digits and dots, no empty component, at most 64 characters)."""
    return 0 < len(text) <= 64 and UID_RE.match(text) is not None


class AccessServicer(pb_grpc.AccessServiceServicer):
    """Answers AuthorizeRetrieve for token holders; ``signer`` None means no grant key.

    ``identified``: collections the catalog knows hold identified data. Their copies are
    offered only to admins of the collection; an instance with no other copy makes the whole
    request ``PERMISSION_DENIED`` (audited), before any node is asked. Nodes enforce the same
    rule for their own identified collection from the grant, whatever this list says.
    """

    def __init__(
        self,
        service: CatalogService,
        signer: GrantSigner | None,
        *,
        identified: frozenset[str] = frozenset(),
    ) -> None:
        self._service = service
        self._signer = signer
        self._identified = identified

    def AuthorizeRetrieve(
        self, request: pb.AuthorizeRetrieveRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AuthorizeRetrieveResponse]:
        try:
            principal, signer = self._check(request)
            scope = (
                Scope()
                if principal.reads_all
                else Scope(collections=frozenset(principal.readable_collections()))
            )
            query = QueryFilter(
                study_instance_uids=tuple(request.study_instance_uids),
                collections=tuple(request.collections),
            )
            located = list(self._service.locate_instances(query, scope))
            locations = [self._allowed(principal, loc) for loc in located]
            if not locations:
                raise AccessDenied(
                    grpc.StatusCode.NOT_FOUND,
                    f"no instance of the requested studies in a collection {principal.name} "
                    "may read",
                )
            collections = {
                h.collection: principal.is_admin(h.collection)
                for loc in locations
                for h in loc.holders
            }
            peer = peer_identity(context)
            grant, expires = signer.sign(
                user=principal.name,
                token_id=principal.token_id or "",
                studies={loc.study_instance_uid for loc in locations},
                collections=collections,
                client_fingerprint=peer.fingerprint_sha256 if peer and peer.pem else None,
            )
        except AccessDenied as exc:
            log.info("event=retrieve_refused code=%s details=%s", exc.code.name, exc)
            context.abort(exc.code, str(exc))
        except SecurityError as exc:
            log.info("event=retrieve_refused code=PERMISSION_DENIED details=%s", exc)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        log.info(
            "event=retrieve_authorized user=%s token_id=%s studies=%d instances=%d "
            "collections=%s expires_at=%d",
            principal.name, principal.token_id, len(request.study_instance_uids),
            len(locations), ",".join(sorted(collections)), expires,
        )  # fmt: skip
        first = pb.AuthorizeRetrieveResponse(grant=grant, expires_at=expires)
        for name, identified in sorted(collections.items()):
            first.collections.add(collection=name, identified_allowed=identified)
        yield first
        for start in range(0, len(locations), PAGE):
            page = pb.AuthorizeRetrieveResponse()
            for loc in locations[start : start + PAGE]:
                _location_to_pb(loc, page.locations.add())
            yield page

    def _allowed(self, principal: Principal, loc: InstanceLocation) -> InstanceLocation:
        """The location with only the copies this principal may be served."""
        keep = [
            i
            for i, h in enumerate(loc.holders)
            if principal.can_read(h.collection)
            and (h.collection not in self._identified or principal.is_admin(h.collection))
        ]
        if not keep:
            refused = sorted({h.collection for h in loc.holders})
            raise AccessDenied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"collection {', '.join(refused)} holds identified data; {principal.name}'s "
                "role does not allow retrieving it (admin of the collection needed)",
            )
        if len(keep) == len(loc.holders):
            return loc
        return replace(
            loc,
            holders=tuple(loc.holders[i] for i in keep),
            peer_addresses=tuple(loc.peer_addresses[i] for i in keep),
            blob_keys=tuple(loc.blob_keys[i] for i in keep if i < len(loc.blob_keys)),
        )

    def _check(self, request: pb.AuthorizeRetrieveRequest) -> tuple[Principal, GrantSigner]:
        if self._signer is None:
            raise AccessDenied(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this catalog replica signs no retrieve grants (set security.grant_key_file)",
            )
        principal = current_principal()
        if principal is None or principal.kind is not PrincipalKind.TOKEN:
            raise AccessDenied(
                grpc.StatusCode.PERMISSION_DENIED, "retrieve grants are issued to API tokens only"
            )
        studies = list(request.study_instance_uids)
        if not 0 < len(studies) <= MAX_STUDIES:
            raise AccessDenied(
                grpc.StatusCode.INVALID_ARGUMENT, f"name 1 to {MAX_STUDIES} studies per call"
            )
        bad = [s for s in studies if not is_uid(s)]
        if bad:
            raise AccessDenied(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a DICOM UID: {bad[0][:80]!r}"
            )
        for collection in request.collections:
            principal.require_read(collection)
        return principal, self._signer


def _location_to_pb(location: InstanceLocation, target: pb.RetrieveLocation) -> None:
    convert.location_to_pb(location, target.location)
    target.sha256.extend(location.blob_keys)
