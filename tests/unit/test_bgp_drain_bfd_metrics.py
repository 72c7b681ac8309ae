"""Drain helper (fake speaker, fake clock), BIRD BFD session parsing, metrics."""

from __future__ import annotations

from ipaddress import ip_network

from prometheus_client import CollectorRegistry

from bgp.announcing import Announcement
from bgp.bfd_sidecar import parse_bfd_sessions
from bgp.draining import drain_announcements
from bgp.health import HealthConfig, initial_health, step_health
from bgp.metrics import BgpMetrics
from bgp.settings import DrainSettings

A = Announcement(prefix=ip_network("203.0.113.130/32"), med=100)


class FakeSpeaker:
    def __init__(self, converge_after: float | None, clock: list[float]) -> None:
        self.converge_after = converge_after
        self.clock = clock
        self.sets: list[frozenset[Announcement]] = []

    def set_announcements(self, announcements: frozenset[Announcement]) -> None:
        self.sets.append(announcements)

    def wait_converged(self, timeout_s: float) -> bool:
        if self.converge_after is not None and self.converge_after <= timeout_s:
            self.clock[0] += self.converge_after
            return True
        self.clock[0] += timeout_s
        return False


def run_drain(converge_after: float | None, **kw: object) -> tuple[object, FakeSpeaker, list[float]]:
    clock = [100.0]
    slept: list[float] = []
    sp = FakeSpeaker(converge_after, clock)
    res = drain_announcements(sp, DrainSettings(timeout_s=5.0, settle_s=1.0), sleep=slept.append,
                              clock=lambda: clock[0], **kw)  # type: ignore[arg-type]  # fmt: skip
    return res, sp, slept


def test_drain_withdraws_waits_for_acks_then_settles() -> None:
    res, sp, slept = run_drain(0.2)
    assert sp.sets == [frozenset()]
    assert res.acknowledged and abs(res.ack_wait_s - 0.2) < 1e-9  # type: ignore[attr-defined]
    assert slept == [1.0]


def test_drain_to_a_depreferred_set() -> None:
    _, sp, _ = run_drain(0.1, target=frozenset({A}))
    assert sp.sets == [frozenset({A})]


def test_drain_timeout_does_not_settle_or_raise() -> None:
    res, _, slept = run_drain(None)
    assert not res.acknowledged and slept == []  # type: ignore[attr-defined]


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
