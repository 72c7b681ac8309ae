"""Generate the lab's topology files (`lab/topologies/*.clab.yml`) from one description of the address plan.

The four files share almost everything; generating them keeps the address plan in one place. The output is plain
containerlab YAML (committed; the runner reads the files, not this module). Regenerate with
`python -m lab.topogen` after changing the plan here.

The address plan (see docs/lab.md): cluster LAN 100.127.0.0/24 + 2001:db8:127::/64, gateway uplink LAN
198.51.100.0/24 + 2001:db8:198::/64, external LAN 203.0.113.0/28 + 2001:db8:203::/64, pods 100.64.<w>.0/24 +
2001:db8:64:<w>::/64 behind bridge `cni0` on worker <w>; router AS 64512, gateways AS 64513. Every node carries the
labels the harness reads (`egressgw.role`, `egressgw.asn`, `egressgw.router-kind`, `egressgw.uplink`,
`egressgw.underlay`, `egressgw.ext-port`), and every topology gets its scenario file (`NAME.scenario.yml`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from lab.cni import LABEL as CNI_LABEL
from lab.cni import CniKind
from lab.scenario_spec import default_scenario_path

HERE = Path(__file__).resolve().parent / "topologies"
IMAGE = "egressgw/lab-node:latest"  # what real containerlab would need: Debian + iproute2, nftables, python3, ...
CLUSTER_V4 = "100.127.0.0/24"
UPLINK_V4 = "198.51.100.0/24"
#: the cluster's pod networks (every worker's pod CIDR is inside), the Service CIDR
PODS = ("100.64.0.0/16", "2001:db8:64::/48")
SERVICES = ("100.100.0.0/16",)
#: destinations the default CNI stand-in never masquerades: pods, services, the cluster LAN, the gateway uplink LAN
NOT_MASQUERADED = (PODS[0], SERVICES[0], CLUSTER_V4, UPLINK_V4, PODS[1], "2001:db8:127::/64", "2001:db8:198::/64")
NOT_MASQUERADED_V4 = "{ " + ", ".join(n for n in NOT_MASQUERADED if ":" not in n) + " }"
ROUTER_ASN, GATEWAY_ASN = 64512, 64513
#: the API node's addresses (cluster LAN), one `--address` each
API_ADDRESSES = ("100.127.0.10", "2001:db8:127::10")
NOT_MASQUERADED_V6 = "{ " + ", ".join(n for n in NOT_MASQUERADED if ":" in n) + " }"


def _cni_exec(w: int, cni: str) -> str:
    """The exec line installing CNI stand-in `cni` (lab/cni.py) on worker `w`."""
    nets = [f"--pods 100.64.{w}.0/24", f"--pods 2001:db8:64:{w}::/64", *(f"--cluster {p}" for p in PODS),
            *(f"--services {s}" for s in SERVICES)]
    return f"{{python}} -m lab.cni install {cni} " + " ".join(nets)


def _worker(w: int, pods: int, cni: str | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    ex = [
        f"ip addr add 100.127.0.1{w}/24 dev eth1",
        f"ip addr add 2001:db8:127::1{w}/64 dev eth1",
        "ip route add default via 100.127.0.1",
        "ip -6 route add default via 2001:db8:127::1",
        "ip link add cni0 type bridge",
        f"ip addr add 100.64.{w}.1/24 dev cni0",
        f"ip addr add 2001:db8:64:{w}::1/64 dev cni0",
        "ip link set cni0 up",
    ]
    ex += [f"ip link set vp{p} master cni0" for p in range(1, pods + 1)]
    labels = {"egressgw.role": "worker", "egressgw.underlay": "eth1"}
    if cni is not None:
        # a CNI stand-in chosen by label (lab/cni.py): its iptables/ipset rules instead of the default nft chain
        labels[CNI_LABEL] = cni
        ex.append(_cni_exec(w, cni))
    else:
        ex += [
            # the lab's stand-in for the CNI's own masquerade: unselected pods reach the outside as the node IP
            "nft add table inet lab_cni",
            "nft add chain inet lab_cni postrouting { type nat hook postrouting priority srcnat ; policy accept ; }",
            f"nft add rule inet lab_cni postrouting oifname eth1 ip saddr 100.64.{w}.0/24 ip daddr != "
            f"{NOT_MASQUERADED_V4} masquerade comment '\"lab CNI stand-in\"'",
            f"nft add rule inet lab_cni postrouting oifname eth1 ip6 saddr 2001:db8:64:{w}::/64 ip6 daddr != "
            f"{NOT_MASQUERADED_V6} masquerade comment '\"lab CNI stand-in\"'",
        ]
    worker = {"kind": "linux", "image": IMAGE, "labels": labels, "exec": ex}
    pod_nodes: dict[str, dict[str, Any]] = {}
    for p in range(1, pods + 1):
        host = 9 + p  # .10, .11
        pod_nodes[f"w{w}p{p}"] = {
            "kind": "linux", "image": IMAGE, "labels": {"egressgw.role": "pod", "egressgw.worker": f"worker{w}"},
            "exec": [
                f"ip addr add 100.64.{w}.{host}/24 dev eth0",
                f"ip addr add 2001:db8:64:{w}::{host}/64 dev eth0",
                f"ip route add default via 100.64.{w}.1",
                f"ip -6 route add default via 2001:db8:64:{w}::1",
            ],
        }
    return worker, pod_nodes


def _router(flavour: str, workers: int, v6_underlay_only: bool) -> dict[str, Any]:
    ex = [
        "ip addr add 100.127.0.1/24 dev eth1",
        "ip addr add 2001:db8:127::1/64 dev eth1",
        "ip addr add 198.51.100.1/24 dev eth2",
        "ip addr add 2001:db8:198::1/64 dev eth2",
        "ip addr add 203.0.113.1/28 dev eth3",
        "ip addr add 2001:db8:203::1/64 dev eth3",
    ]
    for w in range(1, workers + 1):
        ex += [f"ip route add 100.64.{w}.0/24 via 100.127.0.1{w}",
               f"ip -6 route add 2001:db8:64:{w}::/64 via 2001:db8:127::1{w}"]
    if v6_underlay_only:
        ex += [
            "nft add table inet lab_underlay",
            "nft add chain inet lab_underlay forward { type filter hook forward priority filter ; policy accept ; }",
            f"nft add rule inet lab_underlay forward ip saddr {CLUSTER_V4} ip daddr {UPLINK_V4} drop "
            "comment '\"IPv6 underlay lab: no IPv4 between workers and gateways\"'",
            f"nft add rule inet lab_underlay forward ip saddr {UPLINK_V4} ip daddr {CLUSTER_V4} drop "
            "comment '\"IPv6 underlay lab: no IPv4 between workers and gateways\"'",
        ]
    labels = {"egressgw.role": "router", "egressgw.asn": str(ROUTER_ASN), "egressgw.router-kind": flavour}
    node: dict[str, Any] = {"kind": "linux", "labels": labels, "exec": ex}
    if flavour == "bird":
        node["image"] = "egressgw/lab-router-bird:latest"
        node["binds"] = ["../routers/bird.conf:/etc/bird/bird.conf:ro"]
        node["labels"].update({
            "egressgw.daemon.bird": "bird -f -c {bind:/etc/bird/bird.conf} -s {nodedir}/bird.ctl -P {nodedir}/bird.pid",
            "egressgw.ready.bird": "birdc -s {nodedir}/bird.ctl show status",
            "egressgw.status": "birdc -s {nodedir}/bird.ctl show protocols",
        })
    else:
        node["image"] = "quay.io/frrouting/frr:8.4.4"
        node["binds"] = ["../routers/frr.conf:/etc/frr/frr.conf:ro"]
        common = "-N {netns} -u frr -g frr -f {bind:/etc/frr/frr.conf}"
        node["labels"].update({
            "egressgw.daemon.zebra": f"/usr/lib/frr/zebra {common} -i /run/frr/{{netns}}/zebra.pid",
            "egressgw.ready.zebra": "test -S /run/frr/{netns}/zserv.api",
            "egressgw.daemon.bfdd": f"/usr/lib/frr/bfdd {common} -i /run/frr/{{netns}}/bfdd.pid",
            "egressgw.daemon.bgpd": f"/usr/lib/frr/bgpd {common} -i /run/frr/{{netns}}/bgpd.pid",
            "egressgw.ready.bgpd": "vtysh -N {netns} -c 'show bgp summary'",
            "egressgw.status": "vtysh -N {netns} -c 'show bgp summary' -c 'show bfd peers brief'",
        })
    return node


def build(*, name: str, gateways: int, flavour: str = "bird", v6_underlay_only: bool = False,
          cnis: tuple[str, ...] = ()) -> dict[str, Any]:
    """`cnis`: per worker (worker1 first), the CNI stand-in (lab/cni.py) replacing the default nft chain."""
    workers, pods = 2, 2
    for cni in cnis:
        CniKind(cni)  # unknown stand-in: ValueError naming it
    nodes: dict[str, Any] = {
        "lan": {"kind": "bridge", "labels": {"egressgw.role": "switch"}},
        "uplink": {"kind": "bridge", "labels": {"egressgw.role": "switch"}},
        "router": _router(flavour, workers, v6_underlay_only),
        "api": {
            "kind": "linux", "image": IMAGE,
            # the IPv6-underlay lab lists the API's IPv6 address first: the kubeconfigs name the first address, and
            # the router drops IPv4 between the gateways and the cluster LAN
            "labels": {"egressgw.role": "kube-api", "egressgw.daemon.kube-apiserver": "@kube-apiserver "
                       + " ".join(f"--address {a}" for a in (API_ADDRESSES[::-1] if v6_underlay_only
                                                            else API_ADDRESSES[:1])) + " --crds"},
            "exec": ["ip addr add 100.127.0.10/24 dev eth1", "ip addr add 2001:db8:127::10/64 dev eth1",
                     "ip route add default via 100.127.0.1", "ip -6 route add default via 2001:db8:127::1"],
        },
    }
    links: list[dict[str, Any]] = [
        {"endpoints": ["router:eth1", "lan:lan-rtr"]},
        {"endpoints": ["router:eth2", "uplink:up-rtr"]},
        {"endpoints": ["router:eth3", "ext:eth1"]},
        {"endpoints": ["api:eth1", "lan:lan-api"]},
    ]
    for w in range(1, workers + 1):
        worker, pod_nodes = _worker(w, pods, cnis[w - 1] if w <= len(cnis) else None)
        nodes[f"worker{w}"] = worker
        links.append({"endpoints": [f"worker{w}:eth1", f"lan:lan-w{w}"]})
        for p, (pname, pod) in enumerate(pod_nodes.items(), start=1):
            nodes[pname] = pod
            links.append({"endpoints": [f"worker{w}:vp{p}", f"{pname}:eth0"]})
    for g in range(1, gateways + 1):
        nodes[f"gw{g}"] = {
            "kind": "linux", "image": IMAGE,
            "labels": {"egressgw.role": "gateway", "egressgw.asn": str(GATEWAY_ASN), "egressgw.uplink": "eth1"},
            "exec": [f"ip addr add 198.51.100.1{g}/24 dev eth1", f"ip addr add 2001:db8:198::1{g}/64 dev eth1",
                     "ip route add default via 198.51.100.1", "ip -6 route add default via 2001:db8:198::1"],
        }
        links.append({"endpoints": [f"gw{g}:eth1", f"uplink:up-gw{g}"]})
    nodes["ext"] = {
        "kind": "linux", "image": IMAGE,
        "labels": {
            "egressgw.role": "external",
            "egressgw.ext-port": "7000",
            "egressgw.daemon.extserver": "{python} -m lab.extserver --port 7000 --control 127.0.0.1:7080",
            "egressgw.ready.extserver": "{python} -m lab.extclient peers",
        },
        "exec": ["ip addr add 203.0.113.2/28 dev eth1", "ip addr add 2001:db8:203::2/64 dev eth1",
                 "ip route add default via 203.0.113.1", "ip -6 route add default via 2001:db8:203::1"],
    }
    return {"name": name, "topology": {"nodes": nodes, "links": links}}


FILES: dict[str, tuple[str, dict[str, Any]]] = {
    "default.clab.yml": (
        "The default lab: dual stack everywhere, 2 workers x 2 pods, 2 gateways, BIRD 2 router, API node, "
        "external server.",
        {"name": "egw", "gateways": 2}),
    "three-gateways.clab.yml": (
        "The default lab with a third gateway (gw3, 198.51.100.13 / 2001:db8:198::13).",
        {"name": "egw3", "gateways": 3}),
    "dual-stack.clab.yml": (
        "IPv6-underlay lab: same addresses as the default lab, but the router drops IPv4 between the cluster LAN and "
        "the gateway uplink LAN, so tunnels between workers and gateways must use IPv6; pods still send IPv4 and IPv6.",
        {"name": "egw6", "gateways": 2, "v6_underlay_only": True}),
    "default-frr.clab.yml": (
        "The default lab with FRR (zebra, bgpd, bfdd) instead of BIRD 2 as the upstream router.",
        {"name": "egwfrr", "gateways": 2, "flavour": "frr"}),
    "cni-mixed.clab.yml": (
        "The default lab with real-CNI-like rules (lab/cni.py, label egressgw.cni): worker1 Calico-like "
        "(natOutgoing ipsets, marks under 0xffff0000), worker2 Flannel-like with iptables-legacy, both with "
        "kube-proxy's chains.",
        {"name": "egwcni", "gateways": 2, "cnis": ("calico", "flannel-legacy")}),
}


#: the scenario (lab/scenario_spec.py) shipped next to every topology: same gateway, pools and EIPs everywhere; the
#: IPv6-underlay lab tunnels over IPv6
SCENARIO: dict[str, Any] = {
    "gateway": "egw-default",
    "tunnel": {"type": "vxlan", "family": ""},
    "pools": {"ipv4": ["203.0.113.200-203.0.113.209"], "ipv6": ["2001:db8:e1::200-2001:db8:e1::209"]},
    "default_eip": {"ipv4": "203.0.113.200", "ipv6": "2001:db8:e1::200"},
    "failback_hold_s": 3.0,
}


def scenario_for(kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("v6_underlay_only"):
        return {**SCENARIO, "tunnel": {"type": "vxlan", "family": "IPv6"}}
    return SCENARIO


def render_scenario(fname: str, data: dict[str, Any]) -> str:
    header = (
        "# Generated by `python -m lab.topogen` (edit lab/topogen.py, then regenerate).\n"
        f"# The scenario of {fname} (lab/scenario_spec.py): the EgressGateway the demo, the e2e scenarios and the\n"
        "# benchmarks apply on that topology. Override with --scenario FILE.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, width=200, default_flow_style=None)


def render(purpose: str, data: dict[str, Any], *, generator: str = "lab.topogen") -> str:
    """The topology file's text: a header naming the `generator` module and the `purpose` (one comment line per
    line), then the YAML."""
    header = (
        f"# Generated by `python -m {generator}` (edit {generator.replace('.', '/')}.py, then regenerate).\n"
        + "".join(f"# {line}\n" for line in purpose.splitlines()) +
        "# Runs with `egressgw lab up FILE` (network namespaces, see docs/lab.md); the `egressgw.*` labels are the\n"
        "# runner's extension (daemons, readiness checks) and are plain labels to real containerlab.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, width=200, default_flow_style=False)


def main() -> int:
    HERE.mkdir(exist_ok=True)
    for fname, (purpose, kwargs) in FILES.items():
        (HERE / fname).write_text(render(purpose, build(**kwargs)))
        print(HERE / fname)
        scenario = default_scenario_path(HERE / fname)
        scenario.write_text(render_scenario(fname, scenario_for(kwargs)))
        print(scenario)
    return 0


if __name__ == "__main__":
    sys.exit(main())
