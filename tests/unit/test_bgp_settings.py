"""parse_bgp_settings: defaults, derived values and one ConfigError per kind of mistake, naming the field."""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from appliance.core.errors import ConfigError
from bgp.settings import Family, PreferenceMode, parse_bgp_settings


def base(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "local_asn": 64513,
        "router_id": "198.51.100.11",
        "peers": [{"address": "198.51.100.1", "asn": 64512}, {"address": "2001:db8:198::1", "asn": 64512}],
    }
    raw.update(over)
    return raw


def test_defaults() -> None:
    s = parse_bgp_settings(base())
    assert s.local_asn == 64513
    assert s.router_id == ip_address("198.51.100.11")
    assert s.families == (Family.IPV4_UNICAST, Family.IPV6_UNICAST)
    p4, p6 = s.peers
    assert p4.families == (Family.IPV4_UNICAST,) and p6.families == (Family.IPV6_UNICAST,)
    assert p4.hold_time == 3 and p4.passive is False and p4.md5_password is None
    assert s.preference.mode is PreferenceMode.MED and s.preference.base_med == 100
    assert s.withdraw_on_unhealthy is True
    assert (s.bfd.enabled, s.bfd.min_tx_ms, s.bfd.min_rx_ms, s.bfd.multiplier) == (True, 50, 50, 3)
    assert s.drain.settle_s == 1.0
    assert s.failback_hold(30.0) == 30.0
    assert s.exabgp_binary.name == "exabgp" and s.exabgp_binary.is_absolute()
    assert s.graceful_restart.enabled and s.graceful_restart.restart_time_s == 30
    assert s.stale_view.enabled and s.stale_view.grace_s == 10.0 and s.stale_view.peer_timeout_s == 3.5


def test_full() -> None:
    s = parse_bgp_settings(
        base(
            router_id="198.51.100.12",
            local_address="198.51.100.12",
            peers=[{"address": "198.51.100.1", "asn": 64512, "md5_password": "pw", "hold_time": 9, "passive": True}],
            families=["ipv4-unicast"],
            preference={"mode": "both", "base_med": 0, "med_step": 5, "max_prepends": 2},
            withdraw_on_unhealthy=False,
            bfd={"enabled": False, "min_tx_ms": 20, "min_rx_ms": 30, "multiplier": 5},
            drain={"timeout_s": 5, "settle_s": 0.5},
            failback_hold_s=0,
            exabgp_binary="/usr/sbin/exabgp",
        )
    )
    (p,) = s.peers
    assert p.local_address == ip_address("198.51.100.12") and p.md5_password == "pw" and p.passive
    assert s.preference.mode is PreferenceMode.BOTH and s.preference.max_prepends == 2
    assert s.failback_hold(30.0) == 0.0
    assert s.exabgp_binary == Path("/usr/sbin/exabgp")
    assert s.drain.timeout_s == 5.0


def test_router_id_defaults_to_ipv4_local_address() -> None:
    raw = base(local_address="198.51.100.13")
    del raw["router_id"]
    assert parse_bgp_settings(raw).router_id == ip_address("198.51.100.13")


def test_global_local_address_applies_only_to_its_family() -> None:
    s = parse_bgp_settings(base(local_address="198.51.100.11"))
    assert s.peers[0].local_address == ip_address("198.51.100.11")
    assert s.peers[1].local_address is None


def test_cross_family_session_with_next_hop() -> None:
    s = parse_bgp_settings(
        base(peers=[{"address": "198.51.100.1", "asn": 64512, "families": ["ipv4-unicast", "ipv6-unicast"],
                     "next_hop_ipv6": "2001:db8:198::11"}])
    )
    assert s.peers[0].next_hop_for(Family.IPV6_UNICAST) == "2001:db8:198::11"
    assert s.peers[0].next_hop_for(Family.IPV4_UNICAST) == "self"


BAD = [
    ({"local_asn": None}, "bgp.local_asn"),
    ({"local_asn": 0}, "bgp.local_asn"),
    ({"local_asn": 2**32}, "bgp.local_asn"),
    ({"local_asn": True}, "bgp.local_asn"),
    ({"router_id": "2001:db8::1"}, "bgp.router_id"),
    ({"router_id": "nope"}, "bgp.router_id"),
    ({"peers": []}, "bgp.peers"),
    ({"peers": [{"asn": 1}]}, "bgp.peers[0].address"),
    ({"peers": [{"address": "198.51.100.1"}]}, "bgp.peers[0].asn"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1, "hold_time": 2}]}, "bgp.peers[0].hold_time"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1, "md5_password": 'a"b'}]}, "bgp.peers[0].md5_password"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1, "passive": "yes"}]}, "bgp.peers[0].passive"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1, "colour": 1}]}, "bgp.peers[0].colour"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1}, {"address": "198.51.100.1", "asn": 2}]},
     "bgp.peers[1].address"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1, "local_address": "2001:db8::1"}]},
     "bgp.peers[0].local_address"),
    ({"peers": [{"address": "198.51.100.1", "asn": 1, "families": ["ipv6-unicast"]}]}, "bgp.peers[0].next_hop_ipv6"),
    ({"families": ["ipv6-unicast"], "peers": [{"address": "198.51.100.1", "asn": 1}]}, "bgp.peers[0].families"),
    ({"families": ["l2vpn"]}, "bgp.families[0]"),
    ({"families": ["ipv4-unicast", "ipv4-unicast"]}, "bgp.families[1]"),
    ({"preference": {"mode": "localpref"}}, "bgp.preference.mode"),
    ({"preference": {"mode": "as-path-prepend", "max_prepends": 0}}, "bgp.preference.max_prepends"),
    ({"preference": {"med_step": 0}}, "bgp.preference.med_step"),
    ({"withdraw_on_unhealthy": 1}, "bgp.withdraw_on_unhealthy"),
    ({"bfd": {"min_tx_ms": 5}}, "bgp.bfd.min_tx_ms"),
    ({"bfd": {"multiplier": 0}}, "bgp.bfd.multiplier"),
    ({"bfd": []}, "bgp.bfd"),
    ({"drain": {"timeout_s": 1, "settle_s": 2}}, "bgp.drain.settle_s"),
    ({"failback_hold_s": -1}, "bgp.failback_hold_s"),
    ({"exabgp_binary": "exabgp"}, "bgp.exabgp_binary"),
    ({"typo": 1}, "bgp.typo"),
    ({"graceful_restart": {"restart_time_s": 4096}}, "bgp.graceful_restart.restart_time_s"),
    ({"graceful_restart": {"enabled": "on"}}, "bgp.graceful_restart.enabled"),
    ({"stale_view": {"interval_s": 2, "peer_timeout_s": 1}}, "bgp.stale_view.peer_timeout_s"),
    ({"stale_view": {"grace_s": 0}}, "bgp.stale_view.grace_s"),
    ({"stale_view": {"secret": "short"}}, "bgp.stale_view.secret"),
    ({"stale_view": {"port": 0}}, "bgp.stale_view.port"),
]  # fmt: skip


@pytest.mark.parametrize(("over", "field"), BAD)
def test_errors_name_the_field(over: dict[str, Any], field: str) -> None:
    raw = base(**over)
    for k, v in over.items():
        if v is None:
            del raw[k]
    with pytest.raises(ConfigError) as exc:
        parse_bgp_settings(raw)
    assert exc.value.field == field


def test_custom_path_prefix() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_bgp_settings({"local_asn": "x"}, path="gateway.bgp")
    assert exc.value.field == "gateway.bgp.local_asn"


def test_not_a_mapping() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_bgp_settings([], path="bgp")  # type: ignore[arg-type]
    assert exc.value.field == "bgp"
