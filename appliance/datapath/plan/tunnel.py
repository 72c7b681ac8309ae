"""Conventions shared by the worker and gateway planners: tunnel device names, MACs, inner next hops, marks, slots,
the inner MTU, and the orderings that keep plans deterministic.

The VXLAN devices run in external (collect-metadata) mode: one device per UDP port serves every VNI and every peer,
and each route says where to send (`encap ip id VNI dst ENDPOINT`). The tunnel is routed (L3) point to point, so the
inner Ethernet header only has to satisfy the receiving device: every gateway device uses GATEWAY_MAC, every worker
device WORKER_MAC, and each side holds one permanent neighbour for the other side's fixed inner next hop. No FDB, no
ARP, no per-peer MAC: adding a worker or an EIP never touches a neighbour table.

Keyed VNIs: the VNI of each (instance, worker) pair is derived with HMAC-SHA256 from the instance's secret (the
EgressGateway's metadata.uid) and the worker's node name, so a gateway can bind a VXLAN packet to (outer source .
VNI) and an outsider who forges a worker's address without the key guesses the VNI with odds of 1 in 2^24 per packet
(docs/security.md, "Keyed VNIs").

Slots (route table, rule priority, mark) are derived from a hash of what they stand for, with linear probing in
sorted order, so adding one endpoint or one worker leaves every other slot - and every running flow's mark - alone.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Address, ip_network

from appliance.core.intent import GatewayInstance, Steering
from appliance.core.model import IPAddress, IPNetwork
from appliance.datapath.plan.kernel_model import LINK_PREFIX, TunnelLink

#: inner MAC of every gateway member's tunnel device / of every worker's tunnel device
GATEWAY_MAC = "02:e6:6e:00:00:01"
WORKER_MAC = "02:e6:6e:00:00:02"
#: inner next hops (never routed, only resolved by the permanent neighbour on the tunnel device)
GATEWAY_NH4 = IPv4Address("169.254.77.1")
GATEWAY_NH6 = IPv6Address("fe80::e6e:1")
WORKER_NH4 = IPv4Address("169.254.77.2")
WORKER_NH6 = IPv6Address("fe80::e6e:2")

#: outer header sizes: IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14; IPv6 outer adds 20 more
VXLAN_OVERHEAD = {4: 50, 6: 70}

#: The worker's default mark layout (docs/operations.md, "CNI compatibility"): a mark is `base | slot`; "ours" is
#: `mark & mask == base`; the slot sits in the low bits `slot_mask`, its all-ones value meaning "drop (no gateway,
#: fail closed)". Every bit we set or test lies outside the bits CNIs and kube-proxy rewrite or match: Calico's
#: default mask 0xffff0000 (its FORWARD and mangle chains set and clear bits there), kube-proxy's 0x4000
#: (masquerade) and 0x8000 (drop), Cilium's 0x0f00 (magic marks; 0x200/0xf00 is NOTRACK). Free for every one of
#: them: 0x30ff. So: identity 0x2000 under 0x3000, slots 1..254 in 0xff.
MARK_BASE = 0x00002000
MARK_MASK = 0x00003000
SLOT_MASK = 0x000000FF
#: the gateway's default layout: one slot per worker node needs 16 bits (up to 65534 workers), so the gateway keeps
#: identity 0x0e6e under 0xffff0000; a gateway that is also a Calico node sets `marks` (docs/operations.md)
GATEWAY_MARK_BASE = 0x0E6E0000
GATEWAY_MARK_MASK = 0xFFFF0000
GATEWAY_SLOT_MASK = 0x0000FFFF
#: default ip rule priority range [base, base+999] and route table range [base, base+capacity]
RULE_PRIORITY_BASE = 3000
TABLE_BASE = 0x0E6E0000
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkSettings:
    """The slice of the packet mark, the rule priorities and the route tables we own.

    Why configurable: CNIs, kube-proxy, service meshes and VPN clients use marks too; the default works with the
    ones the lab's CNI matrix tests (lab/cni.py), another node may need another free range. Our rules sit in
    [rule_priority_base, rule_priority_base + 999]. Invalid values raise ValueError naming the field.
    """

    mark_base: int = MARK_BASE
    mark_mask: int = MARK_MASK
    slot_mask: int = SLOT_MASK
    rule_priority_base: int = RULE_PRIORITY_BASE
    table_base: int = TABLE_BASE

    def __post_init__(self) -> None:
        for name in ("mark_base", "mark_mask", "slot_mask"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= _U32:
                raise ValueError(f"{name}: must be a 32-bit unsigned integer, got {value!r}")
        if self.mark_mask == 0 or self.mark_base == 0:
            raise ValueError("mark_base: must be non-zero under a non-zero mark_mask (an unmarked packet would look "
                             "like ours)")
        if self.mark_base & ~self.mark_mask & _U32:
            raise ValueError(f"mark_base: {self.mark_base:#x} has bits outside mark_mask {self.mark_mask:#x}")
        if self.slot_mask < 3 or self.slot_mask & (self.slot_mask + 1):
            raise ValueError(f"slot_mask: must be low contiguous bits (0x3, 0x7 ... 0xffff), got {self.slot_mask:#x}")
        if self.slot_mask > GATEWAY_SLOT_MASK:
            raise ValueError(f"slot_mask: at most 16 bits ({GATEWAY_SLOT_MASK:#x}), got {self.slot_mask:#x}")
        if self.slot_mask & self.mark_mask:
            raise ValueError(f"slot_mask: {self.slot_mask:#x} overlaps mark_mask {self.mark_mask:#x}")

    def mark(self, slot: int) -> int:
        return self.mark_base | slot

    @property
    def drop_mark(self) -> int:
        return self.mark_base | self.slot_mask

    @property
    def capacity(self) -> int:
        """How many slots there are (1..capacity; the all-ones slot is the drop slot)."""
        return self.slot_mask - 1

    @property
    def owned_mask(self) -> int:
        """Every bit of the mark we set: identity and slot. Bits outside it belong to others and are ignored."""
        return self.mark_mask | self.slot_mask


#: the gateway's defaults (see GATEWAY_MARK_BASE)
GATEWAY_MARKS = MarkSettings(mark_base=GATEWAY_MARK_BASE, mark_mask=GATEWAY_MARK_MASK, slot_mask=GATEWAY_SLOT_MASK)


#: VNIs are 24 bits; 0 is never derived (some stacks treat it as "no VNI")
VNI_SPACE = 1 << 24
_VNI_CONTEXT = b"egressgw keyed vni v1"


@functools.lru_cache(maxsize=65536)
def keyed_vni(*, key: str, instance: str, node: str, spec_vni: int) -> int:
    """The VNI worker `node` and the members of `instance` use between them: the first 24 bits of
    HMAC-SHA256(key, context | instance | node | attempt) that are neither 0 nor the instance's spec VNI (the spec
    VNI is public: it is never a valid VNI, so a forger who uses it is always caught). Pure and stable: both ends
    compute it independently from the snapshot. `key` is the instance's secret (`GatewayInstance.tunnel_key`)."""
    for attempt in range(256):
        msg = b"\0".join((_VNI_CONTEXT, instance.encode(), node.encode(), bytes((attempt,))))
        vni = int.from_bytes(hmac.new(key.encode(), msg, hashlib.sha256).digest()[:3], "big")
        if vni not in (0, spec_vni):
            return vni
    raise AssertionError("unreachable: 256 HMAC outputs all 0 or the spec VNI")


def worker_vni(instance: GatewayInstance, node: str) -> int:
    """The keyed VNI between worker `node` and `instance`'s members (VXLAN instances)."""
    return keyed_vni(key=instance.tunnel_key, instance=instance.name, node=node, spec_vni=instance.tunnel.vni)


def link_name(port: int) -> str:
    return f"{LINK_PREFIX}vx{port}"


def tunnel_mtu(*, underlay_mtu: int, underlay_version: int, override: int | None) -> int:
    return override if override is not None else underlay_mtu - VXLAN_OVERHEAD[underlay_version]


def inner_mtu(*, underlay_mtu: int, underlay_version: int, node_override: int | None,
              specified: Iterable[int | None]) -> int:
    """The MTU of a tunnel device: the node's override, else the smallest MTU the instances it serves specify
    (`TunnelSpec.mtu`; None = not specified), else the underlay MTU minus the VXLAN overhead."""
    given = [m for m in specified if m is not None]
    override = node_override if node_override is not None else (min(given) if given else None)
    return tunnel_mtu(underlay_mtu=underlay_mtu, underlay_version=underlay_version, override=override)


def tunnel_link(*, port: int, mac: str, mtu: int, address: IPv4Address) -> TunnelLink:
    return TunnelLink(name=link_name(port), port=port, mac=mac, mtu=mtu, address=IPv4Interface(f"{address}/32"))


def tunnel_sysctls(name: str) -> tuple[tuple[str, str], ...]:
    """Loose reverse-path filtering on the tunnel (sources behind it are not routed through it in `main`)."""
    return ((f"net.ipv4.conf.{name}.rp_filter", "2"),)


def assign_slots(keys: Iterable[str], *, capacity: int) -> dict[str, int]:
    """Stable slots 1..capacity: crc32(key) with linear probing, keys placed in sorted order (deterministic)."""
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for key in sorted(set(keys)):
        slot = zlib.crc32(key.encode()) % capacity
        for _ in range(capacity):
            if slot + 1 not in taken:
                break
            slot = (slot + 1) % capacity
        else:
            raise ValueError(f"more than {capacity} slots needed")
        taken[slot + 1] = key
        out[key] = slot + 1
    return out


@functools.lru_cache(maxsize=65536)
def host_network(ip: IPAddress) -> IPNetwork:
    """ip/32 or ip/128 (cached: building networks dominates planning 10k pods)."""
    return ip_network((int(ip), ip.max_prefixlen)) if ip.version == 4 else ip_network((int(ip), 128))


@functools.lru_cache(maxsize=65536)
def addr_token(ip: IPAddress) -> str:
    """An address as part of an nft object name: `203_0_113_130`, `2001_db8_e1__2`."""
    return str(ip).replace(".", "_").replace(":", "_")


def pick_family(addresses: Iterable[IPAddress], version: int) -> IPAddress | None:
    """The first address of the given family, else None."""
    return next((a for a in addresses if a.version == version), None)


def add_disjoint(accepted: dict[tuple[int, int], list[IPNetwork]], pod: tuple[int, int], dest: IPNetwork) -> bool:
    """Record `dest` for the pod IP `pod` ((version, int) - cheap to hash) unless it overlaps one already recorded
    (nft interval maps need disjoint keys; the resolution guarantees it, this keeps a violation from failing the
    whole table). True = recorded."""
    have = accepted.setdefault(pod, [])
    if have and any(dest.overlaps(n) for n in have if n.version == dest.version):
        return False
    have.append(dest)
    return True


def steering_key(s: Steering) -> tuple[int, int, int, str]:
    """Precedence first (rank), then address: deterministic and independent of input order."""
    return (s.rank, s.pod_ip.version, int(s.pod_ip), str(s.policy))


def net_key(n: IPNetwork) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def sorted_nets(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=net_key))
