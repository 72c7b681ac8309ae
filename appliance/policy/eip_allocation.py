"""Gateway choice and EIP assignment for every policy (pure).

Gateway: the explicit `egressGatewayName`; else, for an EgressPolicy, the gateway named by its namespace's label
`egressgw.io/default-gateway`; else the cluster default gateway (`clusterDefault: true`; with several, the first by
name). A missing gateway makes the policy Pending (GatewayNotFound / NoDefaultGateway), never Invalid: it becomes
Ready by itself when the gateway appears.

EIPs, per family and independently:
- `useNodeIP`: no EIP for either family; the member masquerades to its own address;
- an explicit `egressIP.ipv4` / `ipv6`: used as is, must be inside that family's pool (else Invalid EIPNotInPool: a
  spec error, never allocated; validation already refuses one outside the named gateway's or every pool, this catches
  one outside the pool of a default gateway);
- `allocatorPolicy: default`: the gateway's `ipv4DefaultEIP` / `ipv6DefaultEIP`, or the pool's first address when
  unset (shared by every such policy);
- `allocatorPolicy: rr`: one pool index per policy, never shared, the same index for IPv4 and IPv6 (a dual-stack
  pair). Allocation is sticky: a policy keeps the index it had in the previous intent when it is still free; new
  policies get the lowest free index, in (creation time, ref) order. Indices used (in either family) by explicit or
  `default` policies of the same gateway, and the configured default EIPs' indices, are never given to `rr`
  policies; an rr policy with an explicit address in one family gets that address's index in the other family
  when nobody else uses it. When no index is left the
  policy is Pending (PoolExhausted). A dual-stack rr policy can use indices below the smaller pool's size.
A family without an EIP is not steered for that policy; with no family at all the policy is Pending
(NoPoolForFamily). Every message names the `spec.`-rooted field it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from appliance.core.intent import Intent, PolicyState
from appliance.core.model import DEFAULT_GATEWAY_LABEL as NS_DEFAULT_LABEL
from appliance.core.model import AllocatorPolicy, EgressGateway, EgressPolicy, IPAddress, PolicyKind, PolicyRef
from appliance.core.snapshot import Reason

FAMILIES = (4, 6)


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """Gateway and EIPs decided for one policy."""

    policy: EgressPolicy
    gateway: str = ""
    state: PolicyState = PolicyState.READY
    reason: Reason | None = None
    message: str = ""
    #: family (4/6) -> EIP, for the families steered through an EIP
    eips: Mapping[int, IPAddress] = field(default_factory=dict)
    use_node_ip: bool = False
    #: families whose traffic this policy steers
    families: frozenset[int] = frozenset()
    #: why a family is not steered ("IPv6: gateway gw1 has no IPv6 pool")
    notes: tuple[str, ...] = ()


def cluster_default_gateway(gateways: Sequence[EgressGateway]) -> str | None:
    names = sorted(g.name for g in gateways if g.cluster_default)
    return names[0] if names else None


def choose_gateway(
    policy: EgressPolicy,
    gateways: Mapping[str, EgressGateway],
    cluster_default: str | None,
    ns_labels: Mapping[str, str],
) -> tuple[str, Reason | None, str]:
    """(gateway name, None, how it was chosen) or ("", reason, message)."""
    if policy.egress_gateway_name:
        name = policy.egress_gateway_name
        if name in gateways:
            return name, None, "egressGatewayName"
        return "", Reason.GATEWAY_NOT_FOUND, (f"spec.egressGatewayName: EgressGateway {name!r} does not exist "
                                              "(or is invalid)")
    if policy.ref.kind is PolicyKind.NAMESPACED and NS_DEFAULT_LABEL in ns_labels:
        name = ns_labels[NS_DEFAULT_LABEL]
        if name in gateways:
            return name, None, f"namespace label {NS_DEFAULT_LABEL}"
        return "", Reason.GATEWAY_NOT_FOUND, (
            f"spec.egressGatewayName: empty, and the default gateway {name!r} of namespace {policy.ref.namespace!r} "
            "does not exist (or is invalid)"
        )
    if cluster_default is not None:
        return cluster_default, None, "cluster default gateway"
    return "", Reason.NO_DEFAULT_GATEWAY, ("spec.egressGatewayName: empty, and there is no namespace default nor "
                                           "cluster default gateway")


def _pending(policy: EgressPolicy, gateway: str, reason: Reason, message: str) -> Assignment:
    return Assignment(policy=policy, gateway=gateway, state=PolicyState.PENDING, reason=reason, message=message)


def _fixed(policy: EgressPolicy, gw: EgressGateway) -> tuple[Assignment, tuple[int, ...]]:
    """Everything but rr allocation; also returns the families that still need an rr index."""
    if policy.egress_ip.use_node_ip:
        return Assignment(policy=policy, gateway=gw.name, use_node_ip=True, families=frozenset(FAMILIES)), ()
    eips: dict[int, IPAddress] = {}
    rr: list[int] = []
    notes: list[str] = []
    for v in FAMILIES:
        explicit = policy.egress_ip.ipv4 if v == 4 else policy.egress_ip.ipv6
        pool = gw.pool(v)
        if explicit is not None:
            if explicit not in pool:
                return Assignment(policy=policy, gateway=gw.name, state=PolicyState.INVALID,
                                  reason=Reason.EIP_NOT_IN_POOL, message=(
                    f"spec.egressIP.ipv{v}: {explicit} is not in the IPv{v} pool of EgressGateway {gw.name!r}"
                )), ()
            eips[v] = explicit
        elif pool.size == 0:
            notes.append(f"IPv{v} not steered: EgressGateway {gw.name!r} has no IPv{v} pool")
        elif policy.egress_ip.allocator_policy is AllocatorPolicy.RR:
            rr.append(v)
        else:
            default = gw.default_eip(v)
            eips[v] = default if default is not None else pool.nth(0)
    if not eips and not rr:
        return _pending(policy, gw.name, Reason.NO_POOL_FOR_FAMILY, (
            f"spec.egressIP: EgressGateway {gw.name!r} has no pool for any family this policy could use"
        )), ()
    families = frozenset(eips) | frozenset(rr)
    return Assignment(policy=policy, gateway=gw.name, eips=eips, families=families, notes=tuple(notes)), tuple(rr)


def _previous_index(previous: Intent | None) -> Callable[[PolicyRef, str, EgressGateway, tuple[int, ...]], int | None]:
    by_ref = {o.policy: o for o in previous.outcomes} if previous is not None else {}

    def lookup(ref: PolicyRef, gateway: str, gw: EgressGateway, families: tuple[int, ...]) -> int | None:
        out = by_ref.get(ref)
        if out is None or out.gateway != gateway:
            return None
        for v in families:
            eip = out.eip_v4 if v == 4 else out.eip_v6
            if eip is not None and eip.version == v and eip in gw.pool(v):
                return gw.pool(v).index_of(eip)
        return None

    return lookup


#: owner of an index reserved by a gateway's configured default EIP
DEFAULT_OWNER = "default-eip"


def _allocate_rr(
    gw: EgressGateway,
    requests: list[tuple[Assignment, tuple[int, ...]]],
    reserved: dict[int, set[str]],
    previous: Intent | None,
) -> list[Assignment]:
    """Give every rr request a pool index nobody else uses (sticky first, then its own explicit index, then lowest).

    `reserved`: pool index -> owners (policy refs as strings, DEFAULT_OWNER); an index is a dual-stack pair, so a
    reservation in one family blocks the index in both.
    """
    requests = sorted(requests, key=lambda r: (r[0].policy.created, r[0].policy.ref))
    prev = _previous_index(previous)
    chosen: dict[PolicyRef, int] = {}

    def capacity(fams: tuple[int, ...]) -> int:
        return min(gw.pool(v).size for v in fams)

    def free(i: int, fams: tuple[int, ...], owner: str = "") -> bool:
        return i < capacity(fams) and reserved.get(i, set()) <= {owner}

    def take(ref: PolicyRef, i: int) -> None:
        chosen[ref] = i
        reserved.setdefault(i, set()).add(str(ref))

    for a, fams in requests:
        idx = prev(a.policy.ref, gw.name, gw, fams)
        if idx is not None and free(idx, fams, str(a.policy.ref)):
            take(a.policy.ref, idx)
    cursor: dict[tuple[int, ...], int] = {}
    out: list[Assignment] = []
    for a, fams in requests:
        ref = a.policy.ref
        own = [gw.pool(v).index_of(e) for v, e in sorted(a.eips.items())]
        if ref not in chosen and own and free(own[0], fams, str(ref)):
            take(ref, own[0])  # pair the rr family with this policy's explicit address
        if ref not in chosen:
            i = cursor.get(fams, 0)
            cap = capacity(fams)
            while i < cap and not free(i, fams):
                i += 1
            cursor[fams] = i
            if i >= cap:
                out.append(_pending(a.policy, gw.name, Reason.POOL_EXHAUSTED, (
                    f"spec.egressIP.allocatorPolicy: every address of EgressGateway {gw.name!r} usable by rr is taken"
                )))
                continue
            take(ref, i)
        eips = dict(a.eips)
        for v in fams:
            eips[v] = gw.pool(v).nth(chosen[ref])
        out.append(Assignment(policy=a.policy, gateway=a.gateway, eips=eips, families=a.families, notes=a.notes))
    return out


def assign(
    policies: Sequence[EgressPolicy],
    gateways: Mapping[str, EgressGateway],
    ns_labels: Callable[[str], Mapping[str, str]],
    *,
    previous: Intent | None = None,
) -> dict[PolicyRef, Assignment]:
    """Decide gateway and EIPs of every (valid) policy."""
    cluster_default = cluster_default_gateway(list(gateways.values()))
    result: dict[PolicyRef, Assignment] = {}
    rr_requests: dict[str, list[tuple[Assignment, tuple[int, ...]]]] = {}
    for policy in policies:
        name, reason, message = choose_gateway(policy, gateways, cluster_default, ns_labels(policy.ref.namespace))
        if reason is not None:
            result[policy.ref] = _pending(policy, "", reason, message)
            continue
        assignment, rr = _fixed(policy, gateways[name])
        if rr:
            rr_requests.setdefault(name, []).append((assignment, rr))
        else:
            result[policy.ref] = assignment
    for name, requests in sorted(rr_requests.items()):
        gw = gateways[name]
        reserved: dict[int, set[str]] = {}
        for v in FAMILIES:
            d = gw.default_eip(v)
            if d is not None and d in gw.pool(v):
                reserved.setdefault(gw.pool(v).index_of(d), set()).add(DEFAULT_OWNER)
        for a in list(result.values()) + [r[0] for r in requests]:
            if a.gateway == name:
                for v, eip in a.eips.items():
                    if eip in gw.pool(v):
                        reserved.setdefault(gw.pool(v).index_of(eip), set()).add(str(a.policy.ref))
        for a in _allocate_rr(gw, requests, reserved, previous):
            result[a.policy.ref] = a
    return result
