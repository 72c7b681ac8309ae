"""The drain sequence (state machine; driver over a fake speaker and clock), BIRD BFD session parsing, metrics."""

from __future__ import annotations

from ipaddress import ip_network

from prometheus_client import CollectorRegistry

from bgp.announcing import Announcement
from bgp.bfd_sidecar import parse_bfd_sessions
from bgp.draining import (
    DrainResult,
    DrainStage,
    ack_wait_s,
    after_ack_wait,
    after_settle,
    begin_drain,
    drain_announcements,
    run_drain,
    settle_wait_s,
)
from bgp.health import HealthConfig, initial_health, step_health
from bgp.metrics import BgpMetrics
from bgp.settings import DrainSettings

A = Announcement(prefix=ip_network("203.0.113.130/32"), med=100)


class FakeSpeaker:
    def __init__(self, converge_after: float | None, clock: list[float]) -> None:
        self.converge_after = converge_after
        self.clock = clock
        self.sets: list[frozenset[Announcement]] = []
        self.stopped = False

    def set_announcements(self, announcements: frozenset[Announcement]) -> None:
        self.sets.append(announcements)

    def wait_converged(self, timeout_s: float) -> bool:
        if self.converge_after is not None and self.converge_after <= timeout_s:
            self.clock[0] += self.converge_after
            return True
        self.clock[0] += timeout_s
        return False

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped = True


def drain_fake(converge_after: float | None, **kw: object) -> tuple[DrainResult, FakeSpeaker, list[float]]:
    clock = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    sp = FakeSpeaker(converge_after, clock)
    res = drain_announcements(sp, DrainSettings(timeout_s=5.0, settle_s=1.0), sleep=sleep,
                              clock=lambda: clock[0], **kw)  # type: ignore[arg-type]  # fmt: skip
    return res, sp, slept


def test_drain_withdraws_waits_for_acks_then_settles() -> None:
    res, sp, slept = drain_fake(0.2)
    assert sp.sets == [frozenset()] and not sp.stopped
    assert res.acknowledged and abs(res.ack_wait_s - 0.2) < 1e-9
    assert slept == [1.0] and res.settle_s == 1.0


def test_drain_to_a_depreferred_set() -> None:
    _, sp, _ = drain_fake(0.1, target=frozenset({A}))
    assert sp.sets == [frozenset({A})]


def test_drain_timeout_closes_the_sessions_then_settles() -> None:
    res, sp, slept = drain_fake(None)
    assert not res.acknowledged and abs(res.ack_wait_s - 5.0) < 1e-9
    assert sp.stopped  # no ack: closing the sessions is the withdrawal the routers act on
    assert slept == [1.0]  # in-flight packets still arrive while the routers drop our routes


def test_drain_state_machine_steps() -> None:
    p = begin_drain(10.0, timeout_s=3.0, settle_s=0.5)
    assert p.stage is DrainStage.WITHDRAWING and ack_wait_s(p, 10.0) == 0.2 and ack_wait_s(p, 12.9) < 0.2
    assert after_ack_wait(p, acked=False, now=11.0) == p  # still within the timeout: keep waiting
    late = after_ack_wait(p, acked=False, now=13.0)
    assert late.stage is DrainStage.SETTLING and late.close_sessions and late.settle_until == 13.5
    ok = after_ack_wait(p, acked=True, now=10.4)
    assert ok.acknowledged is True and not ok.close_sessions and abs(ok.ack_wait_s - 0.4) < 1e-9
    assert settle_wait_s(ok, 10.4) == 0.05 and after_settle(ok, now=10.6) == ok
    done = after_settle(ok, now=10.9)
    assert done.stage is DrainStage.DONE and done.finished == 10.9
    hurried = after_ack_wait(p, acked=True, now=10.1, hurried=True)
    assert hurried.close_sessions and hurried.settle_until == 10.1  # a hurry: unacknowledged, no settle time
    assert after_settle(hurried, now=10.1).stage is DrainStage.DONE


def test_run_drain_reports_each_stage_and_stops_on_a_hurry() -> None:
    clock = [0.0]
    seen: list[DrainStage] = []
    hurry = [False]

    class IO:
        closed = False

        def withdraw(self) -> None:
            pass

        def wait_acknowledged(self, timeout_s: float) -> bool:
            clock[0] += timeout_s
            hurry[0] = clock[0] >= 1.0  # a second SIGTERM after a second of waiting
            return False

        def close_sessions(self) -> None:
            self.closed = True

    io = IO()
    p = run_drain(io, timeout_s=10.0, settle_s=5.0, clock=lambda: clock[0], sleep=lambda s: None,
                  hurried=lambda: hurry[0], on_progress=lambda q: seen.append(q.stage))  # fmt: skip
    assert seen == [DrainStage.WITHDRAWING, DrainStage.SETTLING, DrainStage.DONE]
    assert io.closed and p.acknowledged is False and clock[0] < 1.5


BIRDC = """BIRD 2.0.12 ready.
egressgw_bfd:
IP address                Interface  State      Since         Interval  Timeout
198.51.100.1              up0        Up         08:00:55.943    0.050    0.150
2001:db8:198::1           up0        Init       08:01:52.250    1.000    3.000
"""


def test_parse_bird_bfd_sessions() -> None:
    s = parse_bfd_sessions(BIRDC)
    assert set(s) == {"198.51.100.1", "2001:db8:198::1"}
    assert s["198.51.100.1"].state == "Up" and s["198.51.100.1"].timeout_s == 0.15
    assert s["2001:db8:198::1"].state == "Init" and s["2001:db8:198::1"].interface == "up0"
    assert parse_bfd_sessions("BIRD 2.0.12 ready.\n") == {}


def test_metrics_keep_desired_apart_from_acknowledged_and_count_transitions() -> None:
    reg = CollectorRegistry()
    m = BgpMetrics(reg)
    cfg = HealthConfig(fall=1, rise=1, hold_s=10)
    h = step_health(initial_health(0), {}, now=0, config=cfg)
    m.observe(peer_states={"198.51.100.1": "up"}, bfd_states={"198.51.100.1": "Up"}, desired=3, acknowledged=1,
              health=h, now=1, restarts=2)  # fmt: skip
    m.observe(peer_states={"198.51.100.1": "up"}, desired=3, acknowledged=1, health=h, now=2, restarts=2)
    v = reg.get_sample_value
    assert v("egressgw_bgp_session_state", {"peer": "198.51.100.1", "state": "up"}) == 1
    assert v("egressgw_bgp_session_state", {"peer": "198.51.100.1", "state": "down"}) == 0
    assert v("egressgw_bfd_session_state", {"peer": "198.51.100.1", "state": "Up"}) == 1
    assert v("egressgw_bgp_announcements_desired") == 3 and v("egressgw_bgp_announcements_acknowledged") == 1
    assert v("egressgw_gateway_healthy") == 1 and v("egressgw_gateway_failback_hold_down") == 1
    assert v("egressgw_gateway_health_transitions_total", {"to": "healthy"}) == 1
    assert v("egressgw_bgp_exabgp_restarts_total") == 2
