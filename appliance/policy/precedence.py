"""Precedence of overlapping policies and their disjoint destinations per pod IP (pure).

When several policies select the same pod IP, each destination belongs to exactly one of them. The order, highest
precedence first, over the (policy, destSubnet entry) pairs of the pod IP's family:

1. higher `priority`;
2. the more specific destination: the longer prefix of the entry (an empty destSubnet means 0.0.0.0/0 or ::/0, the
   least specific);
3. EgressPolicy before EgressClusterPolicy;
4. name, then namespace.

Walking the entries in that order, each entry keeps what the entries before it have not claimed (address
exclusion), so the result is disjoint. Many pods share the same set of policies, so `DisjointCache` computes this
once per (family, policy set).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.core.model import EgressPolicy, IPNetwork, PolicyKind

EVERYTHING: dict[int, IPNetwork] = {4: ipaddress.IPv4Network("0.0.0.0/0"), 6: ipaddress.IPv6Network("::/0")}

PolicyKey = tuple[int, int, int, str, str]


def destinations(policy: EgressPolicy, version: int) -> tuple[IPNetwork, ...]:
    """The policy's destinations of one family; () when its destSubnet lists only the other family."""
    if not policy.dest_subnet:
        return (EVERYTHING[version],)
    return tuple(n for n in policy.dest_subnet if n.version == version)


def entry_key(policy: EgressPolicy, prefixlen: int) -> PolicyKey:
    kind = 0 if policy.ref.kind is PolicyKind.NAMESPACED else 1
    return (-policy.priority, -prefixlen, kind, policy.ref.name, policy.ref.namespace)


def policy_key(policy: EgressPolicy, version: int) -> PolicyKey:
    """Order of whole policies for one family (the Steering rank): by their most specific entry."""
    nets = destinations(policy, version)
    return entry_key(policy, max((n.prefixlen for n in nets), default=-1))


def collapse(nets: Sequence[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    out: list[IPNetwork] = list(ipaddress.collapse_addresses(v4))
    out.extend(ipaddress.collapse_addresses(v6))
    return tuple(out)


def disjoint(policies: Sequence[EgressPolicy], version: int) -> list[tuple[int, tuple[IPNetwork, ...]]]:
    """For each policy (by position in `policies`) the destinations it wins for a pod IP of `version`.

    Policies that win nothing are left out. The result is ordered by the policies' `policy_key`.
    """
    return DisjointCache.over(policies).get(version, tuple(range(len(policies))))


Interval = tuple[int, int]


def _interval(net: IPNetwork) -> Interval:
    lo = int(net.network_address)
    return lo, lo | int(net.hostmask)


def _minus(lo: int, hi: int, claimed: list[Interval]) -> list[Interval]:
    """[lo, hi] minus the sorted, disjoint intervals in `claimed`."""
    out: list[Interval] = []
    for clo, chi in claimed:
        if chi < lo:
            continue
        if clo > hi:
            break
        if clo > lo:
            out.append((lo, clo - 1))
        lo = chi + 1
        if lo > hi:
            return out
    out.append((lo, hi))
    return out


def _insert(claimed: list[Interval], pieces: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for lo, hi in sorted(claimed + pieces):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


_CIDR_MEMO: dict[tuple[int, int, int], tuple[IPNetwork, ...]] = {}


def _to_cidrs(version: int, intervals: list[Interval]) -> tuple[IPNetwork, ...]:
    """The smallest list of CIDRs covering the intervals (equal to `collapse` of the same addresses)."""
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    out: list[IPNetwork] = []
    for lo, hi in _insert([], intervals):
        hit = _CIDR_MEMO.get((version, lo, hi))
        if hit is None:
            nets: list[IPNetwork] = []
            start = lo
            while start <= hi:
                size = (start & -start) if start else 1 << bits
                while start + size - 1 > hi:
                    size >>= 1
                nets.append(make((start, bits - size.bit_length() + 1)))
                start += size
            hit = tuple(nets)
            if len(_CIDR_MEMO) < 100_000:
                _CIDR_MEMO[(version, lo, hi)] = hit
        out.extend(hit)
    return tuple(out)


Signature = tuple[tuple[int, int, int], ...]


@dataclass(slots=True)
class DisjointCache:
    """Memoised `disjoint` per (family, set of policy positions) and per (family, shape of the problem).

    The shape is the precedence-ordered list of (policy in order of appearance, destination interval): two policy
    sets with the same shape (common: policies differ by name only) share one computation on integer intervals.
    """

    policies: Sequence[EgressPolicy]
    _memo: dict[tuple[int, tuple[int, ...]], list[tuple[int, tuple[IPNetwork, ...]]]]
    _shapes: dict[tuple[int, Signature], list[tuple[int, tuple[IPNetwork, ...]]]]
    _entries: dict[tuple[int, int], list[tuple[PolicyKey, int, int]]]
    _keys: dict[tuple[int, int], PolicyKey]

    @classmethod
    def over(cls, policies: Sequence[EgressPolicy]) -> DisjointCache:
        return cls(policies, {}, {}, {}, {})

    def policy_key(self, pos: int, version: int) -> PolicyKey:
        found = self._keys.get((pos, version))
        if found is None:
            found = self._keys[(pos, version)] = policy_key(self.policies[pos], version)
        return found

    def _entries_of(self, pos: int, version: int) -> list[tuple[PolicyKey, int, int]]:
        found = self._entries.get((pos, version))
        if found is None:
            p = self.policies[pos]
            found = [(entry_key(p, n.prefixlen), *_interval(n)) for n in destinations(p, version)]
            self._entries[(pos, version)] = found
        return found

    def get(self, version: int, positions: tuple[int, ...]) -> list[tuple[int, tuple[IPNetwork, ...]]]:
        """(position in `policies`, destinations) won by each of the given policies; `positions` must be sorted."""
        key = (version, positions)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        entries = sorted((k, pos, lo, hi) for pos in positions for k, lo, hi in self._entries_of(pos, version))
        local: dict[int, int] = {}
        for _, pos, _, _ in entries:
            local.setdefault(pos, len(local))
        sig: Signature = tuple((local[pos], lo, hi) for _, pos, lo, hi in entries)
        shape = self._shapes.get((version, sig))
        if shape is None:
            shape = self._shapes[(version, sig)] = _solve(version, sig)
        by_local = {v: k for k, v in local.items()}
        result = [(by_local[i], nets) for i, nets in shape]
        result.sort(key=lambda r: (self.policy_key(r[0], version), r[0]))
        self._memo[key] = result
        return result


def _solve(version: int, sig: Signature) -> list[tuple[int, tuple[IPNetwork, ...]]]:
    claimed: list[Interval] = []
    won: dict[int, list[Interval]] = {}
    for i, lo, hi in sig:
        rest = _minus(lo, hi, claimed)
        if rest:
            won.setdefault(i, []).extend(rest)
            claimed = _insert(claimed, rest)
    return [(i, _to_cidrs(version, won[i])) for i in sorted(won)]
