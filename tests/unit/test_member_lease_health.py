"""The member Lease follows the member's health, and every reader of liveness follows the Lease (pure, fake clock):
an unhealthy member writes its Lease once as already expired and stops renewing; the store then counts it out at
once, so fail-closed and useNodeIP placement move with it (and back when it renews)."""

from __future__ import annotations

import copy
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

from appliance.core.model import FailoverSpec, NoGatewayAction
from appliance.core.snapshot import Snapshot
from appliance.datapath.plan.worker import SkipReason, WorkerSettings, plan_worker
from appliance.policy.resolution import resolve
from k8s_sync.kubeapi import ApiError
from k8s_sync.leases import LEASES, MemberIdentity, MemberLease, lease_alive
from k8s_sync.store import Store
from tests.unit.resolution_builders import gateway, gw_node, node, pod, policy

NS = "egressgw-system"
KINDS = ["EgressGateway", "EgressPolicy", "EgressClusterPolicy", "EgressClusterInfo", "Pod", "Namespace", "Node",
         "Lease"]


class FakeLeaseApi:
    """The Lease objects as the API server would hold them after our create/merge-patch calls."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def merge_patch(self, path: str, patch: dict[str, Any], timeout: Any = None) -> dict[str, Any]:
        if path not in self.objects:
            raise ApiError(404, "not found")
        obj = self.objects[path]
        for key in ("labels", "annotations"):
            obj["metadata"][key] = {**obj["metadata"].get(key, {}), **patch["metadata"][key]}
        obj["spec"] = {**obj["spec"], **patch["spec"]}
        self.writes += 1
        return obj

    def create(self, path: str, body: dict[str, Any], timeout: Any = None) -> dict[str, Any]:
        self.objects[f"{path}/{body['metadata']['name']}"] = copy.deepcopy(body)
        self.writes += 1
        return body

    def leases(self) -> list[dict[str, Any]]:
        return [o | {"metadata": o["metadata"] | {"resourceVersion": str(i)}} for i, o in
                enumerate(self.objects.values(), 1)]


def test_an_unhealthy_member_marks_its_lease_expired_once_and_renews_when_healthy_again() -> None:
    api, now, healthy = FakeLeaseApi(), [1_800_000_000.0], [True]
    lease = MemberLease(api, MemberIdentity(name="gw1"), duration=10, healthy=lambda: healthy[0],  # type: ignore[arg-type]
                        clock=lambda: now[0])
    lease.step()
    obj = api.objects[LEASES.path(NS, "egressgw-member-gw1")]
    assert lease_alive(obj) == now[0] + 10
    healthy[0] = False
    now[0] += 1
    lease.step()
    expiry = lease_alive(obj)
    assert expiry is not None and expiry <= now[0] - 10  # expired at once, beyond a clock skew of a duration
    writes = api.writes
    for _ in range(5):  # while unhealthy: no renewal, no rewrite
        now[0] += 3
        lease.step()
    assert api.writes == writes and lease_alive(obj) == expiry
    healthy[0] = True
    lease.step()
    assert lease_alive(obj) == now[0] + 10


def test_a_starting_member_registers_its_lease_as_expired() -> None:
    api, now = FakeLeaseApi(), 1_800_000_000.0
    me = MemberIdentity(name="appl1", gateway="egw", address="198.51.100.31,2001:db8:51::31")
    MemberLease(api, me, duration=10, healthy=lambda: False, clock=lambda: now).step()  # type: ignore[arg-type]
    store = Store(KINDS, clock=lambda: now)
    for kind in KINDS:
        store.replace(kind, api.leases() if kind == "Lease" else [], "1")
    (appliance,) = store.snapshot().appliances
    # registered (a member of its gateway, with both addresses) but not alive
    assert not appliance.alive and appliance.addresses == (ip_address("198.51.100.31"), ip_address("2001:db8:51::31"))
    assert store.snapshot().alive_members == frozenset()


def snapshot(alive: frozenset[str] | None) -> Snapshot:
    gw = replace(gateway("egw", v4=("203.0.113.130-203.0.113.131",)),
                 failover=FailoverSpec(no_gateway_action=NoGatewayAction.FAIL_CLOSED))
    return Snapshot(
        gateways=(gw,),
        policies=(policy("eip", gateway="egw", app="a"), policy("nodeip", gateway="egw", app="b", node_ip=True)),
        nodes=(gw_node("gw1", "198.51.100.11"), gw_node("gw2", "198.51.100.12"), node("w1", "100.64.250.21")),
        pods=(pod("default", "a", "100.64.1.10", lbl={"app": "a"}),
              pod("default", "b", "100.64.1.11", lbl={"app": "b"})),
        alive_members=alive,
    )


def test_fail_closed_and_use_node_ip_follow_the_unhealthy_members_lease() -> None:
    api, now = FakeLeaseApi(), [1_800_000_000.0]
    health = {"gw1": True, "gw2": True}
    leases = {n: MemberLease(api, MemberIdentity(name=n), duration=10, healthy=lambda n=n: health[n],  # type: ignore[arg-type, misc]
                             clock=lambda: now[0]) for n in health}
    store = Store(KINDS, clock=lambda: now[0])
    for kind in KINDS:
        store.replace(kind, [], "1")

    def step() -> Any:
        for lease in leases.values():
            lease.step()
        store.replace("Lease", api.leases(), str(api.writes))
        intent = resolve(snapshot(store.snapshot().alive_members))
        return intent, plan_worker(intent, node="w1", underlay=ip_address("100.64.250.21"), settings=WorkerSettings())

    def node_ip_endpoint(intent: Any) -> set[str]:
        return {str(e) for s in intent.steerings if s.eip is None for e in s.endpoints}

    intent, plan = step()
    both = node_ip_endpoint(intent)
    assert intent.instances[0].alive == {"gw1", "gw2"} and len(both) == 1
    first = "gw1" if both == {"198.51.100.11"} else "gw2"
    other = "gw2" if first == "gw1" else "gw1"
    # the useNodeIP member turns unhealthy (no wait for its Lease to run out): useNodeIP moves to the other member
    health[first] = False
    now[0] += 1
    intent, plan = step()
    assert intent.instances[0].alive == {other}
    assert node_ip_endpoint(intent) == {"198.51.100.11" if other == "gw1" else "198.51.100.12"}
    assert plan.marks.drop_mark not in {e.mark for e in plan.steer}
    # both unhealthy: fail-closed drops the selected traffic instead of letting it leave with the node IP
    health[other] = False
    now[0] += 1
    intent, plan = step()
    assert intent.instances[0].alive == frozenset()
    assert {e.mark for e in plan.steer} == {plan.marks.drop_mark}
    assert SkipReason.NO_GATEWAY_FAIL_OPEN not in {s.reason for s in plan.skipped}
    # healthy again: renewed, alive, carried
    health[first] = True
    now[0] += 1
    intent, plan = step()
    assert intent.instances[0].alive == {first} and node_ip_endpoint(intent) == both
