"""Pure parts of the WireGuard shell: the session watch, `wg show dump` parsing, endpoints, the worker glue and the
rotation driver (with a fake applier, prober and API client)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import WIREGUARD_KEY_ANNOTATION, Member, Node, PolicyKind, PolicyRef, TunnelSpec, TunnelType
from appliance.datapath.apply import wireguard_keyfiles as wkf
from appliance.datapath.apply.wireguard import format_endpoint, parse_dump
from appliance.datapath.apply.wireguard_liveness import SessionWatch
from appliance.datapath.apply.wireguard_node import RotationStep, WorkerWireguard
from appliance.datapath.plan import wireguard_keys as wk
from appliance.datapath.plan.wireguard import WgSettings, WireguardPlan


def test_session_watch_resets_after_misses_and_backs_off() -> None:
    w = SessionWatch(misses_to_reset=3)
    assert [w.record(False) for _ in range(3)] == [False, False, True]
    # second fruitless reset needs twice as many misses
    assert [w.record(False) for _ in range(6)] == [False] * 5 + [True]
    assert w.record(True) is False and w.fruitless_resets == 0
    assert [w.record(False) for _ in range(3)] == [False, False, True]
    assert w.resets == 3


def test_session_watch_backoff_is_capped() -> None:
    w = SessionWatch(misses_to_reset=1, max_backoff=4)
    results = [w.record(False) for _ in range(1 + 2 + 4 + 4 + 4)]
    assert sum(results) == 5


DUMP = (
    "PRIVATEKEYPRIVATEKEYPRIVATEKEYPRIVATEKEY000=\tPUBpubPUBpubPUBpubPUBpubPUBpubPUBpubPUBpub0=\t51820\toff\n"
    "AAAApubPUBpubPUBpubPUBpubPUBpubPUBpubPUBpub0=\t(none)\t100.127.0.11:40000\t100.64.1.11/32,100.64.1.10/32\t"
    "1700000000\t100\t200\toff\n"
    "BBBBpubPUBpubPUBpubPUBpubPUBpubPUBpubPUBpub0=\t(none)\t(none)\t(none)\t0\t0\t0\t25\n"
)


def test_parse_dump_drops_the_private_key() -> None:
    public, port, peers = parse_dump(DUMP)
    assert public == "PUBpubPUBpubPUBpubPUBpubPUBpubPUBpubPUBpub0=" and port == 51820
    assert "PRIVATE" not in repr(peers)
    assert peers[0].allowed_ips == ("100.64.1.10/32", "100.64.1.11/32")
    assert peers[0].endpoint == "100.127.0.11:40000" and peers[0].rx_bytes == 100
    assert peers[1].endpoint is None and peers[1].allowed_ips == () and peers[1].keepalive == 25
    assert parse_dump("") == (None, 0, ())


def test_format_endpoint() -> None:
    assert format_endpoint((IPv4Address("203.0.113.130"), 51820)) == "203.0.113.130:51820"
    assert format_endpoint((IPv6Address("2001:db8:e1::2"), 51821)) == "[2001:db8:e1::2]:51821"


class FakeApplier:
    def __init__(self) -> None:
        self.plans: list[WireguardPlan] = []

    def apply(self, plan: WireguardPlan) -> list[str]:
        self.plans.append(plan)
        return ["something"]


class FakeProber:
    def __init__(self) -> None:
        self.targets: list[tuple[str, str]] = []
        self.up: set[str] = set()

    def set_targets(self, probes: object) -> None:
        self.targets = list(probes)  # type: ignore[call-overload]

    def answering(self, device: str) -> bool:
        return device in self.up


class FakeNodes:
    def __init__(self) -> None:
        self.values: list[str | None] = []

    def patch_node_annotations(self, node: str, annotations: dict[str, str | None]) -> None:
        self.values.append(annotations[WIREGUARD_KEY_ANNOTATION])


INSTANCE_KEY = wk.PrivateKey.generate().public_key()
EIP = IPv4Address("203.0.113.130")


def _intent() -> Intent:
    ref = PolicyRef(kind=PolicyKind.NAMESPACED, namespace="ns", name="p")
    s = Steering(pod_ip=ip_address("100.64.1.10"), namespace="ns", pod="a", node="w1", policy=ref, gateway="gw",
                 eip=EIP, destinations=(ip_network("0.0.0.0/0"),), endpoints=(EIP,))
    inst = GatewayInstance(name="gw", members=(Member(name="m1", address=IPv4Address("198.51.100.11"),
                                                      wireguard_public_key=INSTANCE_KEY),),
                           eips=(EIP,), ranking=(), tunnel=TunnelSpec(type=TunnelType.WIREGUARD))
    return Intent(steerings=(s,), outcomes=(), instances=(inst,), cluster_cidrs=())


def test_worker_reconcile_publishes_once_plans_applies_and_retargets(tmp_path: Path) -> None:
    nodes, prober, applier = FakeNodes(), FakeProber(), FakeApplier()
    w = WorkerWireguard(node="w1", state_dir=tmp_path, settings=WgSettings(), applier=applier, prober=prober,
                        annotator=nodes)
    node = Node(name="w1", addresses=(IPv4Address("100.127.0.11"),))
    plan = w.reconcile(_intent(), node)
    w.reconcile(_intent(), node)
    assert len(nodes.values) == 1 and nodes.values[0] == w.current_keys()[0].public_key
    assert applier.plans == [plan, plan] and prober.targets == list(plan.probes)
    assert plan.route_device("gw") == plan.interfaces[0].name


def test_rotation_driver_switches_when_new_tunnel_answers_and_ends_after_grace(tmp_path: Path) -> None:
    now = [0.0]
    nodes, prober = FakeNodes(), FakeProber()
    w = WorkerWireguard(node="w1", state_dir=tmp_path, settings=WgSettings(), applier=FakeApplier(), prober=prober,
                        annotator=nodes, grace=10.0, clock=lambda: now[0])
    node = Node(name="w1", addresses=(IPv4Address("100.127.0.11"),))
    w.reconcile(_intent(), node)
    assert w.advance_rotation() is RotationStep.IDLE
    (old,) = w.current_keys()
    new = wkf.begin_rotation(tmp_path)
    plan = w.reconcile(_intent(), node)
    assert nodes.values[-1] == f"{old.public_key},{new.public_key}" and len(plan.interfaces) == 2
    assert w.advance_rotation() is RotationStep.WAITING_FOR_NEW_TUNNEL
    prober.up = {i.name for i in plan.interfaces if i.slot == new.slot}
    assert w.advance_rotation() is RotationStep.SWITCHED
    assert nodes.values[-1] == f"{new.public_key},{old.public_key}"
    plan = w.reconcile(_intent(), node)
    assert plan.route_device("gw") == next(i.name for i in plan.interfaces if i.slot == new.slot)
    now[0] = 5.0
    assert w.advance_rotation() is RotationStep.DRAINING_OLD_KEY
    now[0] = 10.0
    assert w.advance_rotation() is RotationStep.ENDED
    assert nodes.values[-1] == new.public_key
    assert [k.public_key for k in w.current_keys()] == [new.public_key]

