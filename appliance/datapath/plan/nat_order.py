"""Where the worker's identity SNAT sits among the node's NAT chains, and which foreign chains could still precede it.

Why it matters: a steered packet must keep its pod source inside the tunnel (the gateway checks (worker, pod IP) and
SNATs to the EIP). The CNI's masquerade would rewrite it to the node IP; our postrouting nat chain prevents that by
binding the connection first with an identity SNAT, because once a nat chain binds a connection the later nat
chains of the hook are skipped. Every nat chain of a hook (nft chains of any table and family, iptables-nft and
iptables-legacy `nat` tables) runs inside the NAT core's one hook, ordered by the chains' own priorities; equal
priorities run in creation order, so "same priority" is a coin toss decided by who (re)created their table last.

The kernel refuses nat chains at or before conntrack (priority <= -200, checked on 6.18: -200 is rejected with
EOPNOTSUPP, -199 accepted). CNIs and firewalls use srcnat (100: iptables' nat table, Flannel, Calico natOutgoing,
kube-proxy, Docker), srcnat + 10 (firewalld) or srcnat - 10 (our former place, a natural "just before the CNI"
choice). We take -190: ahead of every priority in realistic use, with -199..-191 left for someone who deliberately
wants to precede us; `foreign_nat_chains` finds such chains (or any at or before -190) so the agent reports them.

Pure: parses `nft -j list chains` output; running nft is the applier's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from appliance.datapath.plan.nft_rendering import FAMILY, TABLE

#: the families of our tables holding nat chains: inet (MODERN ruleset), ip and ip6 (COMPAT ruleset)
OUR_FAMILIES = (FAMILY, "ip", "ip6")
#: the priority of the worker's identity SNAT chain (postrouting, type nat)
WORKER_SNAT_PRIORITY = -190


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class NatChain:
    """A nat-type postrouting chain of someone else that runs at or before our identity SNAT."""

    priority: int
    family: str
    table: str
    chain: str

    @property
    def name(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


def foreign_nat_chains(chains_json: str, *, priority: int = WORKER_SNAT_PRIORITY) -> tuple[NatChain, ...]:
    """The nat postrouting chains, other than ours, at or before `priority` (`nft -j list chains` output), sorted.

    Such a chain may masquerade a steered packet before our identity SNAT binds it: the packet then enters the
    tunnel with the node address and the gateway drops it as spoofed. We cannot tell from the chain alone whether
    its rules match pod traffic, so every one is reported.
    """
    out: set[NatChain] = set()
    for item in json.loads(chains_json or "{}").get("nftables", []):
        c = item.get("chain")
        if not isinstance(c, dict) or c.get("type") != "nat" or c.get("hook") != "postrouting":
            continue
        if c.get("family") in OUR_FAMILIES and c.get("table") == TABLE:
            continue  # ours: the inet table (MODERN) or the per-family NAT tables (COMPAT, plan.nft_variant)
        prio = c.get("prio")
        if isinstance(prio, int) and prio <= priority:
            out.add(NatChain(priority=prio, family=str(c.get("family")), table=str(c.get("table")),
                             chain=str(c.get("name"))))
    return tuple(sorted(out))
