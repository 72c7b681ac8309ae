"""Data-path liveness of a worker's tunnel endpoints (pure): probe results -> which steerings really have a gateway.

Why: the worker's tunnel endpoint of a VXLAN instance is the EIP itself. Every member holds it on `lo` and the
routers send it to whichever member announces it, so "some member carries this EIP" is exactly "an echo request to
the EIP, sent from the worker's underlay address, is answered" - a question the data path can answer without the
API server. Member Leases (renewed through the API server) say the same thing only while the members can reach the
API server: with every member cut from it, their Leases expire and an agent that trusted them alone would fail
closed while the gateways carry traffic perfectly well. So the agent probes every endpoint it steers to
(`appliance.datapath.apply.endpoint_probing`), and this module decides from the probes, with the Lease as the
fallback for what the probes cannot tell:

| probe state of the endpoint | Lease says alive          | Lease says no member alive |
|-----------------------------|---------------------------|----------------------------|
| `UP`                        | tunnel                    | tunnel (carried by the data path) |
| `DOWN`                      | no gateway (fail open/closed) | no gateway             |
| `UNKNOWN`                   | tunnel                    | no gateway                 |

- `UNKNOWN` = not probed yet, or never answered since the agent started. The Lease decides, so an agent that starts
  while the API server is away keeps its kernel state (it plans nothing before its first sync), and a gateway that
  does not answer probes (an older version, a firewall) keeps the Lease behaviour instead of being failed.
- Hysteresis (`ProbeSettings`): `UP` after the first answer (from `UNKNOWN`) or `rise` answers in a row (from
  `DOWN`); `DOWN` after `fall` misses in a row. One lost probe never moves anything.
- Only VXLAN steerings are judged here (their outer destination is the probed address). WireGuard instances have
  their own session prober (`appliance.datapath.apply.wireguard_liveness`) and keep the Lease behaviour; useNodeIP
  steerings are probed at the member address the resolution chose, which exists only while a Lease is fresh.

`apply_liveness` rewrites an `Intent` for `plan_worker`: a steering whose endpoint is judged down loses its
endpoints (the planner then applies the instance's `noGatewayAction`), and an instance with no Lease-alive member
but an endpoint judged up counts its members as alive. Unchanged steerings stay the same objects, so the incremental
worker path (which finds changes by identity) still sees only the steerings whose verdict changed.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.core.intent import GatewayInstance, Intent, Steering
from appliance.core.model import IPAddress, TunnelType
from appliance.datapath.plan.tunnel import pick_family


class EndpointState(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeSettings:
    """How the agent probes its endpoints. Defaults: a dead gateway is noticed in ~1 s (3 x 0.3 s), well after BFD
    (150 ms) has moved the EIP to a surviving member, so a member failover never looks like "no gateway"."""

    enabled: bool = True
    #: seconds between two probes of one endpoint
    interval_s: float = 0.3
    #: misses in a row before an endpoint is down
    fall: int = 3
    #: answers in a row before a down endpoint is up again
    rise: int = 2
    #: upper bound of the probes per second this worker sends in all (the gateways rate-limit echo requests per
    #: worker address); with more endpoints the interval of each grows instead
    max_rate_per_s: float = 8.0

    def round_interval(self, targets: int) -> float:
        """Seconds between two probes of each endpoint when there are `targets` of them."""
        return max(self.interval_s, targets / self.max_rate_per_s) if targets else self.interval_s


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeTrack:
    """One endpoint's probe history, as far as decisions need it."""

    state: EndpointState = EndpointState.UNKNOWN
    misses: int = 0
    answers: int = 0
    sent: int = 0
    answered: int = 0


def record(track: ProbeTrack, answered: bool, settings: ProbeSettings) -> ProbeTrack:
    """The track after one judged probe (answered in time or not)."""
    if answered:
        answers = track.answers + 1
        state = track.state
        if state is EndpointState.UNKNOWN or (state is EndpointState.DOWN and answers >= settings.rise):
            state = EndpointState.UP
        return ProbeTrack(state=state, misses=0, answers=answers, sent=track.sent + 1, answered=track.answered + 1)
    misses = track.misses + 1
    state = track.state
    if state is EndpointState.UP and misses >= settings.fall:
        state = EndpointState.DOWN
    return ProbeTrack(state=state, misses=misses, answers=0, sent=track.sent + 1, answered=track.answered)


def _judged(instance: GatewayInstance | None) -> bool:
    return instance is not None and instance.tunnel.type is TunnelType.VXLAN


def probe_targets(intent: Intent, *, node: str, underlay_version: int) -> frozenset[IPAddress]:
    """The endpoints this worker sends VXLAN traffic to (the ones `plan_worker` would pick for its underlay)."""
    out: set[IPAddress] = set()
    for s in intent.steerings:
        instance = intent.instance(s.gateway)
        if s.node == node and instance is not None and _judged(instance):
            endpoint = pick_family(s.endpoints, instance.tunnel.version(underlay_version))
            if endpoint is not None:
                out.add(endpoint)
    return frozenset(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """What the probes changed against the Leases in one pass (for logs, status and metrics)."""

    #: steerings (pod IP, endpoint) sent to "no gateway" because their endpoint is down though a Lease is fresh
    down_by_probe: tuple[tuple[IPAddress, IPAddress], ...] = ()
    #: instances whose Leases all expired but whose endpoints answer: still carried
    carried_without_lease: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Effective:
    intent: Intent
    verdict: Verdict


def _carried(state: EndpointState, lease_alive: bool) -> bool:
    return state is EndpointState.UP or (state is EndpointState.UNKNOWN and lease_alive)


def apply_liveness(
    intent: Intent,
    *,
    node: str,
    underlay_version: int,
    states: Mapping[IPAddress, EndpointState],
    reuse: Iterable[Steering] = (),
) -> Effective:
    """`intent` as this worker must plan it given its endpoints' probe `states` (see the module docstring).

    `reuse`: the rewritten steerings of the previous call; an equal rewrite is taken from there, so a steering whose
    verdict did not change is the same object in consecutive effective intents (the incremental path needs that).
    """
    instances = {i.name: i for i in intent.instances}
    per_instance: dict[str, list[tuple[int, Steering, bool]]] = {}
    for pos, s in enumerate(intent.steerings):
        instance = instances.get(s.gateway)
        if s.node != node or instance is None or not _judged(instance):
            continue
        endpoint = pick_family(s.endpoints, instance.tunnel.version(underlay_version))
        if endpoint is None:
            continue
        carried = _carried(states.get(endpoint, EndpointState.UNKNOWN), bool(instance.alive))
        per_instance.setdefault(s.gateway, []).append((pos, s, carried))

    steerings = list(intent.steerings)
    new_instances = dict(instances)
    previous = {(s.pod_ip, s.policy, s.gateway): s for s in reuse}
    down: list[tuple[IPAddress, IPAddress]] = []
    revived: list[str] = []
    changed = False
    for name, entries in per_instance.items():
        instance = instances[name]
        lease_alive = bool(instance.alive)
        revive = not lease_alive and any(carried for _, _, carried in entries)
        if revive:
            new_instances[name] = dataclasses.replace(instance, alive=frozenset(m.name for m in instance.members))
            revived.append(name)
            changed = True
        if not (lease_alive or revive):
            continue  # no member anywhere: the planner applies noGatewayAction to all of them already
        for pos, s, carried in entries:
            if carried:
                continue
            endpoint = pick_family(s.endpoints, instance.tunnel.version(underlay_version))
            assert endpoint is not None
            down.append((s.pod_ip, endpoint))
            rewritten = dataclasses.replace(s, endpoints=())
            old = previous.get((s.pod_ip, s.policy, s.gateway))
            steerings[pos] = old if old == rewritten and old is not None else rewritten
            changed = True
    verdict = Verdict(down_by_probe=tuple(sorted(down, key=lambda d: (d[0].version, int(d[0])))),
                      carried_without_lease=tuple(sorted(revived)))
    if not changed:
        return Effective(intent=intent, verdict=verdict)
    effective = dataclasses.replace(
        intent,
        steerings=tuple(steerings),
        instances=tuple(new_instances[i.name] for i in intent.instances),
    )
    return Effective(intent=effective, verdict=verdict)


def rewritten_steerings(original: Intent, effective: Intent) -> tuple[Steering, ...]:
    """The steerings `apply_liveness` replaced (the `reuse` of the next call)."""
    if original is effective:
        return ()
    return tuple(e for o, e in zip(original.steerings, effective.steerings, strict=True) if o is not e)
