"""Whether the agent stands down: its own node is a member of an EgressGateway (pure).

Why: the worker agent and the gateway service own the same kernel objects on a node (the `inet egressgw` table, the
rule priorities, the tunnel devices and routes of the same prefix and protocol), so the two roles cannot share a
node. A gateway member's data path is the gateway service's; the agent there steps aside (docs/operations.md
"One node, both roles"). The decision uses only the snapshot the agent already has: the valid gateways'
`nodeSelector` against the labels of the agent's own Node, the same match that makes the node a member
(`appliance.policy.placement.members_of`). A node the snapshot does not know is no member.

While standing down the agent removes its kernel state once (unless a gateway service already owns the table:
`appliance.agent.datapath.RealWorkerDataPath.stand_down`), logs `agent.standing_down gateway=...`, reports one
`AgentStandingDown` note per gateway (`plan.skipped`, `egressgw_plan_skipped{role="agent",
reason="AgentStandingDown"}`) and plans nothing; when the node stops being a member it resumes with a full pass.
"""

from __future__ import annotations

from appliance.core.snapshot import Snapshot
from appliance.runtime.skips import SkipNote

REASON = "AgentStandingDown"


def member_of(snapshot: Snapshot, node: str) -> tuple[str, ...]:
    """The (valid) EgressGateways whose nodeSelector selects `node`'s labels, sorted; () when none or unknown."""
    me = next((n for n in snapshot.nodes if n.name == node), None)
    if me is None:
        return ()
    labels = me.label_map
    return tuple(sorted(gw.name for gw in snapshot.gateways
                        if gw.node_selector is not None and gw.node_selector.matches(labels)))


def gateway_owns_table(comment: str | None) -> bool:
    """Whether the `inet egressgw` table (its comment, None when there is no table) is a gateway's: then the gateway
    service has taken the node's data path over and the standing-down agent must not remove it."""
    return comment is not None and comment.split(" ", 2)[:2] == ["egressgw", "gateway"]


def stand_down_notes(gateways: tuple[str, ...], node: str) -> frozenset[SkipNote]:
    """One note per gateway the node is a member of (logged and counted like the planners' skips)."""
    return frozenset(SkipNote(planner="agent", reason=REASON, subject=gw, subject_kind="gateway",
                              detail=f"node {node} is a member: the gateway service owns its data path")
                     for gw in gateways)
