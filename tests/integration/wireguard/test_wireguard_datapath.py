"""WireGuard with the shared data path (planning_worker / planning_gateway / DataPathApplier) in namespaces:
the worker steers by mark into the WireGuard device, the members hold the EIPs and SNAT, nftables checks and counts.

Same topology as test_wireguard_netns (lab.testbeds.wireguard), without the stand-ins.
"""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from appliance.core.waiting import wait_until
from appliance.datapath.apply import wireguard_keyfiles as wkf
from appliance.datapath.apply.applier import DataPathApplier
from lab.testbeds.wireguard import EIP, EIP6, WireguardTestbed
from tests.integration.wireguard.wg_probing import RECOVERY_BOUND_S, OutputTail, StoppableProbe, echo_answered

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def _send_udp(tb: WireguardTestbed, src: str, dst: str) -> None:
    code = ("import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 0)); "
            "[s.sendto(b'x', (sys.argv[2], 9200)) for _ in range(5)]")
    tb.run("pod", "python3", "-c", code, src, dst)


def test_eip_dual_stack_unselected_untouched_idempotent(dp_testbed: WireguardTestbed) -> None:
    tb = dp_testbed
    first = tb.apply_all()
    assert all(first.values())
    assert tb.apply_all() == {"gw1": [], "gw2": [], "wk": []}, "second pass of both appliers must change nothing"
    assert tb.source_seen_by_external() == EIP
    assert tb.source_seen_by_external(v6=True) == EIP6
    # 100.64.1.12 is not selected: routed directly, the external server sees the pod IP (no CNI masquerade here)
    assert tb.source_seen_by_external(src=ip_address("100.64.1.12")) == ip_address("100.64.1.12")
    worker, _, _ = tb.plans()
    assert "0% packet loss" in tb.run("wk", "ping", "-c", "2", "-i", "0.2", "-W", "1",
                                      f"fe80::1%{worker.interfaces[0].name}")
    assert DataPathApplier(tb.ns("gw1")).nft.counters().get("eip_203_0_113_130", (0, 0))[0] > 0


def test_cluster_destination_pushed_into_the_tunnel_is_dropped_and_counted(dp_testbed: WireguardTestbed) -> None:
    tb = dp_testbed
    tb.apply_all()
    worker, _, _ = tb.plans()
    dev = worker.interfaces[0].name
    gw = DataPathApplier(tb.ns("gw1")).nft
    before = gw.counters().get("drop_cluster_destination", (0, 0))[0]
    # a rogue worker sends a selected pod's packets toward a cluster destination through its (authenticated) tunnel
    tb.run("wk", "ip", "route", "add", "default", "dev", dev, "table", "300")
    tb.run("wk", "ip", "rule", "add", "pref", "50", "from", "100.64.1.10", "to", "100.64.2.0/24", "lookup", "300")

    def dropped() -> bool:  # the first ones may wait for a handshake: send until three were counted
        _send_udp(tb, "100.64.1.10", "100.64.2.10")
        return gw.counters().get("drop_cluster_destination", (0, 0))[0] >= before + 3

    wait_until(dropped, timeout=30, interval=0.2, what="three drops counted as drop_cluster_destination",
               describe=gw.counters)
    # and an unselected pod IP pushed into the tunnel never gets through (WireGuard's allowed IPs drop it)
    tb.run("wk", "ip", "rule", "add", "pref", "51", "from", "100.64.1.11", "lookup", "300")
    with pytest.raises(ValueError):
        tb.source_seen_by_external(src=ip_address("100.64.1.11"))


def test_failover_with_prober(dp_testbed: WireguardTestbed) -> None:
    """Proves: through the shared data path, when gw1's uplink fails and the EIP moves to gw2, the prober resets the
    session (its log says so), the pod's traffic flows again and gw2 now SNATs it to the EIP (its counter). The
    outage is printed (the benchmark measures it), not asserted; see RECOVERY_BOUND_S for the bound."""
    tb = dp_testbed
    tb.apply_all()
    tb.start_echo_server()
    prober = tb.start_prober(interval=0.1, misses=3)
    prober_log = OutputTail(prober)
    wait_until(lambda: echo_answered(tb), timeout=30, what="the pod's echo through gw1")
    resets_before = prober_log.text().count("wireguard.session_lost")
    gw2 = DataPathApplier(tb.ns("gw2")).nft
    snat_before = gw2.counters().get("eip_203_0_113_130", (0, 0))[0]
    probe = StoppableProbe(tb)
    wait_until(lambda: echo_answered(tb), timeout=30, what="the echo while the probe runs")
    tb.cut_uplink(1)
    tb.route_eip_to(2)
    wait_until(lambda: echo_answered(tb) and gw2.counters().get("eip_203_0_113_130", (0, 0))[0] > snat_before,
               timeout=RECOVERY_BOUND_S, what="the pod's echo through gw2 (its EIP counter rising)",
               describe=prober_log.text)
    result = probe.stop()
    print(f"failover through the shared data path: {result}")
    assert prober_log.text().count("wireguard.session_lost") > resets_before, "the prober must have reset the session"
    assert result["received"] > 0, result
    assert prober.poll() is None


def test_rotation_through_the_shared_data_path(dp_testbed: WireguardTestbed) -> None:
    tb = dp_testbed
    tb.apply_all()
    tb.start_echo_server()
    (old,) = tb.worker_keys()
    wait_until(lambda: echo_answered(tb), timeout=30, what="the pod's echo before the rotation")
    probe = StoppableProbe(tb)
    wait_until(lambda: echo_answered(tb), timeout=30, what="the echo while the probe runs")
    new = wkf.begin_rotation(tb.state_dir)
    tb.apply_all()
    worker, _, _ = tb.plans()
    new_dev = next(i.name for i in worker.interfaces if i.slot == new.slot)
    wait_until(lambda: "1 received" in tb.run("wk", "ping", "-c", "1", "-W", "0.5", f"fe80::1%{new_dev}", check=False),
               timeout=30, what="the new key's tunnel to answer")
    wkf.switch_rotation(tb.state_dir)
    changes = tb.apply_all()
    assert any(new_dev in c for c in changes["wk"]), "the endpoint table must now route into the new device"
    wait_until(lambda: echo_answered(tb), timeout=30, what="the echo through the new device")
    wkf.end_rotation(tb.state_dir)
    tb.apply_all()
    wait_until(lambda: echo_answered(tb), timeout=30, what="the echo after the old device went away")
    result = probe.stop()
    print(f"rotation through the shared data path: {result}")
    assert result["lost"] <= 2, result
    assert [k.public_key for k in tb.worker_keys()] == [new.public_key] and new.public_key != old.public_key
