"""Failback hold-down on a flapping link (pure, fake clock): an uplink that flaps 10 times in 10 s, each time down for
less than the health check's fall time, must move the member's EIP away once and back once - `hold_s` after the
last flap - not on every flap. The loss the member sees is its BGP/BFD sessions going down and coming back
(`bgp.health.step_sessions`); the health checks alone never turn it UNHEALTHY."""

from __future__ import annotations

from bgp.health import Check, HealthConfig, HealthState, initial_health, step_health, step_sessions

CFG = HealthConfig(fall=3, rise=2, hold_s=30.0)
TICK = 0.2  # the health tick
ROUTER = "bgp:198.51.100.1"
BFD = "bfd:198.51.100.1"


FLAPS_FROM = 40.0  # after the member's first hold-down (it turned healthy at 0.2 s)


def link_up(t: float) -> bool:
    """Up, then 10 flaps in 10 s from FLAPS_FROM: down for 0.4 s of every second (2 ticks, less than fall = 3)."""
    return not (FLAPS_FROM <= t < FLAPS_FROM + 10.0 and (t - FLAPS_FROM) % 1.0 >= 0.6 - 1e-9)


def sessions_up(t: float) -> frozenset[str]:
    """BFD drops with the link; the BGP session re-establishes 0.2 s after the link is back."""
    if not link_up(t) or not link_up(t - 0.2):
        return frozenset()
    return frozenset({ROUTER, BFD})


def simulate(*, sessions: bool, until: float = 100.0) -> tuple[list[tuple[float, str]], HealthState]:
    """The router's choice for the EIP over time: the member while its session is up and it announces with full
    preference (healthy, not in hold-down), else the backup. Returns the changes of that choice. `sessions`:
    feed the session states to the health machine (False: the behaviour before, checks only)."""
    state = initial_health(0.0)
    choice, changes = "", []
    t = 0.0
    while t <= until:
        state = step_health(state, {Check.UPLINK: link_up(t)}, now=t, config=CFG)
        if sessions:
            state = step_sessions(state, sessions_up(t), now=t, config=CFG)
        up = bool(sessions_up(t))
        now_choice = "member" if up and state.healthy and not state.in_hold_down(t) else "backup"
        if now_choice != choice:
            changes.append((round(t, 1), now_choice))
            choice = now_choice
        t = round(t + TICK, 6)
    return changes, state


def test_a_link_flapping_ten_times_in_ten_seconds_moves_the_eip_away_once_and_back_once() -> None:
    changes, state = simulate(sessions=True)
    assert state.healthy and state.transitions == 1, "the short losses never made the member unhealthy"
    assert state.session_returns == 10
    last_return = FLAPS_FROM + 9.6 + 0.6  # 10th flap: down at +9.6, +9.8; back at +10; session +0.2 s
    (_t0, c0), (t1, c1), (t2, c2), (t3, c3) = changes  # exactly 4 changes: start, first hold-down over, away, back
    assert (c0, c1, c2, c3) == ("backup", "member", "backup", "member")
    assert CFG.hold_s <= t1 <= CFG.hold_s + 2 * TICK
    assert t2 == FLAPS_FROM + 0.6  # the first flap moves it away: the routers lost the session (unavoidable)
    assert last_return + CFG.hold_s <= t3 <= last_return + CFG.hold_s + 2 * TICK
    # the primary changed at most once per hold-down after the first loss
    assert [t for t, _ in changes if t > t2] == [t3]


def test_without_the_session_rearm_every_flap_moves_the_eip_twice() -> None:
    """The control: the same flaps fed to the health checks alone (the behaviour before) move the EIP on every
    flap - which is what the test above must not see."""
    changes, state = simulate(sessions=False)
    assert state.transitions == 1 and len([t for t, _ in changes if t >= FLAPS_FROM]) == 20


def test_the_hold_down_rearms_only_for_returning_sessions() -> None:
    s = step_health(step_health(initial_health(0.0), {}, now=0.0, config=CFG), {}, now=1.0, config=CFG)
    assert s.healthy and s.hold_until == 31.0
    s = step_sessions(s, frozenset({ROUTER}), now=40.0, config=CFG)  # first establishment: not a return
    assert not s.in_hold_down(40.0) and s.session_returns == 0
    s = step_sessions(s, frozenset({ROUTER}), now=41.0, config=CFG)
    assert not s.in_hold_down(41.0)
    s = step_sessions(s, frozenset(), now=42.0, config=CFG)  # lost: nothing changes yet (the routers act)
    assert not s.in_hold_down(42.0)
    s = step_sessions(s, frozenset({ROUTER}), now=43.0, config=CFG)  # back: hold-down from its return
    assert s.in_hold_down(43.0) and s.hold_until == 73.0 and s.session_returns == 1
    # an unhealthy member's hold-down comes with its return to HEALTHY, not from its sessions
    down = step_health(s, {Check.NOT_DISABLED: False}, now=50.0, config=CFG)
    down = step_sessions(step_sessions(down, frozenset(), now=51.0, config=CFG), frozenset({ROUTER}), now=52.0,
                         config=CFG)
    assert not down.healthy and down.session_returns == 1
