"""Status written by the one writer, end to end against the real API server: policies (Ready / Invalid with the field
path / Pending), gateways (members, health from member leases, EIP -> primary, ipUsage), Events, and the seed-anchor
scenarios that need no data path: P02 cluster default, P03 namespace default, P08 default EIP, P09/R08 rr allocation
and pool exhaustion, P21 namespace isolation, P22 explicit EIP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from appliance.api.validation import LAST_APPLIED
from appliance.core.waiting import wait_until
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import JSON, KubeApi
from k8s_sync.leases import MemberIdentity, MemberLease
from k8s_sync.resources import Role
from k8s_sync.status_writer import StatusWriter
from tests.kube_support import Kube
from tests.status_support import StatusService

pytestmark = pytest.mark.apiserver


@pytest.fixture
def status_driver(start_sync: Callable[..., ClusterSync],
                  sync_api: KubeApi) -> Iterator[tuple[ClusterSync, StatusService]]:
    sync = start_sync(Role.GATEWAY)
    writer = StatusWriter(sync_api, sync.store.raw_objects, identity="test")
    service = StatusService(sync.store, writer, resync=2.0)
    service.start()
    try:
        yield sync, service
    finally:
        service.stop()


@pytest.fixture
def status_sync(status_driver: tuple[ClusterSync, StatusService]) -> ClusterSync:
    return status_driver[0]


def settle(service: StatusService, passes: int = 1) -> None:
    """Wait until the driver ran `passes` more passes (resync or events) and the writer handled all of them."""
    target = service.passes + passes
    wait_until(lambda: service.passes >= target, timeout=60, interval=0.1,
               what=f"{passes} more status pass(es)", describe=lambda: service.passes)
    assert service.writer.flush(timeout=60), "the status writer did not finish its pending work"


def cond(obj: JSON, ctype: str) -> JSON:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == ctype), {})


def wait_status(kube: Kube, kind: str, name: str, ns: str | None, check: Callable[[JSON], bool],
                timeout: float = 15.0) -> JSON:
    last: list[JSON] = []

    def probe() -> JSON | None:
        obj = kube.get(kind, name, ns)
        last[:] = [obj]
        return obj if check(obj) else None

    try:
        result: JSON = wait_until(probe, timeout=timeout, what=f"status of {kind} {name}")
    except AssertionError:
        raise AssertionError(f"{kind} {name}: status never matched; last: {last[0].get('status')}") from None
    return result


def ready(obj: JSON) -> bool:
    return cond(obj, "Ready").get("status") == "True"


def gateway_env(kube: Kube, *, pool: list[str], default_eip: str | None = None, cluster_default: bool = False,
                members: int = 2) -> tuple[str, list[str]]:
    """A gateway whose members are `members` fresh nodes (labelled for it alone)."""
    gw = kube.unique("gw")
    label = f"egressgw.io/member-{gw}"[:63]
    nodes = []
    for i in range(members):
        node = kube.unique("gwnode")
        kube.node(node, labels={label: "true"}, ips=(f"198.51.100.{11 + i}",))
        nodes.append(node)
    pools: JSON = {"ipv4": pool}
    if default_eip:
        pools["ipv4DefaultEIP"] = default_eip
    kube.gateway(gw, {"ippools": pools, "clusterDefault": cluster_default,
                      "nodeSelector": {"selector": {"matchLabels": {label: "true"}}}})
    return gw, nodes


def web_pods(kube: Kube, ns: str, count: int, *, base: int = 10, app: str = "web", net: str = "100.64.1") -> None:
    for i in range(count):
        kube.pod(ns, f"{app}-{i}", labels={"app": app}, node="worker1", ips=(f"{net}.{base + i}",))


def test_policy_and_gateway_status(status_driver: tuple[ClusterSync, StatusService], kube: Kube,
                                   kube_namespace: str, sync_api: KubeApi) -> None:
    service = status_driver[1]
    ns = kube_namespace
    gw, nodes = gateway_env(kube, pool=["203.0.113.128/29"], default_eip="203.0.113.129")
    lease = MemberLease(sync_api, MemberIdentity(name=nodes[0]), duration=30)
    lease.renew_once()  # only the first member is alive
    web_pods(kube, ns, 3)
    web_pods(kube, ns, 1, app="api", base=20)
    # P08: no egressIP -> the gateway's default EIP
    kube.policy(ns, "default-eip", {"egressGatewayName": gw, "appliedTo": {"podSelector": {"matchLabels":
                                                                                          {"app": "web"}}}})
    # P22: an explicit EIP is honoured
    kube.policy(ns, "explicit", {"egressGatewayName": gw, "egressIP": {"ipv4": "203.0.113.131"},
                                 "appliedTo": {"podSelector": {"matchLabels": {"app": "api"}}}})
    # invalid: useNodeIP together with an explicit EIP
    kube.policy(ns, "bad", {"egressGatewayName": gw, "egressIP": {"ipv4": "203.0.113.130", "useNodeIP": True},
                            "appliedTo": {"podSelector": {}}})

    p = wait_status(kube, "EgressPolicy", "default-eip", ns, ready)
    assert p["status"]["eip"] == {"ipv4": "203.0.113.129"}
    assert p["status"]["gateway"] == gw and p["status"]["primary"] == nodes[0]
    assert p["status"]["selectedIPs"] == 3
    assert cond(p, "Invalid")["status"] == "False" and cond(p, "Pending")["status"] == "False"
    assert cond(p, "Ready")["observedGeneration"] == p["metadata"]["generation"]

    e = wait_status(kube, "EgressPolicy", "explicit", ns, ready)
    assert e["status"]["eip"] == {"ipv4": "203.0.113.131"} and e["status"]["selectedIPs"] == 1

    b = wait_status(kube, "EgressPolicy", "bad", ns, lambda o: cond(o, "Invalid").get("status") == "True")
    assert cond(b, "Ready")["status"] == "False"
    assert "spec.egressIP.useNodeIP" in cond(b, "Invalid")["message"]
    assert cond(b, "Invalid")["reason"] == "Invalid"

    g = wait_status(kube, "EgressGateway", gw, None, lambda o: len((o.get("status") or {}).get("eips") or ()) >= 2)
    members = {m["name"]: m for m in g["status"]["members"]}
    assert set(members) == set(nodes)
    assert members[nodes[0]]["healthy"] is True and members[nodes[1]]["healthy"] is False
    eips = {x["ip"]: x for x in g["status"]["eips"]}
    assert {"203.0.113.129", "203.0.113.131"} <= set(eips)
    assert all(x["primary"] == nodes[0] and x["backups"] == [nodes[1]] for x in eips.values())
    # a /29 gives its 6 host addresses (no network, no broadcast address)
    assert g["status"]["ipUsage"]["ipv4Total"] == 6 and g["status"]["ipUsage"]["ipv4Free"] == 4
    assert ready(g)

    # the writer records an object's Events after patching its status: wait for them, do not race the writer
    wanted = {("default-eip", "EIPAssigned"), ("default-eip", "PolicyReady"), ("bad", "PolicyInvalid")}

    def reasons() -> set[tuple[str, str]]:
        events = sync_api.get(f"/api/v1/namespaces/{ns}/events")["items"]
        return {(ev["involvedObject"]["name"], ev["reason"]) for ev in events}

    wait_until(lambda: wanted <= reasons(), timeout=10, interval=0.1, what=f"events {sorted(wanted)}",
               describe=lambda: sorted(reasons()))

    # the writer is idempotent: with nothing changing, the status is not rewritten. Proven on passes, not on time:
    # once everything written so far is settled, two more complete passes (resyncs) leave the object untouched
    settle(service)
    rv = kube.get("EgressPolicy", "default-eip", ns)["metadata"]["resourceVersion"]
    settle(service, passes=2)
    assert kube.get("EgressPolicy", "default-eip", ns)["metadata"]["resourceVersion"] == rv

    # the second member comes alive: EIPs spread, the gateway status follows
    MemberLease(sync_api, MemberIdentity(name=nodes[1]), duration=30).renew_once()
    wait_status(kube, "EgressGateway", gw, None,
                lambda o: all(m["healthy"] for m in o["status"]["members"]))


def test_rr_allocation_and_pool_exhaustion(status_sync: ClusterSync, kube: Kube, kube_namespace: str) -> None:
    """P09/R08: N free pool addresses, N+2 rr policies: one-to-one mapping, the surplus is Pending (PoolExhausted).
    The gateway's default EIP is reserved for default-allocation policies, so 4 addresses leave 3 for rr."""
    ns = kube_namespace
    gw, _ = gateway_env(kube, pool=["203.0.113.140-203.0.113.143"], default_eip="203.0.113.140")
    names = [f"rr-{i}" for i in range(5)]
    for i, name in enumerate(names):
        kube.policy(ns, name, {"egressGatewayName": gw, "egressIP": {"allocatorPolicy": "rr"},
                               "appliedTo": {"podSelector": {"matchLabels": {"app": f"a{i}"}}}})
        time.sleep(0.01)
    settled: dict[str, JSON] = {}

    def all_settled() -> bool:
        for name in names:
            obj = kube.get("EgressPolicy", name, ns)
            if cond(obj, "Ready").get("status") != "True" and cond(obj, "Pending").get("status") != "True":
                return False
            settled[name] = obj
        return True

    wait_until(all_settled, timeout=15, what="every rr policy Ready or Pending")
    ready_eips = [o["status"]["eip"]["ipv4"] for o in settled.values() if ready(o)]
    pending = [o for o in settled.values() if cond(o, "Pending").get("status") == "True"]
    assert sorted(ready_eips) == ["203.0.113.141", "203.0.113.142", "203.0.113.143"]  # one-to-one
    assert len(pending) == 2
    assert all(cond(o, "Pending")["reason"] == "PoolExhausted" for o in pending)


def test_cluster_and_namespace_default_gateways(status_sync: ClusterSync, kube: Kube, kube_namespace: str) -> None:
    """P02: no gateway named -> the cluster default; P03: the namespace label wins over the cluster default."""
    default_gw, _ = gateway_env(kube, pool=["203.0.113.150/31"], cluster_default=True, members=1)
    tenant_gw, _ = gateway_env(kube, pool=["203.0.113.152/31"], members=1)
    tenant_ns = kube.unique("tenant")
    kube.namespace(tenant_ns, labels={"egressgw.io/default-gateway": tenant_gw})
    kube.policy(kube_namespace, "p", {"appliedTo": {"podSelector": {"matchLabels": {"app": "x"}}}})
    kube.policy(tenant_ns, "p", {"appliedTo": {"podSelector": {"matchLabels": {"app": "x"}}}})
    a = wait_status(kube, "EgressPolicy", "p", kube_namespace, ready)
    assert a["status"]["gateway"] == default_gw and a["status"]["eip"] == {"ipv4": "203.0.113.150"}
    b = wait_status(kube, "EgressPolicy", "p", tenant_ns, ready)
    assert b["status"]["gateway"] == tenant_gw and b["status"]["eip"] == {"ipv4": "203.0.113.152"}


def test_namespace_isolation(status_sync: ClusterSync, kube: Kube, kube_namespace: str) -> None:
    """P21: an EgressPolicy selects only pods of its own namespace, even when other namespaces' labels match."""
    gw, _ = gateway_env(kube, pool=["203.0.113.160/30"], members=1)
    other = kube.unique("other")
    kube.namespace(other)
    web_pods(kube, kube_namespace, 2)
    web_pods(kube, other, 3, net="100.64.2")
    kube.policy(kube_namespace, "web", {"egressGatewayName": gw,
                                        "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}}})
    p = wait_status(kube, "EgressPolicy", "web", kube_namespace, lambda o: ready(o) and o["status"]["selectedIPs"])
    assert p["status"]["selectedIPs"] == 2
    # a pod added later in the same namespace is counted; one in the other namespace is not
    kube.pod(kube_namespace, "web-late", labels={"app": "web"}, node="worker1", ips=("100.64.1.99",))
    kube.pod(other, "web-late", labels={"app": "web"}, node="worker1", ips=("100.64.2.99",))
    wait_status(kube, "EgressPolicy", "web", kube_namespace, lambda o: o["status"]["selectedIPs"] == 3)


def test_pending_until_the_gateway_exists(status_sync: ClusterSync, kube: Kube, kube_namespace: str) -> None:
    name = kube.unique("later")
    kube.policy(kube_namespace, "wait", {"egressGatewayName": name,
                                         "appliedTo": {"podSelector": {"matchLabels": {"app": "x"}}}})
    p = wait_status(kube, "EgressPolicy", "wait", kube_namespace,
                    lambda o: cond(o, "Pending").get("status") == "True")
    assert cond(p, "Pending")["reason"] == "GatewayNotFound"
    label = f"egressgw.io/member-{name}"[:63]
    kube.gateway(name, {"ippools": {"ipv4": ["203.0.113.170/32"]},
                        "nodeSelector": {"selector": {"matchLabels": {label: "true"}}}})
    p = wait_status(kube, "EgressPolicy", "wait", kube_namespace, ready)
    assert p["status"]["eip"] == {"ipv4": "203.0.113.170"}
    assert cond(p, "Pending")["status"] == "False"


def test_a_field_the_api_server_pruned_is_reported(status_sync: ClusterSync, kube: Kube, kube_namespace: str,
                                                   sync_api: KubeApi) -> None:
    """`namespaceSelector` on an EgressPolicy is not in its schema: the real API server prunes it and answers 200.
    Written the way `kubectl apply` writes (the manifest as sent in the last-applied annotation), the policy is
    refused, the condition and the event naming the field; written without that record, nothing can tell."""
    gw, _ = gateway_env(kube, pool=["203.0.113.180/31"], members=1)
    spec = {"egressGatewayName": gw, "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}},
                                                   "namespaceSelector": {"matchLabels": {"team": "a"}}}}
    manifest = {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
                "metadata": {"name": "applied", "namespace": kube_namespace}, "spec": spec}
    stored = kube.create({**manifest, "metadata": {
        **manifest["metadata"], "annotations": {LAST_APPLIED: json.dumps(manifest)}}})
    assert "namespaceSelector" not in stored["spec"]["appliedTo"]  # the premise: the server dropped it silently
    kube.policy(kube_namespace, "plain", spec)

    p = wait_status(kube, "EgressPolicy", "applied", kube_namespace,
                    lambda o: cond(o, "Invalid").get("status") == "True")
    assert cond(p, "Ready")["status"] == "False"
    invalid = cond(p, "Invalid")
    assert invalid["reason"] == "Invalid"
    assert invalid["message"].startswith("spec.appliedTo.namespaceSelector: dropped by the API server")

    def invalid_events() -> list[str]:
        events = sync_api.get(f"/api/v1/namespaces/{kube_namespace}/events")["items"]
        return [ev["message"] for ev in events
                if ev["involvedObject"]["name"] == "applied" and ev["reason"] == "PolicyInvalid"]

    wait_until(lambda: any("spec.appliedTo.namespaceSelector" in m for m in invalid_events()), timeout=15,
               interval=0.1, what="a PolicyInvalid event naming the pruned field", describe=invalid_events)
    # the same spec written without kubectl's record: the pruned field left no trace, the policy is Ready
    wait_status(kube, "EgressPolicy", "plain", kube_namespace, ready)
