"""Strict reverse-path filtering (uRPF, BCP 38) on the lab's routers: what docs/routers.md asks of a real network.

A packet is accepted by a router only when the router's route back to its source leaves through the interface the
packet came in on. So a host on the external side cannot reach a gateway with a cluster-LAN source (a worker's
underlay address), and the cluster LAN cannot emit packets with sources from elsewhere.
- IPv4: the kernel's strict reverse-path filter, `rp_filter=1` on each of the router's interfaces (the kernel uses
  the larger of `all` and the interface's value; the lab's default of `all` is 0);
- IPv6 (no rp_filter in the kernel): our own nftables table in the router's namespace, whose prerouting hook drops a
  packet when a FIB lookup of its source restricted to the input interface finds no route
  (`fib saddr . iif oif missing`), counted. The unspecified source (`::`, duplicate address detection) passes.

On by default: `lab.runner.Lab` turns it on for every node with `egressgw.role: router` right after the nodes'
exec lines. `set_router_urpf(lab_or_system, enabled)` switches it at run time, e.g. for tests of the gateway's own
defences against a network without uRPF. Idempotent both ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

from lab import netns
from lab.topology import Topology

#: our nftables table in each router namespace (family inet; the name says it belongs to the lab)
TABLE = "lab_urpf"
ROUTER_ROLE = "router"
_RULESET = f"""table inet {TABLE} {{
\tcounter urpf_drop6 {{ }}
\tchain prerouting {{
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tmeta nfproto ipv6 ip6 saddr :: return
\t\tmeta nfproto ipv6 fib saddr . iif oif missing counter name urpf_drop6 drop
\t}}
}}
"""


class RouterLab(Protocol):
    """What uRPF needs of a running lab (`lab.runner.Lab`)."""

    topology: Topology

    def netns(self, node: str) -> str: ...


def router_nodes(topology: Topology) -> list[str]:
    return sorted(n.name for n in topology.linux_nodes if dict(n.labels).get("egressgw.role") == ROUTER_ROLE)


def router_interfaces(topology: Topology, node: str) -> list[str]:
    """The node's interfaces that are links of the topology (the ones traffic arrives on)."""
    return sorted({ep.interface for link in topology.links for ep in (link.a, link.b) if ep.node == node})


def configure(ns: str, interfaces: Sequence[str], *, enabled: bool) -> None:
    """Turn strict uRPF on (or off) in namespace `ns` for `interfaces`, both families."""
    value = "1" if enabled else "0"
    # the slash form of a sysctl name leaves dots in an interface name alone
    netns.run(netns.in_ns(ns, ["sysctl", "-q", "-w", *(f"net/ipv4/conf/{i}/rp_filter={value}" for i in interfaces)]))
    netns.run(netns.in_ns(ns, ["nft", "delete", "table", "inet", TABLE]), check=False)
    if enabled:
        netns.run(netns.in_ns(ns, ["nft", "-f", "-"]), input=_RULESET)


def state(ns: str, interfaces: Sequence[str]) -> dict[str, Any]:
    """What is in force in `ns`: per-interface rp_filter, whether our table exists, its IPv6 drop count."""
    rp = {}
    for i in interfaces:
        out = netns.run(netns.in_ns(ns, ["sysctl", "-n", f"net/ipv4/conf/{i}/rp_filter"])).stdout.strip()
        rp[i] = int(out)
    listed = netns.run(netns.in_ns(ns, ["nft", "list", "counter", "inet", TABLE, "urpf_drop6"]), check=False)
    drops = None
    if listed.returncode == 0:
        words = listed.stdout.split()
        drops = int(words[words.index("packets") + 1]) if "packets" in words else 0
    return {"rp_filter": rp, "nft_table": listed.returncode == 0, "ipv6_drops": drops}


def set_router_urpf(target: RouterLab | Any, enabled: bool) -> None:
    """Strict uRPF on (True) or off (False) on every router of a running lab. `target`: a `lab.runner.Lab` or
    anything with one in `.lab` (`lab.system.System`)."""
    lab = cast(RouterLab, getattr(target, "lab", target))
    for node in router_nodes(lab.topology):
        configure(lab.netns(node), router_interfaces(lab.topology, node), enabled=enabled)


def router_urpf_state(target: RouterLab | Any) -> dict[str, dict[str, Any]]:
    """`state` of every router of a running lab, by node name."""
    lab = cast(RouterLab, getattr(target, "lab", target))
    return {node: state(lab.netns(node), router_interfaces(lab.topology, node)) for node in router_nodes(lab.topology)}
