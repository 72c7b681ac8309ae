"""The packet builders of lab.attack: header fields and checksums, checked with an independent summation."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from lab import attack
from lab.extserver import parse_frame, tag_of


def ones_sum(data: bytes) -> int:
    """Independent one's-complement sum of 16-bit words (a correct checksum makes the covered bytes sum to 0xffff)."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        return s.packed + d.packed + bytes([0, proto]) + length.to_bytes(2, "big")
    return s.packed + d.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, proto])


def test_checksum_of_a_known_ipv4_header() -> None:
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert attack.checksum(header) == 0xB861
    assert attack.checksum(b"\x01") == 0xFEFF  # odd length: padded with a zero byte


def test_ipv4_udp_packet_fields_and_checksums() -> None:
    pkt = attack.udp_packet("100.64.1.10", "203.0.113.2", sport=41000, dport=7000, payload=b"hello")
    ver_ihl, _tos, total, _id, _frag, ttl, proto, _csum, src, dst = struct.unpack("!BBHHHBBH4s4s", pkt[:20])
    assert (ver_ihl, total, ttl, proto) == (0x45, 20 + 8 + 5, 64, 17)
    assert ipaddress.IPv4Address(src) == ipaddress.IPv4Address("100.64.1.10")
    assert ipaddress.IPv4Address(dst) == ipaddress.IPv4Address("203.0.113.2")
    assert ones_sum(pkt[:20]) == 0xFFFF
    sport, dport, length, csum = struct.unpack("!HHHH", pkt[20:28])
    assert (sport, dport, length) == (41000, 7000, 13) and csum != 0
    assert pkt[28:] == b"hello"
    assert ones_sum(pseudo("100.64.1.10", "203.0.113.2", 17, 13) + pkt[20:]) == 0xFFFF


def test_ipv6_udp_packet_fields_and_checksum() -> None:
    pkt = attack.udp_packet("2001:db8:64:1::10", "2001:db8:203::2", sport=41001, dport=7000, payload=b"abc")
    first, plen, nh, hops = struct.unpack("!IHBB", pkt[:8])
    assert (first >> 28, plen, nh, hops) == (6, 11, 17, 64)
    assert ipaddress.IPv6Address(pkt[8:24]) == ipaddress.IPv6Address("2001:db8:64:1::10")
    assert ipaddress.IPv6Address(pkt[24:40]) == ipaddress.IPv6Address("2001:db8:203::2")
    assert struct.unpack("!HHH", pkt[40:46]) == (41001, 7000, 11)
    assert ones_sum(pseudo("2001:db8:64:1::10", "2001:db8:203::2", 17, 11) + pkt[40:]) == 0xFFFF


@pytest.mark.parametrize(("src", "dst"), [("100.64.1.11", "203.0.113.2"), ("2001:db8:64:1::11", "2001:db8:203::2")])
def test_tcp_syn_fields_and_checksum(src: str, dst: str) -> None:
    pkt = attack.tcp_syn_packet(src, dst, sport=40001, dport=7000, seq=12345)
    off = 20 if ":" not in src else 40
    seg = pkt[off:]
    sport, dport, seq, ack, doff, flags, window = struct.unpack("!HHIIBBH", seg[:16])
    assert (sport, dport, seq, ack, doff >> 4, flags, window) == (40001, 7000, 12345, 0, 5, 0x02, 64240)
    assert len(seg) == 20
    assert ones_sum(pseudo(src, dst, 6, 20) + seg) == 0xFFFF


def test_icmp_echo_v4_and_v6() -> None:
    v4 = attack.icmp_echo_packet("100.64.1.10", "203.0.113.2", ident=7, seq=3, payload=b"p")
    kind, code, _c, ident, seq = struct.unpack("!BBHHH", v4[20:28])
    assert (v4[9], kind, code, ident, seq, v4[28:]) == (1, 8, 0, 7, 3, b"p")
    assert ones_sum(v4[20:]) == 0xFFFF  # ICMPv4: no pseudo-header
    v6 = attack.icmp_echo_packet("2001:db8:64:1::10", "2001:db8:203::2", ident=7, seq=3, payload=b"p")
    kind, code, _c, ident, seq = struct.unpack("!BBHHH", v6[40:48])
    assert (v6[6], kind, code, ident, seq) == (58, 128, 0, 7, 3)
    assert ones_sum(pseudo("2001:db8:64:1::10", "2001:db8:203::2", 58, len(v6) - 40) + v6[40:]) == 0xFFFF


@pytest.mark.parametrize(("outer_src", "outer_dst"), [("100.127.0.11", "198.51.100.11"),
                                                      ("2001:db8:127::11", "2001:db8:198::11")])
@pytest.mark.parametrize(("inner_src", "inner_dst"), [("100.64.1.10", "203.0.113.2"),
                                                      ("2001:db8:64:1::10", "2001:db8:203::2")])
def test_vxlan_packet_layers(outer_src: str, outer_dst: str, inner_src: str, inner_dst: str) -> None:
    inner = attack.udp_packet(inner_src, inner_dst, sport=42000, dport=7000, payload=b"tag")
    pkt = attack.vxlan_packet(outer_src=outer_src, outer_dst=outer_dst, inner=inner, vni=7701, port=4790,
                              sport=50000)
    v6 = ":" in outer_src
    off = 40 if v6 else 20
    if v6:
        assert pkt[0] >> 4 == 6 and pkt[6] == 17
        assert ipaddress.IPv6Address(pkt[8:24]) == ipaddress.IPv6Address(outer_src)
    else:
        assert pkt[0] == 0x45 and pkt[9] == 17 and ones_sum(pkt[:20]) == 0xFFFF
        assert ipaddress.IPv4Address(pkt[12:16]) == ipaddress.IPv4Address(outer_src)
    sport, dport, length, csum = struct.unpack("!HHHH", pkt[off:off + 8])
    assert (sport, dport, length) == (50000, 4790, len(pkt) - off) and csum != 0
    assert ones_sum(pseudo(outer_src, outer_dst, 17, length) + pkt[off:]) == 0xFFFF
    vx = pkt[off + 8:off + 16]
    assert vx[0] == 0x08 and int.from_bytes(vx[4:7], "big") == 7701 and vx[7] == 0
    eth = pkt[off + 16:off + 30]
    assert eth[:6] == bytes.fromhex(attack.GATEWAY_MAC.replace(":", ""))
    assert eth[6:12] == bytes.fromhex(attack.WORKER_MAC.replace(":", ""))
    assert struct.unpack("!H", eth[12:14])[0] == (0x86DD if ":" in inner_src else 0x0800)
    assert pkt[off + 30:] == inner


def test_builders_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="different families"):
        attack.udp_packet("100.64.1.10", "2001:db8:203::2")
    with pytest.raises(ValueError, match="VNI"):
        attack.vxlan_header(1 << 24)
    with pytest.raises(ValueError, match="proto"):
        attack.inner_packet("sctp", "100.64.1.10", "203.0.113.2", sport=1, dport=2, payload=b"")
    with pytest.raises(ValueError, match="MAC"):
        attack.mac_bytes("02:00")


def test_extserver_wire_parser_reads_what_attack_builds() -> None:
    v4 = attack.ethernet_frame(attack.udp_packet("100.64.1.10", "203.0.113.2", sport=1, dport=7100))
    v6 = attack.ethernet_frame(attack.tcp_syn_packet("2001:db8:64:1::10", "2001:db8:203::2", dport=7101))
    icmp = attack.ethernet_frame(attack.icmp_echo_packet("100.64.1.10", "203.0.113.2"))
    assert parse_frame(v4) == ("udp", "100.64.1.10", 7100)
    assert parse_frame(v6) == ("tcp", "2001:db8:64:1::10", 7101)
    assert parse_frame(icmp) == ("icmp", "100.64.1.10", 0)
    assert parse_frame(b"\0" * 12 + b"\x08\x06" + b"\0" * 28) is None  # ARP
    assert parse_frame(b"short") is None
    assert tag_of(b"atk-1|203.0.113.200") == "atk-1" and tag_of(b"x" * 100) == "x" * 64
