"""The state-sync planner (`appliance.datapath.plan.state_sync`): peers, ports both ends agree on, families, the
conntrackd configuration, the nft guard, statistics parsing."""

from __future__ import annotations

import itertools
import random
from ipaddress import ip_address, ip_network

import pytest

from appliance.core.intent import GatewayInstance, Intent
from appliance.core.model import IPAddress, Member
from appliance.datapath.plan.gateway import GatewaySettings, plan_gateway
from appliance.datapath.plan.gateway_nft import gateway_table
from appliance.datapath.plan.state_sync import (
    RESERVED_PORTS,
    ChannelPaths,
    ChannelStats,
    ResyncProgress,
    StateSyncSettings,
    SyncSkipReason,
    assign_slots,
    parse_stats,
    plan_state_sync,
    render_conntrackd_conf,
    step_resync,
    sync_guard,
    sync_pairs,
)

S = StateSyncSettings()


def member(name: str, addr: str) -> Member:
    return Member(name=name, address=ip_address(addr))


def inst(name: str, *members: Member) -> GatewayInstance:
    return GatewayInstance(name=name, members=tuple(members), eips=(ip_address("203.0.113.10"),), ranking=())


def intent(*instances: GatewayInstance) -> Intent:
    return Intent(steerings=(), outcomes=(), instances=instances, cluster_cidrs=())


GW = {f"gw{i}": member(f"gw{i}", f"198.51.100.{i}") for i in range(1, 9)}


def test_two_members_one_channel_each_same_port_both_ends() -> None:
    it = intent(inst("a", GW["gw1"], GW["gw2"]))
    p1 = plan_state_sync(it, member="gw1", settings=S)
    p2 = plan_state_sync(it, member="gw2", settings=S)
    assert [c.peer for c in p1.channels] == ["gw2"] and [c.peer for c in p2.channels] == ["gw1"]
    c1, c2 = p1.channels[0], p2.channels[0]
    assert c1.port == c2.port and S.port <= c1.port <= S.last_port
    assert (c1.local_address, c1.peer_address) == (c2.peer_address, c2.local_address)


def test_ports_symmetric_and_unique_per_member_in_a_crowded_cluster() -> None:
    # many overlapping instances and a tiny port span: collisions must be resolved alike at both ends
    rng = random.Random(7)
    names = sorted(GW)
    instances = [inst(f"i{k}", *(GW[n] for n in rng.sample(names, rng.randint(2, 5)))) for k in range(12)]
    it = intent(*instances)
    settings = StateSyncSettings(port_span=8)
    plans = {n: plan_state_sync(it, member=n, settings=settings) for n in names}
    for n, plan in plans.items():
        ports = [c.port for c in plan.channels]
        assert len(ports) == len(set(ports)), f"{n} binds one port twice"
        for c in plan.channels:
            other = plans[c.peer].channel(n)
            assert other is not None and other.port == c.port
        for peer, reason in plan.skipped:
            assert reason is SyncSkipReason.NO_FREE_PORT
            assert plans[peer].channel(n) is None  # skipped at both ends, never half a channel


def test_slots_independent_of_input_order() -> None:
    pairs = list(sync_pairs(intent(inst("a", *GW.values()))))
    base = assign_slots(pairs, 16)
    for _ in range(5):
        random.shuffle(pairs)
        assert assign_slots([(b, a) for a, b in pairs], 16) == base


def test_membership_change_keeps_the_other_channels() -> None:
    before = intent(inst("a", GW["gw1"], GW["gw2"], GW["gw3"]))
    after = intent(inst("a", GW["gw1"], GW["gw2"], GW["gw3"], GW["gw4"]))
    old = plan_state_sync(before, member="gw1", settings=S)
    new = plan_state_sync(after, member="gw1", settings=S)
    assert {c.peer for c in new.channels} == {"gw2", "gw3", "gw4"}
    for c in old.channels:  # the default span leaves these pairs on their first slot
        assert new.channel(c.peer) == c
    gone = plan_state_sync(intent(inst("a", GW["gw1"], GW["gw3"])), member="gw1", settings=S)
    assert [c.peer for c in gone.channels] == ["gw3"] and gone.channel("gw3") == old.channel("gw3")


def test_peers_are_the_other_members_of_my_instances_only() -> None:
    it = intent(inst("a", GW["gw1"], GW["gw2"]), inst("b", GW["gw1"], GW["gw3"]), inst("c", GW["gw4"], GW["gw5"]))
    assert [c.peer for c in plan_state_sync(it, member="gw1", settings=S).channels] == ["gw2", "gw3"]
    assert plan_state_sync(it, member="gw9", settings=S).channels == ()
    single = intent(inst("a", GW["gw1"]))
    assert plan_state_sync(single, member="gw1", settings=S).channels == ()


def test_disabled_plans_nothing_and_no_guard() -> None:
    it = intent(inst("a", GW["gw1"], GW["gw2"]))
    off = StateSyncSettings(enabled=False)
    assert plan_state_sync(it, member="gw1", settings=off).channels == ()
    assert sync_guard(it, member="gw1", settings=off) is None
    assert sync_guard(it, member="gw1", settings=None) is None


def test_ipv6_channels_and_family_mismatch() -> None:
    a, b, c = member("gw1", "2001:db8::1"), member("gw2", "2001:db8::2"), member("gw3", "198.51.100.3")
    plan = plan_state_sync(intent(inst("a", a, b, c)), member="gw1", settings=S)
    assert [ch.peer for ch in plan.channels] == ["gw2"]
    assert plan.skipped == (("gw3", SyncSkipReason.FAMILY_MISMATCH),)
    text = render_conntrackd_conf(plan.channels[0], member="gw1", interface="eth1",
                                  paths=ChannelPaths(socket="/run/s.ctl", lock="/run/s.lock"))
    assert "IPv6_address 2001:db8::1\n" in text and "IPv6_Destination_Address 2001:db8::2\n" in text
    assert "IPv4_Destination_Address" not in text


def test_dedicated_link_addresses() -> None:
    settings = StateSyncSettings(address=ip_address("100.64.200.1"), peers=(("gw2", ip_address("100.64.200.2")),))
    it = intent(inst("a", GW["gw1"], GW["gw2"], GW["gw3"]))
    plan = plan_state_sync(it, member="gw1", settings=settings)
    ch = plan.channel("gw2")
    assert ch is not None and ch.local_address == ip_address("100.64.200.1")
    assert ch.peer_address == ip_address("100.64.200.2")
    assert plan.channel("gw3") is not None and plan.channel("gw3").peer_address == ip_address("198.51.100.3")  # type: ignore[union-attr]
    guard = sync_guard(it, member="gw1", settings=settings)
    assert guard is not None and set(guard.peers) == {ip_address("100.64.200.2"), ip_address("198.51.100.3")}


def test_conf_has_ftfw_unicast_no_external_cache_and_filters() -> None:
    plan = plan_state_sync(intent(inst("a", GW["gw1"], GW["gw2"])), member="gw1", settings=S)
    ch = plan.channels[0]
    text = render_conntrackd_conf(ch, member="gw1", interface="eth1",
                                  paths=ChannelPaths(socket="/x/ch.ctl", lock="/x/ch.lock"))
    for line in ("Mode FTFW {", "DisableExternalCache On", "IPv4_address 198.51.100.1",
                 "IPv4_Destination_Address 198.51.100.2", f"Port {ch.port}", "Interface eth1", "Path /x/ch.ctl",
                 "LockFile /x/ch.lock", "Filter From Userspace {", "TCP", "UDP", "IPv6-ICMP"):
        assert line in text, line
    # the channel's own flow is never synced
    ignore = text.split("Address Ignore {")[1]
    assert "198.51.100.1" in ignore and "198.51.100.2" in ignore
    assert text.count("{") == text.count("}")


def test_guard_in_the_gateway_table() -> None:
    it = intent(inst("a", GW["gw1"], GW["gw2"], member("gw3", "2001:db8::3")))
    on = plan_gateway(it, member="gw1", workers={}, settings=GatewaySettings(state_sync=S))
    table = gateway_table(on)
    assert on.sync_guard is not None
    assert ("meta nfproto ipv4 udp dport @syncports ip daddr != @eips4 ip saddr != @syncpeers4 "
            "ct state new,invalid counter name drop_sync_foreign drop") in table.chains
    ports = next(s for s in table.sets if s.name == "syncports")
    channels = plan_state_sync(it, member="gw1", settings=S).channels
    assert {e for e, _ in ports.elements} == {str(c.port) for c in channels}
    assert "ip6 saddr != @syncpeers6" in table.chains
    assert "ct event set" in table.chains and "drop_sync_foreign" in table.counters
    peers = {s.name: s.elements for s in table.sets if s.name.startswith("syncpeers")}
    assert {e for e, _ in peers["syncpeers4"]} == {"198.51.100.2"}
    assert {e for e, _ in peers["syncpeers6"]} == {"2001:db8::3"}
    off = gateway_table(plan_gateway(it, member="gw1", workers={}, settings=GatewaySettings()))
    assert "sync" not in off.chains and "ct event set" not in off.chains


STATS = """cache internal:
current active connections:	           3
connections created:		           5	failed:	           0
connections updated:		           2	failed:	           0
connections destroyed:		           1	failed:	           0

external inject:
connections created:		           7	failed:	           1
connections updated:		           3	failed:	           0
connections destroyed:		           2	failed:	           2

traffic processed:
                   0 Bytes                         0 Pckts

UDP traffic (active device=eth1):
                1000 Bytes sent                  840 Bytes recv
                  55 Pckts sent                   53 Pckts recv
                   0 Error send                    0 Error recv

message tracking:
                   0 Malformed msgs                    4 Lost msgs
"""


def test_parse_stats() -> None:
    s = parse_stats(STATS)
    assert (s.sent, s.received, s.lost, s.packets_sent, s.packets_received) == (8, 12, 7, 55, 53)
    assert parse_stats("") == parse_stats("garbage")


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_full_mesh_sizes(n: int) -> None:
    members = [GW[f"gw{i}"] for i in range(1, n + 1)]
    it = intent(inst("a", *members))
    plans = {m.name: plan_state_sync(it, member=m.name, settings=S) for m in members}
    for a, b in itertools.combinations(plans, 2):
        ca, cb = plans[a].channel(b), plans[b].channel(a)
        assert ca is not None and cb is not None and ca.port == cb.port


def _addr(s: str) -> IPAddress:
    return ip_address(s)


def test_guard_ports_cover_every_channel() -> None:
    it = intent(inst("a", *GW.values()))
    guard = sync_guard(it, member="gw1", settings=S)
    assert guard is not None
    for c in plan_state_sync(it, member="gw1", settings=S).channels:
        assert c.port in guard.ports and c.peer_address in guard.peers
    assert ip_network("198.51.100.0/24").supernet_of(ip_network(f"{guard.peers[0]}/32"))


def test_channel_ports_avoid_bfd_vxlan_and_tunnel_ports() -> None:
    # every slot but the reserved ones is forced: a span that covers BFD's ports, with more pairs than free slots
    settings = StateSyncSettings(port=3780, port_span=8)  # 3780..3787 holds BFD 3784 and 3785
    it = intent(inst("a", *GW.values()))
    ports = {c.port for n in GW for c in plan_state_sync(it, member=n, settings=settings).channels}
    assert ports and not ports & RESERVED_PORTS and ports <= set(range(3780, 3788))
    tunnel = StateSyncSettings(port=4780, port_span=16)  # the instance's VXLAN port 4789 (and 4790) inside
    ports = {c.port for n in GW for c in plan_state_sync(it, member=n, settings=tunnel).channels}
    assert ports and not ports & {4784, 4789, 4790}


Reading = tuple[int, bool]  # (entries received in the interval, the channel up after the reading)


def _run_resync(readings: list[Reading], *, interval: float = 1.0, asked_up: bool = True,
                step: float | None = None) -> tuple[int | None, list[ResyncProgress]]:
    """Feed readings taken every `step` (default: `interval`) after a resync request; the index of the reading that
    finished it (None: never) and the progress after every reading."""
    progress, old, seen = ResyncProgress(asked_up=asked_up), ChannelStats(), []
    for i, (delta, up) in enumerate(readings):
        new = ChannelStats(packets_received=old.packets_received + 1, received=old.received + delta)
        progress = step_resync(progress, old=old, new=new, at=(i + 1) * (step or interval), interval_s=interval,
                               up=up)
        seen.append(progress)
        if progress.done:
            return i, seen
        old = new
    return None, seen


def test_resync_finishes_while_the_peer_streams_live_updates() -> None:
    # the bench's case: the peer answers with its cache (40 entries), then keeps sending a few live updates every
    # interval (fresh flows it SNATs). The counter never holds still, yet the resync is done one interval after the
    # answer arrived
    done_at, _ = _run_resync([(40, True), (4, True), (3, True), (5, True), (4, True)])
    assert done_at == 1


def test_resync_waits_for_the_burst_to_end() -> None:
    # a big cache arriving over three intervals at a rising rate: not done before the rate drops
    done_at, _ = _run_resync([(2000, True), (4000, True), (6000, True), (3, True)])
    assert done_at == 3


def test_an_idle_peer_is_done_one_interval_after_the_channel_is_up() -> None:
    # a peer without flows answers nothing: done once nothing arrived for an interval with the channel up, not at
    # the timeout (the gate of a restarting member used to wait the whole 5 s for such a peer)
    done_at, seen = _run_resync([(0, True), (0, True), (0, True)])
    assert done_at == 1 and not any(p.ask_again for p in seen)


def test_never_done_before_the_channel_is_up() -> None:
    # a peer that is not there (gone, or its daemon not configured yet): only the caller's timeout ends the wait,
    # whatever the readings look like
    done_at, seen = _run_resync([(0, False)] * 10)
    assert done_at is None and all(p.up_at is None for p in seen)
    done_at, _ = _run_resync([(5, False), (0, False), (0, False)])
    assert done_at is None


def test_a_request_sent_before_the_channel_was_up_is_sent_again_once() -> None:
    # the first request may have gone to nobody; when the channel comes up the peer is asked again, once, and an
    # idle peer is done one interval after that
    done_at, seen = _run_resync([(0, False), (0, False), (0, True), (0, True), (0, True)], asked_up=False)
    assert [p.ask_again for p in seen] == [False, False, True, False]
    assert done_at == 3
    # the second request's answer arrives in the interval after it: its burst is growth, done once it settled
    done_at, seen = _run_resync([(0, True), (40, True), (2, True), (2, True)], asked_up=False)
    assert seen[0].ask_again and done_at == 2


def test_entries_before_the_channel_is_up_do_not_replace_the_second_request() -> None:
    # entries arriving do not show the request got there: a busy peer whose daemon came late sends its live updates
    # (every flow it SNATs) without ever having seen our request; it is asked again and its answer waited for
    done_at, seen = _run_resync([(3, True), (40, True), (3, True)], asked_up=False)
    assert seen[0].ask_again and [p.ask_again for p in seen[1:]] == [False, False] and done_at == 2


def test_the_channel_going_down_restarts_the_count() -> None:
    done_at, seen = _run_resync([(0, True), (0, False), (0, True), (0, True)])
    assert seen[1].up_at is None and seen[2].ask_again  # down: asked again once back (nothing had arrived)
    assert done_at == 3
    # whatever had arrived before: its daemon may have restarted meanwhile
    done_at, seen = _run_resync([(40, True), (0, False), (0, True), (0, True)])
    assert [p.ask_again for p in seen] == [False, False, True, False] and done_at == 3


def test_a_reading_less_than_an_interval_after_the_channel_is_up_does_not_count() -> None:
    done_at, _ = _run_resync([(0, True)] * 5, interval=1.0, step=0.4)
    assert done_at == 3  # at 1.6 s, the first reading at least 1 s after the first up one (0.4 s)


def test_done_stays_done_and_a_restarted_daemon_counts_from_zero() -> None:
    done = ResyncProgress(asked_up=True, up_at=1.0, last_delta=0, done=True)
    assert step_resync(done, old=ChannelStats(), new=ChannelStats(received=9), at=5.0, interval_s=1.0,
                       up=False) is done
    first = step_resync(ResyncProgress(asked_up=True), old=ChannelStats(received=50), new=ChannelStats(received=7),
                        at=1.0, interval_s=1.0, up=True)
    assert first.received == 7 and first.last_delta == 7


def test_resync_rule_over_every_short_history() -> None:
    """Every history of up to 5 readings (entries 0, 1 or 30 per interval, channel up or down), both ways the
    request can have gone out: done only on a reading with the channel up, at least an interval after the first of
    an unbroken run of up readings, never while the entries still grew; asked again exactly when the channel is up
    after a request that went out while it was not; done is final."""
    choices = [(d, up) for d in (0, 1, 30) for up in (False, True)]
    for asked_up in (False, True):
        for n in range(1, 6):
            for history in itertools.product(choices, repeat=n):
                done_at, seen = _run_resync(list(history), asked_up=asked_up)
                for i, p in enumerate(seen):
                    delta, up = history[i]
                    if p.done:
                        assert i == done_at and up
                        run_start = max((j for j in range(i + 1) if not history[j][1]), default=-1) + 1
                        assert i - run_start >= 1, history  # an interval of up readings
                        assert delta <= history[i - 1][0] or seen[i - 1].ask_again, history
                    came_up = up and (not asked_up if i == 0 else not history[i - 1][1])
                    assert p.ask_again == came_up, history
                    if not up:
                        assert not p.done and p.up_at is None
