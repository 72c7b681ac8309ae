"""Policy resolution (pure): Snapshot -> Intent.

One function, `resolve`, turns the whole cluster view into the whole egress intent: for every policy its gateway
and EIPs (`eip_allocation`), for every gateway its members and EIP rankings (`placement`), for every selected pod IP
the disjoint destinations each policy wins (`selection`, `precedence`), and the cluster-internal CIDRs
(`cluster_cidrs`). The rules are documented in docs/policy-resolution.md.

Determinism: the result depends only on the snapshot's content (and `previous`, which only makes `rr` allocation
sticky), never on the order of its tuples; everything in the Intent is sorted.

Speed: pods are indexed once (`PodIndex`), and the disjoint-destination computation is memoised per (family, set of
matching policies), since most pods share their set of policies with many others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from appliance.core.intent import GatewayInstance, Intent, PolicyOutcome, PolicyState, Steering
from appliance.core.model import EgressGateway, EgressPolicy, IPAddress, PolicyKind, PolicyRef
from appliance.core.snapshot import Problem, Reason, Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs
from appliance.policy.eip_allocation import Assignment, assign
from appliance.policy.placement import build_instance, endpoints_of, node_ip_member
from appliance.policy.precedence import DisjointCache
from appliance.policy.selection import PodIndex

POLICY_KINDS = frozenset(k.value for k in PolicyKind)


def _instances(snapshot: Snapshot, assignments: Mapping[PolicyRef, Assignment]) -> dict[str, GatewayInstance]:
    used: dict[str, list[IPAddress]] = {}
    for a in assignments.values():
        if a.state is PolicyState.READY:
            used.setdefault(a.gateway, []).extend(a.eips.values())
    return {
        gw.name: build_instance(
            gw,
            nodes=snapshot.nodes,
            appliances=snapshot.appliances,
            alive_members=snapshot.alive_members,
            used_eips=used.get(gw.name, ()),
        )
        for gw in sorted(snapshot.gateways, key=lambda g: g.name)
    }


def _route(
    a: Assignment, version: int, instances: Mapping[str, GatewayInstance], gateways: Mapping[str, EgressGateway]
) -> tuple[IPAddress | None, tuple[IPAddress, ...]]:
    """(EIP, tunnel endpoints) of policy assignment `a` for pod IPs of `version`."""
    inst = instances[a.gateway]
    if a.use_node_ip:
        member = node_ip_member(inst, str(a.policy.ref))
        return None, (member.address,) if member is not None else ()
    eip = a.eips[version]
    return eip, endpoints_of(gateways[a.gateway], eip)


def _invalid_outcomes(problems: Sequence[Problem], valid: set[PolicyRef]) -> list[PolicyOutcome]:
    grouped: dict[PolicyRef, list[Problem]] = {}
    for problem in problems:
        if problem.ref.kind not in POLICY_KINDS:
            continue
        ref = PolicyRef(kind=PolicyKind(problem.ref.kind), namespace=problem.ref.namespace, name=problem.ref.name)
        if ref not in valid:
            grouped.setdefault(ref, []).append(problem)
    return [
        PolicyOutcome(
            policy=ref,
            state=PolicyState.INVALID,
            reason=sorted(found)[0].reason,
            message="; ".join(f"{p.field}: {p.message}" for p in sorted(found)),
        )
        for ref, found in grouped.items()
    ]


def _outcome(a: Assignment, instances: Mapping[str, GatewayInstance], selected: int) -> PolicyOutcome:
    if a.state is not PolicyState.READY:
        return PolicyOutcome(policy=a.policy.ref, state=a.state, gateway=a.gateway, reason=a.reason, message=a.message)
    reason: Reason | None = None
    notes = list(a.notes)
    inst = instances[a.gateway]
    if not inst.alive:
        reason = Reason.NO_MEMBERS
        notes.insert(0, f"EgressGateway {a.gateway!r} has no alive member (failover.noGatewayAction applies)")
    return PolicyOutcome(
        policy=a.policy.ref,
        state=PolicyState.READY,
        gateway=a.gateway,
        eip_v4=a.eips.get(4),
        eip_v6=a.eips.get(6),
        use_node_ip=a.use_node_ip,
        reason=reason,
        message="; ".join(notes),
        selected_ips=selected,
    )


def _matches(index: PodIndex, ready: Sequence[EgressPolicy], assignments: Mapping[PolicyRef, Assignment]
             ) -> dict[tuple[int, int], list[int]]:
    """(pod position, IP position) -> positions in `ready` of the policies selecting that IP (ascending)."""
    matches: dict[tuple[int, int], list[int]] = {}
    pods = index.pods
    for pos, policy in enumerate(ready):
        families = assignments[policy.ref].families
        selected = index.select(policy)
        if len(families) < 2:
            selected = [k for k in selected if pods[k[0]].ip_keys[k[1]][0] in families]
        for key in selected:
            matches.setdefault(key, []).append(pos)
    return matches


def _ranks(cache: DisjointCache, n: int) -> dict[int, list[int]]:
    """Per family, the Steering rank of each Ready policy position."""
    ranks: dict[int, list[int]] = {}
    for v in (4, 6):
        order = sorted(range(n), key=lambda i, v=v: (cache.policy_key(i, v), i))  # type: ignore[misc]
        ranks[v] = [0] * n
        for r, pos in enumerate(order):
            ranks[v][pos] = r
    return ranks


def _steerings(
    index: PodIndex,
    chosen: Sequence[Assignment],
    matches: Mapping[tuple[int, int], list[int]],
    instances: Mapping[str, GatewayInstance],
    gateways: Mapping[str, EgressGateway],
) -> tuple[list[Steering], list[int]]:
    """Every steering, sorted by (family, pod IP, rank, namespace, pod); and the count per Ready policy position."""
    cache = DisjointCache.over([a.policy for a in chosen])
    ranks = _ranks(cache, len(chosen))
    routes: dict[tuple[int, int], tuple[IPAddress | None, tuple[IPAddress, ...]]] = {}
    counts = [0] * len(chosen)
    keyed: list[tuple[tuple[int, int, int, str, str], Steering]] = []
    for (i, j), positions in matches.items():
        indexed = index.pods[i]
        pod = indexed.pod
        version, value = indexed.ip_keys[j]
        for pos, nets in cache.get(version, tuple(positions)):
            a = chosen[pos]
            route = routes.get((pos, version))
            if route is None:
                route = routes[(pos, version)] = _route(a, version, instances, gateways)
            counts[pos] += 1
            rank = ranks[version][pos]
            steering = Steering(
                pod_ip=pod.ips[j],
                namespace=pod.namespace,
                pod=pod.name,
                node=pod.node_name,
                policy=a.policy.ref,
                gateway=a.gateway,
                eip=route[0],
                destinations=nets,
                endpoints=route[1],
                rank=rank,
            )
            keyed.append(((version, value, rank, pod.namespace, pod.name), steering))
    keyed.sort(key=lambda e: e[0])
    return [e[1] for e in keyed], counts


def resolve(snapshot: Snapshot, *, previous: Intent | None = None) -> Intent:
    """The whole egress intent of `snapshot`. `previous` keeps `rr` EIPs where they were.

    `previous` must come from state every resolver shares (the policies' status, see k8s_sync), not from one
    process's memory, or two agents with different histories could allocate `rr` EIPs differently.
    """
    gateways = {g.name: g for g in sorted(snapshot.gateways, key=lambda g: g.name)}
    index = PodIndex(snapshot.pods, snapshot.namespaces)
    policies = sorted(snapshot.policies, key=lambda p: p.ref)
    assignments = assign(policies, gateways, index.labels_of_namespace, previous=previous)
    instances = _instances(snapshot, assignments)
    ready = [p for p in policies if assignments[p.ref].state is PolicyState.READY]
    chosen = [assignments[p.ref] for p in ready]
    steerings, counts = _steerings(index, chosen, _matches(index, ready, assignments), instances, gateways)
    selected = {p.ref: counts[pos] for pos, p in enumerate(ready)}
    outcomes = [_outcome(assignments[p.ref], instances, selected.get(p.ref, 0)) for p in policies]
    outcomes.extend(_invalid_outcomes(snapshot.problems, {p.ref for p in policies}))
    outcomes.sort(key=lambda o: o.policy)
    return Intent(
        steerings=tuple(steerings),
        outcomes=tuple(outcomes),
        instances=tuple(instances.values()),
        cluster_cidrs=cluster_cidrs(snapshot),
    )
