"""Data-path liveness: the hysteresis of `record`, the decision table of `apply_liveness` through the real worker
planner (probes vs. Leases, fail open and closed), the incremental path keeping unchanged steerings, the prober's
round bookkeeping with a scripted socket, and the agent glue waking its loop and writing its status."""

from __future__ import annotations

import json
import socket
import threading
from ipaddress import ip_address
from pathlib import Path

import pytest

from appliance.agent.endpoint_liveness import LIVENESS_REASON, EndpointLiveness, LivenessCollector
from appliance.core.errors import ConfigError
from appliance.core.model import IPAddress, NoGatewayAction
from appliance.core.waiting import wait_until
from appliance.datapath.apply.endpoint_probing import (
    EchoSocket,
    EndpointProber,
    echo_request,
    parse_echo_reply,
)
from appliance.datapath.plan.endpoint_liveness import (
    EndpointState,
    ProbeSettings,
    ProbeTrack,
    apply_liveness,
    probe_targets,
    record,
    rewritten_steerings,
)
from appliance.datapath.plan.packets import internet_checksum
from appliance.datapath.plan.worker import SkipReason, WorkerSettings, plan_worker
from appliance.runtime.config import parse_agent_config
from lab.testbeds.datapath_scenarios import Gw, Sel, build_intent

UP, DOWN, UNKNOWN = EndpointState.UP, EndpointState.DOWN, EndpointState.UNKNOWN
EIP = ip_address("203.0.113.130")
EIP2 = ip_address("203.0.113.131")
U4 = ip_address("100.127.0.11")
S = ProbeSettings(fall=3, rise=2)
FAST = ProbeSettings(interval_s=0.01, fall=2, rise=2, max_rate_per_s=1000)


def run(track: ProbeTrack, results: str) -> list[EndpointState]:
    """Feed 'a' (answered) / 'm' (missed) and return the state after each."""
    out = []
    for c in results:
        track = record(track, c == "a", S)
        out.append(track.state)
    return out


def test_up_at_first_answer_down_after_fall_misses_up_after_rise_answers() -> None:
    assert run(ProbeTrack(), "a") == [UP]
    assert run(ProbeTrack(state=UP), "mmm") == [UP, UP, DOWN]
    assert run(ProbeTrack(state=DOWN), "aa") == [DOWN, UP]


def test_never_flaps_on_a_single_loss_or_a_single_answer() -> None:
    assert set(run(ProbeTrack(state=UP), "amamammaamma")) == {UP}
    assert set(run(ProbeTrack(state=DOWN), "amamamamam")) == {DOWN}


def test_an_endpoint_that_never_answered_stays_unknown() -> None:
    assert run(ProbeTrack(), "mmmmmm") == [UNKNOWN] * 6
    t = ProbeTrack()
    for c in "aamm":
        t = record(t, c == "a", S)
    assert (t.sent, t.answered, t.misses) == (4, 2, 2)


def plan(intent, states):  # type: ignore[no-untyped-def]
    eff = apply_liveness(intent, node="worker1", underlay_version=4, states=states)
    return eff, plan_worker(eff.intent, node="worker1", underlay=U4, settings=WorkerSettings())


def two_eips(alive: tuple[str, ...] | None = None, action: NoGatewayAction = NoGatewayAction.FAIL_CLOSED):  # type: ignore[no-untyped-def]
    return build_intent(
        [Gw(eips=(str(EIP), str(EIP2)), members=("gw1", "gw2"), alive=alive, no_gateway_action=action)],
        [Sel(pod_ip="100.64.1.10"), Sel(pod_ip="100.64.1.11", policy="p2", eip=str(EIP2)),
         Sel(pod_ip="100.64.2.10", node="worker2")],
    )


@pytest.mark.parametrize(
    ("lease_alive", "state", "tunnel"),
    [(True, UP, True), (True, UNKNOWN, True), (True, DOWN, False),
     (False, UP, True), (False, UNKNOWN, False), (False, DOWN, False)],
)
def test_decision_table(lease_alive: bool, state: EndpointState, tunnel: bool) -> None:
    intent = two_eips(alive=None if lease_alive else ())
    _, p = plan(intent, {EIP: state, EIP2: state})
    drop = p.marks.drop_mark
    assert all((e.mark != drop) is tunnel for e in p.steer)
    assert {e.address for e in p.endpoints} == ({EIP, EIP2} if tunnel else set())


def test_leases_expired_but_one_eip_answers_carries_that_eip_only() -> None:
    eff, p = plan(two_eips(alive=()), {EIP: UP})  # EIP2 never probed: its Lease (dead) decides
    by_pod = {str(e.pod_ip): e.mark for e in p.steer}
    assert by_pod["100.64.1.10"] == p.endpoints[0].mark and p.endpoints[0].address == EIP
    assert by_pod["100.64.1.11"] == p.marks.drop_mark
    assert eff.verdict.carried_without_lease == ("gw-a",)
    assert [str(pod) for pod, _ in eff.verdict.down_by_probe] == ["100.64.1.11"]


def test_fail_open_when_the_probes_say_down_though_leases_are_fresh() -> None:
    eff, p = plan(two_eips(action=NoGatewayAction.FAIL_OPEN), {EIP: DOWN, EIP2: UP})
    assert [str(e.pod_ip) for e in p.steer] == ["100.64.1.11"]
    assert [(str(s.pod_ip), s.reason) for s in p.skipped] == [("100.64.1.10", SkipReason.NO_GATEWAY_FAIL_OPEN)]
    assert eff.verdict.down_by_probe == ((ip_address("100.64.1.10"), EIP),)


def test_nothing_to_override_returns_the_same_intent_object() -> None:
    intent = two_eips()
    assert apply_liveness(intent, node="worker1", underlay_version=4, states={EIP: UP}).intent is intent
    dead = two_eips(alive=())
    assert apply_liveness(dead, node="worker1", underlay_version=4, states={EIP: DOWN}).intent is dead


def test_unchanged_verdicts_keep_the_same_steering_objects_between_passes() -> None:
    intent = two_eips()
    first = apply_liveness(intent, node="worker1", underlay_version=4, states={EIP: DOWN})
    reuse = rewritten_steerings(intent, first.intent)
    assert len(reuse) == 1
    second = apply_liveness(intent, node="worker1", underlay_version=4, states={EIP: DOWN}, reuse=reuse)
    assert [id(s) for s in second.intent.steerings] == [id(s) for s in first.intent.steerings]


def test_probe_targets_are_this_nodes_vxlan_endpoints_of_its_family() -> None:
    intent = build_intent(
        [Gw(eips=(str(EIP), "2001:db8:e1::2")), Gw(name="wg", eips=("203.0.113.140",), wireguard=True)],
        [Sel(pod_ip="100.64.1.10", partner="2001:db8:e1::2"), Sel(pod_ip="100.64.1.12", gateway="wg",
                                                                 eip="203.0.113.140"),
         Sel(pod_ip="100.64.2.10", node="worker2", eip="203.0.113.130")],
    )
    assert probe_targets(intent, node="worker1", underlay_version=4) == {EIP}
    assert probe_targets(intent, node="worker1", underlay_version=6) == {ip_address("2001:db8:e1::2")}


def test_echo_packets() -> None:
    req = echo_request(4, 0x1234, 7)
    assert internet_checksum(req) == 0  # a valid checksum sums to zero
    reply4 = bytes([0x45]) + bytes(19) + bytes([0, 0]) + req[2:]
    assert parse_echo_reply(4, reply4) == (0x1234, 7)
    assert parse_echo_reply(4, bytes([0x45]) + bytes(19) + req) is None  # a request, not a reply
    assert parse_echo_reply(6, bytes([129, 0, 0, 0]) + echo_request(6, 9, 3)[4:]) == (9, 3)


class ScriptedSocket:
    """Answers for the endpoints in `answering` (by the round's sequence number); records what was sent."""

    def __init__(self, answering: set[IPAddress]) -> None:
        self.answering = answering
        self.sent: list[tuple[IPAddress, int]] = []
        self.queue: list[tuple[str, int]] = []
        self.r, self.w = socket.socketpair()  # a readable descriptor for the prober's select
        self.sock = self.r

    def send(self, target: IPAddress, ident: int, seq: int) -> bool:
        self.sent.append((target, seq))
        if target in self.answering:
            self.queue.append((str(target), seq))
            self.w.send(b"x")
        return True

    def drain(self, ident: int) -> list[tuple[str, int]]:
        self.r.recv(4096)
        out, self.queue = self.queue, []
        return out

    def close(self) -> None:
        self.r.close()
        self.w.close()


def prober(answering: set[IPAddress]) -> tuple[EndpointProber, ScriptedSocket, list[tuple[IPAddress, EndpointState]]]:
    sock = ScriptedSocket(answering)
    changes: list[tuple[IPAddress, EndpointState]] = []
    p = EndpointProber(U4, FAST, sock=sock,  # type: ignore[arg-type]
                       on_change=lambda ip, st: changes.append((ip, st)))
    return p, sock, changes


def test_prober_rounds_judge_answers_and_misses_per_endpoint() -> None:
    p, sock, changes = prober({EIP})
    p.set_targets([EIP, EIP2, ip_address("2001:db8::1")])  # the other family is not probed from a v4 underlay
    for _ in range(4):
        p.tick()
    assert {t for t, _ in sock.sent} == {EIP, EIP2}
    assert p.states() == {EIP: UP, EIP2: UNKNOWN}
    assert changes == [(EIP, UP)]
    sock.answering.clear()  # the EIP stops answering: down after `fall` judged misses
    for _ in range(3):
        p.tick()
    assert p.states()[EIP] is DOWN and changes[-1] == (EIP, DOWN)
    reports = {r.endpoint: r for r in p.reports()}
    assert reports[EIP].answered == 4 and reports[EIP2].answered == 0 and reports[EIP2].last_answer_age_s is None
    p.set_targets([EIP2])
    assert set(p.states()) == {EIP2}
    p.close()


def test_agent_liveness_wakes_the_loop_and_writes_its_status(tmp_path: Path) -> None:
    p, _, _ = prober({EIP})
    woke: list[str] = []
    live = EndpointLiveness(node="worker1", source=U4, settings=FAST,
                            state_dir=tmp_path, prober=p)
    live.subscribe(woke.append)
    dead = two_eips(alive=())  # every member's Lease expired (the API server is away from the gateways)
    stop = threading.Event()
    thread = threading.Thread(target=p.run, args=(stop,), daemon=True)
    thread.start()
    try:
        # first sight of a Lease-dead endpoint: the pass waits for its first probe round, which answers
        eff = live.effective(dead)
        wait_until(lambda: bool(woke), timeout=5, what="the state change to wake the loop")
    finally:
        stop.set()
        thread.join(2)
    assert set(woke) == {LIVENESS_REASON}
    assert eff.instance("gw-a").alive  # type: ignore[union-attr]
    assert live.verdict.carried_without_lease == ("gw-a",)
    doc = json.loads((tmp_path / "agent-status.json").read_text())
    assert doc["carried_without_lease"] == ["gw-a"]
    assert {e["endpoint"]: e["state"] for e in doc["endpoints"]}[str(EIP)] == "up"
    metrics = {m.name: m for m in LivenessCollector(live).collect()}
    state = {tuple(s.labels.values()): s.value for s in metrics["egressgw_endpoint_state"].samples}
    assert state[(str(EIP), "up")] == 1.0 and state[(str(EIP), "down")] == 0.0
    p.close()


def test_echo_socket_needs_root_or_says_why() -> None:
    try:
        s = EchoSocket(ip_address("127.0.0.1"))
    except PermissionError:
        pytest.fail("raw ICMP sockets need root (CAP_NET_RAW): run the unit tests as root like the agent")
    s.close()


def test_agent_config_liveness_section_and_its_errors(tmp_path: Path) -> None:
    cfg = parse_agent_config({"node_name": "w1", "liveness": {"interval_s": 0.5, "fall": 5}}, source=tmp_path / "a")
    assert cfg.liveness == ProbeSettings(interval_s=0.5, fall=5)
    assert parse_agent_config({"node_name": "w1"}, source=tmp_path / "a").liveness == ProbeSettings()
    with pytest.raises(ConfigError, match=r"liveness\.fall"):
        parse_agent_config({"node_name": "w1", "liveness": {"fall": 0}}, source=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"liveness\.enabled"):
        parse_agent_config({"node_name": "w1", "liveness": {"enabled": "yes"}}, source=tmp_path / "a")
