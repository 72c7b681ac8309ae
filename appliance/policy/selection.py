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
from typing import Any

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


class PodIndex:
    """Eligible pods indexed for selection: built once from a snapshot, then kept current by `add`/`remove` (the
    incremental resolver's pod index) or read only (one full resolution).

    Positions are stable while a pod stays: a removed pod leaves a hole (None) that the next added pod reuses.
    Memory (it lives as long as the resolver): the pods themselves are the snapshot's objects; per pod the index adds
    a position in a few sets and two parallel sorted lists per family, nothing else.
    """

    def __init__(self, pods: Iterable[Pod], namespaces: Iterable[Namespace]) -> None:
        self.pods: list[Pod | None] = []
        self._position: dict[tuple[str, str], int] = {}
        self._free: list[int] = []
        self.ns_labels: dict[str, dict[str, str]] = {}
        self.set_namespaces(namespaces)
        self._by_ns: dict[str, set[int]] = {}
        self._by_label: dict[tuple[str, str, str], set[int]] = {}
        #: per family, the pod IPs' integer values in ascending order, and the pod position of each
        self._ip_values: dict[int, list[int]] = {4: [], 6: []}
        self._ip_pods: dict[int, list[int]] = {4: [], 6: []}
        for p in pods:
            if ineligibility(p) is None:  # order is irrelevant: callers sort what they emit
                self._insert(p, sort=False)
        for v in (4, 6):
            pairs = sorted(zip(self._ip_values[v], self._ip_pods[v], strict=True))
            self._ip_values[v] = [e[0] for e in pairs]
            self._ip_pods[v] = [e[1] for e in pairs]

    def __len__(self) -> int:
        return len(self._position)

    def set_namespaces(self, namespaces: Iterable[Namespace]) -> None:
        self.ns_labels = {ns.name: dict(ns.labels) for ns in namespaces}

    def labels_of_namespace(self, namespace: str) -> Mapping[str, str]:
        return self.ns_labels.get(namespace, {})

    def position(self, key: tuple[str, str]) -> int | None:
        return self._position.get(key)

    def in_namespace(self, namespace: str) -> Iterable[int]:
        """Positions of the indexed pods of `namespace`."""
        return self._by_ns.get(namespace, ())

    # ----- keeping it current -----

    def add(self, pod: Pod) -> int | None:
        """Index `pod` (replacing the pod of the same key); its position, or None when it is not eligible."""
        self.remove(pod.key)
        if ineligibility(pod) is not None:
            return None
        return self._insert(pod, sort=True)

    def remove(self, key: tuple[str, str]) -> None:
        pos = self._position.pop(key, None)
        if pos is None:
            return
        pod = self.pods[pos]
        assert pod is not None
        ns = pod.namespace
        _discard(self._by_ns, ns, pos)
        for k, v in pod.labels:
            _discard(self._by_label, (ns, k, v), pos)
        for ip in pod.ips:
            values, pods = self._ip_values[ip.version], self._ip_pods[ip.version]
            value = int(ip)
            i = bisect.bisect_left(values, value)
            while i < len(values) and values[i] == value:
                if pods[i] == pos:
                    del values[i], pods[i]
                    break
                i += 1
        self.pods[pos] = None
        self._free.append(pos)

    def _insert(self, pod: Pod, *, sort: bool) -> int:
        if self._free:
            pos = self._free.pop()
            self.pods[pos] = pod
        else:
            pos = len(self.pods)
            self.pods.append(pod)
        ns = pod.namespace
        self._position[(ns, pod.name)] = pos
        self._by_ns.setdefault(ns, set()).add(pos)
        for k, v in pod.labels:
            self._by_label.setdefault((ns, k, v), set()).add(pos)
        for ip in pod.ips:
            values, pods = self._ip_values[ip.version], self._ip_pods[ip.version]
            value = int(ip)
            i = bisect.bisect_right(values, value) if sort else len(values)
            values.insert(i, value)
            pods.insert(i, pos)
        return pos

    # ----- selection -----

    def namespaces_for(self, policy: EgressPolicy) -> list[str]:
        if policy.ref.kind is PolicyKind.NAMESPACED:
            return [policy.ref.namespace]
        sel = policy.applied_to.namespace_selector
        if sel is None:
            return list(self._by_ns)
        return [ns for ns in self._by_ns if sel.matches(self.labels_of_namespace(ns))]

    def by_selector(self, namespace: str, selector: LabelSelector) -> Iterable[int]:
        """Positions of the pods of `namespace` whose labels `selector` matches."""
        return self._by_selector(namespace, selector)

    def _by_selector(self, namespace: str, selector: LabelSelector) -> Iterable[int]:
        candidates: Iterable[int]
        if not selector.match_labels:
            candidates = self._by_ns.get(namespace, ())
        else:
            sets = [self._by_label.get((namespace, k, v), _EMPTY) for k, v in selector.match_labels]
            sets.sort(key=len)
            candidates = sets[0] if len(sets) == 1 else sets[0].intersection(*sets[1:])
        if not selector.match_expressions:
            return candidates  # the intersection of the label sets is exact
        return [i for i in candidates if selector.matches(dict(self._at(i).labels))]

    def _at(self, pos: int) -> Pod:
        pod = self.pods[pos]
        assert pod is not None
        return pod

    def _by_subnets(self, subnets: Sequence[IPNetwork]) -> set[tuple[int, int]]:
        found: set[tuple[int, int]] = set()
        for net in subnets:
            values, pods = self._ip_values[net.version], self._ip_pods[net.version]
            lo = bisect.bisect_left(values, int(net.network_address))
            hi = bisect.bisect_right(values, int(net.broadcast_address))
            for k in range(lo, hi):
                i = pods[k]
                found.add((i, next(j for j, a in enumerate(self._at(i).ips) if a.version == net.version
                                    and int(a) == values[k])))
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
                    ips = self._at(i).ips
                    for j, ip in enumerate(ips):
                        if not subnets or any(ip in n for n in subnets if n.version == ip.version):
                            out.append((i, j))
        else:
            wanted = set(namespaces)
            out = [(i, j) for i, j in self._by_subnets(applied.pod_subnet) if self._at(i).namespace in wanted]
        return out


_EMPTY: frozenset[int] = frozenset()


def _discard(index: dict[Any, set[int]], key: Any, pos: int) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(pos)
        if not found:
            del index[key]
