"""Stand-ins for the NAT and mark rules that real CNIs and kube-proxy put on a Kubernetes worker, for the lab.

A lab worker has no real CNI: its pods are namespaces behind the bridge `cni0`. What matters to egressgw is what a
CNI does to the node's packets: masquerade pod traffic leaving the cluster, and read or rewrite bits of the packet
mark. Each stand-in below writes rules of the shape the project is known to install (written here from their
documented behaviour, not taken from their code), combined with kube-proxy's chains:

- `nft` (the lab's default): one nft chain masquerading pod traffic that leaves by the uplink (`oifname eth1`).
- `flannel-nft` / `flannel-legacy`: flannel's `FLANNEL-POSTRTG` in the `nat` table: pod network to outside the pod
  network is masqueraded, with no output interface, by iptables-nft resp. iptables-legacy, IPv4 and IPv6.
- `calico`: natOutgoing (ipsets of the IPAM pools: `--match-set <masq pools> src ! --match-set <all pools> dst`),
  and Calico's mark use under its default mask 0xffff0000: raw clears 0xf0000 and sets 0x40000 on workload
  packets, mangle clears the scratch bits 0xe0000, filter FORWARD clears 0xe0000 and sets the accept bit 0x10000.
- `cilium`: masquerade of the node's pods to outside the cluster except by `cilium_+` devices, and marks in 0x0f00
  (raw NOTRACK of 0x200/0xf00, mangle stamping the 0x0f00 magic on pod packets, filter OUTPUT marking host traffic
  0xc00/0xf00, proxy-return 0xa00/0xe00 excluded from masquerade).
- kube-proxy (with every iptables stand-in, same backend): `KUBE-MARK-MASQ` ORs 0x4000, `KUBE-POSTROUTING` returns
  unless 0x4000 is set, then XORs it away and masquerades; `KUBE-FORWARD` accepts 0x4000; `KUBE-FIREWALL` drops
  0x8000 (older kube-proxy's drop mark).

Selected in a topology by the worker label `egressgw.cni` (lab/topogen.py writes the matching exec line), or
installed on a running lab with `install(lab, node, kind, networks)` (the e2e CNI matrix installs stand-ins before
and after the agent starts). `remove` takes every stand-in's rules away again.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from appliance.core.model import IPNetwork

LABEL = "egressgw.cni"
POD_INTERFACE = "cni0"  # the lab's pod bridge: the "workload interface" of the stand-ins
KUBE_MASQ = 0x4000
KUBE_DROP = 0x8000
CALICO_MASK = 0xFFFF0000
CILIUM_MAGIC = 0x0F00


class CniKind(Enum):
    NFT = "nft"
    FLANNEL_NFT = "flannel-nft"
    FLANNEL_LEGACY = "flannel-legacy"
    CALICO = "calico"
    CILIUM = "cilium"


#: every stand-in the e2e matrix runs
MATRIX = tuple(CniKind)


@dataclass(frozen=True, slots=True, kw_only=True)
class CniNetworks:
    """The node's pod networks, the cluster's pod networks (IPAM pools), the Service CIDRs, and for the `nft`
    stand-in the destinations it never masquerades and the uplink it masquerades on."""

    pods: tuple[IPNetwork, ...]
    cluster: tuple[IPNetwork, ...]
    services: tuple[IPNetwork, ...] = ()
    not_masqueraded: tuple[IPNetwork, ...] = ()
    uplink: str = "eth1"

    def of(self, version: int, nets: tuple[IPNetwork, ...]) -> list[str]:
        return [str(n) for n in nets if n.version == version]


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One command fed its input on stdin (`iptables-nft-restore`, `ipset restore`, `nft -f -`)."""

    argv: tuple[str, ...]
    input: str


class Runner(Protocol):
    def exec(self, node: str, argv: Sequence[str], *, check: bool = ..., timeout: float = ...,
             input: str | None = ...) -> subprocess.CompletedProcess[str]: ...


# ---- the rules ----------------------------------------------------------------------------------------------------

Tables = dict[str, list[str]]  # table -> restore lines (chain declarations first, then rules)


def _add(tables: Tables, table: str, chains: Sequence[str], rules: Sequence[str]) -> None:
    lines = tables.setdefault(table, [])
    lines[:0] = [f":{c} - [0:0]" for c in chains]
    lines += list(rules)


def _restore(tables: Tables) -> str:
    out: list[str] = []
    for table in ("raw", "mangle", "nat", "filter"):
        if table in tables:
            out += [f"*{table}", *tables[table], "COMMIT"]
    return "\n".join(out) + "\n"


def _kube_proxy(tables: Tables, v: int, nets: CniNetworks) -> None:
    svc = [f"-A KUBE-SERVICES -d {s} ! -s {c} -m comment --comment \"off-cluster to a service\" -j KUBE-MARK-MASQ"
           for s in nets.of(v, nets.services) for c in nets.of(v, nets.cluster)]
    _add(tables, "nat", ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"), [
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {KUBE_MASQ:#x}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {KUBE_MASQ:#x}/{KUBE_MASQ:#x} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {KUBE_MASQ:#x}",
        "-A KUBE-POSTROUTING -m comment --comment \"service traffic requiring SNAT\" -j MASQUERADE --random-fully",
        *svc,
    ])
    _add(tables, "filter", ("KUBE-FORWARD", "KUBE-FIREWALL"), [
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        "-A INPUT -j KUBE-FIREWALL",
        "-A OUTPUT -j KUBE-FIREWALL",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f"-A KUBE-FORWARD -m mark --mark {KUBE_MASQ:#x}/{KUBE_MASQ:#x} -j ACCEPT",
        "-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A KUBE-FIREWALL -m mark --mark {KUBE_DROP:#x}/{KUBE_DROP:#x} -j DROP",
    ])


def _flannel(tables: Tables, v: int, nets: CniNetworks) -> None:
    multicast = "224.0.0.0/4" if v == 4 else "ff00::/8"
    rules = ["-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
             f"-A FLANNEL-POSTRTG -m mark --mark {KUBE_MASQ:#x}/{KUBE_MASQ:#x} -j RETURN"]
    for c in nets.of(v, nets.cluster):
        rules += [f"-A FLANNEL-POSTRTG -s {c} -d {c} -j RETURN",
                  f"-A FLANNEL-POSTRTG -s {c} ! -d {multicast} -j MASQUERADE --random-fully"]
    _add(tables, "nat", ("FLANNEL-POSTRTG",), rules)
    fwd = ["-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD"]
    fwd += [f"-A FLANNEL-FWD -{d} {c} -j ACCEPT" for c in nets.of(v, nets.cluster) for d in "sd"]
    _add(tables, "filter", ("FLANNEL-FWD",), fwd)


def _calico_sets(v: int) -> tuple[str, str]:
    return f"cali{v}0masq-ipam-pools", f"cali{v}0all-ipam-pools"


def _calico(tables: Tables, v: int) -> None:
    masq, every = _calico_sets(v)
    _add(tables, "raw", ("cali-PREROUTING",), [
        "-A PREROUTING -m comment --comment \"cali:raw\" -j cali-PREROUTING",
        "-A cali-PREROUTING -j MARK --set-xmark 0x0/0xf0000",
        f"-A cali-PREROUTING -i {POD_INTERFACE} -j MARK --set-xmark 0x40000/0x40000",
        "-A cali-PREROUTING -m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j DROP",
    ])
    _add(tables, "mangle", ("cali-PREROUTING", "cali-from-host-endpoint"), [
        "-A PREROUTING -m comment --comment \"cali:mangle\" -j cali-PREROUTING",
        "-A cali-PREROUTING -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A cali-PREROUTING -m mark --mark 0x10000/0x10000 -j ACCEPT",
        "-A cali-PREROUTING -j MARK --set-xmark 0x0/0xe0000",
        "-A cali-PREROUTING -j cali-from-host-endpoint",
        "-A cali-PREROUTING -m mark --mark 0x10000/0x10000 -j ACCEPT",
    ])
    _add(tables, "filter", ("cali-FORWARD", "cali-from-wl-dispatch"), [
        "-A FORWARD -m comment --comment \"cali:filter\" -j cali-FORWARD",
        "-A cali-FORWARD -j MARK --set-xmark 0x0/0xe0000",
        f"-A cali-FORWARD -m mark --mark 0x0/0x10000 -i {POD_INTERFACE} -j cali-from-wl-dispatch",
        "-A cali-FORWARD -m mark --mark 0x10000/0x10000 -j ACCEPT",
        "-A cali-from-wl-dispatch -m comment --comment \"policy: allow\" -j MARK --set-xmark 0x10000/0x10000",
    ])
    _add(tables, "nat", ("cali-POSTROUTING", "cali-nat-outgoing"), [
        "-A POSTROUTING -m comment --comment \"cali:nat\" -j cali-POSTROUTING",
        "-A cali-POSTROUTING -j cali-nat-outgoing",
        f"-A cali-nat-outgoing -m set --match-set {masq} src -m set ! --match-set {every} dst "
        "-j MASQUERADE --random-fully",
    ])


def _cilium(tables: Tables, v: int, nets: CniNetworks) -> None:
    _add(tables, "raw", ("CILIUM_PRE_raw", "CILIUM_OUTPUT_raw"), [
        "-A PREROUTING -m comment --comment \"cilium-feeder: CILIUM_PRE_raw\" -j CILIUM_PRE_raw",
        "-A OUTPUT -m comment --comment \"cilium-feeder: CILIUM_OUTPUT_raw\" -j CILIUM_OUTPUT_raw",
        "-A CILIUM_PRE_raw -m mark --mark 0x200/0xf00 -m comment --comment \"to-proxy: notrack\" -j CT --notrack",
        "-A CILIUM_OUTPUT_raw -m mark --mark 0xa00/0xfffffeff -m comment --comment \"from-proxy\" -j CT --notrack",
    ])
    _add(tables, "mangle", ("CILIUM_PRE_mangle",), [
        "-A PREROUTING -m comment --comment \"cilium-feeder: CILIUM_PRE_mangle\" -j CILIUM_PRE_mangle",
        "-A CILIUM_PRE_mangle -m socket --transparent -j MARK --set-xmark 0x200/0xffffffff",
        f"-A CILIUM_PRE_mangle -i {POD_INTERFACE} -m comment --comment \"identity magic\" "
        f"-j MARK --set-xmark {CILIUM_MAGIC:#x}/{CILIUM_MAGIC:#x}",
    ])
    masq = [f"-A CILIUM_POST_nat -s {p} ! -d {c} ! -o cilium_+ -m comment --comment \"masquerade non-cluster\" "
            "-j MASQUERADE" for p in nets.of(v, nets.pods) for c in nets.of(v, nets.cluster)]
    _add(tables, "nat", ("CILIUM_POST_nat",), [
        "-A POSTROUTING -m comment --comment \"cilium-feeder: CILIUM_POST_nat\" -j CILIUM_POST_nat",
        "-A CILIUM_POST_nat -m mark --mark 0xa00/0xe00 -m comment --comment \"proxy return: no masquerade\" "
        "-j ACCEPT",
        *masq,
    ])
    _add(tables, "filter", ("CILIUM_OUTPUT", "CILIUM_FORWARD"), [
        "-A OUTPUT -m comment --comment \"cilium-feeder: CILIUM_OUTPUT\" -j CILIUM_OUTPUT",
        "-A FORWARD -m comment --comment \"cilium-feeder: CILIUM_FORWARD\" -j CILIUM_FORWARD",
        "-A CILIUM_OUTPUT -m mark ! --mark 0xe00/0xf00 -m mark ! --mark 0xd00/0xf00 -m mark ! --mark 0xa00/0xe00 "
        "-m comment --comment \"host traffic\" -j MARK --set-xmark 0xc00/0xf00",
        "-A CILIUM_FORWARD -o cilium_host -j ACCEPT",
        "-A CILIUM_FORWARD -i cilium_host -j ACCEPT",
    ])


def _nft_default(nets: CniNetworks) -> str:
    lines = ["table inet lab_cni {", "\tchain postrouting {",
             "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    for v, fam in ((4, "ip"), (6, "ip6")):
        skip = ", ".join(nets.of(v, nets.not_masqueraded))
        for p in nets.of(v, nets.pods):
            dst = f" {fam} daddr != {{ {skip} }}" if skip else ""
            lines.append(f"\t\toifname {nets.uplink} {fam} saddr {p}{dst} masquerade comment \"lab CNI stand-in\"")
    return "\n".join([*lines, "\t}", "}"]) + "\n"


def steps(kind: CniKind, nets: CniNetworks) -> tuple[Step, ...]:
    """The commands that install stand-in `kind` on a node with networks `nets` (pure)."""
    if kind is CniKind.NFT:
        return (Step(argv=("nft", "-f", "-"), input=_nft_default(nets)),)
    out: list[Step] = []
    backend = "legacy" if kind is CniKind.FLANNEL_LEGACY else "nft"
    if kind is CniKind.CALICO:
        sets: list[str] = []
        for v, fam in ((4, "inet"), (6, "inet6")):
            for name in _calico_sets(v):
                sets.append(f"create {name} hash:net family {fam}")
                sets += [f"add {name} {c}" for c in nets.of(v, nets.cluster)]
        out.append(Step(argv=("ipset", "restore"), input="\n".join(sets) + "\n"))
    for v, tool in ((4, "iptables"), (6, "ip6tables")):
        tables: Tables = {}
        if kind in (CniKind.FLANNEL_NFT, CniKind.FLANNEL_LEGACY):
            _flannel(tables, v, nets)
        elif kind is CniKind.CALICO:
            _calico(tables, v)
        else:
            _cilium(tables, v, nets)
        _kube_proxy(tables, v, nets)
        out.append(Step(argv=(f"{tool}-{backend}-restore",), input=_restore(tables)))
    return tuple(out)


def removal_steps(legacy_tables: dict[str, Sequence[str]]) -> tuple[Step, ...]:
    """Commands that take every stand-in's rules away (idempotent): the lab's nodes hold no other iptables rules,
    ipsets or `lab_cni` tables (the lab's `inet`, the data-path testbed's `ip`/`ip6`); egressgw's own tables
    (`inet egressgw`, `bridge egressgw`) are left alone. `legacy_tables`: per iptables-legacy tool, the tables that
    exist (emptied, never created)."""
    nft = "".join(f"table {f} {t}\ndelete table {f} {t}\n"
                  for f in ("ip", "ip6") for t in ("raw", "mangle", "nat", "filter")) + (
        "".join(f"table {f} lab_cni\ndelete table {f} lab_cni\n" for f in ("inet", "ip", "ip6")))
    out = [Step(argv=(f"{tool}-restore",), input="".join(f"*{t}\n-X\nCOMMIT\n" for t in tables))
           for tool, tables in sorted(legacy_tables.items()) if tables]
    return (*out, Step(argv=("nft", "-f", "-"), input=nft), Step(argv=("ipset", "destroy"), input=""))


# ---- applying -----------------------------------------------------------------------------------------------------

def remove(lab: Runner, node: str) -> None:
    legacy: dict[str, Sequence[str]] = {}
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        saved = lab.exec(node, [f"{tool}-save"], timeout=30).stdout or ""
        legacy[tool] = [line[1:].strip() for line in saved.splitlines() if line.startswith("*")]
    for step in removal_steps(legacy):
        lab.exec(node, step.argv, input=step.input, timeout=30)


def install(lab: Runner, node: str, kind: CniKind, nets: CniNetworks) -> None:
    """Replace whatever stand-in `node` has with `kind`: its tables are created now, i.e. after any egressgw table
    already there (the "CNI after the agent" order of the matrix)."""
    remove(lab, node)
    for step in steps(kind, nets):
        lab.exec(node, step.argv, input=step.input, timeout=30)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lab.cni install KIND --pods CIDR... --cluster CIDR...`: used by topology exec lines (runs in the
    node's namespace already)."""
    parser = argparse.ArgumentParser(prog="python -m lab.cni")
    parser.add_argument("action", choices=("install", "remove"))
    parser.add_argument("kind", nargs="?", choices=[k.value for k in CniKind], default=CniKind.NFT.value)
    for opt in ("pods", "cluster", "services", "not-masqueraded"):
        parser.add_argument(f"--{opt}", action="append", default=[], type=ipaddress.ip_network)
    parser.add_argument("--uplink", default="eth1")
    opts = parser.parse_args(argv)

    class _Here:
        def exec(self, node: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(list(argv), input=input, text=True, check=check, timeout=timeout,
                                  capture_output=True)

    if opts.action == "remove":
        remove(_Here(), "")
        return 0
    nets = CniNetworks(pods=tuple(opts.pods), cluster=tuple(opts.cluster), services=tuple(opts.services),
                       not_masqueraded=tuple(opts.not_masqueraded), uplink=opts.uplink)
    install(_Here(), "", CniKind(opts.kind), nets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
