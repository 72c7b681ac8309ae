"""Strict uRPF on the lab's router (lab.urpf): on by default; a packet from the external LAN with a cluster-LAN
source (a worker's underlay address) never reaches a gateway, IPv4 and IPv6, nor does a packet from the cluster LAN
with an external source; `set_router_urpf(lab, False)` lets both through again (so the gateway's own defences can be
tested without it). Observed on the gateway, with a control packet from a legitimate source sent right after the
spoofed ones on the same path."""

from __future__ import annotations

import json
import sys

import pytest

from appliance.core.waiting import wait_until
from lab.runner import Lab
from lab.urpf import router_urpf_state, set_router_urpf

TABLE = "egt_lb_urpf"
PORT = 9
SEND = ("import socket, sys\n"
        "src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "s = socket.socket(socket.AF_INET6 if ':' in src else socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind((src, 0))\n"
        "for _ in range(n):\n"
        f"    s.sendto(b'spoof?', (dst, {PORT}))\n")


def counts(lab: Lab, node: str) -> dict[str, int]:
    """Packets to our port on `node`, by source address."""
    out = lab.exec(node, ["nft", "-j", "list", "table", "inet", TABLE]).stdout
    found: dict[str, int] = {}
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule and "comment" in rule:
            found[rule["comment"].removeprefix("from ")] = next(
                int(e["counter"]["packets"]) for e in rule["expr"] if "counter" in e)
    return found


def count_table(sources: list[str]) -> str:
    fam = {True: "ip6", False: "ip"}
    rules = "\n".join(f'    udp dport {PORT} {fam[":" in s]} saddr {s} counter comment "from {s}"' for s in sources)
    return (f"table inet {TABLE} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n"
            f"{rules}\n  }}\n}}\n")


def send(lab: Lab, node: str, src: str, dst: str, n: int) -> None:
    lab.exec(node, [sys.executable, "-c", SEND, src, dst, str(n)])


def spoof_then_control(lab: Lab, *, sender: str, iface: str, spoofed: str, own: str, target: str,
                       dst: str) -> tuple[int, int]:
    """Send 5 packets from `spoofed` (added to the sender's interface for the purpose) and then control packets from
    `own` until one arrives at `target`; (spoofed, control) packets counted there, read after the control arrived."""
    plen = "128" if ":" in spoofed else "32"
    lab.exec(sender, ["ip", "addr", "add", f"{spoofed}/{plen}", "dev", iface, *(["nodad"] if plen == "128" else [])])
    try:
        before = counts(lab, target)
        send(lab, sender, spoofed, dst, 5)

        def control_arrived() -> bool:
            send(lab, sender, own, dst, 1)
            return counts(lab, target)[own] > before[own]

        wait_until(control_arrived, timeout=20, interval=0.2, what=f"a control packet from {own} at {target}")
        after = counts(lab, target)
        return after[spoofed] - before[spoofed], after[own] - before[own]
    finally:
        lab.exec(sender, ["ip", "addr", "del", f"{spoofed}/{plen}", "dev", iface], check=False)


CASES = [
    # (sender, its interface, spoofed source, its own source, destination on gw1)
    ("ext", "eth1", "100.127.0.11", "203.0.113.2", "198.51.100.11"),  # external LAN, worker1's underlay address
    ("ext", "eth1", "2001:db8:127::11", "2001:db8:203::2", "2001:db8:198::11"),
    ("worker1", "eth1", "203.0.113.2", "100.127.0.11", "198.51.100.11"),  # cluster LAN, the external server's
    ("worker1", "eth1", "2001:db8:203::2", "2001:db8:127::11", "2001:db8:198::11"),
]


@pytest.mark.lab
def test_router_urpf_is_on_by_default_and_can_be_switched(bird_lab: Lab) -> None:
    [router] = router_urpf_state(bird_lab).values()
    assert router["nft_table"] and set(router["rp_filter"].values()) == {1}, router
    bird_lab.exec("gw1", ["nft", "-f", "-"], input=count_table(sorted({s for c in CASES for s in c[2:4]})))
    try:
        for sender, iface, spoofed, own, dst in CASES:
            got, control = spoof_then_control(bird_lab, sender=sender, iface=iface, spoofed=spoofed, own=own,
                                              target="gw1", dst=dst)
            assert control >= 1 and got == 0, f"uRPF on: {sender} spoofing {spoofed}: {got} reached gw1"
        drops = router_urpf_state(bird_lab)["router"]["ipv6_drops"]
        assert drops is not None and drops >= 10, drops  # the IPv6 cases were dropped by the router's nft rule
        set_router_urpf(bird_lab, False)
        off = router_urpf_state(bird_lab)["router"]
        assert not off["nft_table"] and set(off["rp_filter"].values()) == {0}, off
        for sender, iface, spoofed, own, dst in CASES:
            got, control = spoof_then_control(bird_lab, sender=sender, iface=iface, spoofed=spoofed, own=own,
                                              target="gw1", dst=dst)
            assert got == 5, f"uRPF off: {sender} spoofing {spoofed}: {got} of 5 reached gw1 (control {control})"
    finally:
        set_router_urpf(bird_lab, True)
        bird_lab.exec("gw1", ["nft", "delete", "table", "inet", TABLE], check=False)
    assert set(router_urpf_state(bird_lab)["router"]["rp_filter"].values()) == {1}
