"""Status planning (pure): raw objects -> store -> resolve -> planned status, conditions, merge patches and events,
and the Degraded condition naming the selected pod IPs the gateway members skip."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

from appliance.core.model import PolicyKind, PolicyRef
from appliance.datapath.plan.gateway import GatewaySkip, GatewaySkipReason
from appliance.policy.resolution import resolve
from k8s_sync.not_carried import SkipCount, skips_by_policy
from k8s_sync.oneshot import intent_from_status
from k8s_sync.status_planning import INT64_MAX, EventReason, merge_patch, plan_status, prune
from k8s_sync.store import Store

KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "Pod", "Namespace", "Node"]
T1, T2 = "2026-11-27T08:00:00Z", "2026-11-27T09:00:00Z"


def world(policies: list[dict[str, Any]], *, v6_pool: bool = False) -> tuple[Store, dict[str, list[Any]]]:
    pools: dict[str, Any] = {"ipv4": ["203.0.113.128-203.0.113.131"]}
    if v6_pool:
        pools = {"ipv6": ["2001:db8:e1::/64"]}
    raw: dict[str, list[Any]] = {
        "EgressGateway": [{"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway",
                           "metadata": {"name": "gw", "resourceVersion": "1", "generation": 2, "uid": "u-gw"},
                           "spec": {"ippools": pools,
                                    "nodeSelector": {"selector": {"matchLabels": {"gw": "y"}}}}}],
        "EgressPolicy": policies,
        "Node": [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": f"gw{i}", "labels": {"gw": "y"},
                                                                   "resourceVersion": "1"},
                  "status": {"addresses": [{"type": "InternalIP", "address": f"198.51.100.1{i}"}]}}
                 for i in (1, 2)],
        "Pod": [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "web", "namespace": "a", "labels": {"app": "web"}, "resourceVersion": "1"},
                 "spec": {"nodeName": "w1"},
                 "status": {"phase": "Running", "podIP": "100.64.1.10", "podIPs": [{"ip": "100.64.1.10"}]}}],
    }
    store = Store(KINDS)
    for kind in KINDS:
        store.replace(kind, raw.get(kind, []), "1")
    return store, raw


def policy(name: str, spec_extra: dict[str, Any] | None = None, eip: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"egressGatewayName": "gw", "appliedTo": {"podSelector": {"matchLabels": {"app": "web"}}},
                            **(spec_extra or {})}
    if eip is not None:
        spec["egressIP"] = eip
    return {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": name, "namespace": "a", "resourceVersion": "1", "generation": 3, "uid": f"u-{name}"},
            "spec": spec}


def plan(store: Store, raw: dict[str, list[Any]], now: str = T1) -> Any:
    snap = store.snapshot()
    return plan_status(snap, resolve(snap), raw, now=now)


def apply_plan(raw: dict[str, list[Any]], p: Any) -> None:
    statuses = {(w.ref.kind, w.ref.namespace, w.ref.name): w.status for w in p.writes}
    for kind, objs in raw.items():
        for o in objs:
            key = (kind, o["metadata"].get("namespace", ""), o["metadata"]["name"])
            if key in statuses:
                o["status"] = copy.deepcopy(statuses[key])


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_ready_policy_status_and_gateway_status() -> None:
    store, raw = world([policy("web")])
    p = plan(store, raw)
    by = {w.ref.name: w.status for w in p.writes}
    st = by["web"]
    assert st["eip"] == {"ipv4": "203.0.113.128"} and st["gateway"] == "gw" and st["selectedIPs"] == 1
    assert cond(st, "Ready")["status"] == "True" and cond(st, "Ready")["observedGeneration"] == 3
    assert cond(st, "Invalid")["status"] == "False" and cond(st, "Pending")["status"] == "False"
    gw = by["gw"]
    assert [m["name"] for m in gw["members"]] == ["gw1", "gw2"] and all(m["kind"] == "Node" for m in gw["members"])
    assert gw["ipUsage"] == {"ipv4Total": 4, "ipv4Free": 3, "ipv6Total": 0, "ipv6Free": 0}
    (eip,) = gw["eips"]
    assert eip["ip"] == "203.0.113.128" and {eip["primary"], *eip["backups"]} == {"gw1", "gw2"}
    assert st["primary"] == eip["primary"]
    reasons = {(e.ref.name, e.reason) for e in p.events}
    assert {("web", EventReason.EIP_ASSIGNED), ("web", EventReason.POLICY_READY),
            ("gw", EventReason.GATEWAY_READY)} <= reasons


def test_replanning_an_unchanged_world_writes_nothing_and_keeps_transition_times() -> None:
    store, raw = world([policy("web"), policy("bad", eip={"ipv4": "203.0.113.129", "useNodeIP": True})])
    first = plan(store, raw, T1)
    assert first.writes
    apply_plan(raw, first)
    second = plan(store, raw, T2)
    assert second.writes == () and second.events == ()
    web = next(o for o in raw["EgressPolicy"] if o["metadata"]["name"] == "web")
    assert cond(web["status"], "Ready")["lastTransitionTime"] == T1


def test_invalid_policy_names_the_field() -> None:
    store, raw = world([policy("bad", eip={"ipv4": "203.0.113.129", "useNodeIP": True})])
    (w,) = [w for w in plan(store, raw).writes if w.ref.name == "bad"]
    assert cond(w.status, "Invalid")["status"] == "True"
    assert "spec.egressIP.useNodeIP" in cond(w.status, "Invalid")["message"]
    assert cond(w.status, "Ready")["status"] == "False"
    assert "gateway" not in w.status and w.status["eip"] == {}  # empty strings are dropped (stored as null otherwise)


def test_pending_when_the_gateway_is_missing_then_ready_with_a_transition() -> None:
    store, raw = world([policy("p", {"egressGatewayName": "nope"})])
    first = plan(store, raw, T1)
    (w,) = [w for w in first.writes if w.ref.name == "p"]
    assert cond(w.status, "Pending")["status"] == "True" and cond(w.status, "Pending")["reason"] == "GatewayNotFound"
    assert any(e.reason is EventReason.POLICY_PENDING for e in first.events)
    apply_plan(raw, first)
    later = copy.deepcopy(raw["EgressGateway"][0])
    later["metadata"].update(name="nope", uid="u-nope")
    later["spec"]["ippools"] = {"ipv4": ["203.0.113.140/31"]}
    raw["EgressGateway"].append(later)
    store.apply("EgressGateway", "ADDED", later)  # the gateway appears
    second = plan(store, raw, T2)
    (w2,) = [w for w in second.writes if w.ref.name == "p"]
    assert cond(w2.status, "Ready")["status"] == "True" and cond(w2.status, "Ready")["lastTransitionTime"] == T2
    assert w2.patch["eip"] == {"ipv4": "203.0.113.140"} and w2.patch["gateway"] == "nope"


def test_an_immutable_edit_is_reported_and_the_accepted_version_stays() -> None:
    store, raw = world([policy("p", eip={"ipv4": "203.0.113.129"})])
    apply_plan(raw, plan(store, raw, T1))
    edited = copy.deepcopy(raw["EgressPolicy"][0])
    edited["spec"]["egressIP"] = {"ipv4": "203.0.113.130"}
    edited["metadata"].update(resourceVersion="2", generation=4)
    raw["EgressPolicy"] = [edited]
    store.apply("EgressPolicy", "MODIFIED", edited)
    (w,) = [w for w in plan(store, raw, T2).writes if w.ref.name == "p"]
    assert w.status["eip"] == {"ipv4": "203.0.113.129"} and cond(w.status, "Ready")["status"] == "True"
    invalid = cond(w.status, "Invalid")
    assert invalid["status"] == "True" and invalid["reason"] == "ImmutableField"
    assert "spec.egressIP" in invalid["message"]


def test_eip_change_is_an_event() -> None:
    store, raw = world([policy("web")])
    first = plan(store, raw)
    apply_plan(raw, first)
    raw["EgressPolicy"][0]["status"]["eip"] = {"ipv4": "203.0.113.131"}  # as if written by an older version
    (ev,) = [e for e in plan(store, raw, T2).events if e.reason is EventReason.EIP_CHANGED]
    assert "203.0.113.128" in ev.message and "was 203.0.113.131" in ev.message


def test_ipv6_pool_usage_is_clamped_to_int64() -> None:
    store, raw = world([policy("web")], v6_pool=True)
    gw = next(w for w in plan(store, raw).writes if w.ref.name == "gw")
    assert gw.status["ipUsage"]["ipv6Total"] == INT64_MAX and gw.status["ipUsage"]["ipv6Free"] == INT64_MAX


def test_merge_patch_and_prune() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "gone": "x"}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "e": [1], "added": True}
    assert merge_patch(old, new) == {"gone": None, "b": {"d": 4}, "e": [1], "added": True}
    assert merge_patch(new, new) == {}
    assert prune({"a": "", "b": {"c": "", "d": 1}, "l": [{"m": "", "n": "x"}]}) == {"b": {"d": 1}, "l": [{"n": "x"}]}


def test_intent_from_status_restores_written_eips() -> None:
    store, raw = world([policy("web")])
    apply_plan(raw, plan(store, raw))
    previous = intent_from_status(raw["EgressPolicy"])
    (o,) = previous.outcomes
    assert str(o.policy) == "EgressPolicy/a/web" and str(o.eip_v4) == "203.0.113.128" and o.gateway == "gw"


# ----- Degraded: the selected pod IPs the gateway members skip, and why -----


def worker_node(name: str, address: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "resourceVersion": "1"},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


def web_pod(name: str, ip: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "a", "labels": {"app": "web"}, "resourceVersion": "1"},
            "spec": {"nodeName": node}, "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def replace(store: Store, raw: dict[str, list[Any]], kind: str, objects: list[dict[str, Any]]) -> None:
    raw[kind] = objects
    store.replace(kind, objects, "2")


def test_a_pod_on_a_worker_without_address_makes_the_policy_degraded_until_the_worker_is_known() -> None:
    store, raw = world([policy("web")])  # the pod runs on w1, which has no Node object (no InternalIP)
    first = plan(store, raw, T1)
    (st,) = [w.status for w in first.writes if w.ref.name == "web"]
    assert cond(st, "Ready")["status"] == "True"
    degraded = cond(st, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "UnknownWorker")
    assert degraded["message"] == "1 selected pod IP is not carried: UnknownWorker 1 (100.64.1.10)"
    assert "skippedIPs" not in st  # a condition only: older versions' schemas accept it
    (ev,) = [e for e in first.events if e.reason is EventReason.PODS_NOT_CARRIED]
    assert ev.ref.name == "web" and "UnknownWorker 1" in ev.message
    apply_plan(raw, first)
    assert plan(store, raw, T2).writes == ()  # stable while nothing changes
    replace(store, raw, "Node", [*raw["Node"], worker_node("w1", "192.0.2.21")])
    (w,) = [w for w in plan(store, raw, T2).writes if w.ref.name == "web"]
    assert (cond(w.status, "Degraded")["status"], cond(w.status, "Degraded")["reason"]) == ("False", "AllCarried")


def test_a_pod_ip_on_two_workers_is_reported_with_bounded_examples() -> None:
    store, raw = world([policy("web")])
    replace(store, raw, "Node", [*raw["Node"], worker_node("w1", "192.0.2.21"), worker_node("w2", "192.0.2.22")])
    pods = [web_pod("dup-a", "100.64.1.10", "w1"), web_pod("dup-b", "100.64.1.10", "w2")]
    pods += [web_pod(f"lost-{i}", f"100.64.9.{i}", "w9") for i in range(5)]  # w9: no Node object
    replace(store, raw, "Pod", pods)
    (st,) = [w.status for w in plan(store, raw).writes if w.ref.name == "web"]
    degraded = cond(st, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "UnknownWorker"  # the most common reason first
    assert degraded["message"] == ("6 selected pod IPs are not carried: "
                                   "UnknownWorker 5 (100.64.9.0, 100.64.9.1, 100.64.9.2, ...), "
                                   "PodIPOnTwoWorkers 1 (100.64.1.10)")


def test_a_policy_that_is_not_ready_is_not_degraded() -> None:
    store, raw = world([policy("p", {"egressGatewayName": "nope"})])
    (w,) = [w for w in plan(store, raw).writes if w.ref.name == "p"]
    assert (cond(w.status, "Degraded")["status"], cond(w.status, "Degraded")["reason"]) == ("False", "NotReady")


def test_skips_are_counted_per_policy_and_reason_by_distinct_pod_ip() -> None:
    web = PolicyRef(kind=PolicyKind.NAMESPACED, namespace="a", name="web")
    other = PolicyRef(kind=PolicyKind.CLUSTER, namespace="", name="all")
    ip = ipaddress.ip_address
    skips = [GatewaySkip(pod_ip=ip(f"10.0.0.{i}"), node="w9", reason=GatewaySkipReason.UNKNOWN_WORKER, policy=web)
             for i in (9, 1, 5, 3)]
    skips += [GatewaySkip(pod_ip=ip("10.0.0.2"), node=n, reason=GatewaySkipReason.OVERLAPPING_DESTINATION,
                          policy=other) for n in ("w1", "w2")]  # one pod IP, two skips: counted once
    skips.append(GatewaySkip(pod_ip=ip("10.0.0.7"), node="w1", reason=GatewaySkipReason.UNKNOWN_WORKER))  # no policy
    assert skips_by_policy(skips) == {
        web: (SkipCount(reason=GatewaySkipReason.UNKNOWN_WORKER, count=4,
                        examples=(ip("10.0.0.1"), ip("10.0.0.3"), ip("10.0.0.5"))),),
        other: (SkipCount(reason=GatewaySkipReason.OVERLAPPING_DESTINATION, count=1, examples=(ip("10.0.0.2"),)),),
    }
