"""The whole system on a site that shares nothing with the default lab (lab/topologies/site-v6.clab.yml).

Own address plan, FRR router (AS 65100), three gateways (AS 65200, uplink `up0`), three workers (underlay `ul0`, pod
bridge `pods0`), dual-stack Nodes and pods, and an underlay between workers and gateways that routes only IPv6 (the
router drops IPv4 between them). Everything the harness needs comes from the topology's labels and its scenario
file (site-v6.scenario.yml, `spec.tunnel.family: ipv6`): no address, ASN or interface name of the site is written
here. Checks: every Node reports an IPv4 and an IPv6 InternalIP; a selected pod on each worker leaves with the EIP
over IPv4 and IPv6, an unselected one with its node's address; the members admit the workers by their IPv6
addresses only; the router learned the EIPs over BGP; cutting the primary member's uplink moves the EIP to another
member and the traffic keeps its source.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest

from appliance.core.waiting import wait_until
from lab.scenario_spec import default_scenario_path, load_scenario
from lab.scenarios import measure_failure, policy_manifest, router_next_hop, stable_primary
from lab.system import TOPOLOGIES, System
from tests.e2e.conftest import Scenario, lab_with_gateway, per_test_objects

pytestmark = [pytest.mark.e2e, pytest.mark.lab]

SITE = TOPOLOGIES / "site-v6.clab.yml"


@pytest.fixture(scope="module")
def site() -> Iterator[System]:
    assert load_scenario(default_scenario_path(SITE)).tunnel_family == "ipv6", \
        "site-v6.scenario.yml must ask for the IPv6 underlay"
    yield from lab_with_gateway(SITE, "egt-e2s-")


@pytest.fixture
def sc(site: System, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    yield from per_test_objects(site, request)


def _pods_by_worker(system: System) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pod in system.pods:
        out.setdefault(system.nodes[pod].worker, []).append(pod)
    return out


def test_site_nodes_are_dual_stack(site: System) -> None:
    """What a dual-stack kubelet registers: both families among each Node's InternalIPs (the case the tunnel family
    exists for), and the site really has three workers and three gateways."""
    assert len(site.workers) == 3 and len(site.gateways) == 3
    core = site._core
    for name in site.workers + site.gateways:
        node = core.read_node(name)
        internal = [a.address for a in node.status.addresses if a.type == "InternalIP"]
        versions = {ipaddress.ip_address(a).version for a in internal}
        assert versions == {4, 6}, f"{name} InternalIPs {internal}"


def test_selected_pods_leave_with_the_eip_unselected_with_their_node_address(site: System, sc: Scenario) -> None:
    spec = site.scenario
    by_worker = _pods_by_worker(site)
    assert len(by_worker) == 3 and all(len(p) >= 2 for p in by_worker.values())
    selected = {w: pods[0] for w, pods in by_worker.items()}
    unselected = {w: pods[1] for w, pods in by_worker.items()}
    for w in sorted(by_worker):
        sc.pod(f"web-{w}", selected[w], {"app": "web"})
        sc.pod(f"other-{w}", unselected[w], {"app": "other"})
    sc.apply(policy_manifest(sc.namespace, "site-web", match_labels={"app": "web"}, gateway=spec.gateway))
    for w in sorted(by_worker):
        for version in (4, 6):
            eip = spec.default_eip(version)
            seen = site.wait_source(selected[w], eip, version=version, timeout=90)
            assert seen == eip, f"{selected[w]} on {w} (IPv{version}) left as {seen!r}, expected the EIP {eip}"
        for version in (4, 6):
            node_addr = str(site.nodes[w].address(version, site.underlay(w)))
            seen = site.wait_source(unselected[w], node_addr, version=version, timeout=30)
            assert seen == node_addr, f"unselected {unselected[w]} (IPv{version}) left as {seen!r}"
            assert seen != spec.default_eip(version)

    # the members admit the workers' tunnel packets by their IPv6 addresses (the tunnel family), never by IPv4
    primary = stable_primary(site, spec.default_eip_v4)
    vteps = _vtep_sets(site, primary)
    for w in by_worker:
        assert str(site.nodes[w].address(6)) in vteps[6], f"{primary} does not admit {w} by its IPv6 address"
        assert str(site.nodes[w].address(4)) not in vteps[4], f"{primary} admits {w} by its IPv4 address"


def _vtep_sets(system: System, gw: str) -> dict[int, str]:
    """The gateway's worker admission maps (`vtepvni4`/`vtepvni6`: worker address . keyed VNI), as JSON text."""
    ruleset = json.loads(str(system.lab.exec(gw, ["nft", "-j", "list", "ruleset"]).stdout))
    found = {int(s["name"][-1]): json.dumps(s.get("elem", [])) for item in ruleset["nftables"]
             if (s := item.get("set") or item.get("map")) and s.get("name") in ("vtepvni4", "vtepvni6")}
    assert set(found) == {4, 6}, f"{gw} has no vtepvni4/vtepvni6 maps: {sorted(found)}"
    return found


def test_router_learned_the_eips_over_bgp(site: System, sc: Scenario) -> None:
    """The FRR router has the default EIPs from a gateway member, over the session of each family (zebra installs
    them as `proto bgp`), next hop a gateway's uplink address."""
    spec = site.scenario
    pod = _pods_by_worker(site)[site.workers[0]][0]
    sc.pod("web", pod, {"app": "web"})
    sc.apply(policy_manifest(sc.namespace, "site-bgp", match_labels={"app": "web"}, gateway=spec.gateway))
    router = site.router
    assert site.router_kind == "frr"
    for version in (4, 6):
        eip = spec.default_eip(version)

        def learned(eip: str = eip, version: int = version) -> bool:
            res = site.lab.exec(router, ["ip", f"-{version}", "route", "show", "proto", "bgp"], check=False)
            return any(line.split()[:1] == [eip] for line in str(res.stdout).splitlines())

        wait_until(learned, timeout=90, interval=0.5, what=f"the router to learn {eip} over BGP")
        assert router_next_hop(site, eip) in site.gateways
        bgp = site.lab.exec(router, ["vtysh", "-N", site.lab.netns(router), "-c",
                                     f"show bgp {'ipv4' if version == 4 else 'ipv6'} unicast {eip}"], check=False)
        gateway_asn = site.nodes[site.gateways[0]].label("egressgw.asn")
        assert gateway_asn and gateway_asn in str(bgp.stdout), str(bgp.stdout)


def test_uplink_cut_moves_the_eip_and_traffic_continues(site: System, sc: Scenario) -> None:
    spec = site.scenario
    pod = _pods_by_worker(site)[site.workers[-1]][0]
    sc.pod("web", pod, {"app": "web"})
    sc.apply(policy_manifest(sc.namespace, "site-failover", match_labels={"app": "web"}, gateway=spec.gateway))
    eip4, eip6 = spec.default_eip_v4, spec.default_eip_v6
    assert site.wait_source(pod, eip4, timeout=90) == eip4
    primary = stable_primary(site, eip4)
    uplink = site.uplink(primary)
    report = measure_failure(site, pod, lambda: site.lab.cut_link(primary, uplink), after=4.0)
    try:
        print(f"\nsite-v6 uplink cut of {primary}: lost={report.lost} outage={report.longest_gap_ms:.0f} ms")
        now = router_next_hop(site, eip4)
        assert now not in ("", primary), f"the router still sends {eip4} to {now or 'nobody'}"
        assert {s.source for s in report.sources} == {eip4}
        assert report.sources[-1].last > (report.outage_end or 0) - 1  # traffic flowed again after the outage
        assert site.wait_source(pod, eip6, version=6, timeout=60) == eip6
    finally:
        site.lab.restore_link(primary, uplink)
