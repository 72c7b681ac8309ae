"""Which pod address lives behind which host-side interface of this node: the source bindings the worker enforces.

Why discovery and not the Kubernetes API: the API says pod P has IP X, not which veth P's packets come in by, and a
pod with NET_RAW can send with any source address. The authoritative binding is the pod's network namespace: the
addresses configured on the peer of a host-side veth are the addresses that pod owns. So, seen from the agent's
network namespace:

1. `ip -d -j link show`: every veth whose peer lives in another namespace (`link_netnsid`), its peer's ifindex
   (`link_index`) and its master (a Linux bridge port: `info_slave_kind == "bridge"`; no master: a routed
   interface; another master such as OVS: the port cannot be checked by our bridge table);
2. `ip -j netns list-id`: the namespace id of every named namespace (RTM_GETNSID with the namespace file's fd, as
   seen from the agent's namespace). Container runtimes keep pod namespaces as bind mounts under /var/run/netns
   (containerd `cni-*`, CRI-O), which is where iproute2 looks; a pod whose namespace is not there stays unknown;
3. `ip -n <name> -j addr show`: the peer interface's global addresses (its `link_index` must point back at our
   veth, so a namespace holding several veths is read correctly).

Cost: one `ip` process per pod namespace. A namespace's answer is cached by the host veth (ifindex, peer index,
nsid) and re-read on every `refresh` (the agent's full passes); pod-churn passes read only new interfaces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

from appliance.core.model import IPAddress
from appliance.datapath.apply.netlink import Shell
from appliance.datapath.plan.worker import SourceBinding


@dataclass(frozen=True, slots=True, kw_only=True)
class HostLink:
    """A host-side veth whose peer is in another namespace."""

    ifindex: int
    ifname: str
    nsid: int
    peer_index: int
    #: "" = routed (no master), the bridge's name, or None when enslaved to something that is not a Linux bridge
    bridge: str | None


def parse_host_links(links: Iterable[Mapping[str, Any]]) -> tuple[HostLink, ...]:
    """`ip -d -j link show` entries -> the veths with a peer in another namespace (pure)."""
    out: list[HostLink] = []
    for d in links:
        info = d.get("linkinfo") or {}
        if info.get("info_kind") != "veth" or "link_netnsid" not in d or "link_index" not in d:
            continue
        master = d.get("master")
        bridge: str | None = ""
        if master:
            bridge = str(master) if info.get("info_slave_kind") == "bridge" else None
        out.append(HostLink(ifindex=int(d["ifindex"]), ifname=str(d["ifname"]), nsid=int(d["link_netnsid"]),
                            peer_index=int(d["link_index"]), bridge=bridge))
    return tuple(out)


def parse_nsids(entries: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """`ip -j netns list-id` -> nsid -> namespace name (entries without a name are namespaces we cannot open)."""
    return {int(e["nsid"]): str(e["name"]) for e in entries if "nsid" in e and e.get("name")}


def peer_addresses(link: HostLink, addrs: Iterable[Mapping[str, Any]]) -> tuple[IPAddress, ...]:
    """The global addresses of `link`'s peer in its namespace's `ip -j addr show` output (pure)."""
    for d in addrs:
        if int(d.get("ifindex", -1)) != link.peer_index or int(d.get("link_index", -1)) != link.ifindex:
            continue
        return tuple(
            ip_address(a["local"]) for a in d.get("addr_info", ()) if a.get("scope") == "global" and "local" in a
        )
    return ()


class PodInterfaceDiscovery:
    """Discovers the source bindings of one namespace's pod interfaces (the agent's: `shell.netns` None)."""

    def __init__(self, shell: Shell | None = None) -> None:
        self.shell = shell or Shell()
        self._cache: dict[HostLink, tuple[IPAddress, ...]] = {}

    def discover(self, *, refresh: bool = True) -> tuple[SourceBinding, ...]:
        """Every (pod address, host interface) of this node. Raises `CommandError` when the links cannot be listed;
        a namespace that vanished in between just contributes nothing."""
        links = parse_host_links(self.shell.json(["ip", "-d", "-j", "link", "show"]))
        names = parse_nsids(_loads(self.shell.run(["ip", "-j", "netns", "list-id"])[1]))
        cache: dict[HostLink, tuple[IPAddress, ...]] = {}
        for link in links:
            name = names.get(link.nsid)
            if name is None:
                continue
            if not refresh and link in self._cache:
                cache[link] = self._cache[link]
                continue
            # named namespaces are files under /var/run/netns, the same whichever namespace we run in
            rc, out, _ = Shell().run(["ip", "-n", name, "-j", "addr", "show"], check=False)
            if rc == 0:
                cache[link] = peer_addresses(link, _loads(out))
        self._cache = cache
        return tuple(
            SourceBinding(pod_ip=a, interface=link.ifname, bridge=link.bridge) for link, addrs in cache.items()
            for a in addrs
        )


def _loads(text: str) -> list[dict[str, Any]]:
    data = json.loads(text or "[]")
    return data if isinstance(data, list) else []
