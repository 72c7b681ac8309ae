"""WireGuard tunnel in namespaces with wireguard-go: apply, idempotence, SNAT to the EIP, authentication,
failover with the fast re-handshake, key rotation with traffic flowing.

Topology and stand-ins: lab.testbeds.wireguard (worker steering and gateway SNAT are stand-ins until the shared
data path is wired in; the WireGuard interfaces, keys, peers and return routes are the real planner + applier).
"""

from __future__ import annotations

import subprocess
import sys
from ipaddress import ip_address, ip_network
from pathlib import Path

import pytest

from appliance.core.waiting import wait_until
from appliance.datapath.apply import wireguard_keyfiles as wkf
from appliance.datapath.apply.wireguard import WireguardApplyError
from appliance.datapath.plan import wireguard_keys as wk
from appliance.datapath.plan.wireguard import WgInterface, WgPeer, probe_address
from lab.testbeds.wireguard import EIP, EIP6, EXTERNAL, INSTANCE, WireguardTestbed
from tests.integration.wireguard.wg_probing import RECOVERY_BOUND_S, OutputTail, StoppableProbe, echo_answered

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]


def _peer_endpoint(tb: WireguardTestbed, role: str, device: str) -> str:
    return tb.wg_dump(role, device).splitlines()[1].split("\t")[2]


def test_tunnel_snat_to_eip_dual_stack_and_idempotent_apply(testbed: WireguardTestbed) -> None:
    first = testbed.apply_all()
    assert all(first.values())
    assert testbed.apply_all() == {"gw1": [], "gw2": [], "wk": []}, "second apply must change nothing"
    assert testbed.source_seen_by_external() == EIP
    assert testbed.source_seen_by_external(v6=True) == EIP6
    worker, gw1, _ = testbed.plans()
    (dev,) = (i.name for i in worker.interfaces)
    assert "0% packet loss" in testbed.run("wk", "ping", "-c", "2", "-i", "0.2", "-W", "1", f"fe80::1%{dev}")
    # the gateway answers from the EIP (sticky source), so the worker's peer endpoint stays the routers' choice
    assert _peer_endpoint(testbed, "wk", dev) == f"{EIP}:{51820 + worker.interfaces[0].slot}"
    # a key file with wrong permissions is refused rather than used
    key_file = worker.interfaces[0].private_key_file
    key_file.chmod(0o644)
    with pytest.raises(WireguardApplyError, match="must not be accessible"):
        testbed.applier("wk").apply(worker)
    key_file.chmod(0o600)
    # drift: a peer removed by hand is restored
    peer = worker.interfaces[0].peers[0].public_key
    testbed.run("wk", "wg", "set", dev, "peer", peer, "remove")
    assert any("peer" in c for c in testbed.applier("wk").apply(worker))
    assert testbed.applier("wk").apply(worker) == []
    assert gw1.routes and testbed.applier("gw1").observe_routes()
    # health: a planned interface deleted by hand is reported missing, then recreated
    gw = testbed.applier("gw1")
    assert gw.missing(gw1) == []
    gw.delete_interface(gw1.interfaces[0].name)
    assert gw.missing(gw1) == [gw1.interfaces[0].name]
    assert f"create {gw1.interfaces[0].name}" in gw.apply(gw1)
    assert gw.missing(gw1) == []


def test_missing_instance_key_fails_loudly_and_recovers(testbed: WireguardTestbed) -> None:
    testbed.write_instance_key()
    key_file = testbed.settings.instance_key_dir / f"{INSTANCE}.key"
    key_file.rename(key_file.with_suffix(".away"))
    _, gw1, _ = testbed.plans()
    with pytest.raises(WireguardApplyError) as err:
        testbed.applier("gw1").apply(gw1)
    assert set(err.value.failed) == {i.name for i in gw1.interfaces}
    assert testbed.applier("gw1").observe_routes() == set(), "no routes into interfaces that failed"
    assert "PRIVATE" not in str(err.value) and testbed.instance_key.to_base64() not in str(err.value)
    key_file.with_suffix(".away").rename(key_file)
    testbed.apply_all()
    assert testbed.source_seen_by_external() == EIP


def test_ipv6_underlay(testbed: WireguardTestbed) -> None:
    testbed.v6_underlay = True
    testbed.apply_all()
    worker, _, gw2 = testbed.plans()
    (itf,) = worker.interfaces
    assert itf.mtu == 1420 and itf.peers[0].endpoint == (EIP6, 51820 + itf.slot)
    assert all(i.mtu == 1420 for i in gw2.interfaces)  # gateways size for an IPv6 underlay when one is possible
    assert testbed.source_seen_by_external() == EIP
    assert testbed.source_seen_by_external(v6=True) == EIP6
    assert _peer_endpoint(testbed, "wk", itf.name) == f"[{EIP6}]:{51820 + itf.slot}"


def _sees_source(tb: WireguardTestbed, expected: object) -> bool:
    try:
        return tb.source_seen_by_external() == expected
    except (ValueError, subprocess.TimeoutExpired):  # nothing arrived (yet)
        return False


def _external_sees(tb: WireguardTestbed, src: str) -> bool:
    try:
        tb.source_seen_by_external(src=ip_address(src))
    except (subprocess.TimeoutExpired, ValueError):
        return False
    return True


def test_unknown_key_and_disallowed_source_are_dropped(testbed: WireguardTestbed) -> None:
    testbed.apply_all()
    worker, gw1, _ = testbed.plans()
    gw_dev = gw1.routes[0].device
    # disallowed source: pod IP .11 is not selected, pushed into the (authenticated) tunnel anyway
    dev = worker.interfaces[0].name
    testbed.run("wk", "ip", "rule", "add", "pref", "101", "from", "100.64.1.11", "lookup", "100")
    assert not _external_sees(testbed, "100.64.1.11")
    # unknown key: an interface with a key no node published, toward the instance endpoint
    rogue_key = testbed.workdir / "rogue.key"
    wkf.write_key_file(rogue_key, wk.PrivateKey.generate())
    rogue = WgInterface(name=f"egt-wg-{testbed.token}r", instance=INSTANCE, slot=0, private_key_file=rogue_key,
                        listen_port=None, mtu=1420, address=probe_address(testbed.worker),
                        peers=(WgPeer(public_key=testbed.instance_key.public_key(),
                                      allowed_ips=(ip_network("0.0.0.0/0"),),
                                      endpoint=(EIP, 51820 + gw1.interfaces[0].slot)),))
    applier = testbed.applier("wk")
    applier._converge_interface(rogue, None)
    try:
        testbed.run("wk", "ip", "route", "replace", "default", "dev", rogue.name, "table", "200")
        testbed.run("wk", "ip", "rule", "add", "pref", "102", "from", "100.64.1.12", "lookup", "200")
        assert not _external_sees(testbed, "100.64.1.12")
        rogue_pub = wkf.read_key_file(rogue_key).public_key()
        assert rogue_pub not in testbed.wg_dump("gw1", gw_dev)
    finally:
        applier.delete_interface(rogue.name)
    # the selected pod still gets through
    assert testbed.source_seen_by_external() == EIP
    assert dev


def _gw2_handshaken(tb: WireguardTestbed) -> bool:
    _, _, gw2 = tb.plans()
    peer_lines = [ln for i in gw2.interfaces for ln in tb.wg_dump("gw2", i.name).splitlines()[1:]]
    return any(ln.split("\t")[4] != "0" for ln in peer_lines)


@pytest.mark.parametrize("failure", ["route-moved", "uplink-cut"])
def test_failover_fast_rehandshake(testbed: WireguardTestbed, failure: str) -> None:
    """Proves: when the EIP (the tunnel endpoint) moves to gw2, the agent's prober notices the lost session and
    resets it (its log says so), the worker handshakes with gw2 and the pod's traffic flows again. The outage is
    printed (the benchmark measures it), not asserted."""
    testbed.apply_all()
    testbed.start_echo_server()
    prober = testbed.start_prober(interval=0.1, misses=3)
    prober_log = OutputTail(prober)
    wait_until(lambda: echo_answered(testbed), timeout=30, what="the pod's echo through gw1")
    assert not _gw2_handshaken(testbed), "gw2 must not have a session before the failover"
    resets_before = prober_log.text().count("wireguard.session_lost")  # (a reset while the tunnel came up is fine)
    probe = StoppableProbe(testbed)
    wait_until(lambda: echo_answered(testbed), timeout=30, what="the echo while the probe runs")
    if failure == "uplink-cut":
        testbed.cut_uplink(1)  # gw1's switch port goes down; the routers then move the EIP (BGP's job in the lab)
    testbed.route_eip_to(2)
    wait_until(lambda: _gw2_handshaken(testbed) and echo_answered(testbed), timeout=RECOVERY_BOUND_S,
               what="the worker's session with gw2 and the pod's echo through it",
               describe=prober_log.text)
    result = probe.stop()
    print(f"failover ({failure}) outage: {result}")
    assert prober_log.text().count("wireguard.session_lost") > resets_before, "the prober must have reset the session"
    assert result["received"] > 0, result
    assert prober.poll() is None


def test_key_rotation_with_traffic_flowing(testbed: WireguardTestbed) -> None:
    """Proves: a key rotation (publish both, switch, retire the old) with traffic flowing loses no more than one
    handshake's worth of packets, because the new session is set up before the steering moves."""
    testbed.apply_all()
    testbed.start_echo_server()
    (old,) = testbed.worker_keys()
    wait_until(lambda: echo_answered(testbed), timeout=30, what="the pod's echo before the rotation")
    probe = StoppableProbe(testbed)
    wait_until(lambda: echo_answered(testbed), timeout=30, what="the echo while the probe runs")
    new = wkf.begin_rotation(testbed.state_dir)
    assert new.slot != old.slot
    testbed.apply_all()  # phase 1: published OLD,NEW; both slot interfaces on the worker, NEW peer on gateways
    worker, _, _ = testbed.plans()
    new_dev = next(i.name for i in worker.interfaces if i.slot == new.slot)
    # the agent waits for the new tunnel to answer before switching
    wait_until(lambda: "1 received" in testbed.run("wk", "ping", "-c", "1", "-W", "0.5", f"fe80::1%{new_dev}",
                                                   check=False),
               timeout=30, what="the new key's tunnel to answer")
    wkf.switch_rotation(testbed.state_dir)
    testbed.apply_all()  # phase 2: published NEW,OLD; steering moves to the new interface, returns too
    wait_until(lambda: echo_answered(testbed), timeout=30, what="the echo through the new interface")
    wkf.end_rotation(testbed.state_dir)
    testbed.apply_all()  # phase 3: published NEW; the old interface and peer go away
    wait_until(lambda: echo_answered(testbed), timeout=30, what="the echo after the old interface went away")
    result = probe.stop()
    print(f"rotation: {result}")
    worker, gw1, _ = testbed.plans()
    assert [i.slot for i in worker.interfaces] == [new.slot]
    assert all(p.public_key != old.public_key for i in gw1.interfaces for p in i.peers)
    assert result["lost"] <= 2, result  # no loss beyond one handshake (the new session is set up beforehand)
    assert testbed.source_seen_by_external() == EIP


def test_x25519_matches_wg_pubkey(tmp_path: Path) -> None:
    key = wk.PrivateKey.generate()
    out = subprocess.run(["wg", "pubkey"], input=key.to_base64(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == key.public_key()
    assert sys.executable and EXTERNAL


def test_wireguard_go_crash_is_repaired_by_the_next_pass(testbed: WireguardTestbed) -> None:
    import os
    import signal

    from appliance.datapath.apply.wireguard import WG_RUN_DIR, running_wireguard_go

    testbed.apply_all()
    prober = testbed.start_prober()  # the agent's prober: the new wireguard-go has no session for the worker
    _, gw1, _ = testbed.plans()
    victim = gw1.routes[0].device
    pids = [p for p in running_wireguard_go("egt-wg-")
            if victim in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: victim not in testbed.applier("gw1").our_links(), timeout=30,
               what=f"{victim} gone with its wireguard-go")
    assert testbed.applier("gw1").missing(gw1) == [victim]
    assert (WG_RUN_DIR / f"{victim}.sock").exists(), "a killed wireguard-go leaves its socket behind"
    changes = testbed.applier("gw1").apply(gw1)
    assert f"create {victim}" in changes and any(c.startswith("route ") for c in changes)
    assert testbed.applier("gw1").apply(gw1) == []
    # the prober resets the session the new wireguard-go has never seen; then the pod gets through again
    wait_until(lambda: _sees_source(testbed, EIP), timeout=30, what="the pod's traffic leaving with the EIP again")
    assert prober.poll() is None
