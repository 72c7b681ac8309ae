"""Policy resolution (pure): Snapshot -> Intent.

One function, `resolve`, turns the whole cluster view into the whole egress intent: for every policy its gateway
and EIPs (`eip_allocation`), for every gateway its members and EIP rankings (`placement`), for every selected pod IP
the disjoint destinations each policy wins (`selection`, `precedence`), and the cluster-internal CIDRs
(`cluster_cidrs`). The rules are documented in docs/policy-resolution.md.

Determinism: the result depends only on the snapshot's content (and `previous`, which only makes `rr` allocation
sticky), never on the order of its tuples; everything in the Intent is sorted.

Speed: pods are indexed once (`PodIndex`), and the disjoint-destination computation is memoised per (family, set of
matching policies), since most pods share their set of policies with many others.

For the incremental paths (`appliance.policy.incremental`): `resolve_indexed` resolves over a pod index the caller
keeps, and returns a `Resolution` (the Intent plus its `SteeringContext`: the Ready policies with their ranks, routes
and per-namespace candidates), from which steerings can be computed again pod by pod exactly as here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from appliance.core.intent import GatewayInstance, Intent, PolicyOutcome, PolicyState, Steering
from appliance.core.model import EgressGateway, EgressPolicy, IPAddress, IPNetwork, Pod, PolicyKind, PolicyRef
from appliance.core.snapshot import Problem, Reason, Snapshot
from appliance.policy.cluster_cidrs import cluster_cidrs
from appliance.policy.eip_allocation import Assignment, assign
from appliance.policy.placement import build_instance, endpoints_of, node_ip_member
from appliance.policy.precedence import DisjointCache
from appliance.policy.selection import PodIndex, namespace_matches

POLICY_KINDS = frozenset(k.value for k in PolicyKind)


def _instances(snapshot: Snapshot, assignments: Mapping[PolicyRef, Assignment]) -> dict[str, GatewayInstance]:
    used: dict[str, set[IPAddress]] = {}  # a set: many policies share an EIP, and endpoints_of is not free
    for a in assignments.values():
        if a.state is PolicyState.READY:
            used.setdefault(a.gateway, set()).update(a.eips.values())
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
            selected = [k for k in selected if pods[k[0]].ips[k[1]].version in families]  # type: ignore[union-attr]
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


Route = tuple[IPAddress | None, tuple[IPAddress, ...]]


class SteeringContext:
    """The Ready policies of one resolution, prepared to compute steerings pod by pod: the full resolution uses it,
    and so do the incremental paths (`appliance.policy.incremental`), so both build identical `Steering`s.

    Positions are indexes into `chosen` (the Ready assignments sorted by policy ref).
    """

    def __init__(self, chosen: Sequence[Assignment], instances: Mapping[str, GatewayInstance],
                 gateways: Mapping[str, EgressGateway]) -> None:
        self.chosen = list(chosen)
        self.instances = instances
        self.gateways = gateways
        self.cache = DisjointCache.over([a.policy for a in self.chosen])
        self.ranks = _ranks(self.cache, len(self.chosen))
        self.position = {a.policy.ref: i for i, a in enumerate(self.chosen)}
        self._routes: dict[tuple[int, int], Route] = {}
        self._endpoints: dict[tuple[str, IPAddress], tuple[IPAddress, ...]] = {}
        self._signatures: dict[int, tuple[object, ...]] = {}
        self._namespaced: dict[str, list[int]] = {}
        self._cluster: list[int] = []
        for i, a in enumerate(self.chosen):
            if a.policy.ref.kind is PolicyKind.NAMESPACED:
                self._namespaced.setdefault(a.policy.ref.namespace, []).append(i)
            else:
                self._cluster.append(i)
        self._candidates: dict[str, list[int]] = {}

    def route(self, pos: int, version: int) -> Route:
        found = self._routes.get((pos, version))
        if found is None:
            a = self.chosen[pos]
            if a.use_node_ip:
                found = _route(a, version, self.instances, self.gateways)
            else:  # many policies share an EIP: its endpoints once
                eip = a.eips[version]
                ends = self._endpoints.get((a.gateway, eip))
                if ends is None:
                    ends = self._endpoints[(a.gateway, eip)] = endpoints_of(self.gateways[a.gateway], eip)
                found = (eip, ends)
            self._routes[(pos, version)] = found
        return found

    def signature(self, pos: int) -> tuple[object, ...]:
        """Everything about the policy at `pos` its steerings depend on, besides its rank."""
        found = self._signatures.get(pos)
        if found is None:
            a = self.chosen[pos]
            found = (a.policy, a.families, tuple(self.route(pos, v) for v in sorted(a.families)))
            self._signatures[pos] = found
        return found

    def steerings(self, pod: Pod, j: int, version: int, positions: tuple[int, ...],
                  counts: list[int] | None = None) -> list[Steering]:
        """The steerings of IP `j` of `pod`, selected by the Ready policies at `positions` (sorted); `counts`
        (per position) counts them."""
        out = []
        for pos, nets in self.cache.get(version, positions):
            if counts is not None:
                counts[pos] += 1
            a = self.chosen[pos]
            eip, endpoints = self.route(pos, version)
            out.append(Steering(pod_ip=pod.ips[j], namespace=pod.namespace, pod=pod.name, node=pod.node_name,
                                policy=a.policy.ref, gateway=a.gateway, eip=eip, destinations=nets,
                                endpoints=endpoints, rank=self.ranks[version][pos]))
        return out

    def _candidates_in(self, namespace: str, ns_labels: Mapping[str, str]) -> list[int]:
        """The Ready policies that may select pods of `namespace` (its own, and the cluster policies whose namespace
        selector matches it); memoised: a context lives while the namespaces do not change."""
        found = self._candidates.get(namespace)
        if found is None:
            cluster = [i for i in self._cluster if namespace_matches(self.chosen[i].policy, namespace, ns_labels)]
            found = self._candidates[namespace] = sorted(self._namespaced.get(namespace, []) + cluster)
        return found

    def steerings_of(self, index: PodIndex, positions: Iterable[int]) -> dict[int, list[Steering]]:
        """The steerings of the indexed pods at `positions`, by position: the pods of each namespace are matched
        against that namespace's candidate policies with the index's label sets (C-speed set intersections), so
        the cost grows with the candidate policies and the pods asked for, not with the pods in the cluster."""
        by_ns: dict[str, set[int]] = {}
        for i in positions:
            pod = index.pods[i]
            assert pod is not None
            by_ns.setdefault(pod.namespace, set()).add(i)
        out: dict[int, list[Steering]] = {}
        for ns, wanted in by_ns.items():
            #: per family, the candidates selecting every wanted pod (common: a selector matching a whole app), and
            #: per (pod, IP) the candidates selecting only some; both in ascending order
            everyone: dict[int, list[int]] = {4: [], 6: []}
            some: dict[tuple[int, int], list[int]] = {}
            for c in self._candidates_in(ns, index.labels_of_namespace(ns)):
                a = self.chosen[c]
                applied = a.policy.applied_to
                subnets = applied.pod_subnet
                if applied.pod_selector is not None:
                    hits: set[int] = wanted.intersection(index.by_selector(ns, applied.pod_selector))
                elif subnets:
                    hits = wanted
                else:
                    continue
                if not subnets and len(hits) == len(wanted):
                    for v in a.families:
                        everyone[v].append(c)
                    continue
                for i in hits:
                    pod = index.pods[i]
                    assert pod is not None
                    for j, ip in enumerate(pod.ips):
                        if ip.version in a.families and (
                                not subnets or any(ip in n for n in subnets if n.version == ip.version)):
                            some.setdefault((i, j), []).append(c)
            for i in sorted(wanted):
                pod = index.pods[i]
                assert pod is not None
                for j, ip in enumerate(pod.ips):
                    base, extra = everyone[ip.version], some.get((i, j))
                    found = tuple(sorted(base + extra)) if extra else tuple(base)
                    if found:
                        out.setdefault(i, []).extend(self.steerings(pod, j, ip.version, found))
        return out


def _steerings(
    index: PodIndex, ctx: SteeringContext, matches: Mapping[tuple[int, int], list[int]]
) -> tuple[list[Steering], list[int]]:
    """Every steering, sorted by (family, pod IP, rank, namespace, pod); and the count per Ready policy position."""
    counts = [0] * len(ctx.chosen)
    keyed: list[tuple[tuple[int, int, int, str, str], Steering]] = []
    for (i, j), positions in matches.items():
        pod = index.pods[i]
        assert pod is not None
        ip = pod.ips[j]
        version, value = ip.version, int(ip)
        for steering in ctx.steerings(pod, j, version, tuple(positions), counts):
            keyed.append(((version, value, steering.rank, steering.namespace, steering.pod), steering))
    keyed.sort(key=lambda e: e[0])
    return [e[1] for e in keyed], counts


@dataclass(slots=True, kw_only=True)
class Resolution:
    """A resolved Intent with what the incremental paths need to continue from it (`appliance.policy.incremental`).
    """

    intent: Intent
    context: SteeringContext
    assignments: dict[PolicyRef, Assignment]
    #: outcome position in `intent.outcomes` per policy
    outcome_at: dict[PolicyRef, int]


def finish(snapshot: Snapshot, policies: Sequence[EgressPolicy], assignments: dict[PolicyRef, Assignment],
           ctx: SteeringContext, steerings: Sequence[Steering], selected: Mapping[PolicyRef, int],
           cidrs: tuple[IPNetwork, ...]) -> Resolution:
    """The Intent (and its Resolution) from its parts."""
    outcomes = [_outcome(assignments[p.ref], ctx.instances, selected.get(p.ref, 0)) for p in policies]
    outcomes.extend(_invalid_outcomes(snapshot.problems, {p.ref for p in policies}))
    outcomes.sort(key=lambda o: o.policy)
    intent = Intent(
        steerings=tuple(steerings),
        outcomes=tuple(outcomes),
        instances=tuple(ctx.instances.values()),
        cluster_cidrs=cidrs,
    )
    return Resolution(intent=intent, context=ctx, assignments=assignments,
                      outcome_at={o.policy: i for i, o in enumerate(outcomes)})


def prepare(snapshot: Snapshot, index: PodIndex, *, previous: Intent | None
            ) -> tuple[list[EgressPolicy], dict[PolicyRef, Assignment], SteeringContext]:
    """Policies sorted by ref, their assignments, and the steering context (nothing per pod yet)."""
    gateways = {g.name: g for g in sorted(snapshot.gateways, key=lambda g: g.name)}
    policies = sorted(snapshot.policies, key=lambda p: p.ref)
    assignments = assign(policies, gateways, index.labels_of_namespace, previous=previous)
    instances = _instances(snapshot, assignments)
    chosen = [assignments[p.ref] for p in policies if assignments[p.ref].state is PolicyState.READY]
    return policies, assignments, SteeringContext(chosen, instances, gateways)


def resolve_indexed(snapshot: Snapshot, index: PodIndex, *, previous: Intent | None = None) -> Resolution:
    """`resolve` over a pod index of the snapshot's pods and namespaces (kept by the caller)."""
    policies, assignments, ctx = prepare(snapshot, index, previous=previous)
    ready = [a.policy for a in ctx.chosen]
    steerings, counts = _steerings(index, ctx, _matches(index, ready, assignments))
    selected = {p.ref: counts[pos] for pos, p in enumerate(ready)}
    return finish(snapshot, policies, assignments, ctx, steerings, selected, cluster_cidrs(snapshot))


def resolve(snapshot: Snapshot, *, previous: Intent | None = None) -> Intent:
    """The whole egress intent of `snapshot`. `previous` keeps `rr` EIPs where they were.

    `previous` must come from state every resolver shares (the policies' status, see k8s_sync), not from one
    process's memory, or two agents with different histories could allocate `rr` EIPs differently.
    """
    return resolve_indexed(snapshot, PodIndex(snapshot.pods, snapshot.namespaces), previous=previous).intent
