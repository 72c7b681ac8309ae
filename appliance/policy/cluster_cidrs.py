"""Cluster-internal destinations (pure): what is never sent to a gateway, and the EgressClusterInfo status.

A policy with an empty destSubnet steers "everything except cluster-internal"; the planners subtract these CIDRs.
Sources, switched by the EgressClusterInfo singleton's `autoDetect`:
- `nodeIP` (default on): every node's InternalIP as a host route (/32, /128);
- `podCidrMode`: `auto` = the Calico IPPools when any exist, else the nodes' `spec.podCIDRs`; `k8s` = the nodes'
  `spec.podCIDRs`; `calico` = the Calico IPPools; `""` = none;
- `clusterIP` (default on): the Service CIDR(s) found by k8s_sync (`Snapshot.service_cidrs`);
- `extraCidr`: always added;
- always, whatever the switches say: every IP the cluster reports for a pod (`status.podIPs` of every pod that is
  not `hostNetwork`) that none of the above covers ("stray" pod IPs), one host entry (/32, /128) each. The pods are
  the snapshot's `pods` plus its `remote_strays` (an agent's own pods are in `pods`; the stray pods of other nodes
  come from a cluster-wide watch that keeps only them, filtered at ingest with `detected_ranges`/`stray_ips`).

Why the last source: detection can miss a pod network (an API server that stores only the first of a dual-stack
node's podCIDRs, a CNI allocating outside the nodes' podCIDRs, `podCidrMode: ""`), and a pod IP that is not
recognised as cluster-internal sends pod-to-pod traffic of selected pods through a gateway. Failing safe means
treating every address the cluster says is a pod as internal. Host entries (not a guessed enclosing prefix) keep it
exact: nothing outside the cluster is ever swallowed; adjacent entries merge only where every address of the
merged block is a reported pod IP. The cost is bounded by the number of stray pod IPs (zero when detection is
right), and the status condition `PodCIDRsIncomplete` (`pod_ip_coverage`) names them so the operator can fix the
detection or add the pod network to `extraCidr`.

The result is collapsed per family and sorted, IPv4 first, so it compares and renders deterministically.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.core.model import IPAddress, IPNetwork, Pod, PodCidrMode
from appliance.core.snapshot import Snapshot

#: how many stray pod IPs the status condition names as examples
EXAMPLES = 5


def host_network(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def pod_cidr_source(snapshot: Snapshot) -> str:
    """Where pod CIDRs come from under the current mode: "calico", "k8s" or "" (none)."""
    mode = snapshot.cluster_info.pod_cidr_mode
    if mode is PodCidrMode.AUTO:
        return "calico" if snapshot.calico_pools else "k8s"
    if mode is PodCidrMode.K8S:
        return "k8s"
    if mode is PodCidrMode.CALICO:
        return "calico"
    return ""


def pod_cidrs(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    source = pod_cidr_source(snapshot)
    if source == "calico":
        return _sorted(snapshot.calico_pools)
    if source == "k8s":
        return _sorted(net for node in snapshot.nodes for net in node.pod_cidrs)
    return ()


def node_ips(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    if not snapshot.cluster_info.detect_node_ip:
        return ()
    return _sorted(host_network(a) for node in snapshot.nodes for a in node.addresses)


def service_cidrs(snapshot: Snapshot) -> tuple[IPNetwork, ...]:
    return _sorted(snapshot.service_cidrs) if snapshot.cluster_info.detect_cluster_ip else ()


# ----- the detected part, and the pod IPs it misses ---------------------------------------------------------------

Range = tuple[int, int]  # first and last address, as integers


@dataclass(frozen=True, slots=True, eq=False)
class DetectedRanges:
    """The detected cluster-internal ranges per family (sorted, disjoint, merged), for O(log n) lookups."""

    ranges: dict[int, list[Range]]
    starts: dict[int, list[int]]

    def covers(self, version: int, value: int) -> bool:
        starts = self.starts[version]
        i = bisect.bisect_right(starts, value) - 1
        return i >= 0 and value <= self.ranges[version][i][1]

    def same(self, other: DetectedRanges) -> bool:
        return self.ranges == other.ranges

    def within(self, other: DetectedRanges) -> bool:
        """True when `other` covers every range of this one (nothing covered here is uncovered there)."""
        for v, ranges in self.ranges.items():
            for lo, hi in ranges:
                i = bisect.bisect_right(other.starts[v], lo) - 1
                if i < 0 or hi > other.ranges[v][i][1]:
                    return False
        return True


_DETECTED: dict[str, tuple[tuple[object, ...], DetectedRanges]] = {}


def detected_ranges(snapshot: Snapshot) -> DetectedRanges:
    """The detected sources (node IPs, pod CIDRs, Service CIDRs, extraCidr) as ranges; only the snapshot's nodes,
    cluster info, Service CIDRs and Calico pools are read. Cached for the last inputs (held, so the identity test
    is sound)."""
    key = (snapshot.nodes, snapshot.cluster_info, snapshot.service_cidrs, snapshot.calico_pools)
    cached = _DETECTED.get("last")
    if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
        return cached[1]
    nets = [*node_ips(snapshot), *pod_cidrs(snapshot), *service_cidrs(snapshot), *snapshot.cluster_info.extra_cidr]
    ranges = {v: _merge(_net_range(n) for n in nets if n.version == v) for v in (4, 6)}
    found = DetectedRanges(ranges=ranges, starts={v: [r[0] for r in ranges[v]] for v in (4, 6)})
    _DETECTED["last"] = (key, found)
    return found


def _pod_ips(pod: Pod) -> tuple[IPAddress, ...]:
    """The IPs of `pod` that are pod-network addresses (a hostNetwork pod reports its node's addresses)."""
    return () if pod.host_network else pod.ips


def stray_ips(found: DetectedRanges, pod: Pod) -> tuple[IPAddress, ...]:
    """The IPs of `pod` outside every range of `found` (each is then its own cluster-internal entry)."""
    return tuple(ip for ip in _pod_ips(pod) if not found.covers(ip.version, int(ip)))


def is_stray(snapshot: Snapshot, pod: Pod) -> bool:
    """True when some IP of `pod` is outside every detected source (it then is its own cluster-internal entry)."""
    found = detected_ranges(snapshot)
    return any(not found.covers(ip.version, int(ip)) for ip in _pod_ips(pod))


@dataclass(frozen=True, slots=True, kw_only=True)
class StrayPodIPs:
    """Pod IPs outside every detected source, sorted (IPv4 first), each with the first pod (by key) reporting it."""

    ips: tuple[tuple[IPAddress, tuple[str, str]], ...] = ()

    def count(self, version: int) -> int:
        return sum(1 for ip, _ in self.ips if ip.version == version)


_STRAYS: dict[str, tuple[tuple[object, ...], StrayPodIPs]] = {}


def stray_pod_ips(snapshot: Snapshot, pods: Sequence[Pod] | None = None) -> StrayPodIPs:
    """The pod IPs (of `pods`, default the snapshot's, and of the snapshot's `remote_strays`) that no detected
    source covers. O(pods log cidrs); cached for the last inputs."""
    pods = snapshot.pods if pods is None else pods
    remote = snapshot.remote_strays
    found = detected_ranges(snapshot)
    key = (pods, found, remote)
    cached = _STRAYS.get("last")
    if cached is not None and all(a is b for a, b in zip(cached[0], key, strict=True)):
        return cached[1]
    out: dict[tuple[int, int], tuple[IPAddress, tuple[str, str]]] = {}
    for pod in (*pods, *remote):
        for ip in _pod_ips(pod):
            k = (ip.version, int(ip))
            if not found.covers(k[0], k[1]) and (k not in out or pod.key < out[k][1]):
                out[k] = (ip, pod.key)
    result = StrayPodIPs(ips=tuple(out[k] for k in sorted(out)))
    _STRAYS["last"] = (key, result)
    return result


_RESULT: dict[str, tuple[tuple[object, object], tuple[IPNetwork, ...]]] = {}
#: the networks of the last result by (version, first address, prefix length): building an ipaddress network costs
#: microseconds, and one pod event changes one or two of possibly 100,000 host entries
_NETS: dict[tuple[int, int, int], IPNetwork] = {}


def cluster_cidrs(snapshot: Snapshot, pods: Sequence[Pod] | None = None) -> tuple[IPNetwork, ...]:
    """Every cluster-internal destination, collapsed per family, IPv4 first: the detected sources plus a host entry
    per stray pod IP (of `pods`, default the snapshot's). Cached for the last inputs."""
    found = detected_ranges(snapshot)
    strays = stray_pod_ips(snapshot, pods)
    cached = _RESULT.get("last")
    if cached is not None and cached[0][0] is found and cached[0][1] is strays:
        return cached[1]
    out: list[IPNetwork] = []
    for v in (4, 6):
        hosts = [(int(ip), int(ip)) for ip, _ in strays.ips if ip.version == v]
        ranges = _merge([*found.ranges[v], *hosts]) if hosts else found.ranges[v]
        out.extend(_cidrs(v, ranges))
    result = tuple(out)
    _RESULT["last"] = ((found, strays), result)
    _NETS.clear()
    _NETS.update(((n.version, int(n.network_address), n.prefixlen), n) for n in result)
    return result


def cluster_cidrs_after_pod_event(snapshot: Snapshot, current: tuple[IPNetwork, ...], old: Pod | None,
                                  new: Pod | None) -> tuple[IPNetwork, ...]:
    """`cluster_cidrs` after one pod event (see `appliance.policy.incremental`), given the `current` result.

    Unchanged (the same tuple) unless the old or new pod has a stray IP; then recomputed over the snapshot's pods
    with the event applied (O(pods): a misdetected cluster pays this, and its status says so).
    """
    if not any(p is not None and is_stray(snapshot, p) for p in (old, new)):
        return current
    gone = {p.key for p in (old, new) if p is not None}
    pods = [p for p in snapshot.pods if p.key not in gone]
    if new is not None:
        pods.append(new)
    return cluster_cidrs(snapshot, tuple(pods))


def _net_range(n: IPNetwork) -> Range:
    lo = int(n.network_address)
    return lo, lo | int(n.hostmask)


def _merge(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint ranges; overlapping or adjacent ones merged."""
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _cidrs(version: int, ranges: Iterable[Range]) -> list[IPNetwork]:
    """The fewest CIDRs covering exactly the (merged) `ranges` - what ipaddress.collapse_addresses gives, in integer
    arithmetic (building 100,000 networks through ipaddress's collapse takes seconds)."""
    bits = 32 if version == 4 else 128
    make: type[IPNetwork] = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    out: list[IPNetwork] = []
    for lo, hi in ranges:
        while lo <= hi:
            size = min((lo & -lo).bit_length() - 1 if lo else bits, (hi - lo + 1).bit_length() - 1)
            known = _NETS.get((version, lo, bits - size))
            out.append(known if known is not None else make((lo, bits - size)))
            lo += 1 << size
    return out


def _sorted(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)))


# ----- status -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Coverage:
    """The `PodCIDRsIncomplete` condition of the EgressClusterInfo status: `incomplete` when pod IPs fall outside
    every detected pod CIDR (and every other detected source)."""

    incomplete: bool
    reason: str
    message: str


def pod_ip_coverage(snapshot: Snapshot) -> Coverage:
    strays = stray_pod_ips(snapshot)
    if not strays.ips:
        return Coverage(incomplete=False, reason="AllPodIPsCovered",
                        message="every pod IP is inside a detected pod CIDR, Service CIDR, node IP or extraCidr")
    n4, n6 = strays.count(4), strays.count(6)
    examples = ", ".join(f"{ip} ({ns}/{name})" for ip, (ns, name) in strays.ips[:EXAMPLES])
    more = f" and {len(strays.ips) - EXAMPLES} more" if len(strays.ips) > EXAMPLES else ""
    source = pod_cidr_source(snapshot) or "none (podCidrMode is empty)"
    return Coverage(
        incomplete=True, reason="PodIPsOutsidePodCIDRs",
        message=(f"{len(strays.ips)} pod IPs ({n4} IPv4, {n6} IPv6) are outside every detected pod CIDR "
                 f"(source: {source}), Service CIDR, node IP and extraCidr: {examples}{more}. Each is treated as "
                 f"cluster-internal on its own (a /32 or /128 entry); add the pod network to spec.extraCidr, or "
                 f"fix the nodes' spec.podCIDRs or the Calico IPPools, to cover them with one CIDR"),
    )


def _by_family(items: Iterable[IPNetwork | IPAddress]) -> dict[str, list[str]]:
    items = list(items)
    return {
        "ipv4": [str(i) for i in items if i.version == 4],
        "ipv6": [str(i) for i in items if i.version == 6],
    }


def cluster_info_status(snapshot: Snapshot) -> dict[str, Any]:
    """The EgressClusterInfo `status` content (JSON-able), mirroring spidernet's shape.

    `nodeIP`: node -> {ipv4, ipv6} addresses; `clusterIP`: {ipv4, ipv6} service CIDRs; `podCIDR`: source ("calico"
    or "k8s") -> {ipv4, ipv6}; `extraCidr`: as in the spec. Disabled sources are empty. Stray pod IPs are reported
    by the `PodCIDRsIncomplete` condition (`pod_ip_coverage`), not listed here (there can be thousands).
    """
    node_map: dict[str, dict[str, list[str]]] = {}
    if snapshot.cluster_info.detect_node_ip:
        for node in sorted(snapshot.nodes, key=lambda n: n.name):
            addresses: list[IPAddress] = sorted(node.addresses, key=lambda a: (a.version, int(a)))
            node_map[node.name] = _by_family(addresses)
    source = pod_cidr_source(snapshot)
    pod_map = {source: _by_family(pod_cidrs(snapshot))} if source else {}
    return {
        "podCidrMode": str(snapshot.cluster_info.pod_cidr_mode),
        "nodeIP": node_map,
        "clusterIP": _by_family(service_cidrs(snapshot)),
        "podCIDR": pod_map,
        "extraCidr": [str(n) for n in snapshot.cluster_info.extra_cidr],
    }



def internal_reason(snapshot: Snapshot, dest: IPAddress) -> str:
    """Why `dest` is cluster-internal, for `egressgw explain` ("" when it is not): the first source covering it."""
    sources: tuple[tuple[str, tuple[IPNetwork, ...]], ...] = (
        ("node IP", node_ips(snapshot)),
        (f"pod CIDR (from {pod_cidr_source(snapshot)})", pod_cidrs(snapshot)),
        ("Service CIDR", service_cidrs(snapshot)),
        ("extraCidr", snapshot.cluster_info.extra_cidr),
    )
    for what, nets in sources:
        found = next((n for n in nets if n.version == dest.version and dest in n), None)
        if found is not None:
            return f"{what} {found}"
    pods = sorted((*snapshot.pods, *snapshot.remote_strays), key=lambda p: p.key)
    owner = next((p for p in pods if dest in _pod_ips(p)), None)
    if owner is not None:
        return f"IP of pod {owner.namespace}/{owner.name}, outside every detected pod CIDR"
    return ""
