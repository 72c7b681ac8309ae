"""The gateway service feeds its BGP session states to the health machine: a session lost and back while the
member stays healthy (a link down for less than `fall`) puts the member back in failback hold-down, so it does not
take its EIPs back before `failback_hold_s` (fakes for the speaker and data path, fake clock)."""

from __future__ import annotations

from pathlib import Path

from bgp.announcing import MemberMode
from tests.unit.test_gateway_service import make, run_pass, tick


def test_a_short_session_loss_rearms_the_hold_down(tmp_path: Path) -> None:
    svc, _dp, sp, clock = make(tmp_path)
    state = {"198.51.100.1": "up"}
    sp.peer_states = lambda: dict(state)  # type: ignore[method-assign]
    run_pass(svc, clock)
    tick(svc, clock, 8)  # rise = 2, then the 5 s hold-down runs out
    assert str(svc.mode) == MemberMode.RANKED
    state["198.51.100.1"] = "down"  # the uplink blinked: the session dropped, the checks never reached `fall`
    tick(svc, clock)
    assert svc.health.healthy and str(svc.mode) == MemberMode.RANKED
    state["198.51.100.1"] = "up"  # re-peered: worst preference until the hold-down has passed again
    tick(svc, clock)
    assert svc.health.healthy and str(svc.mode) == MemberMode.HOLD_DOWN
    (a,) = sp.current
    assert a.med is not None and a.med >= 10000
    tick(svc, clock, 5)
    assert str(svc.mode) == MemberMode.RANKED
