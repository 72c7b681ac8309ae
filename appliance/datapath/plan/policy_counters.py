"""Per-policy counters of a gateway member (pure): which nft named counters exist and which (pod IP . destination)
keys feed them.

What is counted: every packet of a flow SNATed here (both directions) and every new connection, per (policy, EIP,
family) - metrics `egressgw_policy_packets_total`, `egressgw_policy_bytes_total`,
`egressgw_policy_connections_total` with labels namespace / policy / eip / family (docs/operations.md).

How: the forward chain looks the flow's *original* tuple up (`ct original ip saddr`, the pod IP, in both
directions) in a hash map pod IP -> counter: a flow through the gateway is SNATed by one of its pod's steerings, so
when all of a pod IP's steerings here count toward one (policy, EIP) - the common case, and always the case of a
pod the pod-churn fast path adds - the pod IP alone names the counter. A pod IP whose steerings count toward several
(different policies or EIPs per destination) is keyed by (pod IP . destination) in an interval map instead, with
the SNAT maps' keys. New connections are counted from a second pair of maps, consulted only for `ct state new`
packets.

Why hash maps first: two more 10k-element interval maps (pipapo) made the full gateway apply 50 % slower and
doubled the one-pod fast path; hash maps of the same size cost a fraction of that (figures: docs/datapath.md,
"Metrics").

Why bounded: the *counters* (and so the metric label sets) are one pair per (policy, EIP, family) that has a steered
pod on this member - at most policies x EIPs x 2 - however many pods the policies select; the per-pod part lives only
in the maps' elements, never in a label. Counter names are a short hash of the labels (Kubernetes names do not fit an
nft object name), and the collector turns them back into labels from the current plan (`counter_labels`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.core.model import IPAddress, PolicyRef
from appliance.datapath.plan.gateway import SnatEntry
from appliance.datapath.plan.nft_rendering import Element, addr, net

#: counter name prefixes: packets+bytes of a policy's flows / its new connections
PACKETS_PREFIX = "pol_"
CONNECTIONS_PREFIX = "polc_"
#: the `eip` label of useNodeIP traffic (masqueraded to the member's uplink address), as the per-EIP metrics use it
NODE_IP = "nodeip"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class PolicyLabels:
    """The label set of one per-policy counter pair. `namespace` is "" for a cluster policy."""

    namespace: str
    policy: str
    eip: str
    family: str
    kind: str = ""

    def values(self) -> list[str]:
        return [self.namespace, self.policy, self.eip, self.family]


@functools.lru_cache(maxsize=4096)
def _digest(labels: PolicyLabels) -> str:
    text = "\0".join((labels.kind, labels.namespace, labels.policy, labels.eip, labels.family))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def packets_counter(labels: PolicyLabels) -> str:
    return PACKETS_PREFIX + _digest(labels)


def connections_counter(labels: PolicyLabels) -> str:
    return CONNECTIONS_PREFIX + _digest(labels)


def labels_for(policy: PolicyRef, eip: IPAddress | None, version: int) -> PolicyLabels:
    """The label set of a steering of `policy` leaving as `eip` (None: useNodeIP) in IP `version`."""
    return PolicyLabels(namespace=policy.namespace, policy=policy.name, kind=str(policy.kind),
                        eip=NODE_IP if eip is None else addr(eip), family=str(version))


def labels_of(entry: SnatEntry) -> PolicyLabels | None:
    """The label set an SNAT entry counts toward (None: an entry planned without its policy)."""
    if entry.policy is None:
        return None
    return labels_for(entry.policy, entry.eip, entry.pod_ip.version)


def entry_key(entry: SnatEntry) -> str:
    """The map key of an entry, in the canonical text the SNAT maps use (`pod . destination`)."""
    return f"{addr(entry.pod_ip)} . {net(entry.destination)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyMaps:
    """The elements of one family's four maps: by pod IP (`pod_packets`, `pod_connections`) and, for pod IPs whose
    steerings count toward several label sets, by (pod IP . destination) (`packets`, `connections`)."""

    pod_packets: frozenset[Element] = frozenset()
    pod_connections: frozenset[Element] = frozenset()
    packets: frozenset[Element] = frozenset()
    connections: frozenset[Element] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyIndex:
    """Everything per-policy of one gateway plan: counter name -> labels, and the map elements per IP family."""

    labels: dict[str, PolicyLabels]
    maps: dict[int, PolicyMaps]


#: one-slot memo of `index`: the gateway table and the pod-churn fast path index the same plan's entries
_memo: list[tuple[tuple[SnatEntry, ...], PolicyIndex]] = []


def index(entries: tuple[SnatEntry, ...]) -> PolicyIndex:
    """One pass over a plan's SNAT entries (10k entries: tens of ms; the label sets are built once per (policy, EIP,
    family), looked up by plain strings, not by hashing policy objects and addresses per entry)."""
    if _memo and _memo[0][0] is entries:
        return _memo[0][1]
    named: dict[tuple[str, str, str, str, int], tuple[PolicyLabels, str, str]] = {}
    labels: dict[str, PolicyLabels] = {}
    by_pod: dict[int, dict[str, list[tuple[SnatEntry, str, str]]]] = {4: {}, 6: {}}
    for e in entries:
        policy = e.policy
        if policy is None:
            continue
        version = e.pod_ip.version
        key = (policy.kind, policy.namespace, policy.name, e.counter, version)  # e.counter: the EIP's token
        hit = named.get(key)
        if hit is None:
            found = labels_for(policy, e.eip, version)
            hit = named[key] = (found, packets_counter(found), connections_counter(found))
            labels[hit[1]] = labels[hit[2]] = found
        by_pod[version].setdefault(addr(e.pod_ip), []).append((e, hit[1], hit[2]))
    maps: dict[int, PolicyMaps] = {}
    for family, pods in by_pod.items():
        pod_p: list[Element] = []
        pod_c: list[Element] = []
        dest_p: list[Element] = []
        dest_c: list[Element] = []
        for pod, items in pods.items():
            if len({pc for _, pc, _ in items}) == 1:
                pod_p.append((pod, items[0][1]))
                pod_c.append((pod, items[0][2]))
                continue
            for e, pc, cc in items:
                dest_p.append((entry_key(e), pc))
                dest_c.append((entry_key(e), cc))
        maps[family] = PolicyMaps(pod_packets=frozenset(pod_p), pod_connections=frozenset(pod_c),
                                   packets=frozenset(dest_p), connections=frozenset(dest_c))
    result = PolicyIndex(labels=labels, maps=maps)
    _memo[:] = [(entries, result)]
    return result


def counter_labels(entries: tuple[SnatEntry, ...]) -> dict[str, PolicyLabels]:
    """Counter name -> labels, for both counters of every (policy, EIP, family) among `entries`."""
    return index(entries).labels


def map_elements(entries: tuple[SnatEntry, ...], version: int) -> PolicyMaps:
    """The per-policy map elements of one IP family (values are counter names)."""
    return index(entries).maps.get(version, PolicyMaps())


def split_readings(
    readings: Mapping[str, tuple[int, int]], labels: Mapping[str, PolicyLabels]
) -> tuple[dict[PolicyLabels, tuple[int, int]], dict[PolicyLabels, int]]:
    """Raw counter readings -> ((packets, bytes) per label set, connections per label set), for the counters both
    read from the kernel and known to the current plan (a counter of a policy gone since is not exported)."""
    traffic: dict[PolicyLabels, tuple[int, int]] = {}
    conns: dict[PolicyLabels, int] = {}
    for name, (packets, octets) in readings.items():
        labels_ = labels.get(name)
        if labels_ is None:
            continue
        if name.startswith(CONNECTIONS_PREFIX):
            conns[labels_] = packets
        elif name.startswith(PACKETS_PREFIX):
            traffic[labels_] = (packets, octets)
    return traffic, conns
