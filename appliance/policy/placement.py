"""EIP placement (pure): the members of each gateway instance and, per EIP, a ranking of those members.

Members: the cluster nodes matched by the gateway's `nodeSelector` plus the appliances registered for the gateway
with a Lease. A member's address is its underlay (tunnel) address of the instance's tunnel family
(`appliance.core.model.underlay_address`: `spec.tunnel.family` when set - a node or appliance without an address of
that family is no member - else IPv4 when it has one, then IPv6). A member is alive when `Snapshot.alive_members`
names it (None = liveness unknown = alive) and, for an appliance, its own Lease has not expired: an unhealthy member
stops renewing its Lease, so every reader of `alive` (ranking, status, fail-closed/fail-open, useNodeIP) follows it.

Ranking: rendezvous (highest random weight) hashing. The weight of member m for key k of gateway g is
blake2b(f"{g}/{k}/{m}") read as an integer; members are ranked by weight, best first (name breaks the
astronomically unlikely tie). The key of an EIP is its pool index, so the IPv4 and IPv6 EIP of a dual-stack pair
share a ranking and a primary. Properties (tested): deterministic and independent of input order; primaries spread
evenly; removing a member only moves the EIPs it was primary for (everyone else's relative order is unchanged).
The primary of an EIP is the first *alive* member of its ranking; the BGP layer turns positions into preference.

WireGuard instances rank every EIP (and useNodeIP) with one key, `INSTANCE_KEY`: a worker has one WireGuard peer
per instance with one endpoint, so every EIP of the instance must have the same primary or replies would come back
from a member the worker is not talking to. Spread load over WireGuard gateways with several instances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from appliance.core.intent import GatewayInstance
from appliance.core.model import Appliance, EgressGateway, IPAddress, Member, Node, TunnelType, underlay_address

#: the ranking key of every EIP of a WireGuard instance
INSTANCE_KEY = "instance"


def weight(gateway: str, key: str, member: str) -> int:
    digest = hashlib.blake2b(f"{gateway}/{key}/{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(gateway: str, key: str, members: Iterable[str]) -> tuple[str, ...]:
    """Member names for `key`, best first (rendezvous hashing)."""
    return tuple(sorted(set(members), key=lambda m: (-weight(gateway, key, m), m)))


def eip_key(gw: EgressGateway, eip: IPAddress) -> str:
    """The ranking key of an EIP: its pool index (shared by the dual-stack pair); the address when outside the pool.

    WireGuard instances use `INSTANCE_KEY` for every EIP (one primary per instance).
    """
    if gw.tunnel.type is TunnelType.WIREGUARD:
        return INSTANCE_KEY
    pool = gw.pool(eip.version)
    return str(pool.index_of(eip)) if eip in pool else str(eip)


def partner(gw: EgressGateway, eip: IPAddress) -> IPAddress | None:
    """The address of the other family at the same pool index, when that pool is large enough."""
    pool = gw.pool(eip.version)
    if eip not in pool:
        return None
    other = gw.pool(6 if eip.version == 4 else 4)
    index = pool.index_of(eip)
    return other.nth(index) if index < other.size else None


def endpoints_of(gw: EgressGateway, eip: IPAddress) -> tuple[IPAddress, ...]:
    """Tunnel endpoints for traffic leaving as `eip`: the EIP and its partner, IPv4 first."""
    pair = [eip] if (p := partner(gw, eip)) is None else [eip, p]
    return tuple(sorted(pair, key=lambda a: a.version))


def members_of(gw: EgressGateway, nodes: Iterable[Node], appliances: Iterable[Appliance]) -> tuple[Member, ...]:
    """Cluster-node members (by nodeSelector) and appliance members, sorted by name; a node wins a name clash."""
    found: dict[str, Member] = {}
    if gw.node_selector is not None:
        for node in nodes:
            address = underlay_address(node.addresses, gw.tunnel.family)
            if address is not None and gw.node_selector.matches(node.label_map):
                found[node.name] = Member(
                    name=node.name, address=address, wireguard_public_key=node.wireguard_public_key
                )
    for app in appliances:
        if app.gateway == gw.name and app.name not in found:
            address = underlay_address(app.addresses or (app.address,), gw.tunnel.family)
            if address is not None:
                found[app.name] = Member(name=app.name, address=address, wireguard_public_key=app.wireguard_public_key)
    return tuple(found[n] for n in sorted(found))


def alive_of(
    members: Sequence[Member], appliances: Iterable[Appliance], alive_members: frozenset[str] | None
) -> frozenset[str]:
    dead_appliances = {a.name for a in appliances if not a.alive}
    return frozenset(
        m.name
        for m in members
        if (alive_members is None or m.name in alive_members) and m.name not in dead_appliances
    )


def first_alive(order: Sequence[str], alive: frozenset[str]) -> str | None:
    return next((m for m in order if m in alive), None)


def build_instance(
    gw: EgressGateway,
    *,
    nodes: Iterable[Node],
    appliances: Sequence[Appliance],
    alive_members: frozenset[str] | None,
    used_eips: Iterable[IPAddress],
) -> GatewayInstance:
    """The instance of `gw`: members, liveness, the EIPs in use plus their partners, and one ranking per EIP."""
    members = members_of(gw, nodes, (a for a in appliances if a.gateway == gw.name))
    alive = alive_of(members, (a for a in appliances if a.gateway == gw.name), alive_members)
    eips: set[IPAddress] = set()
    for eip in used_eips:
        eips.update(endpoints_of(gw, eip))
    ordered = sorted(eips, key=lambda a: (a.version, int(a)))
    names = [m.name for m in members]
    ranking = tuple((eip, rank(gw.name, eip_key(gw, eip), names)) for eip in ordered)
    return GatewayInstance(
        name=gw.name,
        members=members,
        eips=tuple(ordered),
        ranking=ranking,
        alive=alive,
        tunnel=gw.tunnel,
        bgp=gw.bgp,
        failover=gw.failover,
        ipv4_pool=gw.ipv4_pool,
        ipv6_pool=gw.ipv6_pool,
        tunnel_key=gw.uid,
    )


def primary(instance: GatewayInstance, eip: IPAddress) -> str | None:
    """The member that should carry `eip` now: the first alive member of its ranking (None when none is alive)."""
    return first_alive(instance.rank_of(eip), instance.alive)


def node_ip_member(instance: GatewayInstance, key: str) -> Member | None:
    """For useNodeIP policies (no EIP): the first-ranked alive member for `key` (the policy ref; for a WireGuard
    instance `INSTANCE_KEY`, so it is the instance's primary)."""
    if instance.tunnel.type is TunnelType.WIREGUARD:
        key = INSTANCE_KEY
    name = first_alive(rank(instance.name, key, (m.name for m in instance.members)), instance.alive)
    return next((m for m in instance.members if m.name == name), None)
