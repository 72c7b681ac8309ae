"""Which selected pod IPs the gateways do not carry, and why, per policy (pure): for the policies' status.

The gateway planner (`appliance.datapath.plan.gateway.plan_gateway`) skips a steered pod IP when its worker has no
known underlay address (`UnknownWorker`), when the same pod IP is steered from two workers (`PodIPOnTwoWorkers`), or
when a destination of it overlaps another one of the same pod IP (`OverlappingDestination`). Such a pod silently
gets no egress through the gateway, so the policy's status says how many and why.

The skips depend only on the Intent, the workers' addresses and the set of gateway instances a member serves, so
they are recomputed here exactly, with the planner itself: once per distinct set of instances (members serving the
same instances plan the same skips), not once per member. The report is bounded: a count per reason and at most
`MAX_EXAMPLES` example pod IPs, whatever the number of pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from appliance.core.intent import Intent
from appliance.core.model import IPAddress, PolicyRef, TunnelType
from appliance.core.snapshot import Snapshot
from appliance.datapath.plan.gateway import GatewaySettings, GatewaySkip, GatewaySkipReason, plan_gateway, workers_of

#: example pod IPs per reason in a status (a status must stay small with 10k pods)
MAX_EXAMPLES = 3
#: the planner only needs to know that a member has WireGuard devices, not their names
_WIREGUARD_PLACEHOLDER = ("status-planning",)


@dataclass(frozen=True, slots=True, kw_only=True)
class SkipCount:
    """The pod IPs of one policy skipped for one reason: how many, and the lowest few."""

    reason: GatewaySkipReason
    count: int
    examples: tuple[IPAddress, ...]


def gateway_skips(intent: Intent, workers: Mapping[str, Sequence[IPAddress]]) -> frozenset[GatewaySkip]:
    """Every skip any gateway member plans, from one planner run per distinct set of instances served."""
    served: dict[str, set[str]] = {}
    for instance in intent.instances:
        for m in instance.members:
            served.setdefault(m.name, set()).add(instance.name)
    representative: dict[frozenset[str], str] = {}
    for name in sorted(served):
        representative.setdefault(frozenset(served[name]), name)
    skips: set[GatewaySkip] = set()
    for names, member in representative.items():
        wireguard = any((served_instance := intent.instance(n)) is not None
                        and served_instance.tunnel.type is TunnelType.WIREGUARD for n in names)
        plan = plan_gateway(intent, member=member, workers=workers, settings=GatewaySettings(),
                            wireguard_devices=_WIREGUARD_PLACEHOLDER if wireguard else ())
        skips.update(plan.skipped)
    return frozenset(skips)


def _ip_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


def skips_by_policy(skips: Iterable[GatewaySkip]) -> dict[PolicyRef, tuple[SkipCount, ...]]:
    """Per policy, per reason (most pod IPs first, then by name): distinct pod IPs counted, the lowest as examples."""
    ips: dict[PolicyRef, dict[GatewaySkipReason, set[IPAddress]]] = {}
    for skip in skips:
        if skip.policy is not None:
            ips.setdefault(skip.policy, {}).setdefault(skip.reason, set()).add(skip.pod_ip)
    out: dict[PolicyRef, tuple[SkipCount, ...]] = {}
    for policy, by_reason in ips.items():
        counts = [SkipCount(reason=reason, count=len(found), examples=tuple(sorted(found, key=_ip_key)[:MAX_EXAMPLES]))
                  for reason, found in by_reason.items()]
        out[policy] = tuple(sorted(counts, key=lambda c: (-c.count, str(c.reason))))
    return out


def not_carried(snapshot: Snapshot, intent: Intent) -> dict[PolicyRef, tuple[SkipCount, ...]]:
    """The policies with skipped pod IPs and their counts (policies without skips are absent)."""
    return skips_by_policy(gateway_skips(intent, workers_of(snapshot)))
