"""Fault primitives for the lab's tests and benchmarks: cut a node off from the kube-apiserver (and only from it).

`api_cut(system, node)` is a context manager: inside it, an nftables table in the node's namespace drops every packet
to and from the lab's API node addresses (both families), so the node's BGP, BFD, tunnels and everything else keep
working while its API connections stall exactly as behind a broken firewall (no RST, no ICMP: dropped). Leaving the
context (even by an exception) removes the table. The API node is found by its role in the topology, never by
address; the table is named after the lab so a leftover is attributable (`lab down` removes the namespace anyway).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from lab.system import System

#: nftables table (family inet) a cut installs in the node's namespace
CUT_TABLE = "egw_lab_api_cut"


def api_addresses(system: System) -> list[str]:
    """Every address of the lab's API node (the kube-apiserver listens on its cluster-LAN interface)."""
    api = next(n for n in system.nodes.values() if n.role == "kube-api")
    return [str(ifc.ip) for _, ifc in api.addresses]


def cut_ruleset(addresses: Iterable[str]) -> str:
    """The nft script of a cut (pure): drop both directions to/from each address, in input, output and forward."""
    v4 = sorted(a for a in addresses if ":" not in a)
    v6 = sorted(a for a in addresses if ":" in a)
    matches = [f"ip saddr {{ {', '.join(v4)} }}", f"ip daddr {{ {', '.join(v4)} }}"] if v4 else []
    matches += [f"ip6 saddr {{ {', '.join(v6)} }}", f"ip6 daddr {{ {', '.join(v6)} }}"] if v6 else []
    chains = []
    for hook in ("input", "output", "forward"):
        rules = "".join(f"\t\t{m} counter drop\n" for m in matches)
        chains.append(f"\tchain {hook} {{\n\t\ttype filter hook {hook} priority -300; policy accept;\n{rules}\t}}\n")
    return f"table inet {CUT_TABLE} {{\n{''.join(chains)}}}\n"


def cut_api(system: System, node: str) -> None:
    heal_api(system, node)
    system.lab.exec(node, ["nft", "-f", "-"], input=cut_ruleset(api_addresses(system)))


def heal_api(system: System, node: str) -> None:
    system.lab.exec(node, ["nft", "delete", "table", "inet", CUT_TABLE], check=False)


def is_cut(system: System, node: str) -> bool:
    res = system.lab.exec(node, ["nft", "list", "table", "inet", CUT_TABLE], check=False)
    return res.returncode == 0


@contextlib.contextmanager
def api_cut(system: System, *nodes: str) -> Iterator[None]:
    """Cut `nodes` off from the API server for the duration of the block."""
    try:
        for n in nodes:
            cut_api(system, n)
        yield
    finally:
        for n in nodes:
            heal_api(system, n)
