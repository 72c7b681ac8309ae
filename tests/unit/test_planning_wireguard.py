"""Planner tables for the WireGuard part of the data path (pure), and key handling that needs no kernel."""

from __future__ import annotations

import base64
import random
import stat
from ipaddress import IPv4Address, IPv6Address, IPv6Interface, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import IPAddress, Member, Node, PolicyKind, PolicyRef, TunnelSpec, TunnelType
from appliance.datapath.apply import wireguard_keyfiles as wkf
from appliance.datapath.plan import wireguard as pw
from appliance.datapath.plan import wireguard_keys as wk

INSTANCE_KEY = wk.PrivateKey.generate().public_key()
W1 = wk.PrivateKey.generate().public_key()
W2 = wk.PrivateKey.generate().public_key()
EIP = IPv4Address("203.0.113.130")
EIP6 = IPv6Address("2001:db8:e1::2")
SETTINGS = pw.WgSettings(interface_prefix="egt-wg-", underlay_mtu=1500, instance_key_dir=Path("/keys"))
WG = TunnelSpec(type=TunnelType.WIREGUARD)
REF = PolicyRef(kind=PolicyKind.NAMESPACED, namespace="ns", name="p")


def steer(pod_ip: str, node: str, gateway: str = "gw", endpoints: tuple[IPAddress, ...] = (EIP, EIP6)) -> Steering:
    return Steering(pod_ip=ip_address(pod_ip), namespace="ns", pod="p" + pod_ip, node=node, policy=REF,
                    gateway=gateway, eip=EIP, destinations=(ip_network("0.0.0.0/0"),), endpoints=endpoints)


def instance(name: str = "gw", *, keys: tuple[str | None, ...] = (INSTANCE_KEY, INSTANCE_KEY),
             tunnel: TunnelSpec = WG) -> GatewayInstance:
    members = tuple(Member(name=f"m{i + 1}", address=IPv4Address(f"198.51.100.{11 + i}"), wireguard_public_key=k)
                    for i, k in enumerate(keys))
    return GatewayInstance(name=name, members=members, eips=(EIP,), ranking=((EIP, ("m1", "m2")),), tunnel=tunnel)


def intent(*steerings: Steering, instances: tuple[GatewayInstance, ...] | None = None) -> Intent:
    return Intent(steerings=tuple(steerings), outcomes=(), instances=instances or (instance(),), cluster_cidrs=())


WORKER1 = Node(name="w1", addresses=(IPv4Address("100.127.0.11"),), wireguard_public_key=W1)
WORKER2 = Node(name="w2", addresses=(IPv4Address("100.127.0.12"),), wireguard_public_key=W2)


def local(key: wk.PublicKey, path: str = "/state/wg-current.key") -> wk.LocalKey:
    return wk.LocalKey(public_key=key, private_key_file=Path(path))


def test_worker_one_interface_one_peer_toward_the_instance_endpoint() -> None:
    plan = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1"), steer("100.64.2.10", "w2")),
                                    node=WORKER1, local_keys=(local(W1),), settings=SETTINGS)
    (itf,) = plan.interfaces
    slot = wk.key_slot(W1)
    assert itf.name == pw.interface_name(SETTINGS, "w1", "gw", slot) and len(itf.name) <= 15
    assert itf.name.startswith("egt-wg-") and itf.slot == slot
    assert itf.listen_port is None and itf.mtu == 1440
    assert itf.private_key_file == Path("/state/wg-current.key")
    assert itf.address == pw.probe_address("w1")
    assert itf.addresses == (pw.WORKER_V4, pw.probe_address("w1"))
    (peer,) = itf.peers
    assert peer.public_key == INSTANCE_KEY
    assert peer.endpoint == (EIP, 51820 + slot)
    assert peer.allowed_ips == (pw.ALL_V4, pw.ALL_V6)
    assert plan.route_device("gw") == itf.name
    assert plan.probes == ((itf.name, INSTANCE_KEY),)


def test_worker_without_local_steering_or_vxlan_instance_plans_nothing() -> None:
    vx = instance("vx", tunnel=TunnelSpec(type=TunnelType.VXLAN))
    plan = pw.plan_worker_wireguard(intent(steer("100.64.2.10", "w2"), steer("100.64.1.10", "w1", "vx"),
                                           instances=(instance(), vx)),
                                    node=WORKER1, local_keys=(local(W1),), settings=SETTINGS)
    assert plan.interfaces == () and plan.route_devices == ()


def test_worker_v6_only_underlay_uses_v6_endpoint_and_mtu() -> None:
    node = Node(name="w1", addresses=(IPv6Address("2001:db8:127::11"),))
    plan = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1")), node=node, local_keys=(local(W1),),
                                    settings=SETTINGS)
    (itf,) = plan.interfaces
    assert itf.peers[0].endpoint is not None and itf.peers[0].endpoint[0] == EIP6
    assert itf.mtu == 1420


def test_configured_mtu_wins() -> None:
    inst = instance(tunnel=TunnelSpec(type=TunnelType.WIREGUARD, mtu=1300, port=40000))
    plan = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1"), instances=(inst,)), node=WORKER1,
                                    local_keys=(local(W1),), settings=SETTINGS)
    assert plan.interfaces[0].mtu == 1300
    assert plan.interfaces[0].peers[0].endpoint == (EIP, 40000 + wk.key_slot(W1))


def test_worker_endpoint_is_lowest_endpoint_of_the_instance() -> None:
    low = IPv4Address("203.0.113.129")
    plan = pw.plan_worker_wireguard(
        intent(steer("100.64.1.10", "w1"), steer("100.64.2.10", "w2", endpoints=(low,))),
        node=WORKER1, local_keys=(local(W1),), settings=SETTINGS)
    assert plan.interfaces[0].peers[0].endpoint == (low, 51820 + wk.key_slot(W1))


def test_missing_or_mismatched_instance_key_is_reported() -> None:
    none = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1"), instances=(instance(keys=(None, None)),)),
                                    node=WORKER1, local_keys=(local(W1),), settings=SETTINGS)
    assert none.interfaces == () and none.skipped[0].reason is pw.WgSkipReason.NO_INSTANCE_KEY
    other = wk.PrivateKey.generate().public_key()
    mixed = pw.plan_worker_wireguard(
        intent(steer("100.64.1.10", "w1"), instances=(instance(keys=(INSTANCE_KEY, other, INSTANCE_KEY)),)),
        node=WORKER1, local_keys=(local(W1),), settings=SETTINGS)
    assert mixed.interfaces[0].peers[0].public_key == INSTANCE_KEY
    assert [s.reason for s in mixed.skipped] == [pw.WgSkipReason.INSTANCE_KEY_MISMATCH]


def _key_of_slot(slot: int) -> wk.PublicKey:
    while True:
        k = wk.PrivateKey.generate().public_key()
        if wk.key_slot(k) == slot:
            return k


def test_worker_during_rotation_has_two_interfaces_and_routes_through_the_active_one() -> None:
    old, new = _key_of_slot(0), _key_of_slot(1)
    plan = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1")), node=WORKER1,
                                    local_keys=(local(old), local(new, "/state/wg-next.key")), settings=SETTINGS)
    names = {i.slot: i.name for i in plan.interfaces}
    assert set(names) == {0, 1}
    assert plan.route_device("gw") == names[0]
    assert {i.peers[0].endpoint for i in plan.interfaces} == {(EIP, 51820), (EIP, 51821)}
    assert len(plan.probes) == 2


def test_gateway_peers_allowed_ips_are_exactly_each_workers_pods() -> None:
    nodes = (WORKER1, WORKER2, Node(name="w3", wireguard_public_key=None))
    plan = pw.plan_gateway_wireguard(
        intent(steer("100.64.1.10", "w1"), steer("100.64.1.11", "w1"), steer("2001:db8:64:1::10", "w1"),
               steer("100.64.2.10", "w2"), steer("100.64.3.10", "w3")),
        member="m1", nodes=nodes, settings=SETTINGS)
    assert [i.slot for i in plan.interfaces] == sorted([0, 1], key=lambda s: pw.interface_name(SETTINGS, "m1", "gw", s))
    for itf in plan.interfaces:
        assert itf.mtu == 1420  # some worker may reach the instance over IPv6 (the steering has a v6 endpoint)
        assert itf.listen_port == 51820 + itf.slot
        assert itf.private_key_file == Path("/keys/gw.key")
        assert itf.address == IPv6Interface("fe80::1/64") and itf.address4 == pw.GATEWAY_V4
        assert itf.name == pw.interface_name(SETTINGS, "m1", "gw", itf.slot)
    peers = {p.public_key: (i.slot, p) for i in plan.interfaces for p in i.peers}
    assert set(peers) == {W1, W2}
    slot1, p1 = peers[W1]
    assert slot1 == wk.key_slot(W1) and p1.endpoint is None
    assert p1.allowed_ips == (ip_network("100.64.1.10/32"), ip_network("100.64.1.11/32"),
                              ip_network("2001:db8:64:1::10/128"), ip_network(pw.probe_address("w1").ip))
    assert peers[W2][1].allowed_ips == (ip_network("100.64.2.10/32"), ip_network(pw.probe_address("w2").ip))
    dev1 = pw.interface_name(SETTINGS, "m1", "gw", wk.key_slot(W1))
    assert pw.WgRoute(destination=ip_network("100.64.1.10/32"), device=dev1) in plan.routes
    assert len(plan.routes) == 4
    assert [(s.subject, s.reason) for s in plan.skipped] == [("w3", pw.WgSkipReason.NO_PUBLIC_KEY)]


def test_gateway_not_a_member_plans_nothing() -> None:
    plan = pw.plan_gateway_wireguard(intent(steer("100.64.1.10", "w1")), member="m9", nodes=(WORKER1,),
                                     settings=SETTINGS)
    assert plan == pw.WireguardPlan()


def test_gateway_rotation_both_keys_are_peers_on_their_slots_returns_follow_the_first() -> None:
    old, new = _key_of_slot(0), _key_of_slot(1)
    for order, route_slot in (((old, new), 0), ((new, old), 1)):
        node = Node(name="w1", wireguard_public_key=",".join(order))
        plan = pw.plan_gateway_wireguard(intent(steer("100.64.1.10", "w1")), member="m1", nodes=(node,),
                                         settings=SETTINGS)
        by_slot = {i.slot: i for i in plan.interfaces}
        assert [p.public_key for p in by_slot[0].peers] == [old]
        assert [p.public_key for p in by_slot[1].peers] == [new]
        assert by_slot[0].peers[0].allowed_ips == by_slot[1].peers[0].allowed_ips
        assert plan.routes == (pw.WgRoute(destination=ip_network("100.64.1.10/32"), device=by_slot[route_slot].name),)


def test_gateway_duplicate_key_dropped_for_both_nodes() -> None:
    nodes = (Node(name="w1", wireguard_public_key=W1), Node(name="w2", wireguard_public_key=W1))
    plan = pw.plan_gateway_wireguard(intent(steer("100.64.1.10", "w1"), steer("100.64.2.10", "w2")),
                                     member="m1", nodes=nodes, settings=SETTINGS)
    assert all(i.peers == () for i in plan.interfaces) and plan.routes == ()
    assert {s.reason for s in plan.skipped} == {pw.WgSkipReason.DUPLICATE_PUBLIC_KEY}


def test_gateway_port_conflict_between_instances() -> None:
    a = instance("a", tunnel=TunnelSpec(type=TunnelType.WIREGUARD, port=51820))
    b = instance("b", tunnel=TunnelSpec(type=TunnelType.WIREGUARD, port=51821))
    c = instance("c", tunnel=TunnelSpec(type=TunnelType.WIREGUARD, port=51830))
    plan = pw.plan_gateway_wireguard(intent(instances=(a, b, c)), member="m1", nodes=(), settings=SETTINGS)
    assert {i.instance for i in plan.interfaces} == {"a", "c"}
    assert [(s.subject, s.reason) for s in plan.skipped] == [("b", pw.WgSkipReason.PORT_CONFLICT)]


def test_plan_is_independent_of_input_order() -> None:
    s = [steer("100.64.1.10", "w1"), steer("100.64.1.11", "w1"), steer("100.64.2.10", "w2")]
    a = pw.plan_gateway_wireguard(intent(*s), member="m1", nodes=(WORKER1, WORKER2), settings=SETTINGS)
    b = pw.plan_gateway_wireguard(intent(*reversed(s)), member="m1", nodes=(WORKER2, WORKER1), settings=SETTINGS)
    assert a == b


def test_interface_names_are_unique_per_node_instance_slot_and_short() -> None:
    names = {pw.interface_name(pw.WgSettings(), n, i, s) for n in ("a", "b") for i in ("x", "y") for s in (0, 1)}
    assert len(names) == 8 and all(len(n) <= 15 for n in names)
    with pytest.raises(ValueError):
        pw.WgSettings(interface_prefix="much-too-long-")


def test_probe_addresses_are_link_local_and_never_the_gateways() -> None:
    a = pw.probe_address("w1")
    assert a.ip.is_link_local and a.ip != pw.GATEWAY_PROBE_ADDRESS and a != pw.probe_address("w2")


# ----- keys (pure parts) -----


def test_rfc7748_x25519_vector() -> None:
    # RFC 7748 section 6.1 (Alice's key pair)
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    expected = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert wk.PrivateKey(alice).public_key() == base64.b64encode(expected).decode()


def test_private_key_never_in_repr_or_plan(tmp_path: Path) -> None:
    key = wk.PrivateKey.generate()
    assert key.to_base64() not in repr(key) and key.to_base64() not in str(key)
    path = tmp_path / wkf.CURRENT_KEY_FILE
    wkf.write_key_file(path, key)
    (lk,) = wkf.local_keys(tmp_path)
    plan = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1")), node=WORKER1, local_keys=(lk,),
                                    settings=SETTINGS)
    assert plan.interfaces and key.to_base64() not in repr(plan) and key.to_base64() not in repr(lk)


def test_key_file_mode_0600_and_stable_across_restarts(tmp_path: Path) -> None:
    first = wkf.local_keys(tmp_path / "state")
    path = tmp_path / "state" / wkf.CURRENT_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wkf.local_keys(tmp_path / "state") == first
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        wkf.local_keys(tmp_path / "state")


def test_rotation_phases(tmp_path: Path) -> None:
    (old,) = wkf.local_keys(tmp_path)
    new = wkf.begin_rotation(tmp_path)
    assert new.slot != old.slot and wkf.begin_rotation(tmp_path) == new
    assert [k.public_key for k in wkf.local_keys(tmp_path)] == [old.public_key, new.public_key]
    wkf.switch_rotation(tmp_path)
    assert [k.public_key for k in wkf.local_keys(tmp_path)] == [new.public_key, old.public_key]
    wkf.end_rotation(tmp_path)
    assert [k.public_key for k in wkf.local_keys(tmp_path)] == [new.public_key]


def test_published_keys_round_trip_and_invalid_entries_dropped() -> None:
    assert wk.parse_published_keys(f"{W1},{W2}") == (W1, W2)
    assert wk.parse_published_keys(f" {W1} , junk") == (W1,)
    assert wk.parse_published_keys(None) == ()


class FakeNodes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str | None]]] = []

    def patch_node_annotations(self, node: str, annotations: dict[str, str | None]) -> None:
        self.calls.append((node, annotations))


def test_publish_public_key() -> None:
    fake = FakeNodes()
    wkf.publish_public_key(fake, "w1", (W1, W2))
    assert fake.calls == [("w1", {"egressgw.io/wireguard-public-key": f"{W1},{W2}"})]
    with pytest.raises(ValueError):
        wkf.publish_public_key(fake, "w1", (wk.PublicKey("nope"),))


def test_gateway_mtu_for_ipv4_only_endpoints() -> None:
    plan = pw.plan_gateway_wireguard(intent(steer("100.64.1.10", "w1", endpoints=(EIP,))), member="m1",
                                     nodes=(WORKER1,), settings=SETTINGS)
    assert {i.mtu for i in plan.interfaces} == {1440}


def test_worker_two_instances_two_interfaces_and_devices() -> None:
    other = instance("gw2")
    plan = pw.plan_worker_wireguard(intent(steer("100.64.1.10", "w1"), steer("100.64.1.11", "w1", "gw2"),
                                           instances=(instance(), other)),
                                    node=WORKER1, local_keys=(local(W1),), settings=SETTINGS)
    assert len(plan.interfaces) == 2 and len({i.name for i in plan.interfaces}) == 2
    assert plan.route_device("gw") != plan.route_device("gw2")
    assert {i.instance for i in plan.interfaces} == {"gw", "gw2"}


def test_pod_ip_claimed_by_two_workers_is_allowed_for_neither() -> None:
    plan = pw.plan_gateway_wireguard(intent(steer("100.64.1.10", "w1"), steer("100.64.1.10", "w2"),
                                            steer("100.64.1.11", "w1")),
                                     member="m1", nodes=(WORKER1, WORKER2), settings=SETTINGS)
    allowed = {p.public_key: p.allowed_ips for i in plan.interfaces for p in i.peers}
    assert ip_network("100.64.1.10/32") not in allowed[W1] + allowed[W2]
    assert ip_network("100.64.1.11/32") in allowed[W1]
    assert {r.destination for r in plan.routes} == {ip_network("100.64.1.11/32")}
    assert {s.subject for s in plan.skipped if s.reason is pw.WgSkipReason.POD_ON_TWO_WORKERS} == {"w1", "w2"}


NODE_KEYS = {f"w{i}": wk.PrivateKey(bytes([i + 1] * 32)).public_key() for i in range(4)}


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12)), max_size=25), st.randoms())
@settings(max_examples=60, deadline=None)
def test_property_allowed_ips_disjoint_per_interface_and_order_independent(
        pairs: list[tuple[int, int]], rnd: random.Random) -> None:
    steerings = [steer(f"100.64.0.{ip}", f"w{node}") for node, ip in pairs]
    nodes = [Node(name=n, wireguard_public_key=k) for n, k in NODE_KEYS.items()]
    plan = pw.plan_gateway_wireguard(intent(*steerings), member="m1", nodes=nodes, settings=SETTINGS)
    for itf in plan.interfaces:
        seen = [n for p in itf.peers for n in p.allowed_ips]
        assert len(seen) == len(set(seen)), "allowed IPs must be unique per interface"
    routed = [r.destination for r in plan.routes]
    assert len(routed) == len(set(routed))
    rnd.shuffle(steerings)
    rnd.shuffle(nodes)
    assert pw.plan_gateway_wireguard(intent(*steerings), member="m1", nodes=nodes, settings=SETTINGS) == plan
