"""Keyed VNIs (docs/security.md "Keyed VNIs"), pure: the derivation, what the worker and gateway planners make of
it, the gateway's admission map and its rule order, and the uid's way from the API object to the instance."""

from __future__ import annotations

from ipaddress import ip_address

from hypothesis import given
from hypothesis import strategies as st

from appliance.api.manifests import parse_gateway
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.tunnel import VNI_SPACE, keyed_vni, worker_vni
from appliance.datapath.plan.worker import WorkerSettings, plan_worker
from appliance.policy.placement import build_instance
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent, worker_addresses

UID = "0d9f3c1e-5b7a-4e2b-9a61-2f4c8d7e6b10"
GW = Gw(uid=UID, eips=("203.0.113.130", "2001:db8:e1::2"))
SELS = [Sel(pod_ip="100.64.1.10"), Sel(pod_ip="100.64.2.10", node="worker2")]

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-.", min_size=1, max_size=40)


def test_derivation_is_stable_across_processes() -> None:
    # pinned: a change of the derivation re-keys every tunnel of every cluster on upgrade; make it on purpose
    assert keyed_vni(key=UID, instance="gw-a", node="worker1", spec_vni=7700) == 14293721
    assert keyed_vni(key=UID, instance="gw-a", node="worker1", spec_vni=7700) == \
        keyed_vni(key=UID, instance="gw-a", node="worker1", spec_vni=7700)


@given(key=st.text(max_size=40), instance=names, node=names, spec=st.integers(1, VNI_SPACE - 1))
def test_derived_vni_is_a_valid_24_bit_vni_never_0_nor_the_public_spec_vni(key: str, instance: str, node: str,
                                                                           spec: int) -> None:
    vni = keyed_vni(key=key, instance=instance, node=node, spec_vni=spec)
    assert 0 < vni < VNI_SPACE and vni != spec


def test_the_spec_vni_is_skipped_even_when_the_hmac_yields_it() -> None:
    first = keyed_vni(key=UID, instance="gw-a", node="worker1", spec_vni=1)
    again = keyed_vni(key=UID, instance="gw-a", node="worker1", spec_vni=first)
    assert again != first and 0 < again < VNI_SPACE


def test_distinct_per_worker_instance_and_key() -> None:
    vnis = {keyed_vni(key=k, instance=i, node=n, spec_vni=7700)
            for k in (UID, "another-uid") for i in ("gw-a", "gw-b") for n in ("worker1", "worker2", "worker3")}
    assert len(vnis) == 12
    # the instance name and the node name are separate fields: ("gw-a", "bworker") is not ("gw-ab", "worker")
    assert keyed_vni(key=UID, instance="gw-a", node="bworker", spec_vni=7700) != \
        keyed_vni(key=UID, instance="gw-ab", node="worker", spec_vni=7700)


def test_worker_and_gateway_agree_on_the_keyed_vni_and_neither_uses_the_spec_vni() -> None:
    intent = build_intent([GW], SELS)
    inst = intent.instances[0]
    w1 = plan_worker(intent, node="worker1", underlay=ip_address("100.127.0.11"), settings=WorkerSettings())
    want = worker_vni(inst, "worker1")
    assert want != GW.vni
    assert {e.vni for e in w1.endpoints} == {want}
    assert {r.encap.vni for r in w1.kernel.routes if r.encap is not None} == {want}
    g = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings())
    by_dst = {str(r.encap.dst): r.encap.vni for r in g.kernel.routes if r.encap is not None}
    assert by_dst == {"100.127.0.11": want, "100.127.0.12": worker_vni(inst, "worker2")}
    marks = {v.node: v.mark for v in g.vteps}
    assert {(str(v.address), v.vni, v.mark) for v in g.vtep_vnis} == {
        (a, worker_vni(inst, n), marks[n]) for n, addrs in (("worker1", ("100.127.0.11", "2001:db8:127::11")),
                                                              ("worker2", ("100.127.0.12", "2001:db8:127::12")))
        for a in addrs
    }


def test_a_worker_of_two_instances_is_admitted_with_each_instances_vni_and_one_mark() -> None:
    b = Gw(name="gw-b", uid="other-uid", eips=("203.0.113.140",))
    intent = build_intent([GW, b], [*SELS, Sel(pod_ip="100.64.1.11", gateway="gw-b", eip="203.0.113.140")])
    g = plan_gateway(intent, member="gw1", workers=worker_addresses(), settings=GatewaySettings())
    w1 = [v for v in g.vtep_vnis if v.node == "worker1" and v.address.version == 4]
    assert len(w1) == 2 and len({v.vni for v in w1}) == 2 and len({v.mark for v in w1}) == 1
    elements = {k for k, _ in gateway_table(g).set("vtepvni4").elements}
    assert {f"100.127.0.11 . {v.vni}" for v in w1} <= elements


def test_admission_binds_source_and_vni_and_counts_a_known_worker_with_a_wrong_vni() -> None:
    g = plan_gateway(build_intent([GW], SELS), member="gw1", workers=worker_addresses(), settings=GatewaySettings())
    table = gateway_table(g)
    chains = table.chains
    order = [
        "udp dport @tunnel_ports fib saddr . iif oif missing counter name drop_tunnel_source drop",
        "udp dport @tunnel_ports meta mark set ip saddr . @th,96,24 map @vtepvni4 accept",
        "udp dport @tunnel_ports meta mark set ip6 saddr . @th,96,24 map @vtepvni6 accept",
        "udp dport @tunnel_ports ip saddr @vteps4 counter name drop_tunnel_vni drop",
        "udp dport @tunnel_ports ip6 saddr @vteps6 counter name drop_tunnel_vni drop",
        "udp dport @tunnel_ports counter name drop_unknown_vtep drop",
    ]
    assert [chains.index(r) for r in order] == sorted(chains.index(r) for r in order)
    assert "saddr map @vteps" not in chains  # no admission by the outer source alone
    assert "drop_tunnel_vni" in table.counters
    assert "typeof ip saddr . @th,96,24 : meta mark" in table.set("vtepvni4").declaration()


def test_uid_travels_from_the_api_object_to_the_instance_key() -> None:
    obj = {"apiVersion": "egressgw.io/v1", "kind": "EgressGateway",
           "metadata": {"name": "gw-a", "uid": UID, "generation": 1},
           "spec": {"ippools": {"ipv4": ["203.0.113.128/28"]}, "appliancesOnly": True}}
    issues: list[tuple[str, str]] = []
    gw = parse_gateway(obj, issues)
    assert issues == [] and gw is not None and gw.uid == UID
    inst = build_instance(gw, nodes=(), appliances=(), alive_members=None, used_eips=())
    assert inst.tunnel_key == UID
