"""WireGuard part of the data-path plan (pure): interfaces, keys (by file), peers, allowed IPs, MTU, return routes.

Why a separate planner: the nftables steering, the policy routing into a per-endpoint table and the gateway SNAT are
the same for VXLAN and WireGuard (`appliance.datapath.plan.worker` / `planning_gateway`); only the tunnel device, its
peers and the device the routes point at differ. This module plans exactly that difference.

Design (docs/wireguard.md):
- One WireGuard interface per gateway instance and *slot* on each side. A key's slot (0/1) is derived from the key
  (`wireguard_keys.key_slot`); a rotating worker has its old and new key in different slots, so both can be peers
  of the gateway at once (allowed IPs are unique per interface, not per host) and the switch loses no packet.
  Gateway slot s listens on the instance port + s. Names are `<prefix><hash6><slot>` (<= 15 chars), the hash over
  node + instance, unique host-wide (wireguard-go's control socket /var/run/wireguard/IF.sock is host-wide).
- Gateway members share the instance key pair (file `<instanceKeyDir>/<instance>.key`), and publish its public key
  as their own; a worker has one peer per instance: endpoint = the instance's tunnel endpoint EIP, so the routers'
  choice of member decides forward and return paths (design section 3).
- Gateway peers = workers with selected pods of the instance; allowed IPs = exactly those pod IPs plus the worker's
  link-local probe address: WireGuard's crypto-routing drops a packet from an unknown key, or from a source address
  not allowed for the key that decrypted it. Endpoints are learned (roaming), never planned on the gateway.
- Probe addresses: gateway `fe80::1`, worker `fe80::<hash of node name>` on every WireGuard interface; the worker
  agent pings the gateway through the tunnel and resets the peer session after a few misses (fast re-handshake).

Private keys never appear here: plans carry key *file paths*; reprs and logs are therefore safe.
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Address, IPv6Interface, IPv6Network, ip_network
from pathlib import Path

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import IPAddress, IPNetwork, Node, TunnelType
from appliance.datapath.plan.tunnel import net_key
from appliance.datapath.plan.wireguard_keys import LocalKey, PublicKey, key_slot, parse_published_keys

#: WireGuard overhead on an IPv4 / IPv6 underlay (outer IP + UDP + WireGuard header + auth tag)
OVERHEAD_V4 = 60
OVERHEAD_V6 = 80
GATEWAY_PROBE_ADDRESS = IPv6Address("fe80::1")
#: IPv4 link-local /32 on every WireGuard device (gateway / worker side). Not used for routing: a device without
#: any IPv4 address fails reverse-path filtering in loose mode for every source not routed through it (the kernel's
#: "no address -> last resort" case), which drops traffic in the rotation window (returns on the new interface
#: while the routes still name the old one) and whenever routing is asymmetric by design (fwmark steering).
GATEWAY_V4 = IPv4Interface("169.254.78.1/32")
WORKER_V4 = IPv4Interface("169.254.78.2/32")
ALL_V4 = IPv4Network("0.0.0.0/0")
ALL_V6 = IPv6Network("::/0")
SLOTS = (0, 1)


class WgSkipReason(enum.StrEnum):
    NO_PUBLIC_KEY = "NoWireGuardKey"
    DUPLICATE_PUBLIC_KEY = "DuplicateWireGuardKey"
    SLOT_CONFLICT = "WireGuardSlotConflict"
    NO_INSTANCE_KEY = "NoInstanceKey"
    INSTANCE_KEY_MISMATCH = "InstanceKeyMismatch"
    NO_ENDPOINT = "NoTunnelEndpoint"
    PORT_CONFLICT = "WireGuardPortConflict"
    POD_ON_TWO_WORKERS = "PodIPOnTwoWorkers"


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class WgSkip:
    subject: str
    reason: WgSkipReason
    message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WgSettings:
    #: interface name prefix (<= 8 chars); tests use `egt-wg-` so their interfaces are recognisable host-wide.
    #: Not `egw-`: the VXLAN applier adopts (and removes unplanned) links named `egw-*`.
    interface_prefix: str = "wg-egw-"
    #: MTU of the underlay interface the tunnel rides on
    underlay_mtu: int = 1500
    #: gateway: directory with `<instance>.key` (the instance private key shared by its members, mode 0600)
    instance_key_dir: Path = Path("/etc/egressgw/wireguard")

    def __post_init__(self) -> None:
        if not 1 <= len(self.interface_prefix) <= 8:
            raise ValueError("interface_prefix must be 1-8 characters (interface names are at most 15)")


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class WgPeer:
    public_key: PublicKey
    allowed_ips: tuple[IPNetwork, ...]
    #: (address, port); None = learned from authenticated packets (gateway side)
    endpoint: tuple[IPAddress, int] | None = None


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class WgInterface:
    name: str
    instance: str
    slot: int
    private_key_file: Path
    #: None = chosen by the kernel (workers: gateways learn the endpoint)
    listen_port: int | None
    mtu: int
    address: IPv6Interface
    peers: tuple[WgPeer, ...]
    address4: IPv4Interface = WORKER_V4

    @property
    def addresses(self) -> tuple[IPv4Interface | IPv6Interface, ...]:
        return (self.address4, self.address)


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class WgRoute:
    """Gateway: a selected pod's IP routed back into the slot interface of its worker's active key."""

    destination: IPNetwork
    device: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WireguardPlan:
    interfaces: tuple[WgInterface, ...] = ()
    #: gateway return routes (installed by the WireGuard applier, proto `egressgw-wg`)
    routes: tuple[WgRoute, ...] = ()
    #: instance -> device the worker's steered routes point at (the data path's per-endpoint table)
    route_devices: tuple[tuple[str, str], ...] = ()
    #: worker: (interface, peer key) pairs the liveness prober watches (gateway probe address fe80::1)
    probes: tuple[tuple[str, PublicKey], ...] = ()
    skipped: tuple[WgSkip, ...] = ()

    def interface(self, name: str) -> WgInterface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def route_device(self, instance: str) -> str | None:
        return dict(self.route_devices).get(instance)


def interface_name(settings: WgSettings, node: str, instance: str, slot: int) -> str:
    digest = hashlib.sha256(f"{node}\0{instance}".encode()).hexdigest()[:6]
    return f"{settings.interface_prefix}{digest}{slot}"


def probe_address(node: str) -> IPv6Interface:
    """The worker's link-local probe address: fe80::/64 with a 64-bit interface id hashed from the node name."""
    iid = int.from_bytes(hashlib.sha256(f"egressgw-wg\0{node}".encode()).digest()[:8], "big")
    iid |= 1 << 62  # never ::0 or ::1 (the gateway's)
    return IPv6Interface(f"{IPv6Address((0xFE80 << 112) | iid)}/64")


def tunnel_mtu(instance: GatewayInstance, settings: WgSettings, *, v6_underlay: bool) -> int:
    if instance.tunnel.mtu is not None:
        return instance.tunnel.mtu
    return settings.underlay_mtu - (OVERHEAD_V6 if v6_underlay else OVERHEAD_V4)


def _host(ip: IPAddress) -> IPNetwork:
    return ip_network(ip)


def _wg_instances(intent: Intent) -> list[GatewayInstance]:
    return sorted((i for i in intent.instances if i.tunnel.type is TunnelType.WIREGUARD), key=lambda i: i.name)


def _by_instance(steerings: Iterable[Steering]) -> dict[str, list[Steering]]:
    out: dict[str, list[Steering]] = {}
    for s in steerings:
        out.setdefault(s.gateway, []).append(s)
    return out


def instance_public_key(instance: GatewayInstance) -> tuple[PublicKey | None, WgSkip | None]:
    """The instance key all members publish; on disagreement the most published one (then the lowest) wins."""
    counts = Counter(k[0] for m in instance.members if (k := parse_published_keys(m.wireguard_public_key)))
    if not counts:
        return None, WgSkip(subject=instance.name, reason=WgSkipReason.NO_INSTANCE_KEY,
                            message="no member publishes the instance public key")
    best = min(counts, key=lambda k: (-counts[k], k))
    skip = None
    if len(counts) > 1:
        skip = WgSkip(subject=instance.name, reason=WgSkipReason.INSTANCE_KEY_MISMATCH,
                      message=f"members publish {len(counts)} different keys; using the most common")
    return best, skip


def tunnel_endpoint(instance_steerings: Sequence[Steering], *, prefer_v6: bool) -> IPAddress | None:
    """The instance's tunnel endpoint: the lowest endpoint of the preferred underlay family (then the other).

    All EIPs of a WireGuard instance share one primary member (placement ranks the instance with one key), so any
    of them reaches the same member; the lowest is a deterministic choice every worker makes alike.
    """
    found = {e for s in instance_steerings for e in s.endpoints}
    preferred = sorted(e for e in found if (e.version == 6) == prefer_v6)
    other = sorted(e for e in found if (e.version == 6) != prefer_v6)
    candidates = preferred or other
    return candidates[0] if candidates else None


def plan_worker_wireguard(
    intent: Intent, *, node: Node, local_keys: Sequence[LocalKey], settings: WgSettings
) -> WireguardPlan:
    """The worker's WireGuard state: per instance with local steerings, one interface per local key (active first)."""
    local = _by_instance(s for s in intent.steerings if s.node == node.name)
    prefer_v6 = node.address(4) is None and node.address(6) is not None
    interfaces: list[WgInterface] = []
    route_devices: list[tuple[str, str]] = []
    probes: list[tuple[str, PublicKey]] = []
    skipped: list[WgSkip] = []
    my_address = probe_address(node.name)
    keys: list[LocalKey] = []
    for k in local_keys:
        if any(o.slot == k.slot for o in keys):
            skipped.append(WgSkip(subject=node.name, reason=WgSkipReason.SLOT_CONFLICT,
                                  message="two local keys share a slot; the later one is ignored"))
            continue
        keys.append(k)
    for instance in _wg_instances(intent):
        if instance.name not in local or not keys:
            continue
        peer_key, warn = instance_public_key(instance)
        if warn:
            skipped.append(warn)
        if peer_key is None:
            continue
        all_of_instance = [s for s in intent.steerings if s.gateway == instance.name]
        fam = instance.tunnel.family  # `spec.tunnel.family` wins over the node's own family
        endpoint = tunnel_endpoint(all_of_instance, prefer_v6=prefer_v6 if fam is None else fam.version == 6)
        if endpoint is None:
            skipped.append(WgSkip(subject=instance.name, reason=WgSkipReason.NO_ENDPOINT))
            continue
        mtu = tunnel_mtu(instance, settings, v6_underlay=endpoint.version == 6)
        for n, key in enumerate(keys):
            name = interface_name(settings, node.name, instance.name, key.slot)
            peer = WgPeer(public_key=peer_key, allowed_ips=(ALL_V4, ALL_V6),
                          endpoint=(endpoint, instance.tunnel.udp_port + key.slot))
            interfaces.append(WgInterface(
                name=name, instance=instance.name, slot=key.slot, private_key_file=key.private_key_file,
                listen_port=None, mtu=mtu, address=my_address, peers=(peer,)))
            probes.append((name, peer_key))
            if n == 0:
                route_devices.append((instance.name, name))
    return WireguardPlan(interfaces=tuple(sorted(interfaces)), route_devices=tuple(route_devices),
                         probes=tuple(sorted(probes)), skipped=tuple(sorted(skipped)))


def _worker_keys(nodes: Iterable[Node], wanted: set[str]) -> tuple[dict[str, tuple[PublicKey, ...]], list[WgSkip]]:
    """Published keys of the wanted worker nodes; a key published by two nodes is dropped for both."""
    keys = {n.name: parse_published_keys(n.wireguard_public_key) for n in nodes if n.name in wanted}
    owners = Counter(k for ks in keys.values() for k in set(ks))
    skipped: list[WgSkip] = []
    out: dict[str, tuple[PublicKey, ...]] = {}
    for name in sorted(wanted):
        ks = keys.get(name, ())
        if not ks:
            skipped.append(WgSkip(subject=name, reason=WgSkipReason.NO_PUBLIC_KEY,
                                  message="the node publishes no (valid) WireGuard public key"))
            continue
        unique = tuple(k for k in ks if owners[k] == 1)
        if len(unique) != len(ks):
            skipped.append(WgSkip(subject=name, reason=WgSkipReason.DUPLICATE_PUBLIC_KEY,
                                  message="a key of this node is published by another node too"))
        out[name] = unique
    return out, skipped


def plan_gateway_wireguard(
    intent: Intent, *, member: str, nodes: Sequence[Node], settings: WgSettings
) -> WireguardPlan:
    """A gateway member's WireGuard state: both slot interfaces of every WireGuard instance it belongs to."""
    interfaces: list[WgInterface] = []
    routes: list[WgRoute] = []
    skipped: list[WgSkip] = []
    used_ports: dict[int, str] = {}
    by_instance = _by_instance(intent.steerings)
    for instance in _wg_instances(intent):
        if member not in {m.name for m in instance.members}:
            continue
        ports = {instance.tunnel.udp_port + s for s in SLOTS}
        clash = sorted(used_ports[p] for p in ports if p in used_ports)
        if clash:
            skipped.append(WgSkip(subject=instance.name, reason=WgSkipReason.PORT_CONFLICT,
                                  message=f"UDP ports {sorted(ports)} already used by {clash[0]}"))
            continue
        used_ports.update(dict.fromkeys(ports, instance.name))
        steerings = by_instance.get(instance.name, [])
        pod_ips: dict[str, set[IPAddress]] = {}
        for s in steerings:
            pod_ips.setdefault(s.node, set()).add(s.pod_ip)
        claimed = Counter(ip for ips in pod_ips.values() for ip in ips)
        for worker in sorted(pod_ips):
            # allowed IPs are unique per interface, and granting a pod IP to the wrong worker's key would let that
            # worker speak for it: an IP two workers claim (stale data) is allowed for neither until it resolves
            contested = {ip for ip in pod_ips[worker] if claimed[ip] > 1}
            if contested:
                skipped.append(WgSkip(subject=worker, reason=WgSkipReason.POD_ON_TWO_WORKERS,
                                      message=f"{len(contested)} pod IP(s) also claimed by another worker"))
                pod_ips[worker] -= contested
        worker_keys, skips = _worker_keys(nodes, set(pod_ips))
        skipped.extend(skips)
        peers: dict[int, list[WgPeer]] = {s: [] for s in SLOTS}
        for worker, keys in sorted(worker_keys.items()):
            allowed = tuple(sorted((_host(ip) for ip in pod_ips[worker]), key=net_key))
            allowed += (ip_network(probe_address(worker).ip),)
            taken: set[int] = set()
            for n, key in enumerate(keys):
                slot = key_slot(key)
                if slot in taken:
                    skipped.append(WgSkip(subject=worker, reason=WgSkipReason.SLOT_CONFLICT,
                                          message="two published keys share a slot; the later one is ignored"))
                    continue
                taken.add(slot)
                peers[slot].append(WgPeer(public_key=key, allowed_ips=allowed))
                if n == 0:
                    device = interface_name(settings, member, instance.name, slot)
                    routes.extend(WgRoute(destination=_host(ip), device=device) for ip in pod_ips[worker])
        # the gateway cannot know each worker's underlay family: size for IPv6 whenever a worker may use it
        v6 = any(e.version == 6 for s in steerings for e in s.endpoints)
        for slot in SLOTS:
            interfaces.append(WgInterface(
                name=interface_name(settings, member, instance.name, slot), instance=instance.name, slot=slot,
                private_key_file=settings.instance_key_dir / f"{instance.name}.key",
                listen_port=instance.tunnel.udp_port + slot, mtu=tunnel_mtu(instance, settings, v6_underlay=v6),
                address=IPv6Interface(f"{GATEWAY_PROBE_ADDRESS}/64"), peers=tuple(sorted(peers[slot])),
                address4=GATEWAY_V4))
    return WireguardPlan(interfaces=tuple(sorted(interfaces)), routes=tuple(sorted(routes, key=_route_key)),
                         skipped=tuple(sorted(skipped)))


def _route_key(r: WgRoute) -> tuple[tuple[int, int, int], str]:
    return (net_key(r.destination), r.device)


def summary(plan: WireguardPlan) -> Mapping[str, object]:
    """Counts for the one log line per pass (no keys beyond public ones, no paths)."""
    return {"interfaces": len(plan.interfaces), "peers": sum(len(i.peers) for i in plan.interfaces),
            "routes": len(plan.routes), "skipped": len(plan.skipped)}
