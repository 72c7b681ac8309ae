"""Reachability across the default lab (BIRD variant, without the API node's daemons): pods, workers, gateways,
router and external server, IPv4 and IPv6; the CNI stand-in masquerade; link faults; the probe and the external
server's record."""

from __future__ import annotations

import json
import sys

import pytest

from appliance.core.waiting import wait_until
from lab import netns
from lab.probe import BackgroundProbe
from lab.runner import Lab


def ping(lab: Lab, node: str, addr: str) -> bool:
    return lab.exec(node, ["ping", "-c", "1", "-W", "1", addr], check=False).returncode == 0


def seen(lab: Lab, node: str, server: str, proto: str = "udp") -> str:
    out = lab.exec(node, [sys.executable, "-m", "lab.extclient", "source", "--server", server, "--proto", proto])
    return out.stdout.strip()


@pytest.mark.lab
@pytest.mark.parametrize(("src", "dst"), [
    ("w1p1", "203.0.113.2"), ("w2p2", "2001:db8:203::2"), ("w1p2", "100.64.2.10"), ("w2p1", "2001:db8:64:1::11"),
    ("worker1", "198.51.100.11"), ("worker2", "2001:db8:198::12"), ("gw2", "100.127.0.11"),
    ("api", "100.127.0.12"), ("ext", "198.51.100.12"), ("router", "100.64.1.10"),
])
def test_reachable(bird_lab: Lab, src: str, dst: str) -> None:
    assert ping(bird_lab, src, dst), f"{src} cannot reach {dst}"


@pytest.mark.lab
@pytest.mark.parametrize(("pod", "server", "proto", "node_ip"), [
    ("w1p1", "203.0.113.2", "udp", "100.127.0.11"),
    ("w1p2", "203.0.113.2", "tcp", "100.127.0.11"),
    ("w2p1", "2001:db8:203::2", "udp", "2001:db8:127::12"),
    ("w2p2", "2001:db8:203::2", "tcp", "2001:db8:127::12"),
])
def test_unselected_pods_show_the_node_ip(bird_lab: Lab, pod: str, server: str, proto: str, node_ip: str) -> None:
    assert seen(bird_lab, pod, server, proto) == node_ip


@pytest.mark.lab
def test_gateways_are_not_masqueraded(bird_lab: Lab) -> None:
    assert seen(bird_lab, "gw1", "203.0.113.2") == "198.51.100.11"


@pytest.mark.lab
def test_external_server_records_icmp_and_can_be_reset(bird_lab: Lab) -> None:
    py = sys.executable
    bird_lab.exec("ext", [py, "-m", "lab.extclient", "reset"])
    assert ping(bird_lab, "gw2", "203.0.113.2")
    out = bird_lab.exec("ext", [py, "-m", "lab.extclient", "peers"]).stdout
    assert '"proto": "icmp", "source": "198.51.100.12"' in out


@pytest.mark.lab
def test_cut_and_restore_a_switch_port(bird_lab: Lab) -> None:
    assert bird_lab.switch_side("gw1", "eth1") == ("uplink", "up-gw1")
    bird_lab.cut_link("gw1", "eth1")
    try:
        assert not ping(bird_lab, "router", "198.51.100.11")
        assert ping(bird_lab, "router", "198.51.100.12")
    finally:
        bird_lab.restore_link("gw1", "eth1")
    wait_until(lambda: ping(bird_lab, "router", "198.51.100.11"), timeout=5, what="gw1 reachable again", interval=0.1)


COUNT_TABLE = """\
table inet egt_lb_count {
  chain probes { type filter hook forward priority -10; ip daddr 203.0.113.2 counter; }
}
"""
DROP_TABLE = """\
table inet egt_lb_drop {
  chain probes { type filter hook forward priority 0; ip daddr 203.0.113.2 counter drop; }
}
"""


def packets(lab: Lab, node: str, table: str) -> int:
    """Packets counted by the (single) counter rule of one of our test tables on `node`."""
    out = lab.exec(node, ["nft", "-j", "list", "table", "inet", table]).stdout
    return sum(int(expr["counter"]["packets"]) for item in json.loads(out)["nftables"] if "rule" in item
               for expr in item["rule"]["expr"] if "counter" in expr)


@pytest.mark.lab
@pytest.mark.parametrize("tcp", [False, True])
def test_probe_reports_source_and_loss(bird_lab: Lab, tcp: bool) -> None:
    # the probe runs until the worker forwarded 30 of its packets (a count, not a duration)
    bird_lab.exec("worker1", ["nft", "-f", "-"], input=COUNT_TABLE)
    try:
        probe = BackgroundProbe(bird_lab, "w1p1", server="203.0.113.2", tcp=tcp).start()
        try:
            wait_until(lambda: packets(bird_lab, "worker1", "egt_lb_count") >= 30, timeout=60, interval=0.1,
                       what="30 probe packets forwarded by worker1")
        finally:
            report = probe.stop()
    finally:
        bird_lab.exec("worker1", ["nft", "delete", "table", "inet", "egt_lb_count"], check=False)
    assert report.received >= 10 and report.lost == report.sent - report.received, report
    assert [s.source for s in report.sources] == ["100.127.0.11"]
    if tcp:
        assert report.reconnects == 0, report  # one connection held all along


@pytest.mark.lab
def test_probe_sees_an_outage_when_the_node_is_cut_off(bird_lab: Lab) -> None:
    """The probe reports the probes a drop rule ate as lost, in one run, between answered ones. Each phase lasts
    until the worker's counters saw enough probe packets (forwarded before, dropped during, forwarded after)."""
    bird_lab.exec("worker2", ["nft", "-f", "-"], input=COUNT_TABLE)
    try:
        probe = BackgroundProbe(bird_lab, "w2p1", server="203.0.113.2").start()
        try:
            wait_until(lambda: packets(bird_lab, "worker2", "egt_lb_count") >= 10, timeout=60, interval=0.05,
                       what="probes forwarded before the cut")
            bird_lab.exec("worker2", ["nft", "-f", "-"], input=DROP_TABLE)
            wait_until(lambda: packets(bird_lab, "worker2", "egt_lb_drop") >= 10, timeout=60, interval=0.05,
                       what="probes dropped during the cut")
            bird_lab.exec("worker2", ["nft", "delete", "table", "inet", "egt_lb_drop"])
            restored = packets(bird_lab, "worker2", "egt_lb_count")
            wait_until(lambda: packets(bird_lab, "worker2", "egt_lb_count") >= restored + 10, timeout=60,
                       interval=0.05, what="probes forwarded after the cut")
        finally:
            report = probe.stop()
    finally:
        for table in ("egt_lb_drop", "egt_lb_count"):
            bird_lab.exec("worker2", ["nft", "delete", "table", "inet", table], check=False)
    assert report.lost >= 10, report
    assert report.max_consecutive_lost >= 10, report  # the dropped probes were consecutive: one outage
    assert report.outage_start is not None and report.outage_end is not None  # answered before and after it
    assert report.outage_end > report.outage_start


@pytest.mark.lab
def test_kill_node_and_daemon_status(bird_lab: Lab) -> None:
    proc = bird_lab.popen("w2p2", ["sleep", "60"])
    try:
        wait_until(lambda: len(netns.pids(bird_lab.netns("w2p2"))) == 1,
                   timeout=5, what="the sleeper in w2p2", interval=0.1)
        killed = bird_lab.kill_node("w2p2")
        assert killed
        proc.wait(timeout=5)
        assert netns.pids(bird_lab.netns("w2p2")) == []
    finally:
        proc.kill()
    bird = bird_lab.daemon("router", "bird")
    assert bird is not None and bird_lab.daemon_alive(bird)
