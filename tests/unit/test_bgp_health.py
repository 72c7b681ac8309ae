"""Health hysteresis and failback hold-down, as a table of (time, failing checks) -> expected status."""

from __future__ import annotations

import pytest

from bgp.health import (
    Check,
    HealthConfig,
    HealthReason,
    HealthStatus,
    heartbeat_ok,
    initial_health,
    step_health,
)

CFG = HealthConfig(fall=3, rise=2, hold_s=30.0)
ALL = (Check.UPLINK, Check.TUNNEL_DEVICE, Check.NFT_TABLE, Check.RECONCILE_LOOP, Check.NOT_DISABLED)
H, U = HealthStatus.HEALTHY, HealthStatus.UNHEALTHY


def results(*failing: Check) -> dict[Check, bool]:
    return {c: c not in failing for c in ALL}


# (name, [(t, failing checks, expected status, expected reason)])
SCENARIOS = [
    ("starts unhealthy until rise", [
        (0, (), U, HealthReason.STARTING), (1, (), H, HealthReason.OK), (2, (), H, HealthReason.OK)]),
    ("a failing check at start keeps Starting", [
        (0, (Check.NFT_TABLE,), U, HealthReason.STARTING), (1, (), U, HealthReason.STARTING),
        (2, (), H, HealthReason.OK)]),
    ("fall needs 3 consecutive failures", [
        (0, (), U, HealthReason.STARTING), (1, (), H, HealthReason.OK),
        (2, (Check.UPLINK,), H, HealthReason.OK), (3, (Check.UPLINK,), H, HealthReason.OK),
        (4, (Check.UPLINK,), U, HealthReason.CHECK_FAILED)]),
    ("a success in between resets the fall count", [
        (0, (), U, HealthReason.STARTING), (1, (), H, HealthReason.OK),
        (2, (Check.UPLINK,), H, HealthReason.OK), (3, (Check.UPLINK,), H, HealthReason.OK), (4, (), H, HealthReason.OK),
        (5, (Check.UPLINK,), H, HealthReason.OK), (6, (Check.UPLINK,), H, HealthReason.OK)]),
    ("rise after failure needs 2 successes", [
        (0, (), U, HealthReason.STARTING), (1, (), H, HealthReason.OK),
        (2, (Check.RECONCILE_LOOP,), H, HealthReason.OK), (3, (Check.RECONCILE_LOOP,), H, HealthReason.OK),
        (4, (Check.RECONCILE_LOOP,), U, HealthReason.CHECK_FAILED), (5, (), U, HealthReason.CHECK_FAILED),
        (6, (Check.TUNNEL_DEVICE,), U, HealthReason.CHECK_FAILED), (7, (), U, HealthReason.CHECK_FAILED),
        (8, (), H, HealthReason.OK)]),
    ("maintenance file acts immediately", [
        (0, (), U, HealthReason.STARTING), (1, (), H, HealthReason.OK),
        (2, (Check.NOT_DISABLED,), U, HealthReason.DISABLED), (3, (), U, HealthReason.DISABLED),
        (4, (), H, HealthReason.OK)]),
    ("draining acts immediately and wins over disabled", [
        (0, (), U, HealthReason.STARTING), (1, (), H, HealthReason.OK),
        (2, (Check.NOT_DISABLED, Check.NOT_DRAINING), U, HealthReason.DRAINING)]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "steps"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_hysteresis(name: str, steps: list[tuple[float, tuple[Check, ...], HealthStatus, HealthReason]]) -> None:
    state = initial_health(0.0)
    for t, failing, status, reason in steps:
        r = results(*failing)
        if Check.NOT_DRAINING in failing:
            r[Check.NOT_DRAINING] = False
        state = step_health(state, r, now=t, config=CFG)
        assert (t, state.status, state.reason) == (t, status, reason)
        assert state.failing == tuple(sorted(failing))


def test_hold_down_after_every_return_and_transition_count() -> None:
    state = initial_health(0.0)
    state = step_health(state, results(), now=0, config=CFG)
    state = step_health(state, results(), now=1, config=CFG)
    assert state.healthy and state.since == 1 and state.in_hold_down(1) and state.in_hold_down(30.9)
    assert not state.in_hold_down(31.0)
    assert state.transitions == 1
    for t in (40, 41, 42):
        state = step_health(state, results(Check.UPLINK), now=t, config=CFG)
    assert not state.healthy and state.since == 42 and not state.in_hold_down(42) and state.transitions == 2
    state = step_health(state, results(), now=50, config=CFG)
    state = step_health(state, results(), now=51, config=CFG)
    assert state.healthy and state.in_hold_down(80) and not state.in_hold_down(81) and state.transitions == 3


def test_zero_hold_means_no_hold_down() -> None:
    cfg = HealthConfig(fall=1, rise=1, hold_s=0.0)
    state = step_health(initial_health(0.0), results(), now=5, config=cfg)
    assert state.healthy and not state.in_hold_down(5)


@pytest.mark.parametrize(("beat", "now", "ok"), [(None, 10, False), (9.0, 10, True), (7.0, 10, True), (6.9, 10, False)])
def test_heartbeat(beat: float | None, now: float, ok: bool) -> None:
    assert heartbeat_ok(beat, now=now, max_age_s=3.0) is ok
