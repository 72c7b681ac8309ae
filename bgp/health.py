"""Gateway member health: rise/fall hysteresis over check results, and failback hold-down (pure, injected clock).

Why hysteresis: a single failed check (a slow reconcile pass, a lost probe) must not withdraw every EIP of a member
and move traffic twice; `fall` consecutive failures make the member UNHEALTHY and `rise` consecutive successes make
it HEALTHY again. The maintenance (disable) file is an operator's decision and acts immediately, without `fall`.

Why hold-down: a member that just became healthy (after a crash, a reboot, a flapping uplink) announces with the
worst preference for `hold_s` seconds, so it does not take its primaries back until it has stayed healthy that long:
no flapping. The hold-down also applies to the first HEALTHY after start, because a restart is a return too.

Returning sessions re-arm it (`step_sessions`): an uplink that is down for less than `fall` observations never makes
the member UNHEALTHY, but its BGP sessions (or BFD, which tears them down on the router within a second) do go down,
the routers withdraw its routes and the EIPs move to a backup. Without the hold-down, the member would take them back
the moment the sessions re-establish, and a flapping link would move every EIP twice per flap. So a session that was
up, went down and comes back while the member is HEALTHY starts the hold-down again (from its return): however often
the link flaps, the EIPs come back once, `hold_s` after the last flap.

Usage (the shell observes, this module decides):
    state = initial_health(now)
    state = step_health(state, observe_checks(), now=clock(), config=cfg)
    state = step_sessions(state, sessions_up(), now=clock(), config=cfg)
    state.status, state.reasons, state.in_hold_down(now)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace


class Check(enum.StrEnum):
    """What a gateway member checks about itself; the values are stable metric/log labels."""

    UPLINK = "uplink"
    TUNNEL_DEVICE = "tunnel_device"
    NFT_TABLE = "nft_table"
    RECONCILE_LOOP = "reconcile_loop"
    UPSTREAM_PROBE = "upstream_probe"
    #: "maintenance file absent": False means an operator disabled this member
    NOT_DISABLED = "not_disabled"
    #: set by the service while a drain is in progress
    NOT_DRAINING = "not_draining"
    #: no `egressgw.io/drain` annotation on the member's Node / appliance Lease (appliance.core.maintenance)
    NOT_IN_MAINTENANCE = "not_in_maintenance"


class HealthStatus(enum.StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


class HealthReason(enum.StrEnum):
    OK = "Ok"
    STARTING = "Starting"
    CHECK_FAILED = "CheckFailed"
    DISABLED = "Disabled"
    DRAINING = "Draining"
    #: drained through the API (the `egressgw.io/drain` annotation)
    MAINTENANCE = "Maintenance"


#: checks that act at once (operator intent), not after `fall` observations
_IMMEDIATE = frozenset({Check.NOT_DISABLED, Check.NOT_DRAINING, Check.NOT_IN_MAINTENANCE})


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthConfig:
    #: consecutive failing observations before UNHEALTHY (3 x 1 s checks: a stall of ~3 s, well above one slow pass)
    fall: int = 3
    #: consecutive passing observations before HEALTHY again
    rise: int = 2
    #: failback hold-down after becoming HEALTHY (from the gateway spec, config may override)
    hold_s: float = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthState:
    status: HealthStatus
    reason: HealthReason
    #: failing checks at the last observation (sorted), for logs, status and metrics
    failing: tuple[Check, ...] = ()
    consecutive_ok: int = 0
    consecutive_fail: int = 0
    #: clock time of the last status change
    since: float = 0.0
    #: clock time until which full preference is withheld (0 = no hold-down)
    hold_until: float = 0.0
    #: number of status transitions so far (a failover counter for metrics)
    transitions: int = 0
    #: BGP/BFD sessions up at the last `step_sessions` observation, and every session ever seen up
    sessions_up: frozenset[str] = frozenset()
    sessions_seen: frozenset[str] = frozenset()
    #: how often a returning session re-armed the hold-down (logs, tests)
    session_returns: int = 0

    @property
    def healthy(self) -> bool:
        return self.status is HealthStatus.HEALTHY

    def in_hold_down(self, now: float) -> bool:
        return self.healthy and now < self.hold_until


def initial_health(now: float) -> HealthState:
    """A starting member is UNHEALTHY until `rise` good observations: never announce before state is in place."""
    return HealthState(status=HealthStatus.UNHEALTHY, reason=HealthReason.STARTING, since=now)


def heartbeat_ok(last_beat: float | None, *, now: float, max_age_s: float) -> bool:
    """The reconcile loop is alive when its last heartbeat is at most `max_age_s` old."""
    return last_beat is not None and now - last_beat <= max_age_s


def step_health(
    state: HealthState, results: Mapping[Check, bool], *, now: float, config: HealthConfig
) -> HealthState:
    """Feed one observation (check -> passed); checks not present in `results` are not configured."""
    failing = tuple(sorted(c for c, ok in results.items() if not ok))
    immediate = [c for c in failing if c in _IMMEDIATE]
    if immediate:
        reason = (HealthReason.DRAINING if Check.NOT_DRAINING in immediate
                  else HealthReason.MAINTENANCE if Check.NOT_IN_MAINTENANCE in immediate else HealthReason.DISABLED)
        return _to_unhealthy(state, reason, failing, now, consecutive_fail=state.consecutive_fail + 1)
    if failing:
        fails = state.consecutive_fail + 1
        if state.healthy and fails >= config.fall:
            return _to_unhealthy(state, HealthReason.CHECK_FAILED, failing, now, consecutive_fail=fails)
        if not state.healthy and state.reason is not HealthReason.STARTING:
            reason = HealthReason.CHECK_FAILED
        else:
            reason = state.reason
        return replace(state, failing=failing, consecutive_fail=fails, consecutive_ok=0, reason=reason)
    oks = state.consecutive_ok + 1
    if not state.healthy and oks >= config.rise:
        return replace(
            state,
            status=HealthStatus.HEALTHY,
            reason=HealthReason.OK,
            failing=(),
            consecutive_ok=oks,
            consecutive_fail=0,
            since=now,
            hold_until=now + config.hold_s,
            transitions=state.transitions + 1,
        )
    return replace(state, failing=(), consecutive_ok=oks, consecutive_fail=0)


def _to_unhealthy(
    state: HealthState, reason: HealthReason, failing: tuple[Check, ...], now: float, *, consecutive_fail: int
) -> HealthState:
    changed = state.healthy
    return replace(
        state,
        status=HealthStatus.UNHEALTHY,
        reason=reason,
        failing=failing,
        consecutive_ok=0,
        consecutive_fail=consecutive_fail,
        since=now if changed else state.since,
        hold_until=0.0,
        transitions=state.transitions + (1 if changed else 0),
    )


def step_sessions(state: HealthState, up: frozenset[str], *, now: float, config: HealthConfig) -> HealthState:
    """Feed the sessions that are up now (BGP peers and BFD sessions, any stable names). A session seen up before
    that is up again after being down re-arms the failback hold-down when the member is HEALTHY (see the module
    docstring); an UNHEALTHY member gets its hold-down when it turns HEALTHY anyway."""
    returned = (up - state.sessions_up) & state.sessions_seen
    out = replace(state, sessions_up=up, sessions_seen=state.sessions_seen | up)
    if returned and state.healthy:
        return replace(out, hold_until=max(state.hold_until, now + config.hold_s),
                       session_returns=state.session_returns + 1)
    return out
