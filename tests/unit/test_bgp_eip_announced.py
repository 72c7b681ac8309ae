"""`egressgw_bgp_eip_announced{eip}`: one series per EIP in place (or desired), 1 only when ExaBGP acknowledged its
route, and series of EIPs that left the member go away (bounded labels)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from prometheus_client import CollectorRegistry

from bgp.announcing import Announcement
from bgp.metrics import BgpMetrics, eip_announcements

A = Announcement(prefix=ip_network("203.0.113.200/32"), med=100)
B = Announcement(prefix=ip_network("2001:db8:e1::200/128"), med=100)


def test_eip_announcements_cover_every_eip_in_place_or_desired() -> None:
    in_place = [ip_address("203.0.113.200"), ip_address("203.0.113.201")]
    assert eip_announcements(in_place, [A], [A, B]) == {
        "203.0.113.200": True, "203.0.113.201": False, "2001:db8:e1::200": False,
    }
    assert eip_announcements([], [], []) == {}


def test_eip_gauge_follows_the_acknowledgements_and_drops_departed_eips() -> None:
    reg = CollectorRegistry()
    m = BgpMetrics(reg)
    m.observe(peer_states={}, desired=2, acknowledged=1,
              eip_announced={"203.0.113.200": True, "203.0.113.201": False})
    v = reg.get_sample_value
    assert v("egressgw_bgp_eip_announced", {"eip": "203.0.113.200"}) == 1
    assert v("egressgw_bgp_eip_announced", {"eip": "203.0.113.201"}) == 0
    m.observe(peer_states={}, desired=1, acknowledged=0, eip_announced={"203.0.113.200": False})
    assert v("egressgw_bgp_eip_announced", {"eip": "203.0.113.200"}) == 0
    assert v("egressgw_bgp_eip_announced", {"eip": "203.0.113.201"}) is None
    m.observe(peer_states={}, desired=1, acknowledged=1)  # no per-EIP figures: the gauge is left alone
    assert v("egressgw_bgp_eip_announced", {"eip": "203.0.113.200"}) == 0
