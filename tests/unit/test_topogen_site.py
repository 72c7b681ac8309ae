"""The site-v6 topology (lab/topogen_site.py): the committed file is the generator's output, it stays inside the
lab's address ranges, and it shares no address, ASN or interface name with the default lab."""

from __future__ import annotations

import argparse
import ipaddress
import re
from typing import Any

import yaml

from lab import commands, topogen, topogen_site
from lab.scenario_spec import default_scenario_path, load_scenario

ALLOWED = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]
_ADDR = re.compile(r"ip (?:-6 )?addr add (\S+) dev (\S+)")


def _addresses(data: dict[str, Any]) -> dict[str, list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]]:
    out: dict[str, list[tuple[str, Any]]] = {}
    for name, node in data["topology"]["nodes"].items():
        for line in node.get("exec") or ():
            if m := _ADDR.search(line):
                out.setdefault(name, []).append((m.group(2), ipaddress.ip_interface(m.group(1))))
    return out


def test_the_committed_file_is_the_generators_output() -> None:
    shipped = yaml.safe_load((topogen_site.HERE / topogen_site.FILE).read_text())
    assert shipped == topogen_site.build()


def test_every_address_is_in_the_lab_ranges_and_none_is_the_default_labs() -> None:
    site = _addresses(topogen_site.build())
    default = _addresses(topogen.build(name="t", gateways=3))
    default_ips = {ifc.ip for addrs in default.values() for _, ifc in addrs}
    default_ifnames = {ifname for addrs in default.values() for ifname, _ in addrs}
    for node, addrs in site.items():
        for ifname, ifc in addrs:
            assert any(ifc.ip in net for net in ALLOWED), (node, ifc)
            assert ifc.ip not in default_ips, (node, ifc)
            if not ifname.startswith("eth"):  # pods keep eth0, as in Kubernetes
                assert ifname not in default_ifnames, (node, ifname)
    assert not set(site) & set(default), "node names shared with the default lab"


def test_dual_stack_nodes_ipv6_only_underlay_three_gateways_frr() -> None:
    data = topogen_site.build()
    nodes = data["topology"]["nodes"]
    roles: dict[str, list[str]] = {}
    for name, node in nodes.items():
        roles.setdefault(node["labels"]["egressgw.role"], []).append(name)
    assert len(roles["gateway"]) == 3 and len(roles["worker"]) == 3
    site = _addresses(data)
    for name in roles["gateway"] + roles["worker"]:
        assert {ifc.version for _, ifc in site[name]} == {4, 6}, name
    router = nodes[roles["router"][0]]
    assert router["labels"]["egressgw.router-kind"] == "frr"
    assert router["labels"]["egressgw.asn"] not in ("64512", "64513")
    drops = [line for line in router["exec"] if "meta nfproto ipv4 drop" in line]
    assert any("iifname fab0 oifname edge0" in d for d in drops)
    assert any("iifname edge0 oifname fab0" in d for d in drops)
    api = nodes[roles["kube-api"][0]]["labels"]["egressgw.daemon.kube-apiserver"]
    assert api.count("--address") == 2


def test_the_scenario_asks_for_the_ipv6_underlay_with_pools_the_router_accepts() -> None:
    spec = load_scenario(default_scenario_path(topogen_site.HERE / topogen_site.FILE))
    assert spec.tunnel_family == "ipv6"
    frr = (topogen_site.HERE.parent / "routers" / "site-frr.conf").read_text()
    accepted = [ipaddress.ip_network(m) for m in re.findall(r"prefix-list \S+ seq \d+ permit (\S+) ge", frr)]
    for version in (4, 6):
        eip = ipaddress.ip_address(spec.default_eip(version))
        assert any(eip in net for net in accepted), eip
        for pool in spec.pools(version):
            lo, _, hi = pool.partition("-")
            assert all(any(ipaddress.ip_address(a) in net for net in accepted) for a in (lo, hi or lo)), pool


def test_lab_demo_passes_its_options_on_to_the_demo() -> None:
    """`egressgw lab demo --topology FILE` (an option right after `demo`) reaches lab/demo.py's own parser."""
    parser = argparse.ArgumentParser(prog="egressgw lab")
    commands.configure(parser)
    args = parser.parse_args(["demo", "--topology", "lab/topologies/site-v6.clab.yml", "--keep"])
    assert args.demo_args == ["--topology", "lab/topologies/site-v6.clab.yml", "--keep"]
