"""Generate `lab/topologies/site-v6.clab.yml`: a site that shares nothing with the default lab but the node kinds.

What a network team adopting egressgw might run, to prove the lab harness, the demo and the e2e scenarios take
everything from the topology and its scenario file (`site-v6.scenario.yml`):

- an FRR router `core` (AS 65100) with three segments: the worker fabric `fabric` (interface `fab0`), the gateway
  edge `edge` (`edge0`), the Internet side (`wan0`, one point-to-point link to the server `inet`), plus a
  point-to-point service link (`svc0`) to the API node `kapi`;
- three workers `wk1`..`wk3` (underlay `ul0`, pods behind the bridge `pods0`), two pods each;
- three gateways `egw1`..`egw3` (AS 65200, uplink `up0`);
- every Node dual-stack (an IPv4 and an IPv6 address on its underlay/uplink, IPv4 first as a dual-stack kubelet
  registers them), but the router drops IPv4 between the worker fabric and the gateway edge: the underlay between
  workers and gateways is IPv6 only (the EgressGateway says `spec.tunnel.family: ipv6`);
- the API server on both families (`--address` twice), reachable from workers and gateways.

Address plan (all inside the documentation/shared ranges the lab may use):

| segment | IPv4 | IPv6 |
|---|---|---|
| worker fabric | 100.80.1.0/24 (core .1, wk<n> .2<n>) | 2001:db8:5a1::/64 (core ::1, wk<n> ::2<n>) |
| gateway edge | 100.80.2.0/24 (core .1, egw<n> .3<n>) | 2001:db8:5a2::/64 (core ::1, egw<n> ::3<n>) |
| API link | 100.80.3.0/24 (core .1, kapi .10) | 2001:db8:5a3::/64 (core ::1, kapi ::10) |
| Internet side | 198.51.100.64/28 (core .65, inet .70) | 2001:db8:5e::/64 (core ::1, inet ::70) |
| pods of wk<n> | 100.96.<n>.0/24 (bridge .1, pods .10/.11) | 2001:db8:96:<n>::/64 (bridge ::1, pods ::10/::11) |
| EIPs | 203.0.113.70-203.0.113.79 (router accepts 203.0.113.64/27) | 2001:db8:e5::70-::79 (accepts 2001:db8:e5::/64) |

Regenerate with `python -m lab.topogen_site`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lab import topogen
from lab.topogen import IMAGE

HERE = Path(__file__).resolve().parent / "topologies"
FILE = "site-v6.clab.yml"
NAME = "egwsite"
WORKERS, PODS_PER_WORKER, GATEWAYS = 3, 2, 3
ROUTER_ASN, GATEWAY_ASN = 65100, 65200
FABRIC = ("100.80.1", "2001:db8:5a1:")
EDGE = ("100.80.2", "2001:db8:5a2:")
SVC = ("100.80.3", "2001:db8:5a3:")
WAN4, WAN6 = ("198.51.100.65", "198.51.100.70", 28), ("2001:db8:5e::1", "2001:db8:5e::70", 64)
PODS = ("100.96.0.0/16", "2001:db8:96::/48")
POD_BRIDGE = "pods0"
UNDERLAY, UPLINK = "ul0", "up0"
EXT_PORT = 7300  # not 7000 (the default lab), nor 7100/7101/7180 (lab/bench/fresh_flows.py's second server)
#: destinations the workers' CNI stand-in never masquerades: the pod networks and the site's own segments
NOT_MASQUERADED_V4 = "{ 100.96.0.0/16, 100.80.0.0/16 }"
NOT_MASQUERADED_V6 = "{ 2001:db8:96::/48, 2001:db8:5a0::/44 }"


def _addr(net: tuple[str, str], host: int) -> tuple[str, str]:
    """(IPv4, IPv6) of `host` on segment `net` (IPv6 host part written as the same decimal digits)."""
    return f"{net[0]}.{host}", f"{net[1]}:{host}"


def _router() -> dict[str, Any]:
    ex = []
    for ifname, net in (("fab0", FABRIC), ("edge0", EDGE), ("svc0", SVC)):
        v4, v6 = _addr(net, 1)
        ex += [f"ip addr add {v4}/24 dev {ifname}", f"ip addr add {v6}/64 dev {ifname}"]
    ex += [f"ip addr add {WAN4[0]}/{WAN4[2]} dev wan0", f"ip addr add {WAN6[0]}/{WAN6[2]} dev wan0"]
    for w in range(1, WORKERS + 1):
        v4, v6 = _addr(FABRIC, 20 + w)
        ex += [f"ip route add 100.96.{w}.0/24 via {v4}", f"ip -6 route add 2001:db8:96:{w}::/64 via {v6}"]
    reason = "comment '\"site-v6: no IPv4 between the worker fabric and the gateway edge\"'"
    ex += [
        "nft add table inet site_underlay",
        "nft add chain inet site_underlay forward { type filter hook forward priority filter ; policy accept ; }",
        f"nft add rule inet site_underlay forward iifname fab0 oifname edge0 meta nfproto ipv4 drop {reason}",
        f"nft add rule inet site_underlay forward iifname edge0 oifname fab0 meta nfproto ipv4 drop {reason}",
    ]
    common = "-N {netns} -u frr -g frr -f {bind:/etc/frr/frr.conf}"
    return {
        "kind": "linux",
        "image": "quay.io/frrouting/frr:8.4.4",
        "labels": {
            "egressgw.role": "router",
            "egressgw.router-kind": "frr",
            "egressgw.asn": str(ROUTER_ASN),
            "egressgw.daemon.zebra": f"/usr/lib/frr/zebra {common} -i /run/frr/{{netns}}/zebra.pid",
            "egressgw.ready.zebra": "test -S /run/frr/{netns}/zserv.api",
            "egressgw.daemon.bfdd": f"/usr/lib/frr/bfdd {common} -i /run/frr/{{netns}}/bfdd.pid",
            "egressgw.daemon.bgpd": f"/usr/lib/frr/bgpd {common} -i /run/frr/{{netns}}/bgpd.pid",
            "egressgw.ready.bgpd": "vtysh -N {netns} -c 'show bgp summary'",
            "egressgw.status": "vtysh -N {netns} -c 'show bgp summary' -c 'show bfd peers brief'",
        },
        "binds": ["../routers/site-frr.conf:/etc/frr/frr.conf:ro"],
        "exec": ex,
    }


def _host(net: tuple[str, str], host: int, ifname: str) -> list[str]:
    """Both addresses of a host on `net` (IPv4 first, as a dual-stack kubelet lists them) and its default routes."""
    v4, v6 = _addr(net, host)
    gw4, gw6 = _addr(net, 1)
    return [f"ip addr add {v4}/24 dev {ifname}", f"ip addr add {v6}/64 dev {ifname}",
            f"ip route add default via {gw4}", f"ip -6 route add default via {gw6}"]


def _worker(w: int) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    ex = [
        *_host(FABRIC, 20 + w, UNDERLAY),
        f"ip link add {POD_BRIDGE} type bridge",
        f"ip addr add 100.96.{w}.1/24 dev {POD_BRIDGE}",
        f"ip addr add 2001:db8:96:{w}::1/64 dev {POD_BRIDGE}",
        f"ip link set {POD_BRIDGE} up",
    ]
    ex += [f"ip link set pv{p} master {POD_BRIDGE}" for p in range(1, PODS_PER_WORKER + 1)]
    ex += [
        # the site's stand-in for the CNI's own masquerade: unselected pods leave as the node's address
        "nft add table inet site_cni",
        "nft add chain inet site_cni postrouting { type nat hook postrouting priority srcnat ; policy accept ; }",
        f"nft add rule inet site_cni postrouting oifname {UNDERLAY} ip saddr 100.96.{w}.0/24 ip daddr != "
        f"{NOT_MASQUERADED_V4} masquerade comment '\"site CNI stand-in\"'",
        f"nft add rule inet site_cni postrouting oifname {UNDERLAY} ip6 saddr 2001:db8:96:{w}::/64 ip6 daddr != "
        f"{NOT_MASQUERADED_V6} masquerade comment '\"site CNI stand-in\"'",
    ]
    worker = {"kind": "linux", "image": IMAGE,
              "labels": {"egressgw.role": "worker", "egressgw.underlay": UNDERLAY,
                         "egressgw.pod-bridge": POD_BRIDGE},
              "exec": ex}
    pods: dict[str, dict[str, Any]] = {}
    for p in range(1, PODS_PER_WORKER + 1):
        host = 9 + p
        pods[f"wk{w}{'abcdefgh'[p - 1]}"] = {
            "kind": "linux", "image": IMAGE,
            "labels": {"egressgw.role": "pod", "egressgw.worker": f"wk{w}"},
            "exec": [f"ip addr add 100.96.{w}.{host}/24 dev eth0", f"ip addr add 2001:db8:96:{w}::{host}/64 dev eth0",
                     f"ip route add default via 100.96.{w}.1", f"ip -6 route add default via 2001:db8:96:{w}::1"],
        }
    return worker, pods


def build() -> dict[str, Any]:
    v4api, v6api = _addr(SVC, 10)
    nodes: dict[str, Any] = {
        "fabric": {"kind": "bridge", "labels": {"egressgw.role": "switch"}},
        "edge": {"kind": "bridge", "labels": {"egressgw.role": "switch"}},
        "core": _router(),
        "kapi": {
            "kind": "linux", "image": IMAGE,
            "labels": {"egressgw.role": "kube-api",
                       "egressgw.daemon.kube-apiserver": f"@kube-apiserver --address {v6api} --address {v4api} --crds"},
            "exec": _host(SVC, 10, "mgmt0"),
        },
    }
    links: list[dict[str, Any]] = [
        {"endpoints": ["core:fab0", "fabric:fab-core"]},
        {"endpoints": ["core:edge0", "edge:edge-core"]},
        {"endpoints": ["core:svc0", "kapi:mgmt0"]},
        {"endpoints": ["core:wan0", "inet:srv0"]},
    ]
    for w in range(1, WORKERS + 1):
        worker, pods = _worker(w)
        nodes[f"wk{w}"] = worker
        links.append({"endpoints": [f"wk{w}:{UNDERLAY}", f"fabric:fab-wk{w}"]})
        for p, (pname, pod) in enumerate(pods.items(), start=1):
            nodes[pname] = pod
            links.append({"endpoints": [f"wk{w}:pv{p}", f"{pname}:eth0"]})
    for g in range(1, GATEWAYS + 1):
        nodes[f"egw{g}"] = {
            "kind": "linux", "image": IMAGE,
            "labels": {"egressgw.role": "gateway", "egressgw.asn": str(GATEWAY_ASN), "egressgw.uplink": UPLINK},
            "exec": _host(EDGE, 30 + g, UPLINK),
        }
        links.append({"endpoints": [f"egw{g}:{UPLINK}", f"edge:edge-egw{g}"]})
    nodes["inet"] = {
        "kind": "linux", "image": IMAGE,
        "labels": {
            "egressgw.role": "external",
            "egressgw.ext-port": str(EXT_PORT),
            "egressgw.daemon.extserver": f"{{python}} -m lab.extserver --port {EXT_PORT} --control 127.0.0.1:7080",
            "egressgw.ready.extserver": "{python} -m lab.extclient peers",
        },
        "exec": [f"ip addr add {WAN4[1]}/{WAN4[2]} dev srv0", f"ip addr add {WAN6[1]}/{WAN6[2]} dev srv0",
                 f"ip route add default via {WAN4[0]}", f"ip -6 route add default via {WAN6[0]}"],
    }
    return {"name": NAME, "topology": {"nodes": nodes, "links": links}}


PURPOSE = (
    "A site sharing nothing with the default lab: own address plan, FRR (AS 65100), 3 gateways (AS 65200,\n"
    "uplink up0), 3 workers (underlay ul0, pod bridge pods0), dual-stack Nodes and pods, an IPv6-only underlay\n"
    "between workers and gateways (the router drops IPv4 between them). Scenario: site-v6.scenario.yml."
)


def render(data: dict[str, Any]) -> str:
    return topogen.render(PURPOSE, data, generator="lab.topogen_site")


def main() -> int:
    HERE.mkdir(exist_ok=True)
    (HERE / FILE).write_text(render(build()))
    print(HERE / FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
