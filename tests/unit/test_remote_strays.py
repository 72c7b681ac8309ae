"""An agent's view of other nodes' stray pod IPs (issue 12 item 5): the cluster-wide `RemotePod` watch keeps only
pods with an IP outside the detected ranges; covered pods elsewhere cost no revision, no notification, no pass; a
stray elsewhere reaches `cluster_cidrs` (and the intent, without a full resolve); the kept set follows detection
changes, and a shrinking detection asks for a relist."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from appliance.core.snapshot import Snapshot
from appliance.core.waiting import wait_until
from appliance.policy.cluster_cidrs import cluster_cidrs, detected_ranges, internal_reason
from appliance.policy.intent_tracking import IntentTracker
from appliance.policy.resolution import resolve
from k8s_sync.reflector import Reflector, WatchSpec, trim_pod_ips
from k8s_sync.resources import RESOURCES, Role, watch_specs
from k8s_sync.store import REMOTE_PODS, Store
from tests.unit.resolution_builders import gateway, gw_node, ip, node, ns, pod, policy
from tests.unit.test_sync_reflector import FAST, FakeApi

KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "Pod", "Namespace", "Node",
         "Lease", "IPPool", "ServiceCIDR", REMOTE_PODS]


def node_obj(name: str, rv: str, *cidrs: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": rv},
            "spec": {"podCIDRs": list(cidrs)}, "status": {"addresses": []}}


def pod_obj(name: str, rv: str, *ips: str, node_name: str = "w2", host_network: bool = False,
            phase: str = "Running") -> dict[str, Any]:
    """A full pod as the API server sends it (trimmed like the reflector does)."""
    full = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": rv,
                         "labels": {"app": "web"}, "annotations": {"a": "b" * 100}},
            "spec": {"nodeName": node_name, "hostNetwork": host_network, "containers": [{"name": "c"}]},
            "status": {"phase": phase, "podIPs": [{"ip": a} for a in ips], "conditions": [{"type": "Ready"}]}}
    return trim_pod_ips(full)


def agent_store(nodes: list[dict[str, Any]] | None = None) -> tuple[Store, list[str], list[str]]:
    """A synced agent store whose nodes list only IPv4 pod CIDRs (the dual-stack lab's API server)."""
    s = Store(KINDS)
    for kind in KINDS:
        if kind == "Node":
            s.replace(kind, nodes if nodes is not None else [node_obj("w1", "1", "100.64.1.0/24"),
                                                             node_obj("w2", "1", "100.64.2.0/24")], "1")
        elif kind != REMOTE_PODS:
            s.replace(kind, [], "1")
    reasons: list[str] = []
    relists: list[str] = []
    s.subscribe(reasons.append)
    s.on_relist_needed(relists.append)
    return s, reasons, relists


def strays(s: Store) -> list[str]:
    return [p.name for p in s.snapshot().remote_strays]


def test_trimmed_pod_keeps_only_what_decides_strayness() -> None:
    t = pod_obj("a", "1", "100.64.2.10", "2001:db8:64:2::10")
    assert t == {"metadata": {"name": "a", "namespace": "default", "uid": "uid-a", "resourceVersion": "1"},
                 "spec": {}, "status": {"phase": "Running", "podIPs": [{"ip": "100.64.2.10"},
                                                                        {"ip": "2001:db8:64:2::10"}]}}
    assert pod_obj("h", "1", "100.127.0.12", host_network=True)["spec"] == {"hostNetwork": True}


def test_agent_watches_other_nodes_pods_trimmed() -> None:
    specs = {s.key: s for s in watch_specs(Role.AGENT, node_name="w1")}
    remote = specs[REMOTE_PODS]
    assert remote.resource == RESOURCES["Pod"] and remote.trim is trim_pod_ips
    assert remote.field_selector.startswith("spec.nodeName!=w1,")
    assert specs["Pod"].field_selector.startswith("spec.nodeName=w1,")
    assert REMOTE_PODS not in {s.key for s in watch_specs(Role.GATEWAY)}


def test_the_store_keeps_only_stray_pods_of_other_nodes() -> None:
    s, _, _ = agent_store()
    s.replace(REMOTE_PODS, [
        pod_obj("covered", "1", "100.64.2.10"),
        pod_obj("dual", "1", "100.64.2.11", "2001:db8:64:2::11"),  # IPv6 outside every detected pod CIDR
        pod_obj("host", "1", "2001:db8:127::12", host_network=True),  # a node address: never a pod IP
        pod_obj("pending", "1"),
    ], "5")
    assert s.synced() and strays(s) == ["dual"]
    assert s.remote_stats["kept"] == 1
    assert s.snapshot().pods == ()  # remote pods are never steered by this agent


def test_a_covered_pod_elsewhere_causes_no_revision_no_notification() -> None:
    s, reasons, _ = agent_store()
    s.replace(REMOTE_PODS, [], "5")
    rev, before = s.revision, list(reasons)
    snap = s.snapshot()
    for i in range(50):
        s.apply(REMOTE_PODS, "ADDED", pod_obj(f"p{i}", str(10 + i), f"100.64.2.{i}"))
        s.apply(REMOTE_PODS, "MODIFIED", pod_obj(f"p{i}", str(100 + i), f"100.64.2.{i}"))
        s.apply(REMOTE_PODS, "DELETED", pod_obj(f"p{i}", str(200 + i), f"100.64.2.{i}"))
    assert s.revision == rev and reasons == before and s.snapshot() is snap
    assert s.raw_objects(REMOTE_PODS) == []


def test_a_stray_elsewhere_appears_and_disappears() -> None:
    s, reasons, _ = agent_store()
    s.replace(REMOTE_PODS, [], "5")
    s.apply(REMOTE_PODS, "ADDED", pod_obj("web", "6", "100.64.2.10"))  # no IP yet... then dual-stack IPs
    s.apply(REMOTE_PODS, "MODIFIED", pod_obj("web", "7", "100.64.2.10", "2001:db8:64:2::10"))
    assert strays(s) == ["web"] and reasons[-1] == f"{REMOTE_PODS}/MODIFIED"
    assert "2001:db8:64:2::10/128" in [str(n) for n in cluster_cidrs(s.snapshot())]
    rev = s.revision
    s.apply(REMOTE_PODS, "MODIFIED", pod_obj("web", "8", "100.64.2.10", "2001:db8:64:2::10", phase="Running"))
    assert s.revision == rev  # same IPs: nothing anybody reads changed
    s.apply(REMOTE_PODS, "DELETED", pod_obj("web", "9", "100.64.2.10", "2001:db8:64:2::10"))
    assert strays(s) == [] and s.revision > rev
    assert "2001:db8:64:2::10/128" not in [str(n) for n in cluster_cidrs(s.snapshot())]


def test_a_stray_whose_ips_become_covered_is_dropped() -> None:
    s, _, _ = agent_store()
    s.replace(REMOTE_PODS, [pod_obj("web", "1", "100.99.0.10")], "5")
    assert strays(s) == ["web"]
    s.apply(REMOTE_PODS, "MODIFIED", pod_obj("web", "2", "100.64.2.10"))
    assert strays(s) == []


def test_wider_detection_drops_kept_strays_without_relist() -> None:
    s, _, relists = agent_store()
    s.replace(REMOTE_PODS, [pod_obj("web", "1", "100.64.2.10", "2001:db8:64:2::10")], "5")
    assert strays(s) == ["web"]
    s.apply("Node", "MODIFIED", node_obj("w2", "2", "100.64.2.0/24", "2001:db8:64:2::/64"))
    assert strays(s) == [] and relists == []


def test_narrower_detection_asks_for_a_relist() -> None:
    s, _, relists = agent_store()
    s.replace(REMOTE_PODS, [], "5")
    s.apply("Node", "MODIFIED", node_obj("w1", "2", "100.64.1.0/24", "2001:db8:64:1::/64"))  # wider: no relist
    assert relists == []
    s.apply("Node", "DELETED", node_obj("w2", "3"))  # 100.64.2.0/24 no longer detected: pods there may be strays
    assert relists == [REMOTE_PODS]
    s.replace(REMOTE_PODS, [pod_obj("web", "1", "100.64.2.10")], "9")  # the relist finds them
    assert strays(s) == ["web"]


def test_relist_makes_the_reflector_list_again() -> None:
    done = threading.Event()
    page = {"metadata": {"resourceVersion": "5"}, "items": [pod_obj("web", "1", "100.99.0.1")]}
    api = FakeApi([page, page], [[], []], done)
    s, _, _ = agent_store()
    spec = WatchSpec(key=REMOTE_PODS, resource=RESOURCES["Pod"], trim=trim_pod_ips)
    r = Reflector(api, spec, s, settings=FAST)  # type: ignore[arg-type]
    r.relist()  # requested before the first pass: still one list, then watches resume from it
    r.start()
    wait_until(lambda: len(api.watch_queries) >= 1, timeout=10, what="first watch")
    r.relist()
    wait_until(lambda: len(api.list_queries) == 2, timeout=10, what="second list")
    r.stop()
    assert strays(s) == ["web"]


def test_intent_follows_remote_strays_without_a_full_resolve() -> None:
    nodes = (gw_node("gw1", "198.51.100.11"), node("w1", "100.127.0.11", pod_cidrs=("100.64.1.0/24",)))
    s0 = Snapshot(gateways=(gateway("egw"),), namespaces=(ns("default"),), nodes=nodes,
                  policies=(policy("p1", gateway="egw", app="web", eip4="203.0.113.130"),),
                  pods=(pod("default", "web-1", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "web"}),))
    t = IntentTracker()
    first = t.next(s0)
    other = pod("default", "db", "100.64.2.10", "2001:db8:64:2::10", node_name="w2")
    s1 = replace(s0, remote_strays=(other,))
    nxt = t.next(s1)
    assert nxt.incremental and nxt.intent == resolve(s1, previous=first.intent)
    assert {ip("100.64.2.10"), ip("2001:db8:64:2::10")} <= {n.network_address for n in nxt.intent.cluster_cidrs}
    assert internal_reason(s1, ip("2001:db8:64:2::10")) == "IP of pod default/db, outside every detected pod CIDR"
    back = t.next(replace(s1, remote_strays=()))
    assert back.incremental and back.intent.cluster_cidrs == first.intent.cluster_cidrs


def test_detected_ranges_within() -> None:
    narrow = Snapshot(nodes=(node("w1", pod_cidrs=("100.64.1.0/24",)),))
    wide = Snapshot(nodes=(node("w1", pod_cidrs=("100.64.0.0/16", "2001:db8:64::/48")),))
    assert detected_ranges(narrow).within(detected_ranges(wide))
    assert not detected_ranges(wide).within(detected_ranges(narrow))
