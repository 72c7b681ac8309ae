"""Attacker tools on top of the data-path testbed (`lab.testbeds.datapath`): a host on another interface of a
gateway, hand-made VXLAN frames with any outer source, and a second external server with server push and a wire
record.

    attacker (100.126.0.2, 2001:db8:126::2) --veth-- g1 (att0: 100.126.0.1, 2001:db8:126::1)

The attacker stands for whatever reaches a gateway other than through the path to the workers (an external
uplink, a management LAN): the gateway's reverse-path check must drop a VXLAN packet that claims a worker's address
there. Frames are sent through a packet socket (`python -m lab.testbeds.spoofing send ...` inside a namespace), so
the outer source can be anything. Addresses only from the lab ranges; everything lives in the testbed's namespaces.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
from collections.abc import Sequence

from appliance.datapath.plan.packets import internet_checksum
from appliance.datapath.plan.tunnel import GATEWAY_MAC, WORKER_MAC
from lab.testbeds.datapath import Testbed, sh

ATTACKER = "att"
ATT_GW = ("100.126.0.1", "2001:db8:126::1")
ATT_ADDR = ("100.126.0.2", "2001:db8:126::2")
#: the second external server: server push and the wire record (the testbed's own server keeps 7000 / 7080)
PUSH_CONTROL = "127.0.0.1:7081"
PUSH_ECHO_PORT = 7010
PUSH_PORT = 7011


def add_attacker(tb: Testbed, *, gateway: str = "g1") -> None:
    """Create the attacker namespace wired to `gateway` by a veth (`att0` on the gateway side)."""
    sh(["ip", "netns", "del", tb.ns(ATTACKER)], check=False)
    sh(["ip", "netns", "add", tb.ns(ATTACKER)])
    tb.ip(ATTACKER, "link", "set", "lo", "up")
    tb.ip(gateway, "link", "add", "att0", "type", "veth", "peer", "name", "eth0", "netns", tb.ns(ATTACKER))
    tb.ip(gateway, "addr", "add", f"{ATT_GW[0]}/30", "dev", "att0")
    tb.ip(gateway, "addr", "add", f"{ATT_GW[1]}/64", "dev", "att0", "nodad")
    tb.ip(gateway, "link", "set", "att0", "up")
    tb.ip(ATTACKER, "addr", "add", f"{ATT_ADDR[0]}/30", "dev", "eth0")
    tb.ip(ATTACKER, "addr", "add", f"{ATT_ADDR[1]}/64", "dev", "eth0", "nodad")
    tb.ip(ATTACKER, "link", "set", "eth0", "up")
    tb.ip(ATTACKER, "route", "add", "default", "via", ATT_GW[0])
    tb.ip(ATTACKER, "-6", "route", "add", "default", "via", ATT_GW[1])


def remove_attacker(tb: Testbed) -> None:
    sh(["ip", "netns", "del", tb.ns(ATTACKER)], check=False)


def start_push_server(tb: Testbed) -> None:
    """A second external server with server push and the wire record (every packet arriving, by source)."""
    tb.start("ext", [sys.executable, "-m", "lab.extserver", "--port", str(PUSH_ECHO_PORT), "--control", PUSH_CONTROL,
                     "--push-port", str(PUSH_PORT), "--wire"])


def link_mac(tb: Testbed, node: str, dev: str) -> str:
    return str(json.loads(tb.ip(node, "-j", "link", "show", "dev", dev))[0]["address"])


# ----- frames (pure) -----


def _mac(text: str) -> bytes:
    return bytes(int(p, 16) for p in text.split(":"))


def ip_udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> tuple[bytes, int]:
    """An IPv4 or IPv6 packet carrying one UDP datagram (checksums filled in); (packet, ethertype)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    length = 8 + len(payload)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, length)
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", length, 17)
    udp = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = internet_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    if s.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0x1234, 0x4000, 64, 17, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
        return hdr + udp, 0x0800
    hdr = struct.pack("!IHBB16s16s", 0x60000000, length, 17, 64, s.packed, d.packed)
    return hdr + udp, 0x86DD


def vxlan_frame(*, outer_src: str, outer_dst: str, src_mac: str, dst_mac: str, vni: int, port: int,
                inner_src: str, inner_dst: str, inner_dport: int, payload: bytes) -> bytes:
    """An Ethernet frame: outer IP/UDP to the tunnel port, VXLAN, inner Ethernet toward the gateway device, inner
    IP/UDP from `inner_src`."""
    inner, inner_type = ip_udp(inner_src, inner_dst, 40000, inner_dport, payload)
    inner_eth = _mac(GATEWAY_MAC) + _mac(WORKER_MAC) + struct.pack("!H", inner_type) + inner
    vxlan = struct.pack("!B3xI", 0x08, vni << 8) + inner_eth
    outer, outer_type = ip_udp(outer_src, outer_dst, 50000, port, vxlan)
    return _mac(dst_mac) + _mac(src_mac) + struct.pack("!H", outer_type) + outer


def send_frames(iface: str, frame: bytes, count: int) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for _ in range(count):
            s.send(frame)


def send_vxlan(tb: Testbed, node: str, iface: str, *, next_hop_mac: str, count: int = 5, **frame: object) -> None:
    """Send `count` VXLAN frames from `node` out of `iface` (see `vxlan_frame` for the fields)."""
    args = [f"--{k.replace('_', '-')}={v}" for k, v in frame.items()]
    tb.run(node, sys.executable, "-m", "lab.testbeds.spoofing", "send", f"--iface={iface}",
           f"--dst-mac={next_hop_mac}", f"--src-mac={link_mac(tb, node, iface)}", f"--count={count}", *args)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.testbeds.spoofing")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send", help="send hand-made VXLAN frames through a packet socket")
    for name in ("iface", "dst-mac", "src-mac", "outer-src", "outer-dst", "inner-src", "inner-dst"):
        s.add_argument(f"--{name}", required=True)
    for name, default in (("vni", 7700), ("port", 4789), ("inner-dport", 7000), ("count", 5)):
        s.add_argument(f"--{name}", type=int, default=default)
    s.add_argument("--payload", default="spoofed")
    a = ap.parse_args(argv)
    frame = vxlan_frame(outer_src=a.outer_src, outer_dst=a.outer_dst, src_mac=a.src_mac, dst_mac=a.dst_mac,
                        vni=a.vni, port=a.port, inner_src=a.inner_src, inner_dst=a.inner_dst,
                        inner_dport=a.inner_dport, payload=a.payload.encode())
    send_frames(a.iface, frame, a.count)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
