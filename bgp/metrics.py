"""Prometheus metrics of the BGP side of a gateway member.

Desired state is kept apart from observed state on purpose: `announcements_desired` is what the planner wants,
`announcements_acknowledged` is what ExaBGP accepted into its RIB for every peer. Neither proves that the routers
converged; the session and BFD gauges say whether there is anyone to converge with. The help texts say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from appliance.core.model import IPAddress
from bgp.announcing import Announcement
from bgp.health import HealthState, HealthStatus
from bgp.speaking import PeerState

_BGP_STATES = tuple(str(s) for s in PeerState)
_BFD_STATES = ("Up", "Down", "Init", "AdminDown", "Unknown")


class BgpMetrics:
    """Call `observe(...)` from the service's loop (cheap: only gauges are set)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.session_state = Gauge(
            "egressgw_bgp_session_state",
            "BGP session state per peer as ExaBGP reported it (1 for the current state). 'unknown' until ExaBGP "
            "reported anything, e.g. right after it (re)started.",
            ["peer", "state"],
            registry=registry,
        )
        self.bfd_state = Gauge(
            "egressgw_bfd_session_state",
            "BFD session state per peer from the BFD sidecar (1 for the current state).",
            ["peer", "state"],
            registry=registry,
        )
        self.desired = Gauge(
            "egressgw_bgp_announcements_desired",
            "EIP routes this member wants announced (planner output). Desired state: it does not mean that any "
            "router has received or selected them.",
            registry=registry,
        )
        self.acknowledged = Gauge(
            "egressgw_bgp_announcements_acknowledged",
            "EIP routes ExaBGP acknowledged for every peer carrying their family. ExaBGP sends them when a session "
            "is up; this does not guarantee that the routing protocols have converged.",
            registry=registry,
        )
        self.eip_announced = Gauge(
            "egressgw_bgp_eip_announced",
            "Per EIP in place on this member: 1 when ExaBGP acknowledged its route for every peer (any preference), "
            "0 when it is withdrawn or not acknowledged yet. Labels: only the EIPs in place now. Desired state: "
            "it does not prove that a router selected the route.",
            ["eip"],
            registry=registry,
        )
        self._eips: set[str] = set()
        self.healthy = Gauge(
            "egressgw_gateway_healthy",
            "1 when this member's health checks pass (after rise/fall hysteresis), else 0.",
            registry=registry,
        )
        self.hold_down = Gauge(
            "egressgw_gateway_failback_hold_down",
            "1 while this member is healthy but announces with the worst preference (failback hold-down).",
            registry=registry,
        )
        self.transitions = Counter(
            "egressgw_gateway_health_transitions",
            "Health state changes of this member (each one moves traffic: a failover or a failback).",
            ["to"],
            registry=registry,
        )
        self.exabgp_restarts = Counter(
            "egressgw_bgp_exabgp_restarts",
            "Times ExaBGP exited and was respawned (or was restarted after an API ack timeout).",
            registry=registry,
        )
        self._seen_transitions = 0
        self._seen_restarts = 0

    def observe(
        self,
        *,
        peer_states: Mapping[str, str],
        bfd_states: Mapping[str, str] | None = None,
        desired: int,
        acknowledged: int,
        health: HealthState | None = None,
        now: float = 0.0,
        restarts: int | None = None,
        eip_announced: Mapping[str, bool] | None = None,
    ) -> None:
        for peer, state in peer_states.items():
            for s in _BGP_STATES:
                self.session_state.labels(peer=peer, state=s).set(1 if s == state else 0)
        for peer, state in (bfd_states or {}).items():
            for s in _BFD_STATES:
                self.bfd_state.labels(peer=peer, state=s).set(1 if s == state else 0)
        self.desired.set(desired)
        self.acknowledged.set(acknowledged)
        if eip_announced is not None:
            for eip in sorted(self._eips - set(eip_announced)):  # bounded: EIPs gone from this member go away
                self.eip_announced.remove(eip)
            for eip, announced in eip_announced.items():
                self.eip_announced.labels(eip=eip).set(1 if announced else 0)
            self._eips = set(eip_announced)
        if health is not None:
            self.healthy.set(1 if health.healthy else 0)
            self.hold_down.set(1 if health.in_hold_down(now) else 0)
            if health.transitions > self._seen_transitions:
                to = "healthy" if health.status is HealthStatus.HEALTHY else "unhealthy"
                self.transitions.labels(to=to).inc(health.transitions - self._seen_transitions)
                self._seen_transitions = health.transitions
        if restarts is not None and restarts > self._seen_restarts:
            self.exabgp_restarts.inc(restarts - self._seen_restarts)
            self._seen_restarts = restarts


def eip_announcements(
    in_place: Iterable[IPAddress], acknowledged: Iterable[Announcement], desired: Iterable[Announcement] = ()
) -> dict[str, bool]:
    """EIP -> whether its host route is acknowledged, for every EIP in place or desired (`eip_announced`)."""
    acked = {str(a.prefix.network_address) for a in acknowledged}
    eips = {str(e) for e in in_place} | {str(a.prefix.network_address) for a in desired}
    return {eip: eip in acked for eip in sorted(eips)}
