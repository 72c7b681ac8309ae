"""Per-policy drop counters of a worker (pure): which nft named counters exist and which keys feed them.

What is counted (metric `egressgw_policy_dropped_packets_total{namespace,policy,eip,family,reason}`, exported by the
agent; docs/operations.md): the worker drops that belong to one steering, so to one policy -
- `no_gateway`: a selected pod's packet whose gateway instance has no alive member under FailClosed (the steer map
  gave it the drop mark);
- `source_unbound`: strict source validation, a steered packet from a pod IP whose pod interface was not found.
Labels: the steering's policy, the EIP it would leave as (`nodeip` for useNodeIP, as the gateway's per-policy
metrics say), the family of the pod's traffic.

How: only a packet already on a drop path looks its counter up (the drop rules jump to a small chain that counts
and drops), so forwarded packets pay nothing more than before. The lookup mirrors the gateway's
(`policy_counters`): a hash map pod IP -> counter when every drop-bound key of that pod IP counts toward one
(policy, EIP, family, reason) - the common case, and always the case the pod-churn fast path adds - else an interval
map (pod IP . destination) -> counter with the steer map's keys. The maps hold only drop-bound keys (steer entries
with the drop mark, steered entries of unbound pod IPs): their size follows what is dropped, not what is steered.

Bounded: one counter per (policy, EIP, family, reason) with a drop-bound pod on this worker, at most policies x EIPs
x 2 x 2; pod IPs live only in map elements. Names are a short hash (Kubernetes names do not fit an nft object name);
the collector turns them back into labels from the plan (`drop_labels`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.datapath.plan.nft_rendering import Element, addr, net
from appliance.datapath.plan.policy_counters import PolicyLabels, labels_for
from appliance.datapath.plan.worker import SourceValidation, SteerEntry, WorkerPlan

#: counter name prefix of the per-policy drop counters
DROP_PREFIX = "pold_"


class PolicyDropReason(enum.StrEnum):
    """The metric's `reason` label (the worker's drop counter names without `drop_`)."""

    NO_GATEWAY = "no_gateway"
    SOURCE_UNBOUND = "source_unbound"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class DropLabels:
    """The label set of one per-policy drop counter."""

    labels: PolicyLabels
    reason: PolicyDropReason

    def values(self) -> list[str]:
        return [*self.labels.values(), str(self.reason)]


def drop_counter(labels: DropLabels) -> str:
    """The counter name of a label set (a hash: stable, short, a valid nft identifier)."""
    p = labels.labels
    text = "\0".join((str(labels.reason), p.kind, p.namespace, p.policy, p.eip, p.family))
    return DROP_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class DropMaps:
    """The elements of one family's two maps: by pod IP, and by (pod IP . destination) for the rest."""

    pods: frozenset[Element] = frozenset()
    destinations: frozenset[Element] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class DropIndex:
    """Everything per-policy-drop of one worker plan: counter name -> labels, map elements per IP family."""

    labels: dict[str, DropLabels]
    maps: dict[int, DropMaps]


def _reason(entry: SteerEntry, drop_mark: int, unbound: frozenset[tuple[int, int]]) -> PolicyDropReason | None:
    if entry.mark == drop_mark:
        return PolicyDropReason.NO_GATEWAY
    if unbound and (entry.pod_ip.version, int(entry.pod_ip)) in unbound:
        return PolicyDropReason.SOURCE_UNBOUND
    return None


#: one-slot memo of `index`: the worker table and the agent's fast path index the same plan
_memo: list[tuple[WorkerPlan, DropIndex]] = []


def index(plan: WorkerPlan) -> DropIndex:
    """One pass over the plan's steer entries: the drop-bound ones, their counters and map elements."""
    if _memo and _memo[0][0] is plan:
        return _memo[0][1]
    strict = plan.source_validation is SourceValidation.STRICT
    unbound = frozenset((a.version, int(a)) for a in plan.unbound) if strict else frozenset()
    labels: dict[str, DropLabels] = {}
    named: dict[tuple[object, ...], str] = {}  # label sets built once per (policy, EIP, family, reason)
    by_pod: dict[int, dict[str, list[tuple[SteerEntry, str]]]] = {4: {}, 6: {}}
    for e in plan.steer:
        if e.policy is None:
            continue
        reason = _reason(e, plan.marks.drop_mark, unbound)
        if reason is None:
            continue
        key = (e.policy, e.eip, e.pod_ip.version, reason)
        name = named.get(key, "")
        if not name:
            found = DropLabels(labels=labels_for(e.policy, e.eip, e.pod_ip.version), reason=reason)
            name = named[key] = drop_counter(found)
            labels[name] = found
        by_pod[e.pod_ip.version].setdefault(addr(e.pod_ip), []).append((e, name))
    maps: dict[int, DropMaps] = {}
    for family, pods in by_pod.items():
        single: list[Element] = []
        keyed: list[Element] = []
        for pod, items in pods.items():
            names = {n for _, n in items}
            if len(names) == 1:
                single.append((pod, items[0][1]))
            else:
                keyed += [(f"{pod} . {net(e.destination)}", n) for e, n in items]
        maps[family] = DropMaps(pods=frozenset(single), destinations=frozenset(keyed))
    result = DropIndex(labels=labels, maps=maps)
    _memo[:] = [(plan, result)]
    return result


def drop_labels(plan: WorkerPlan) -> dict[str, DropLabels]:
    """Counter name -> labels of every per-policy drop counter of the plan."""
    return index(plan).labels


def drop_readings(readings: Mapping[str, tuple[int, int]], labels: Mapping[str, DropLabels]) -> dict[DropLabels, int]:
    """Raw counter readings -> dropped packets per label set, for the counters known to the current plan."""
    return {labels[n]: packets for n, (packets, _) in readings.items() if n in labels}
