"""Maintenance drain through the API: is this member drained by the `egressgw.io/drain` annotation?

An operator (`kubectl egressgw drain MEMBER`) annotates the member's Node (a cluster-node member) or the appliance's
member Lease (`egressgw-member-<name>`); the value is the reason. The gateway service feeds the answer to its health
as the `not_in_maintenance` check (`bgp.health`): the member withdraws at once (or de-prefers, per
`bgp.withdraw_on_unhealthy`) and keeps its data path; once the annotation is gone it comes back through the normal
rise + failback hold-down. The answer is read from the snapshot, so it holds across a service restart.
"""

from __future__ import annotations

from appliance.core.snapshot import Snapshot


def drained_by_annotation(snapshot: Snapshot | None, member: str) -> str | None:
    """The drain reason when member `member` (a Node name or an appliance name) carries the drain annotation; ""
    for an empty value; None when it is not drained or the snapshot is not known yet."""
    if snapshot is None:
        return None
    for node in snapshot.nodes:
        if node.name == member and node.drain_reason is not None:
            return node.drain_reason
    for appliance in snapshot.appliances:
        if appliance.name == member and appliance.drain_reason is not None:
            return appliance.drain_reason
    return None
