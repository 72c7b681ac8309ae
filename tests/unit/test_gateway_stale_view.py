"""The gateway service's wiring of the stale-member step-back and of the hard stop with graceful restart (fakes),
and the member heartbeat over loopback UDP (real sockets, no root)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from ipaddress import ip_address
from pathlib import Path

from test_gateway_service import EIP, Clock, DataPath, Source, Speaker, config, run_pass, tick, world

from appliance.core.intent import GatewayInstance
from appliance.core.model import Member
from appliance.core.waiting import wait_until
from appliance.gateway.member_state import StateDir
from appliance.gateway.seams import GatewayDeps
from appliance.gateway.service import GatewayService
from bgp.freshness import MAGIC, Heartbeat, encode
from bgp.health import Check
from bgp.heartbeat import MemberHeartbeat
from bgp.settings import StaleViewSettings


class Freshness:
    def __init__(self) -> None:
        self.back: frozenset[str] = frozenset()
        self.instances: list[str] = []

    def set_instances(self, instances: Iterable[GatewayInstance]) -> None:
        self.instances = sorted(i.name for i in instances)

    def stepped_back(self) -> frozenset[str]:
        return self.back


class Bfd:
    def __init__(self) -> None:
        self.stops: list[bool] = []

    def start(self, timeout_s: float = 5.0) -> None:
        pass

    def peer_states(self) -> dict[str, str]:
        return {}

    def stop(self, timeout_s: float = 3.0, *, abrupt: bool = False) -> None:
        self.stops.append(abrupt)


def make(tmp_path: Path) -> tuple[GatewayService, Speaker, Clock, Freshness, Bfd]:
    clock, sp, fresh, bfd = Clock(), Speaker(), Freshness(), Bfd()
    deps = GatewayDeps(source=Source(world()), datapath=DataPath(), speaker=sp, bfd=bfd, freshness=fresh,
                       host_checks=lambda: {Check.UPLINK: True}, clock=clock, sleep=clock.sleep)  # fmt: skip
    return GatewayService(config(tmp_path), deps, state=StateDir(tmp_path)), sp, clock, fresh, bfd


def test_a_stepped_back_member_announces_the_stale_preference_and_takes_it_back(tmp_path: Path) -> None:
    svc, sp, clock, fresh, _bfd = make(tmp_path)
    run_pass(svc, clock)
    assert fresh.instances == ["egw"]  # told the instances of the pass
    tick(svc, clock, 8)  # healthy, past the hold-down: ranked
    (ranked,) = sp.current
    assert ranked.eip == EIP and ranked.med is not None and ranked.med < 10000
    fresh.back = frozenset({"egw"})
    tick(svc, clock)
    (stale,) = sp.current
    assert stale.med is not None and stale.med >= 100 + 2000 * 10  # the stale band (base 100, step 10)
    fresh.back = frozenset()
    tick(svc, clock)
    assert sp.current == {ranked}


def test_a_drain_that_is_not_acknowledged_kills_the_bfd_sidecar(tmp_path: Path) -> None:
    """With graceful restart, closed sessions leave our routes stale on the routers: the BFD sidecar is stopped
    without AdminDown so their BFD times out and they drop the routes."""
    svc, sp, clock, _fresh, bfd = make(tmp_path)
    run_pass(svc, clock)
    tick(svc, clock, 8)

    def never_acked(timeout_s: float) -> bool:
        clock.sleep(timeout_s)
        return False

    sp.wait_converged = never_acked  # type: ignore[method-assign]
    svc.request_drain("test")
    svc.drain()
    assert sp.stopped and bfd.stops == [True]


def _bound(addr: str, port: int) -> Callable[[int], socket.socket]:
    def factory(family: int) -> socket.socket:
        if family != socket.AF_INET:
            raise OSError("IPv4 only in this test")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((addr, port))
        sock.setblocking(False)
        return sock
    return factory


def test_heartbeats_over_loopback_and_forgeries_rejected() -> None:
    port = 47900
    settings = StaleViewSettings(grace_s=1.0, interval_s=0.05, peer_timeout_s=0.5, port=port, secret=None)
    inst = GatewayInstance(name="egw", members=(Member(name="gw1", address=ip_address("127.0.0.1")),
                                                Member(name="gw2", address=ip_address("127.0.0.2"))),
                           eips=(), ranking=())  # fmt: skip
    ages = {"gw1": 0.0, "gw2": 0.0}
    beats = [MemberHeartbeat(me=n, settings=settings, view_age=lambda n=n: ages[n],  # type: ignore[misc]
                             socket_factory=_bound(a, port)) for n, a in (("gw1", "127.0.0.1"), ("gw2", "127.0.0.2"))]
    try:
        for b in beats:
            b.set_instances([inst])
            b.start()
        gw1, gw2 = beats
        wait_until(lambda: gw1.peer_ages()["gw2"] is not None and gw2.peer_ages()["gw1"] is not None, timeout=10,
                   what="heartbeats both ways")  # fmt: skip
        ages["gw1"] = 5.0
        wait_until(lambda: gw1.stepped_back() == {"egw"}, timeout=10, what="gw1 to step back")
        assert gw2.stepped_back() == frozenset()
        ages["gw2"] = 5.0
        wait_until(lambda: gw1.stepped_back() == frozenset(), timeout=10, what="every member stale: nobody")
        # a heartbeat naming gw2 from another address is not believed (no secret: the source address is the check)
        forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        forger.bind(("127.0.0.3", 0))
        before = gw1.rejected
        forger.sendto(encode(Heartbeat(member="gw2", view_age_s=0.0, seq=10**6), None), ("127.0.0.1", port))
        forger.sendto(MAGIC + b"junk", ("127.0.0.1", port))
        forger.close()
        wait_until(lambda: gw1.rejected >= before + 2, timeout=10, what="the forged heartbeats to be rejected")
        assert gw1.stepped_back() == frozenset()  # still believes gw2 is stale
    finally:
        for b in beats:
            b.stop()
