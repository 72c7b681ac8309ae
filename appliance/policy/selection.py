"""Which pod IPs a policy selects (pure): pod eligibility, namespace/label/subnet matching, and a pod index.

Why an index: resolution runs on every snapshot change, with thousands of pods and policies. Matching every policy
against every pod is O(pods x policies); instead pods are indexed once per snapshot by namespace, by
(namespace, label key, label value) and by IP (sorted integers per family, for `podSubnet`), so each policy only
looks at its candidates. `explaining` uses the same predicates, one pod at a time, so the two cannot disagree.

Rules (docs/policy-resolution.md):
- a pod is eligible when it has IPs, is not hostNetwork, is scheduled (node_name set) and not finished
  (phase Succeeded/Failed);
- an EgressPolicy looks at pods of its own namespace; an EgressClusterPolicy at pods of every namespace matched by
  `namespaceSelector` (None = every namespace);
- `podSelector` selects all IPs of the matching pods; `podSubnet` selects the pod IPs inside the subnets; with both
  set, an IP must satisfy both; with neither, nothing is selected.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from appliance.core.model import EgressPolicy, IPAddress, IPNetwork, LabelSelector, Namespace, Pod, PolicyKind

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


class Ineligible(enum.StrEnum):
    """Why a pod can never be selected by any policy."""

    NO_IPS = "NoPodIPs"
    HOST_NETWORK = "HostNetwork"
    NOT_SCHEDULED = "NotScheduled"
    FINISHED = "Finished"


def ineligibility(pod: Pod) -> Ineligible | None:
    """None when the pod may be selected, else why not."""
    if pod.host_network:
        return Ineligible.HOST_NETWORK
    if pod.phase in FINISHED_PHASES:
        return Ineligible.FINISHED
    if not pod.node_name:
        return Ineligible.NOT_SCHEDULED
    if not pod.ips:
        return Ineligible.NO_IPS
    return None


class Mismatch(enum.StrEnum):
    """Why one policy does not select one pod IP."""

    NAMESPACE = "NamespaceMismatch"
    SELECTOR = "SelectorMismatch"
    SUBNET = "PodSubnetMismatch"
    NO_APPLIED_TO = "NothingApplied"


def namespace_matches(policy: EgressPolicy, namespace: str, ns_labels: Mapping[str, str]) -> bool:
    if policy.ref.kind is PolicyKind.NAMESPACED:
        return policy.ref.namespace == namespace
    sel = policy.applied_to.namespace_selector
    return sel is None or sel.matches(ns_labels)


def ip_mismatch(
    policy: EgressPolicy, pod_namespace: str, ns_labels: Mapping[str, str], pod_labels: Mapping[str, str], ip: IPAddress
) -> Mismatch | None:
    """None when `policy` selects `ip` of a pod with these labels in this namespace (eligibility checked elsewhere)."""
    if not namespace_matches(policy, pod_namespace, ns_labels):
        return Mismatch.NAMESPACE
    applied = policy.applied_to
    if applied.pod_selector is None and not applied.pod_subnet:
        return Mismatch.NO_APPLIED_TO
    if applied.pod_selector is not None and not applied.pod_selector.matches(pod_labels):
        return Mismatch.SELECTOR
    if applied.pod_subnet and not any(ip in net for net in applied.pod_subnet if net.version == ip.version):
        return Mismatch.SUBNET
    return None


class IndexedPod(NamedTuple):
    """An eligible pod with what selection needs precomputed (a NamedTuple: built 10k times per resolution)."""

    pod: Pod
    labels: Mapping[str, str]
    #: per pod IP (same positions as pod.ips): (family, integer value) - the sort key of steerings
    ip_keys: tuple[tuple[int, int], ...]


class PodIndex:
    """Eligible pods of one snapshot, indexed for selection. Build once per snapshot; read-only afterwards."""

    def __init__(self, pods: Iterable[Pod], namespaces: Iterable[Namespace]) -> None:
        eligible = [p for p in pods if ineligibility(p) is None]  # order is irrelevant: callers sort what they emit
        self.pods: tuple[IndexedPod, ...] = tuple(
            IndexedPod(p, dict(p.labels), tuple((a.version, int(a)) for a in p.ips)) for p in eligible
        )
        self.ns_labels: dict[str, dict[str, str]] = {ns.name: dict(ns.labels) for ns in namespaces}
        self._by_ns: dict[str, list[int]] = {}
        self._by_label: dict[tuple[str, str, str], list[int]] = {}
        by_ip: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for i, ip_pod in enumerate(self.pods):
            ns = ip_pod.pod.namespace
            self._by_ns.setdefault(ns, []).append(i)
            for k, v in ip_pod.labels.items():
                self._by_label.setdefault((ns, k, v), []).append(i)
            for family, value in ip_pod.ip_keys:
                by_ip[family].append((value, i))
        for entries in by_ip.values():
            entries.sort()
        self._ip_keys = {v: [e[0] for e in entries] for v, entries in by_ip.items()}
        self._ip_pods = {v: [e[1] for e in entries] for v, entries in by_ip.items()}
        self.namespace_names: tuple[str, ...] = tuple(sorted(set(self.ns_labels) | set(self._by_ns)))

    def labels_of_namespace(self, namespace: str) -> Mapping[str, str]:
        return self.ns_labels.get(namespace, {})

    def namespaces_for(self, policy: EgressPolicy) -> list[str]:
        if policy.ref.kind is PolicyKind.NAMESPACED:
            return [policy.ref.namespace]
        sel = policy.applied_to.namespace_selector
        if sel is None:
            return list(self._by_ns)
        return [ns for ns in self._by_ns if sel.matches(self.labels_of_namespace(ns))]

    def _by_selector(self, namespace: str, selector: LabelSelector) -> Sequence[int]:
        if not selector.match_labels:
            candidates: Sequence[int] = self._by_ns.get(namespace, ())
        else:
            lists = [self._by_label.get((namespace, k, v), []) for k, v in selector.match_labels]
            lists.sort(key=len)
            if len(lists) == 1:
                candidates = lists[0]
            else:
                rest = [set(lst) for lst in lists[1:]]
                candidates = [i for i in lists[0] if all(i in s for s in rest)]
        if not selector.match_expressions:
            return candidates  # the intersection of the label lists is exact
        return [i for i in candidates if selector.matches(self.pods[i].labels)]

    def _by_subnets(self, subnets: Sequence[IPNetwork]) -> set[tuple[int, int]]:
        found: set[tuple[int, int]] = set()
        for net in subnets:
            keys = self._ip_keys[net.version]
            lo = bisect.bisect_left(keys, int(net.network_address))
            hi = bisect.bisect_right(keys, int(net.broadcast_address))
            for k in range(lo, hi):
                i = self._ip_pods[net.version][k]
                found.add((i, self.pods[i].ip_keys.index((net.version, keys[k]))))
        return found

    def select(self, policy: EgressPolicy) -> list[tuple[int, int]]:
        """The (pod position, IP position in pod.ips) pairs `policy` selects, in no particular order.

        Integer pairs rather than addresses: resolution groups millions of these, and hashing ints is cheap.
        """
        applied = policy.applied_to
        if applied.pod_selector is None and not applied.pod_subnet:
            return []
        namespaces = self.namespaces_for(policy)
        out: list[tuple[int, int]] = []
        if applied.pod_selector is not None:
            subnets = applied.pod_subnet
            for ns in namespaces:
                for i in self._by_selector(ns, applied.pod_selector):
                    ips = self.pods[i].pod.ips
                    for j, ip in enumerate(ips):
                        if not subnets or any(ip in n for n in subnets if n.version == ip.version):
                            out.append((i, j))
        else:
            wanted = set(namespaces)
            out = [(i, j) for i, j in self._by_subnets(applied.pod_subnet) if self.pods[i].pod.namespace in wanted]
        return out
