"""Small pure pieces of k8s_sync: Service CIDR message parsing, lease time helpers, role watch specs, and the
idempotence of status planning as a Hypothesis property (plan, apply, plan again = nothing to write)."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.policy.resolution import resolve
from k8s_sync.leases import MEMBER_PREFIX, lease_alive, member_name_of_lease, micro_time, parse_time
from k8s_sync.resources import LIVE_PODS, Role, watch_specs
from k8s_sync.service_cidr import parse_range_message
from k8s_sync.status_planning import plan_status
from k8s_sync.store import Store


@pytest.mark.parametrize(("message", "expected"), [
    ("spec.clusterIPs: Invalid value: []string{\"0.0.0.1\"}: failed to allocated ip:0.0.0.1 with error:provided IP "
     "is not in the valid range. The range of valid IPs is 100.100.0.0/16", ["100.100.0.0/16"]),
    ("failed to allocate IP ::1: the provided IP (::1) is not in the valid range. The range of valid IPs is "
     "fd00:10:96::/112", ["fd00:10:96::/112"]),
    ("The range of valid IPs is 10.96.0.0/12, fd00::/108", ["10.96.0.0/12", "fd00::/108"]),
    ("spec.clusterIP: Invalid value: \"x\": must be a valid IP address", []),
])
def test_parse_range_message(message: str, expected: list[str]) -> None:
    assert [str(n) for n in parse_range_message(message)] == expected


def test_lease_time_helpers() -> None:
    t = 1_795_766_441.123456
    assert parse_time(micro_time(t)) == pytest.approx(t, abs=1e-6)
    assert parse_time("2026-11-27T08:00:00Z") == pytest.approx(1_795_766_400.0)
    assert parse_time("garbage") is None and parse_time(None) is None
    lease = {"metadata": {"name": MEMBER_PREFIX + "gw1"},
             "spec": {"renewTime": micro_time(t), "leaseDurationSeconds": 10}}
    assert lease_alive(lease) == pytest.approx(t + 10, abs=1e-6)
    assert member_name_of_lease(lease) == "gw1"
    assert member_name_of_lease({"metadata": {"name": "egressgw-status-writer"}}) is None
    assert lease_alive({"spec": {"leaseDurationSeconds": 10}}) is None


def test_watch_specs_per_role() -> None:
    gw = {s.key: s for s in watch_specs(Role.GATEWAY)}
    agent = {s.key: s for s in watch_specs(Role.AGENT, node_name="w1", lease_namespace="ops")}
    assert gw["Pod"].field_selector == LIVE_PODS
    assert agent["Pod"].field_selector == f"spec.nodeName=w1,{LIVE_PODS}"
    assert agent["Lease"].namespace == "ops" and "IPPool" not in agent
    assert "IPPool" in {s.key for s in watch_specs(Role.GATEWAY, calico=True)}
    with pytest.raises(ValueError, match="node name"):
        watch_specs(Role.AGENT)


KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "Pod", "Namespace", "Node"]

policy_spec = st.fixed_dictionaries({
    "gw": st.sampled_from(["gw", "missing"]),
    "eip": st.sampled_from([None, "203.0.113.129", "203.0.113.200", "bad"]),
    "rr": st.booleans(),
    "node_ip": st.booleans(),
    "app": st.sampled_from(["web", "db"]),
})


@settings(max_examples=40, deadline=None)
@given(st.lists(policy_spec, max_size=6), st.integers(min_value=0, max_value=3))
def test_status_planning_is_idempotent(specs: list[dict[str, Any]], n_pods: int) -> None:
    policies = []
    for i, p in enumerate(specs):
        eip: dict[str, Any] = {}
        if p["eip"]:
            eip["ipv4"] = p["eip"]
        if p["rr"]:
            eip["allocatorPolicy"] = "rr"
        if p["node_ip"]:
            eip["useNodeIP"] = True
        policies.append({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
                         "metadata": {"name": f"p{i}", "namespace": "a", "resourceVersion": "1", "generation": 1,
                                      "creationTimestamp": f"2026-11-27T08:00:0{i}Z"},
                         "spec": {"egressGatewayName": p["gw"], "egressIP": eip,
                                  "appliedTo": {"podSelector": {"matchLabels": {"app": p["app"]}}}}})
    raw: dict[str, list[Any]] = {
        "EgressGateway": [{"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway",
                           "metadata": {"name": "gw", "resourceVersion": "1", "generation": 1},
                           "spec": {"ippools": {"ipv4": ["203.0.113.128/30"]},
                                    "nodeSelector": {"selector": {"matchLabels": {"gw": "y"}}}}}],
        "EgressPolicy": policies,
        "Node": [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"gw": "y"},
                                                                   "resourceVersion": "1"},
                  "status": {"addresses": [{"type": "InternalIP", "address": "198.51.100.11"}]}}],
        "Pod": [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"pod{i}", "namespace": "a", "labels": {"app": "web"}, "resourceVersion": "1"},
                 "spec": {"nodeName": "w1"},
                 "status": {"phase": "Running", "podIP": str(ipaddress.ip_address("100.64.1.10") + i)}}
                for i in range(n_pods)],
    }
    store = Store(KINDS)
    for kind in KINDS:
        store.replace(kind, raw.get(kind, []), "1")
    snap = store.snapshot()
    intent = resolve(snap)
    first = plan_status(snap, intent, raw, now="2026-11-27T08:00:00Z")
    written = {(w.ref.kind, w.ref.name): w.status for w in first.writes}
    after = copy.deepcopy(raw)
    for kind, objs in after.items():
        for o in objs:
            if (kind, o["metadata"]["name"]) in written:
                o["status"] = written[(kind, o["metadata"]["name"])]
    assert len(first.writes) == len(policies) + 1  # every object gets a status the first time
    again = plan_status(snap, intent, after, now="2026-11-27T09:00:00Z")
    assert again.writes == () and again.events == ()
