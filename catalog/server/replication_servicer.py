"""The gRPC face of replication planning: ``gridpacs.catalog.v1.ReplicationService``."""

from __future__ import annotations

import grpc

from catalog.errors import InvalidFilter
from catalog.placement.planner import PullPlanner
from catalog.placement.policy import PlannedPull
from catalog.server.status import guarded
from catalog.v1 import replication_pb2 as pb
from catalog.v1 import replication_pb2_grpc as pb_grpc

REPLICATION_SERVICE = pb.DESCRIPTOR.services_by_name["ReplicationService"].full_name


def pull_to_pb(pull: PlannedPull, target: pb.PlannedPull) -> None:
    holding = pull.holding
    target.sop_instance_uid = holding.sop_instance_uid
    target.sop_class_uid = holding.sop_class_uid
    target.study_instance_uid = holding.study_instance_uid
    target.series_instance_uid = holding.series_instance_uid
    target.collection = holding.collection
    target.size = holding.size
    target.factor = pull.factor
    target.copies = pull.copies
    for source in pull.sources:
        target.sources.add(node=source.node, peer_address=source.peer_address)


class ReplicationServicer(pb_grpc.ReplicationServiceServicer):
    """PlanPulls: the asking node's share of the copies the grid is missing; PlanRemovals:
    the copies it must drop because the grid rejected them."""

    def __init__(self, planner: PullPlanner) -> None:
        self._planner = planner

    def PlanPulls(
        self, request: pb.PlanPullsRequest, context: grpc.ServicerContext
    ) -> pb.PlanPullsResponse:
        if request.announce_only:
            self._planner.note_refusals(request.node, list(request.refused_collections))
            return pb.PlanPullsResponse()
        pulls = guarded(
            "PlanPulls",
            context,
            lambda: self._planner.plan(
                request.node,
                refused_collections=list(request.refused_collections),
                limit=max(0, request.limit),
            ),
        )
        response = pb.PlanPullsResponse()
        for pull in pulls:
            pull_to_pb(pull, response.pulls.add())
        return response

    def PlanRemovals(
        self, request: pb.PlanRemovalsRequest, context: grpc.ServicerContext
    ) -> pb.PlanRemovalsResponse:
        removals = guarded(
            "PlanRemovals",
            context,
            lambda: self._planner.removals(request.node, limit=max(0, request.limit)),
        )
        response = pb.PlanRemovalsResponse()
        for removal in removals:
            response.removals.add(
                sop_instance_uid=removal.sop_instance_uid,
                collection=removal.collection,
                study_instance_uid=removal.study_instance_uid,
                series_instance_uid=removal.series_instance_uid,
                reason=removal.reason,
                rejected_by=removal.rejected_by,
            )
        return response

    def CountCopies(
        self, request: pb.CountCopiesRequest, context: grpc.ServicerContext
    ) -> pb.CountCopiesResponse:
        counted, factor = guarded(
            "CountCopies", context, lambda: _count_copies(self._planner, request)
        )
        response = pb.CountCopiesResponse(factor=factor)
        for uid in request.sop_instance_uids:
            response.instances.add(sop_instance_uid=uid, copies=counted.get(uid, 0))
        return response


MAX_COUNT = 1_000
"""UIDs one CountCopies may ask about."""


def _count_copies(
    planner: PullPlanner, request: pb.CountCopiesRequest
) -> tuple[dict[str, int], int]:
    if not request.collection:
        raise InvalidFilter("CountCopies needs a collection")
    if len(request.sop_instance_uids) > MAX_COUNT:
        raise InvalidFilter(f"at most {MAX_COUNT} UIDs per CountCopies")
    uids = list(request.sop_instance_uids)
    return planner.copies_of(request.collection, uids), planner.policy.factor_for(
        request.collection
    )


def add_replication_service(server: grpc.Server, planner: PullPlanner) -> None:
    """Serve ReplicationService on ``server`` (before it starts)."""
    pb_grpc.add_ReplicationServiceServicer_to_server(ReplicationServicer(planner), server)
