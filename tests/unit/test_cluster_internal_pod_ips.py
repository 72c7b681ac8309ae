"""Fail-safe cluster-internal detection: every pod IP the cluster reports is cluster-internal, even outside every
detected pod CIDR (issue 12 item 5). Exact host entries, merged only where every merged address is a pod IP; the
EgressClusterInfo status warns; explain says so; pod churn inside the detected CIDRs stays on the fast path."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core.model import EgressClusterInfo, IPNetwork, Pod, PodCidrMode
from appliance.core.snapshot import Snapshot
from appliance.policy.cluster_cidrs import (
    cluster_cidrs,
    cluster_info_status,
    internal_reason,
    is_stray,
    pod_ip_coverage,
    stray_pod_ips,
)
from appliance.policy.explaining import Verdict, explain, render_text, to_dict
from appliance.policy.incremental import pod_changed
from appliance.policy.intent_tracking import IntentTracker
from appliance.policy.resolution import resolve
from k8s_sync.status_planning import cluster_info_full_status
from tests.unit.resolution_builders import gateway, gw_node, ip, net, node, ns, pod, policy

# the dual-stack lab's bug: the API server kept only the IPv4 pod CIDR of each node
NODES = (
    gw_node("gw1", "198.51.100.11"),
    node("w1", "100.127.0.11", "2001:db8:127::11", pod_cidrs=("100.64.1.0/24",)),
    node("w2", "100.127.0.12", "2001:db8:127::12", pod_cidrs=("100.64.2.0/24",)),
)
PODS = (
    pod("default", "web-1", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "web"}),
    pod("default", "web-2", "100.64.2.10", "2001:db8:64:2::10", lbl={"app": "web"}, node_name="w2"),
    pod("default", "db-1", "100.64.2.11", "2001:db8:64:2::11", lbl={"app": "db"}, node_name="w2"),
)
SNAP = Snapshot(
    gateways=(gateway("egw", v6=("2001:db8:e1::/64",)),),
    policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.130", eip6="2001:db8:e1::5"),),
    namespaces=(ns("default"),),
    nodes=NODES,
    pods=PODS,
    service_cidrs=(net("100.100.0.0/16"),),
)


def strs(nets: tuple[IPNetwork, ...]) -> list[str]:
    return [str(n) for n in nets]


def test_pod_ips_outside_the_detected_pod_cidrs_are_cluster_internal() -> None:
    assert strs(cluster_cidrs(SNAP)) == [
        "100.64.1.0/24", "100.64.2.0/24", "100.100.0.0/16", "100.127.0.11/32", "100.127.0.12/32", "198.51.100.11/32",
        "2001:db8:64:1::10/128", "2001:db8:64:2::10/127",  # ::10 and ::11 of w2: both pod IPs, merged
        "2001:db8:127::11/128", "2001:db8:127::12/128",
    ]
    # the IPv4 pod IPs are covered by the detected CIDRs: no host entries for them
    assert [str(i) for i, _ in stray_pod_ips(SNAP).ips] == ["2001:db8:64:1::10", "2001:db8:64:2::10",
                                                             "2001:db8:64:2::11"]


def test_host_network_pods_are_not_pod_network_addresses() -> None:
    """A hostNetwork pod reports its node's address: with nodeIP detection off it stays steerable."""
    off = EgressClusterInfo(detect_node_ip=False)
    hn = replace(pod("kube-system", "proxy", "100.127.0.11", "2001:db8:127::11"), host_network=True)
    s = replace(SNAP, pods=(hn,), cluster_info=off)
    assert "100.127.0.11/32" not in strs(cluster_cidrs(s))
    assert not is_stray(s, hn)


def test_with_pod_cidr_detection_off_every_pod_ip_is_still_internal() -> None:
    s = replace(SNAP, cluster_info=EgressClusterInfo(pod_cidr_mode=PodCidrMode.NONE, detect_node_ip=False,
                                                      detect_cluster_ip=False))
    assert strs(cluster_cidrs(s)) == ["100.64.1.10/32", "100.64.2.10/31", "2001:db8:64:1::10/128",
                                      "2001:db8:64:2::10/127"]


def test_resolution_and_explain_treat_an_ipv6_pod_as_cluster_internal() -> None:
    intent = resolve(SNAP)
    dest = ip("2001:db8:64:2::11")  # db-1, IPv6, outside every detected pod CIDR
    e = explain(SNAP, intent, "default", "web-1", dest)
    assert e.dest_cluster_internal
    assert e.dest_internal_reason == "IP of pod default/db-1, outside every detected pod CIDR"
    [v6] = [x for x in e.ips if x.pod_ip.version == 6]
    assert v6.chosen is None
    assert {v.policy.name: v.verdict for v in v6.verdicts} == {"p1": Verdict.CLUSTER_INTERNAL}
    text = render_text(e)
    assert "destination 2001:db8:64:2::11 is cluster-internal (IP of pod default/db-1" in text
    assert "not steered (normal path)" in text
    assert to_dict(e)["destInternalReason"].startswith("IP of pod default/db-1")
    # an external IPv6 destination is still steered
    outside = explain(SNAP, intent, "default", "web-1", ip("2001:db8:203::2"))
    assert not outside.dest_cluster_internal and outside.dest_internal_reason == ""
    assert [x.chosen is not None for x in outside.ips if x.pod_ip.version == 6] == [True]
    assert internal_reason(SNAP, ip("100.64.1.77")) == "pod CIDR (from k8s) 100.64.1.0/24"
    assert internal_reason(SNAP, ip("100.127.0.12")) == "node IP 100.127.0.12/32"


def test_status_warns_with_counts_and_examples() -> None:
    c = pod_ip_coverage(SNAP)
    assert c.incomplete and c.reason == "PodIPsOutsidePodCIDRs"
    assert c.message.startswith("3 pod IPs (0 IPv4, 3 IPv6) are outside every detected pod CIDR (source: k8s)")
    assert "2001:db8:64:1::10 (default/web-1)" in c.message and "extraCidr" in c.message
    many = replace(SNAP, pods=tuple(pod("default", f"p{i}", f"2001:db8:64:9::{i:x}") for i in range(1, 9)))
    assert "and 3 more" in pod_ip_coverage(many).message
    # fixed by extraCidr: the warning clears, and the host entries go
    fixed = replace(SNAP, cluster_info=EgressClusterInfo(extra_cidr=(net("2001:db8:64::/48"),)))
    ok = pod_ip_coverage(fixed)
    assert not ok.incomplete and ok.reason == "AllPodIPsCovered"
    assert "2001:db8:64::/48" in strs(cluster_cidrs(fixed)) and not stray_pod_ips(fixed).ips
    # the written status: a condition, and no new status field (the CRD schema is unchanged)
    status = cluster_info_full_status(SNAP, (), generation=3, now="2024-01-01T00:00:00Z", previous=())
    [cond] = [c for c in status["conditions"] if c["type"] == "PodCIDRsIncomplete"]
    assert (cond["status"], cond["reason"], cond["observedGeneration"]) == ("True", "PodIPsOutsidePodCIDRs", 3)
    assert set(status) == set(cluster_info_status(SNAP)) | {"conditions"}


def test_pod_churn_inside_detected_cidrs_keeps_the_cluster_cidrs_object() -> None:
    """The data path's delta path needs `cluster_cidrs` unchanged: a covered pod keeps the very same tuple."""
    base = resolve(SNAP)
    covered = pod("default", "web-3", "100.64.1.20", lbl={"app": "web"})
    after = pod_changed(SNAP, base, None, covered)
    assert after.cluster_cidrs is base.cluster_cidrs
    assert after == resolve(replace(SNAP, pods=(*PODS, covered)), previous=base)
    t = IntentTracker()
    t.next(SNAP)
    assert t.next(replace(SNAP, pods=(*PODS, covered))).incremental


def test_a_stray_pod_event_changes_the_cluster_cidrs_and_resolves_in_full() -> None:
    base = resolve(SNAP)
    stray = pod("default", "web-3", "100.64.1.20", "2001:db8:64:1::20", lbl={"app": "web"})
    added = replace(SNAP, pods=(*PODS, stray))
    after = pod_changed(SNAP, base, None, stray)
    assert "2001:db8:64:1::20/128" in strs(after.cluster_cidrs)
    assert after == resolve(added, previous=base)
    removed = pod_changed(added, after, stray, None)
    assert removed.cluster_cidrs == base.cluster_cidrs
    # an IP two pods report stays internal while either is there
    twin = replace(stray, name="twin")
    both = replace(added, pods=(*added.pods, twin))
    one_left = replace(both, pods=tuple(p for p in both.pods if p.name != "web-3"))
    assert "2001:db8:64:1::20/128" in strs(pod_changed(one_left, resolve(both), stray, None).cluster_cidrs)
    t = IntentTracker()
    t.next(SNAP)
    nxt = t.next(added)
    assert not nxt.incremental and nxt.intent == resolve(added, previous=base)


# ----- properties -----------------------------------------------------------------------------------------------

_V6_BASE = int(ipaddress.IPv6Address("2001:db8:64::"))
_V4_BASE = int(ipaddress.IPv4Address("100.64.0.0"))


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Snapshot, list[Pod]]:
    """Pods with addresses in a small space, so they hit, straddle and miss the detected CIDRs and each other."""
    offsets = st.integers(min_value=0, max_value=255)
    pods = []
    for i, (o4, o6, hn) in enumerate(draw(st.lists(st.tuples(offsets, offsets, st.booleans()), max_size=40))):
        p = pod("default", f"p{i}", str(ipaddress.IPv4Address(_V4_BASE + o4)),
                str(ipaddress.IPv6Address(_V6_BASE + o6)))
        pods.append(replace(p, host_network=hn and i % 5 == 0))
    cidr4 = [f"{ipaddress.IPv4Address(_V4_BASE + 16 * k)}/{draw(st.integers(28, 30))}"
             for k in draw(st.lists(st.integers(0, 15), max_size=3))]
    cidr6 = [f"{ipaddress.IPv6Address(_V6_BASE + 16 * k)}/{draw(st.integers(124, 126))}"
             for k in draw(st.lists(st.integers(0, 15), max_size=3))]
    extra = tuple(net(c) for c in draw(st.lists(st.sampled_from(["100.64.0.128/25", "2001:db8:64::80/121"]),
                                                unique=True)))
    snap = Snapshot(nodes=(node("w1", "100.64.0.7", pod_cidrs=(*cidr4, *cidr6)),), pods=tuple(pods),
                    cluster_info=EgressClusterInfo(extra_cidr=extra))
    return snap, pods


PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(worlds())
def test_cluster_cidrs_are_exactly_the_detected_sources_plus_the_pod_ips(world: tuple[Snapshot, list[Pod]]) -> None:
    snap, pods = world
    result = cluster_cidrs(snap)
    detected = [ipaddress.ip_network(f"{a}/{a.max_prefixlen}") for n in snap.nodes for a in n.addresses]
    detected += [*(c for n in snap.nodes for c in n.pod_cidrs), *snap.cluster_info.extra_cidr]
    hosts = [ipaddress.ip_network(f"{a}/{a.max_prefixlen}") for p in pods if not p.host_network for a in p.ips]
    oracle = [*ipaddress.collapse_addresses([n for n in (*detected, *hosts) if n.version == 4]),
              *ipaddress.collapse_addresses([n for n in (*detected, *hosts) if n.version == 6])]
    assert list(result) == oracle  # the same canonical form ipaddress gives, hence exact (nothing else swallowed)
    for p in pods:
        if not p.host_network:
            assert all(any(a in n for n in result) for a in p.ips)


@PROPS
@given(worlds(), st.data())
def test_a_pod_event_equals_recomputing(world: tuple[Snapshot, list[Pod]], data: st.DataObject) -> None:
    snap, pods = world
    before = resolve(snap)
    new = pod("default", "fresh", str(ipaddress.IPv4Address(_V4_BASE + data.draw(st.integers(0, 255)))),
              str(ipaddress.IPv6Address(_V6_BASE + data.draw(st.integers(0, 255)))))
    added = replace(snap, pods=(*snap.pods, new))
    assert pod_changed(snap, before, None, new).cluster_cidrs == cluster_cidrs(added)
    if pods:
        old = data.draw(st.sampled_from(pods))
        gone = replace(snap, pods=tuple(p for p in snap.pods if p is not old))
        assert pod_changed(gone, before, old, None).cluster_cidrs == cluster_cidrs(gone)
