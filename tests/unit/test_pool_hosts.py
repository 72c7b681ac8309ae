"""A CIDR in an EIP pool gives its host addresses: never the network address (IPv6: the subnet-router anycast
address) nor the IPv4 broadcast address, unless the prefix holds at most 2 addresses. Such an address stays usable
as an EIP when listed as a single address or inside a range."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from appliance.api.manifests import parse_gateway
from appliance.api.validation import validate_all
from appliance.core.model import API_VERSION, EgressGateway


def gateway(name: str = "g", **pools: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"ippools": pools, "appliancesOnly": True}}


def parsed(**pools: Any) -> EgressGateway:
    issues: list[tuple[str, str]] = []
    gw = parse_gateway(gateway(**pools), issues)
    assert issues == [] and gw is not None, issues
    return gw


@pytest.mark.parametrize(("cidr", "first", "last", "size"), [
    ("203.0.113.32/27", "203.0.113.33", "203.0.113.62", 30),
    ("203.0.113.40/30", "203.0.113.41", "203.0.113.42", 2),
    ("203.0.113.40/31", "203.0.113.40", "203.0.113.41", 2),
    ("203.0.113.40/32", "203.0.113.40", "203.0.113.40", 1),
    ("2001:db8:e1::/64", "2001:db8:e1::1", "2001:db8:e1:0:ffff:ffff:ffff:ffff", 2**64 - 1),
    ("2001:db8:e1::/124", "2001:db8:e1::1", "2001:db8:e1::f", 15),
    ("2001:db8:e1::/127", "2001:db8:e1::", "2001:db8:e1::1", 2),
])
def test_a_cidr_gives_its_host_addresses(cidr: str, first: str, last: str, size: int) -> None:
    version = 6 if ":" in cidr else 4
    pool = parsed(**{f"ipv{version}": [cidr]}).pool(version)
    assert (str(pool.ranges[0].first), str(pool.ranges[0].last), pool.size) == (first, last, size)


def test_the_default_eip_of_a_cidr_pool_is_its_first_host() -> None:
    assert parsed(ipv4=["203.0.113.32/27"]).ipv4_default_eip == ip_address("203.0.113.33")
    assert parsed(ipv6=["2001:db8:e1::/64"]).ipv6_default_eip == ip_address("2001:db8:e1::1")
    # a dual-stack pair of CIDRs: the IPv4 one loses 2 addresses, the IPv6 one 1; the first hosts pair up
    gw = parsed(ipv4=["203.0.113.32/28", "203.0.113.48"], ipv6=["2001:db8:e1::/124"])
    assert (gw.ipv4_default_eip, gw.ipv6_default_eip) == (ip_address("203.0.113.33"), ip_address("2001:db8:e1::1"))


def test_the_network_address_is_an_eip_only_when_listed_as_an_address_or_in_a_range() -> None:
    refused = validate_all([gateway(ipv4=["203.0.113.32/27"], ipv4DefaultEIP="203.0.113.32")])
    assert [(p.field, p.message) for p in refused.problems] == [
        ("spec.ippools.ipv4DefaultEIP", "203.0.113.32 is not in spec.ippools.ipv4")]
    broadcast = validate_all([gateway(ipv4=["203.0.113.32/27"], ipv4DefaultEIP="203.0.113.63")])
    assert [p.field for p in broadcast.problems] == ["spec.ippools.ipv4DefaultEIP"]
    listed = parsed(ipv4=["203.0.113.32", "203.0.113.33-203.0.113.62"], ipv4DefaultEIP="203.0.113.32")
    assert listed.ipv4_default_eip == ip_address("203.0.113.32") and listed.ipv4_pool.size == 31
    ranged = parsed(ipv6=["2001:db8:e1::-2001:db8:e1::f"], ipv6DefaultEIP="2001:db8:e1::")
    assert ranged.ipv6_default_eip == ip_address("2001:db8:e1::")


def test_an_explicit_policy_eip_at_the_network_address_of_a_cidr_pool_is_refused() -> None:
    policy = {"apiVersion": API_VERSION, "kind": "EgressPolicy", "metadata": {"name": "p", "namespace": "a"},
              "spec": {"egressGatewayName": "g", "egressIP": {"ipv4": "203.0.113.32"},
                       "appliedTo": {"podSelector": {"matchLabels": {"app": "x"}}}}}
    result = validate_all([gateway(ipv4=["203.0.113.32/27"]), policy])
    assert [p.field for p in result.problems] == ["spec.egressIP.ipv4"]
    result = validate_all([gateway(ipv4=["203.0.113.32-203.0.113.63"]), policy])
    assert result.problems == ()


def test_the_network_address_does_not_overlap_a_neighbouring_single_address() -> None:
    # 203.0.113.32/27 no longer holds .32 and .63: another gateway may list them
    result = validate_all([gateway("a", ipv4=["203.0.113.32/27"]), gateway("b", ipv4=["203.0.113.32", "203.0.113.63"])])
    assert result.problems == ()
