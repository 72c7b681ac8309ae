"""Attack tooling for the adversarial tests: craft packets with forged addresses and send them from a lab namespace.

Two kinds of packets, IPv4 and IPv6:
- a **VXLAN packet** with a chosen outer source/destination/UDP port/VNI carrying an inner IPv4/IPv6 UDP or ICMP
  echo packet with a chosen inner source/destination (what a worker sends to a gateway, forged by someone else);
- a **plain packet** (UDP, TCP SYN or ICMP echo) with a spoofed source address (a pod borrowing another pod's IP).

The builders are pure (bytes in, bytes out; checksums computed here) and unit-tested; `send` writes a finished IP
packet to a raw socket with the header included (IPv4: `IPPROTO_RAW`, which implies `IP_HDRINCL`; IPv6:
`IPPROTO_RAW`, which implies `IPV6_HDRINCL` since Linux 4.5). The kernel routes it by its destination and does not
check the source. Needs CAP_NET_RAW, i.e. root in the lab's namespaces.

Command line (run inside a node with `egressgw lab exec NODE -- python -m lab.attack ...`):

    python -m lab.attack vxlan --outer-src 100.127.0.11 --outer-dst 198.51.100.11 [--port 4789] [--vni 7700] \\
        --inner-src 100.64.1.10 --inner-dst 203.0.113.2 [--proto udp|icmp] [--dport 7000] [--payload TEXT] \\
        [--count 5] [--interval 0.05]
    python -m lab.attack spoof --src 100.64.1.10 --dst 203.0.113.2 [--proto udp|tcp-syn|icmp] [--dport 7000] ...

Each prints one JSON line: `{"sent": N, "bytes": B}`. Python callers build packets with `vxlan_packet` / `udp_packet`
/ `tcp_syn_packet` / `icmp_echo_packet` and send them with `send`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time
from collections.abc import Sequence

from appliance.datapath.plan.packets import internet_checksum as checksum
from appliance.datapath.plan.tunnel import GATEWAY_MAC, WORKER_MAC

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
VXLAN_PORT = 4789
VXLAN_VNI = 7700
#: UDP and TCP port the lab's external server listens on (lab.extserver.DEFAULT_PORT; not imported: this module
#: runs as a script in pods and keeps its imports small)
SERVER_PORT = 7000


def ip(value: str | IPAddress) -> IPAddress:
    return value if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(value)


def pseudo_header(src: IPAddress, dst: IPAddress, proto: int, length: int) -> bytes:
    """The pseudo-header UDP, TCP and ICMPv6 checksums cover (RFC 768/793 for IPv4, RFC 8200 section 8.1 for IPv6)."""
    if src.version != dst.version:
        raise ValueError(f"source {src} and destination {dst} are of different families")
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, proto)


def ipv4_header(src: IPAddress, dst: IPAddress, proto: int, payload_len: int, *, ttl: int = 64,
                ident: int = 0) -> bytes:
    """A 20-byte IPv4 header (no options, DF clear) with its checksum."""
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0, ttl, proto, 0, src.packed, dst.packed)
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:]


def ipv6_header(src: IPAddress, dst: IPAddress, next_header: int, payload_len: int, *, hop_limit: int = 64,
                flow_label: int = 0) -> bytes:
    """A 40-byte IPv6 header (no extension headers)."""
    return struct.pack("!IHBB16s16s", (6 << 28) | (flow_label & 0xFFFFF), payload_len, next_header, hop_limit,
                       src.packed, dst.packed)


def ip_packet(src: str | IPAddress, dst: str | IPAddress, proto: int, payload: bytes, *, ttl: int = 64) -> bytes:
    """An IPv4 or IPv6 packet (by the addresses' family) around an already built transport payload."""
    s, d = ip(src), ip(dst)
    if s.version != d.version:
        raise ValueError(f"source {s} and destination {d} are of different families")
    if s.version == 4:
        return ipv4_header(s, d, proto, len(payload), ttl=ttl) + payload
    return ipv6_header(s, d, proto, len(payload), hop_limit=ttl) + payload


def udp_segment(src: IPAddress, dst: IPAddress, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header and payload with the checksum over the pseudo-header (0 is sent as 0xffff)."""
    length = 8 + len(payload)
    raw = struct.pack("!HHHH", sport, dport, length, 0) + payload
    csum = checksum(pseudo_header(src, dst, PROTO_UDP, length) + raw) or 0xFFFF
    return raw[:6] + struct.pack("!H", csum) + raw[8:]


def tcp_syn_segment(src: IPAddress, dst: IPAddress, sport: int, dport: int, *, seq: int = 1) -> bytes:
    """A 20-byte TCP SYN (window 64240, no options) with its checksum."""
    raw = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    csum = checksum(pseudo_header(src, dst, PROTO_TCP, len(raw)) + raw)
    return raw[:16] + struct.pack("!H", csum) + raw[18:]


def icmp_echo_message(src: IPAddress, dst: IPAddress, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request (IPv4: type 8, checksum over the message) or ICMPv6 echo request (type 128, checksum
    over the pseudo-header too)."""
    kind = 8 if src.version == 4 else 128
    raw = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload
    covered = raw if src.version == 4 else pseudo_header(src, dst, PROTO_ICMPV6, len(raw)) + raw
    return raw[:2] + struct.pack("!H", checksum(covered)) + raw[4:]


def udp_packet(src: str | IPAddress, dst: str | IPAddress, *, sport: int = 40000, dport: int = SERVER_PORT,
               payload: bytes = b"", ttl: int = 64) -> bytes:
    s, d = ip(src), ip(dst)
    return ip_packet(s, d, PROTO_UDP, udp_segment(s, d, sport, dport, payload), ttl=ttl)


def tcp_syn_packet(src: str | IPAddress, dst: str | IPAddress, *, sport: int = 40000, dport: int = SERVER_PORT,
                   seq: int = 1, ttl: int = 64) -> bytes:
    s, d = ip(src), ip(dst)
    return ip_packet(s, d, PROTO_TCP, tcp_syn_segment(s, d, sport, dport, seq=seq), ttl=ttl)


def icmp_echo_packet(src: str | IPAddress, dst: str | IPAddress, *, ident: int = 0x4567, seq: int = 1,
                     payload: bytes = b"", ttl: int = 64) -> bytes:
    s, d = ip(src), ip(dst)
    proto = PROTO_ICMP if s.version == 4 else PROTO_ICMPV6
    return ip_packet(s, d, proto, icmp_echo_message(s, d, ident, seq, payload), ttl=ttl)


def mac_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def ethernet_frame(inner: bytes, *, dst_mac: str = GATEWAY_MAC, src_mac: str = WORKER_MAC) -> bytes:
    """An Ethernet frame (no FCS) around an IP packet; the EtherType follows the packet's version nibble."""
    ethertype = ETH_IPV4 if inner[0] >> 4 == 4 else ETH_IPV6
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype) + inner


def vxlan_header(vni: int) -> bytes:
    """The 8-byte VXLAN header (RFC 7348): flags with the I bit, 24-bit VNI."""
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI {vni} is out of range (0..16777215)")
    return struct.pack("!B3xI", 0x08, vni << 8)


def vxlan_packet(*, outer_src: str | IPAddress, outer_dst: str | IPAddress, inner: bytes, vni: int = VXLAN_VNI,
                 port: int = VXLAN_PORT, sport: int = 49152, dst_mac: str = GATEWAY_MAC,
                 src_mac: str = WORKER_MAC, ttl: int = 64) -> bytes:
    """outer IP / UDP (to `port`) / VXLAN (`vni`) / Ethernet / `inner` (an IP packet, e.g. from `udp_packet`).
    The outer UDP checksum is computed (receivers accept 0 too, but a real one is what a worker's kernel sends
    over IPv6, where 0 is not allowed by default)."""
    payload = vxlan_header(vni) + ethernet_frame(inner, dst_mac=dst_mac, src_mac=src_mac)
    return udp_packet(outer_src, outer_dst, sport=sport, dport=port, payload=payload, ttl=ttl)


def inner_packet(proto: str, src: str, dst: str, *, sport: int, dport: int, payload: bytes, seq: int = 1) -> bytes:
    """The packet named by `proto` (udp, tcp-syn, icmp): what the CLI sends, plain or inside VXLAN."""
    if proto == "udp":
        return udp_packet(src, dst, sport=sport, dport=dport, payload=payload)
    if proto == "tcp-syn":
        return tcp_syn_packet(src, dst, sport=sport, dport=dport, seq=seq)
    if proto == "icmp":
        return icmp_echo_packet(src, dst, ident=sport & 0xFFFF, seq=seq, payload=payload)
    raise ValueError(f"proto: {proto!r} is not one of udp, tcp-syn, icmp")


def send(packet: bytes) -> None:
    """Send a complete IPv4 or IPv6 packet as it is (header included), routed by its destination address."""
    version = packet[0] >> 4
    if version == 4:
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(packet, (dst, 0))
    elif version == 6:
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.sendto(packet, (dst, 0))
    else:
        raise ValueError(f"not an IP packet (version nibble {version})")


def send_many(packets: Sequence[bytes], *, interval: float = 0.0) -> int:
    """Send each packet in turn, `interval` seconds apart; returns the bytes sent."""
    total = 0
    for i, p in enumerate(packets):
        if i and interval:
            time.sleep(interval)
        send(p)
        total += len(p)
    return total


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.attack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    vx = sub.add_parser("vxlan", help="a VXLAN packet with forged outer and inner addresses")
    vx.add_argument("--outer-src", required=True)
    vx.add_argument("--outer-dst", required=True)
    vx.add_argument("--port", type=int, default=VXLAN_PORT, help="outer UDP destination port")
    vx.add_argument("--outer-sport", type=int, default=49152)
    vx.add_argument("--vni", type=int, default=VXLAN_VNI)
    vx.add_argument("--dst-mac", default=GATEWAY_MAC, help="inner Ethernet destination (the receiving device's MAC)")
    vx.add_argument("--src-mac", default=WORKER_MAC)
    vx.add_argument("--inner-src", required=True)
    vx.add_argument("--inner-dst", required=True)
    sp = sub.add_parser("spoof", help="a plain packet with a forged source address")
    sp.add_argument("--src", required=True)
    sp.add_argument("--dst", required=True)
    for p in (vx, sp):
        p.add_argument("--proto", choices=("udp", "tcp-syn", "icmp"), default="udp")
        p.add_argument("--sport", type=int, default=40000, help="inner source port (ICMP: the echo identifier)")
        p.add_argument("--dport", type=int, default=SERVER_PORT)
        p.add_argument("--payload", default="attack", help="UDP/ICMP payload (the server records UDP payloads)")
        p.add_argument("--count", type=int, default=1)
        p.add_argument("--interval", type=float, default=0.05, help="seconds between packets")
    args = parser.parse_args(argv)
    try:
        src, dst = (args.inner_src, args.inner_dst) if args.cmd == "vxlan" else (args.src, args.dst)
        packets = []
        for i in range(args.count):
            inner = inner_packet(args.proto, src, dst, sport=args.sport, dport=args.dport,
                                 payload=args.payload.encode(), seq=i + 1)
            if args.cmd == "vxlan":
                inner = vxlan_packet(outer_src=args.outer_src, outer_dst=args.outer_dst, inner=inner, vni=args.vni,
                                     port=args.port, sport=args.outer_sport, dst_mac=args.dst_mac,
                                     src_mac=args.src_mac)
            packets.append(inner)
        sent = send_many(packets, interval=args.interval)
    except (OSError, ValueError) as exc:
        print(f"lab.attack: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"sent": len(packets), "bytes": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
