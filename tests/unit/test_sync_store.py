"""The k8s_sync store without an API server: synced gate, replace/apply semantics, typed-once parsing, snapshot
caching by revision, member-lease liveness over time, refused immutable edits, appliances from leases."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from k8s_sync import store as store_module
from k8s_sync.leases import MemberIdentity, member_lease_body
from k8s_sync.store import Store

KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "Pod", "Namespace", "Node",
         "Lease"]


def meta(name: str, rv: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "resourceVersion": rv, "generation": 1, **extra}
    if namespace:
        m["namespace"] = namespace
    return m


def gateway(name: str = "gw", rv: str = "1", pool: str = "203.0.113.128/30") -> dict[str, Any]:
    return {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway", "metadata": meta(name, rv),
            "spec": {"ippools": {"ipv4": [pool]}, "nodeSelector": {"selector": {"matchLabels": {"gw": "y"}}}}}


def policy(name: str, rv: str = "1", *, ns: str = "a", eip: str | None = None, gw: str = "gw") -> dict[str, Any]:
    spec: dict[str, Any] = {"egressGatewayName": gw, "appliedTo": {"podSelector": {"matchLabels": {"app": "x"}}}}
    if eip:
        spec["egressIP"] = {"ipv4": eip}
    return {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy", "metadata": meta(name, rv, ns),
            "spec": spec}


def pod(name: str, rv: str = "1", ip: str | None = "100.64.1.10", ns: str = "a") -> dict[str, Any]:
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]} if ip else {"phase": "Pending"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta(name, rv, ns, labels={"app": "x"}),
            "spec": {"nodeName": "w1"}, "status": status}


def synced_store(clock: Any = None) -> Store:
    s = Store(KINDS, clock=clock) if clock else Store(KINDS)
    for kind in KINDS:
        s.replace(kind, [], "1")
    return s


def test_synced_only_after_every_kind_listed() -> None:
    s = Store(["Pod", "Node"])
    assert not s.synced() and s.missing() == {"Pod", "Node"}
    s.replace("Pod", [pod("p")], "5")
    assert not s.synced() and s.missing() == {"Node"}
    s.replace("Node", [], "5")
    assert s.synced() and not s.missing()


def test_replace_drops_vanished_objects_and_apply_follows_events() -> None:
    s = synced_store()
    s.replace("Pod", [pod("p1"), pod("p2", ip="100.64.1.11")], "10")
    assert [p.name for p in s.snapshot().pods] == ["p1", "p2"]
    s.replace("Pod", [pod("p2", ip="100.64.1.11")], "20")  # relist: p1 was deleted while we were away
    assert [p.name for p in s.snapshot().pods] == ["p2"]
    s.apply("Pod", "ADDED", pod("p3", "21", ip="100.64.1.12"))
    s.apply("Pod", "MODIFIED", pod("p2", "22", ip="100.64.1.99"))
    s.apply("Pod", "DELETED", pod("p3", "23"))
    snap = s.snapshot()
    assert [(p.name, p.ips) for p in snap.pods] == [("p2", (ipaddress.ip_address("100.64.1.99"),))]


def test_notifications_and_revision_only_on_change() -> None:
    s = synced_store()
    reasons: list[str] = []
    s.subscribe(reasons.append)
    s.apply("Pod", "ADDED", pod("p1", "5"))
    rev = s.revision
    s.apply("Pod", "MODIFIED", pod("p1", "5"))  # same resourceVersion: a duplicate delivery
    s.apply("Pod", "DELETED", pod("zzz", "6"))  # unknown object
    assert reasons == ["Pod/ADDED"] and s.revision == rev
    s.replace("Pod", [pod("p1", "5")], "7")  # relist with nothing new
    assert reasons == ["Pod/ADDED"] and s.revision == rev


def test_objects_are_parsed_once_and_snapshots_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = store_module.parse_pod_obj

    def counting(obj: dict[str, Any]) -> Any:
        calls.append(obj["metadata"]["name"])
        return real(obj)

    monkeypatch.setattr(store_module, "parse_pod_obj", counting)
    s = synced_store()
    s.replace("Pod", [pod(f"p{i}", ip=f"100.64.1.{i + 1}") for i in range(50)], "10")
    first = s.snapshot()
    assert s.snapshot() is first  # nothing changed: the same object
    s.apply("Pod", "ADDED", pod("new", "11", ip="100.64.2.1"))
    second = s.snapshot()
    assert second is not first and len(second.pods) == 51 and second.revision > first.revision
    assert len(calls) == 51  # every pod parsed exactly once
    s.replace("Pod", [pod(f"p{i}", ip=f"100.64.1.{i + 1}") for i in range(50)], "12")  # relist, same versions
    assert len(calls) == 51


def test_member_liveness_follows_the_clock() -> None:
    now = [1_000_000.0]
    s = synced_store(clock=lambda: now[0])
    lease = member_lease_body(MemberIdentity(name="gw1"), namespace="egressgw-system", duration=10, now=now[0])
    s.replace("Lease", [lease | {"metadata": lease["metadata"] | {"resourceVersion": "3"}}], "3")
    assert s.snapshot().alive_members == frozenset({"gw1"})
    assert s.next_lease_expiry() == pytest.approx(now[0] + 10, abs=0.01)
    now[0] += 11
    assert s.snapshot().alive_members == frozenset()
    assert s.alive_now() == frozenset()


def test_member_liveness_is_frozen_while_the_lease_watch_is_down() -> None:
    """An API server that is away stops renewals *and* our view of them: members must not look dead because of it
    (workers would fail closed and drop every selected packet while the data path could still forward)."""
    now = [1_000_000.0]
    s = synced_store(clock=lambda: now[0])
    lease = member_lease_body(MemberIdentity(name="gw1"), namespace="egressgw-system", duration=10, now=now[0])
    s.replace("Lease", [lease | {"metadata": lease["metadata"] | {"resourceVersion": "3"}}], "3")
    now[0] += 2
    s.disconnected("Lease")  # the reflector lost its watch
    now[0] += 60
    assert s.snapshot().alive_members == frozenset({"gw1"})
    assert s.alive_now() == frozenset({"gw1"})
    # the watch is back (a relist): the holder gets the rest of its lease (8 s: the blind minute does not count)
    s.replace("Lease", [lease | {"metadata": lease["metadata"] | {"resourceVersion": "3"}}], "4")
    assert s.snapshot().alive_members == frozenset({"gw1"})
    now[0] += 7
    assert s.snapshot().alive_members == frozenset({"gw1"})
    now[0] += 2  # no renewal came: it is dead now
    assert s.snapshot().alive_members == frozenset()


def test_appliance_lease_becomes_an_appliance() -> None:
    now = 2_000_000.0
    s = synced_store(clock=lambda: now)
    me = MemberIdentity(name="appl-1", gateway="gw", address="198.51.100.50", wireguard_public_key="a2V5")
    lease = member_lease_body(me, namespace="egressgw-system", duration=10, now=now)
    lease["metadata"]["resourceVersion"] = "9"
    s.replace("Lease", [lease], "9")
    (appliance,) = s.snapshot().appliances
    assert appliance.name == "appl-1" and appliance.gateway == "gw" and appliance.alive
    assert appliance.address == ipaddress.ip_address("198.51.100.50")
    assert appliance.wireguard_public_key == "a2V5"


def test_invalid_objects_become_problems_and_immutable_edits_are_refused() -> None:
    s = synced_store()
    s.replace("EgressGateway", [gateway()], "1")
    s.replace("EgressPolicy", [policy("ok", eip="203.0.113.129"), policy("bad", eip="not-an-ip")], "2")
    snap = s.snapshot()
    assert [p.ref.name for p in snap.policies] == ["ok"]
    assert any(p.ref.name == "bad" and p.field.startswith("spec.egressIP") for p in snap.problems)
    # the EIP of an accepted policy is immutable: the edit is refused and the accepted version stays in effect
    s.apply("EgressPolicy", "MODIFIED", policy("ok", "3", eip="203.0.113.130"))
    snap = s.snapshot()
    (ok,) = [p for p in snap.policies if p.ref.name == "ok"]
    assert str(ok.egress_ip.ipv4) == "203.0.113.129"
    assert any(p.ref.name == "ok" and p.reason == "ImmutableField" for p in snap.problems)


def test_service_cidrs_and_calico_pools_reach_the_snapshot() -> None:
    s = Store([*KINDS, "IPPool"])
    for kind in [*KINDS, "IPPool"]:
        s.replace(kind, [], "1")
    s.set_service_cidrs((ipaddress.ip_network("100.100.0.0/16"),))
    s.replace("IPPool", [{"apiVersion": "crd.projectcalico.org/v1", "kind": "IPPool",
                          "metadata": meta("p", "4"), "spec": {"cidr": "100.96.0.0/16"}}], "4")
    snap = s.snapshot()
    assert snap.service_cidrs == (ipaddress.ip_network("100.100.0.0/16"),)
    assert snap.calico_pools == (ipaddress.ip_network("100.96.0.0/16"),)


def test_view_age_counts_from_the_first_watch_that_is_still_down() -> None:
    """The gateway's stale-member step-back reads this: 0 while everything is listed and watched."""
    now = [1_000_000.0]
    s = Store(["Pod", "Lease"], clock=lambda: now[0])
    now[0] += 4
    assert s.view_age() == 4.0  # never synced: as old as the store
    s.replace("Pod", [], "1")
    s.replace("Lease", [], "1")
    assert s.view_age() == 0.0
    s.disconnected("Pod")
    now[0] += 3
    s.disconnected("Lease")
    s.disconnected("Pod")  # a retry that failed again does not move the start of the outage
    now[0] += 5
    assert s.view_age() == 8.0
    s.watching("Pod")  # the Pod watch is open again; the Lease watch is still down
    assert s.view_age() == 5.0
    s.watching("Lease")
    assert s.view_age() == 0.0
