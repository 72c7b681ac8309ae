"""Property: applying `diff(observed, desired)` to `observed` gives `desired`, and then the diff is empty."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Interface, ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.datapath.plan.kernel_model import (
    Change,
    Encap,
    KernelState,
    LocalAddress,
    Neighbour,
    Op,
    Route,
    Rule,
    Sysctl,
    TunnelLink,
    diff,
)

LINKS = [TunnelLink(name=f"egw-vx{p}", port=p, mac=m, mtu=mtu, address=IPv4Interface("169.254.77.1/32"))
         for p in (4789, 4790) for m in ("02:e6:6e:00:00:01", "02:e6:6e:00:00:02") for mtu in (1450, 1430)]
ADDRS = [LocalAddress(ip=ip_address(a)) for a in ("203.0.113.130", "203.0.113.131", "2001:db8:e1::2")]
NEIGH = [Neighbour(dev=d, ip=ip_address(a), mac=m) for d in ("egw-vx4789", "egw-vx4790")
         for a in ("169.254.77.2", "fe80::e6e:2") for m in ("02:e6:6e:00:00:02", "02:e6:6e:00:00:09")]
ROUTES = [Route(table=t, dst=ip_network(d), dev=dev, via=ip_address(v), encap=Encap(vni=7700, dst=ip_address(e)))
          for t in (1, 2) for d, v in (("100.64.1.10/32", "169.254.77.2"), ("2001:db8:64:1::10/128", "fe80::e6e:2"))
          for dev in ("egw-vx4789", "egw-vx4790") for e in ("100.127.0.11", "100.127.0.12")]
RULES = [Rule(family=f, priority=p, fwmark=m, mask=0xFFFFFFFF, table=t, iif=i)
         for f in (4, 6) for p in (3000, 3001) for m, t in ((1, 1), (2, 2)) for i in ("", "lo")]
SYSCTLS = [Sysctl(key=k, value=v) for k in ("a", "b") for v in ("0", "1", "2")]


def _unique(items: list, key) -> list:  # type: ignore[no-untyped-def,type-arg]
    seen, out = set(), []
    for x in items:
        if key(x) not in seen:
            seen.add(key(x))
            out.append(x)
    return out


@st.composite
def states(draw: st.DrawFn) -> KernelState:
    def pick(pool: list, key) -> frozenset:  # type: ignore[no-untyped-def,type-arg]
        return frozenset(_unique(draw(st.lists(st.sampled_from(pool), max_size=len(pool))), key))

    links = pick(LINKS, lambda x: x.name)
    devs = {x.name for x in links}  # consistent, like the kernel and the planners: nothing hangs off a missing link
    return KernelState(
        links=links, addresses=pick(ADDRS, lambda x: x),
        neighbours=frozenset(n for n in pick(NEIGH, lambda x: (x.dev, x.ip)) if n.dev in devs),
        routes=frozenset(r for r in pick(ROUTES, lambda x: x.key) if r.dev in devs),
        rules=pick(RULES, lambda x: x), sysctls=pick(SYSCTLS, lambda x: x.key),
    )


def simulate(state: KernelState, changes: tuple[Change, ...]) -> KernelState:
    """What the kernel does with each change (replace = by identity key; deleting a link drops what hangs off it)."""
    s = state
    for ch in changes:
        it = ch.item
        if isinstance(it, TunnelLink):
            links = {x for x in s.links if x.name != it.name}
            if ch.op is Op.DELETE:
                s = replace(s, neighbours=frozenset(n for n in s.neighbours if n.dev != it.name),
                            routes=frozenset(r for r in s.routes if r.dev != it.name))
            else:
                links.add(it)
            s = replace(s, links=frozenset(links))
        elif isinstance(it, LocalAddress):
            s = replace(s, addresses=(s.addresses - {it}) if ch.op is Op.DELETE else (s.addresses | {it}))
        elif isinstance(it, Neighbour):
            rest = frozenset(n for n in s.neighbours if (n.dev, n.ip) != (it.dev, it.ip))
            s = replace(s, neighbours=rest if ch.op is Op.DELETE else rest | {it})
        elif isinstance(it, Route):
            rest = frozenset(r for r in s.routes if r.key != it.key)
            s = replace(s, routes=rest if ch.op is Op.DELETE else rest | {it})
        elif isinstance(it, Rule):
            s = replace(s, rules=(s.rules - {it}) if ch.op is Op.DELETE else (s.rules | {it}))
        elif isinstance(it, Sysctl):
            s = replace(s, sysctls=frozenset({x for x in s.sysctls if x.key != it.key} | {it}))
    return s


@settings(max_examples=100, deadline=None)
@given(states(), states())
def test_diff_converges_in_one_step(observed: KernelState, desired: KernelState) -> None:
    changes = diff(observed, desired)
    result = simulate(observed, changes)
    # sysctls are only ever set, never removed: compare the desired keys
    assert replace(result, sysctls=frozenset()) == replace(desired, sysctls=frozenset())
    assert {s for s in result.sysctls if s.key in {d.key for d in desired.sysctls}} == desired.sysctls
    assert diff(result, desired) == ()
