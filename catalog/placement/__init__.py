"""Replication between sites: the policy (pure), the planner (catalog side) and the client
nodes use to ask what to copy. See docs/grid.md, "Replication"."""

from catalog.placement.planner import PullPlanner
from catalog.placement.policy import (
    Holding,
    NodeState,
    PlannedPull,
    PlannedRemoval,
    PullSource,
    ReplicationPolicy,
    plan_for,
    targets,
)

__all__ = [
    "Holding",
    "NodeState",
    "PlannedPull",
    "PlannedRemoval",
    "PullPlanner",
    "PullSource",
    "ReplicationPolicy",
    "plan_for",
    "targets",
]
