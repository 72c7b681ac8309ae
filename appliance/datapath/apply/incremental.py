"""Pod churn without a full re-plan: apply only the steerings that changed since the last pass.

Why: a full plan + diff of a gateway with 10,000 pods is O(pods) Python work (hundreds of milliseconds); a pod
event changes one or two steerings. `appliance.policy.incremental` (the resolution's pod-event path) keeps every
unchanged `Steering` *object* in the new Intent, so the changed ones are found by identity in one cheap pass, and their
kernel changes are a few route lines and a few nft set elements: one `ip -batch` and one `nft -f` transaction.

Safety: the delta path is taken only when nothing but steerings changed (same instances, cluster CIDRs, workers,
settings) and every changed steering is "simple" (its pod IP has no other steering, its endpoint / worker slot
already exists). Anything else - and every pass the caller marks `full` - runs the full plan and apply. After a delta
the applier's cache is dropped, so the next non-incremental pass observes the kernel.
The element texts below are the MODERN ruleset's; with the COMPAT variant (`plan.nft_variant`: a pod's
destinations sit in its group's chain and sets) every pass takes the full plan, which renders and diffs the same
elements - correct, at the full pass's cost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from appliance.core.intent import Intent, Steering
from appliance.core.model import IPAddress, IPNetwork, NoGatewayAction, TunnelType
from appliance.datapath.apply.applier import DataPathApplier
from appliance.datapath.apply.netlink import ApplyResult
from appliance.datapath.apply.nft_exec import run_nft
from appliance.datapath.plan.gateway import (
    GatewayPlan,
    GatewaySettings,
    plan_gateway,
    reply_address,
    reply_destination,
    tunnel_version_of,
)
from appliance.datapath.plan.kernel_model import Change, Encap, Op, Route
from appliance.datapath.plan.nft_rendering import FAMILY, TABLE, addr, mark, net
from appliance.datapath.plan.nft_variant import RulesetVariant
from appliance.datapath.plan.policy_counters import (
    PolicyLabels,
    connections_counter,
    counter_labels,
    labels_for,
    packets_counter,
)
from appliance.datapath.plan.policy_drops import DropLabels, PolicyDropReason, drop_counter, drop_labels
from appliance.datapath.plan.tunnel import WORKER_NH4, WORKER_NH6, link_name, pick_family, worker_vni
from appliance.datapath.plan.worker import SourceBinding, WorkerPlan, WorkerSettings, plan_worker


class NotIncremental(Exception):
    """This change needs the full plan."""


def changed_steerings(old: Intent, new: Intent) -> tuple[list[Steering], list[Steering]]:
    """(added, removed) by object identity (unchanged steerings are the same objects in an incremental Intent)."""
    old_ids = {id(s) for s in old.steerings}
    new_ids = {id(s) for s in new.steerings}
    return [s for s in new.steerings if id(s) not in old_ids], [s for s in old.steerings if id(s) not in new_ids]


def _same_world(old: Intent, new: Intent) -> bool:
    return old.instances == new.instances and old.cluster_cidrs == new.cluster_cidrs


def _pod_counts(intent: Intent, wanted: Sequence[Steering]) -> dict[tuple[int, int], int]:
    """How many steerings each of the `wanted` steerings' pod IPs has (keyed by (version, int): hashing ipaddress
    objects is the slow part of a scan over 10k steerings)."""
    keys: set[tuple[int, int]] = {(s.pod_ip.version, int(s.pod_ip)) for s in wanted}
    counts: dict[tuple[int, int], int] = dict.fromkeys(keys, 0)
    for s in intent.steerings:
        k = (s.pod_ip.version, int(s.pod_ip))
        if k in counts:
            counts[k] += 1
    return counts


def _count(counts: Mapping[tuple[int, int], int], s: Steering) -> int:
    return counts.get((s.pod_ip.version, int(s.pod_ip)), 0)


@dataclass
class _Elements:
    add: dict[str, list[str]] = field(default_factory=dict)
    delete: dict[str, list[str]] = field(default_factory=dict)

    def put(self, op: Op, set_name: str, text: str) -> None:
        (self.delete if op is Op.DELETE else self.add).setdefault(set_name, []).append(text)

    def render(self) -> str:
        lines = [f"delete element {FAMILY} {TABLE} {n} {{ {', '.join(sorted(e))} }}" for n, e in self.delete.items()]
        lines += [f"add element {FAMILY} {TABLE} {n} {{ {', '.join(sorted(e))} }}" for n, e in self.add.items()]
        return "\n".join(lines) + "\n" if lines else ""


def _modern(applier: DataPathApplier) -> bool:
    """The element texts here are the MODERN ruleset's (an applier without a variant, a test double, is modern)."""
    return getattr(applier, "variant", RulesetVariant.MODERN) is RulesetVariant.MODERN


def _apply(applier: DataPathApplier, routes: list[Change], elements: _Elements) -> ApplyResult:
    adds = [c for c in routes if c.op is not Op.DELETE]
    dels = [c for c in routes if c.op is Op.DELETE]
    result = applier.netlink.execute(adds)
    text = elements.render()
    if text:
        rc, _, err = run_nft(text, netns=applier.shell.netns)
        if rc != 0:
            result += ApplyResult(failures=(f"nft delta: {err.strip()[:500]}",))
        else:
            result += ApplyResult(changes=(f"nft {text.count(chr(10))} element lines",))
    result += applier.netlink.execute(dels)
    applier.forget()
    return result


class IncrementalWorker:
    """Worker data path with a pod-churn fast path. `converge(intent, full=...)` each reconcile pass."""

    def __init__(self, applier: DataPathApplier, *, node: str, underlay: IPAddress, settings: WorkerSettings) -> None:
        self.applier, self.node, self.underlay, self.settings = applier, node, underlay, settings
        self.intent: Intent | None = None
        self.plan: WorkerPlan | None = None
        self.wireguard: dict[str, str] = {}
        self.bindings: tuple[SourceBinding, ...] | None = None
        #: the per-policy drop counters of the last full plan: counter name -> labels (a delta never creates one)
        self.policy_drops: dict[str, DropLabels] = {}

    def converge(self, intent: Intent, *, full: bool = True,
                 wireguard_devices: Mapping[str, str] | None = None,
                 source_bindings: Sequence[SourceBinding] | None = None) -> ApplyResult:
        """`source_bindings` only reach the full plan: the caller forces `full` when they change what the inet
        table holds (`WorkerPlan.unbound`)."""
        wg = dict(wireguard_devices or {})
        if not full and self.intent is not None and self.plan is not None and wg == self.wireguard:
            try:
                return self._delta(self.intent, intent, self.plan)
            except NotIncremental:
                pass
        bindings = tuple(source_bindings) if source_bindings is not None else None
        if (self.plan is not None and wg == self.wireguard and bindings == self.bindings
                and (intent is self.intent or intent == self.intent)):
            plan = self.plan  # a resync with nothing new: the applier only checks the kernel against it
        else:
            plan = plan_worker(intent, node=self.node, underlay=self.underlay, settings=self.settings,
                               wireguard_devices=wg, source_bindings=source_bindings)
        result = self.applier.apply(plan, observe=full)
        self.intent, self.plan, self.wireguard = (intent, plan, wg) if not result.failures else (None, None, {})
        self.bindings = bindings
        self.policy_drops = drop_labels(plan)
        return result

    def _delta(self, old: Intent, new: Intent, plan: WorkerPlan) -> ApplyResult:
        if not _same_world(old, new) or not _modern(self.applier):
            raise NotIncremental
        added, removed = changed_steerings(old, new)
        added = [s for s in added if s.node == self.node]
        removed = [s for s in removed if s.node == self.node]
        if not added and not removed:
            return ApplyResult()
        old_counts, new_counts = _pod_counts(old, removed), _pod_counts(new, added)
        by_key = {(e.address, e.vni, e.port): e.mark for e in plan.endpoints if not e.device}
        unbound = {(a.version, int(a)) for a in plan.unbound}
        if removed:
            node = self.node
            for r in removed:
                # an endpoint that loses its last pod takes its rules, table (and device) with it: full plan
                if not any(x.node == node and x.gateway == r.gateway and x.endpoints == r.endpoints
                           for x in new.steerings):
                    raise NotIncremental
        elements = _Elements()
        for op, steerings, counts in ((Op.DELETE, removed, old_counts), (Op.ADD, added, new_counts)):
            for s in steerings:
                if _count(counts, s) != 1:
                    raise NotIncremental  # overlapping steerings of one pod IP: precedence needs the full plan
                m = self._mark(new, s, by_key)
                if m is None:
                    continue
                if (s.pod_ip.version, int(s.pod_ip)) in unbound:
                    raise NotIncremental  # its steered keys feed the per-policy source_unbound counters
                if m == self.settings.marks.drop_mark:
                    self._drop_element(elements, op, s)
                fam = "steer4" if s.pod_ip.version == 4 else "steer6"
                for dest in s.destinations:
                    if dest.version == s.pod_ip.version:
                        key = f"{addr(s.pod_ip)} . {net(dest)}"
                        elements.put(op, fam, key if op is Op.DELETE else f"{key} : {mark(m)}")
        result = _apply(self.applier, [], elements)
        self.intent = new if not result.failures else None
        return result

    def _drop_element(self, elements: _Elements, op: Op, s: Steering) -> None:
        """The pod IP's element in the per-policy drop map (its only steering: keyed by the pod IP alone)."""
        labels = DropLabels(labels=labels_for(s.policy, s.eip, s.pod_ip.version), reason=PolicyDropReason.NO_GATEWAY)
        name = drop_counter(labels)
        if name not in self.policy_drops:
            raise NotIncremental  # the first dropped pod of a (policy, EIP, family) here: its counter is new
        if any(d.version == s.pod_ip.version for d in s.destinations):
            key = addr(s.pod_ip)
            elements.put(op, f"pdpod{s.pod_ip.version}", key if op is Op.DELETE else f'{key} : "{name}"')

    def _mark(self, intent: Intent, s: Steering, by_key: Mapping[tuple[IPAddress, int, int], int]) -> int | None:
        instance = intent.instance(s.gateway)
        if instance is None or instance.tunnel.type is not TunnelType.VXLAN:
            raise NotIncremental
        if not instance.alive or not s.endpoints:
            if instance.failover.no_gateway_action is NoGatewayAction.FAIL_OPEN:
                return None
            return self.settings.marks.drop_mark
        endpoint = pick_family(s.endpoints, instance.tunnel.version(self.underlay.version))
        key = (endpoint, worker_vni(instance, self.node), instance.tunnel.udp_port) if endpoint is not None else None
        if key is None or key not in by_key:
            raise NotIncremental  # a new endpoint needs a slot, a table and rules
        return by_key[key]


class IncrementalGateway:
    """Gateway data path with a pod-churn fast path. `converge(intent, workers=..., full=...)` each pass."""

    def __init__(self, applier: DataPathApplier, *, member: str, settings: GatewaySettings) -> None:
        self.applier, self.member, self.settings = applier, member, settings
        self.intent: Intent | None = None
        self.plan: GatewayPlan | None = None
        self.workers: dict[str, tuple[IPAddress, ...]] = {}
        self.wireguard: tuple[str, ...] = ()
        self.cidrs: dict[str, tuple[IPNetwork, ...]] = {}
        #: the per-policy counters of the last full plan: counter name -> labels (a delta never creates one)
        self.policy_counters: dict[str, PolicyLabels] = {}

    def converge(self, intent: Intent, *, workers: Mapping[str, Sequence[IPAddress]], full: bool = True,
                 wireguard_devices: Sequence[str] = (),
                 worker_pod_cidrs: Mapping[str, Sequence[IPNetwork]] | None = None) -> ApplyResult:
        w = {n: tuple(a) for n, a in workers.items()}
        wg = tuple(sorted(wireguard_devices))
        cidrs = {n: tuple(c) for n, c in (worker_pod_cidrs or {}).items()}
        same_inputs = (w, wg, cidrs) == (self.workers, self.wireguard, self.cidrs)
        if not full and self.intent is not None and self.plan is not None and same_inputs:
            try:
                return self._delta(self.intent, intent, self.plan)
            except NotIncremental:
                pass
        if self.plan is not None and same_inputs and (intent is self.intent or intent == self.intent):
            plan = self.plan  # a resync with nothing new: the applier only checks the kernel against it
        else:
            plan = plan_gateway(intent, member=self.member, workers=w, settings=self.settings,
                                wireguard_devices=wg, worker_pod_cidrs=cidrs)
        result = self.applier.apply(plan, observe=full)
        ok = not result.failures
        self.intent, self.plan = (intent, plan) if ok else (None, None)
        self.workers, self.wireguard, self.cidrs = (w, wg, cidrs) if ok else ({}, (), {})
        self.policy_counters = counter_labels(plan.snat)
        return result

    def _delta(self, old: Intent, new: Intent, plan: GatewayPlan) -> ApplyResult:
        if not _same_world(old, new) or not _modern(self.applier):
            raise NotIncremental
        mine = {i.name: i for i in new.instances if any(m.name == self.member for m in i.members)}
        added, removed = changed_steerings(old, new)
        if not added and not removed:
            return ApplyResult()
        old_counts, new_counts = _pod_counts(old, removed), _pod_counts(new, added)
        vtep_marks = {v.node: v.mark for v in plan.vteps}
        admitted = {(v.instance, v.node) for v in plan.vtep_vnis}
        own = next((m.address for i in mine.values() for m in i.members if m.name == self.member), None)
        version = own.version if own is not None else 4
        elements = _Elements()
        routes: list[Change] = []
        if any(s.gateway in mine for s in removed):
            vxlan = {n for n, i in mine.items() if i.tunnel.type is TunnelType.VXLAN}
            still = {(s.gateway, s.node) for s in new.steerings if s.gateway in vxlan}
            if any(s.gateway in vxlan and (s.gateway, s.node) not in still for s in removed):
                raise NotIncremental  # the worker's last pod of an instance left: its (address . VNI) entry goes
        for op, steerings, counts in ((Op.DELETE, removed, old_counts), (Op.ADD, added, new_counts)):
            for s in steerings:
                instance = mine.get(s.gateway)
                if instance is None:
                    continue
                if _count(counts, s) != 1:
                    raise NotIncremental
                v = s.pod_ip.version
                if instance.tunnel.type is TunnelType.VXLAN:
                    if s.node not in vtep_marks or (s.gateway, s.node) not in admitted:
                        raise NotIncremental  # a new worker needs a slot; a new (instance, worker) its keyed VNI
                    worker = self.workers.get(s.node, ())
                    if not worker:
                        raise NotIncremental
                    elements.put(op, f"pods{v}", f"{mark(vtep_marks[s.node])} . {addr(s.pod_ip)}")
                    dst = reply_address(instance, worker,
                                        tunnel_version_of(instance, member=self.member, fallback=version))
                    if dst is None:
                        raise NotIncremental  # the worker is not on the instance's underlay: the full plan skips it
                    route = Route(
                        table=plan.reply_table, dst=reply_destination(s.pod_ip, self.cidrs.get(s.node, ())),
                        dev=link_name(instance.tunnel.udp_port), via=WORKER_NH4 if v == 4 else WORKER_NH6,
                        encap=Encap(vni=worker_vni(instance, s.node), dst=dst),
                    )
                    if route.dst.prefixlen == route.dst.max_prefixlen:
                        routes.append(Change(op=op, item=route))
                    elif op is Op.ADD and route not in plan.kernel.routes:
                        raise NotIncremental  # the first pod in this pod CIDR: its CIDR route is new
                    elif op is Op.DELETE and not any(
                        x.node == s.node and x.gateway in mine and x.pod_ip in route.dst for x in new.steerings
                    ):
                        raise NotIncremental  # the last pod in this pod CIDR: its CIDR route goes
                elif not self.wireguard:
                    continue  # WireGuard instance without devices: the full plan skips it too
                if s.eip is None and "nodeip" not in plan.counters:
                    raise NotIncremental  # the useNodeIP counters do not exist yet
                labels = labels_for(s.policy, s.eip, v)
                pol, polc = packets_counter(labels), connections_counter(labels)
                if pol not in self.policy_counters:
                    raise NotIncremental  # the first pod of a (policy, EIP, family) here: its counters are new
                # the pod IP's only steering: one label set, keyed by the pod IP alone (policy_counters.map_elements)
                if any(d.version == v for d in s.destinations):
                    pod_key = addr(s.pod_ip)
                    elements.put(op, f"polpod{v}", pod_key if op is Op.DELETE else f'{pod_key} : "{pol}"')
                    elements.put(op, f"polpodc{v}", pod_key if op is Op.DELETE else f'{pod_key} : "{polc}"')
                for dest in s.destinations:
                    if dest.version != v:
                        continue
                    key = f"{addr(s.pod_ip)} . {net(dest)}"
                    if s.eip is None:
                        elements.put(op, f"masq{v}", key)
                    else:
                        elements.put(op, f"snat{v}", key if op is Op.DELETE else f"{key} : {addr(s.eip)}")
        # a pod IP that moved (another worker or instance) has its old route deleted and the new one added: the
        # add is a `route replace` and a delete matches by destination, so the delete would remove the new route
        replaced = {(c.item.table, c.item.dst) for c in routes if c.op is Op.ADD and isinstance(c.item, Route)}
        routes = [c for c in routes if not (c.op is Op.DELETE and isinstance(c.item, Route)
                                            and (c.item.table, c.item.dst) in replaced)]
        result = _apply(self.applier, routes, elements)
        self.intent = new if not result.failures else None
        return result
