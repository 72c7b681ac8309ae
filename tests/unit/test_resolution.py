"""Table tests of policy resolution: gateway choice, EIP assignment, selection, seed-anchor scenarios (P/R ids)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.core.intent import Intent, PolicyOutcome, PolicyState, Steering
from appliance.core.model import PolicyKind, PolicyRef
from appliance.core.snapshot import ObjectRef, Problem, Reason, Snapshot
from appliance.policy.resolution import resolve
from tests.unit.resolution_builders import (
    appliance,
    gateway,
    gw_node,
    ip,
    net,
    node,
    ns,
    ns_default,
    pod,
    policy,
)

NODES = (gw_node("gw1", "198.51.100.11"), gw_node("gw2", "198.51.100.12"), node("w1", "100.127.0.11"))


def snap(**kw: object) -> Snapshot:
    kw.setdefault("nodes", NODES)
    kw.setdefault("namespaces", (ns("default"), ns("team-a"), ns("team-b")))
    return Snapshot(**kw)  # type: ignore[arg-type]


def outcome(intent: Intent, name: str, namespace: str = "default") -> PolicyOutcome:
    for o in intent.outcomes:
        if o.policy.name == name and o.policy.namespace in (namespace, ""):
            return o
    raise AssertionError(f"no outcome for {name}")


def steer(intent: Intent, pod_ip: str) -> list[Steering]:
    return [s for s in intent.steerings if s.pod_ip == ip(pod_ip)]


def test_p02_cluster_default_gateway_used_when_no_gateway_named() -> None:
    s = snap(
        gateways=(gateway("gw-a"), gateway("gw-default", cluster_default=True)),
        policies=(policy("web"),),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}),),
    )
    intent = resolve(s)
    o = outcome(intent, "web")
    assert (o.state, o.gateway, o.eip_v4) == (PolicyState.READY, "gw-default", ip("203.0.113.128"))
    [st] = steer(intent, "100.64.1.10")
    assert st.gateway == "gw-default" and st.destinations == (net("0.0.0.0/0"),)


def test_p03_namespace_default_beats_cluster_default() -> None:
    s = snap(
        gateways=(gateway("gw-ns", v4=("203.0.113.10",)), gateway("gw-default", cluster_default=True)),
        namespaces=(ns_default("team-a", "gw-ns"), ns("team-b")),
        policies=(policy("web", "team-a"), policy("web", "team-b")),
    )
    intent = resolve(s)
    assert outcome(intent, "web", "team-a").gateway == "gw-ns"
    assert outcome(intent, "web", "team-a").eip_v4 == ip("203.0.113.10")
    assert outcome(intent, "web", "team-b").gateway == "gw-default"


def test_cluster_policy_ignores_namespace_default() -> None:
    s = snap(
        gateways=(gateway("gw-ns"), gateway("gw-default", cluster_default=True)),
        namespaces=(ns_default("team-a", "gw-ns"),),
        policies=(policy("all", cluster=True),),
    )
    assert outcome(resolve(s), "all").gateway == "gw-default"


@pytest.mark.parametrize(
    ("gateways", "namespaces", "pol", "reason"),
    [
        ((gateway("gw"),), (ns("default"),), policy("p", gateway="nope"), Reason.GATEWAY_NOT_FOUND),
        ((gateway("gw"),), (ns_default("default", "nope"),), policy("p"), Reason.GATEWAY_NOT_FOUND),
        ((gateway("gw"),), (ns("default"),), policy("p"), Reason.NO_DEFAULT_GATEWAY),
        ((), (ns("default"),), policy("p", cluster=True), Reason.NO_DEFAULT_GATEWAY),
        ((gateway("gw", v4=()),), (ns("default"),), policy("p", gateway="gw"), Reason.NO_POOL_FOR_FAMILY),
    ],
)
def test_missing_pieces_make_the_policy_pending_never_invalid(gateways, namespaces, pol, reason) -> None:  # type: ignore[no-untyped-def]
    s = snap(gateways=gateways, namespaces=namespaces, policies=(pol,), pods=(pod("default", "x", "100.64.1.10"),))
    o = resolve(s).outcomes[0]
    assert (o.state, o.reason) == (PolicyState.PENDING, reason)
    assert o.message
    assert resolve(s).steerings == ()


def test_explicit_eip_outside_the_resolved_gateways_pool_is_invalid_never_allocated() -> None:
    """A spec error, not something to wait for: validation refuses an EIP outside the named gateway's pool; this is
    the same rule for a gateway chosen by default (cluster default here)."""
    s = snap(gateways=(gateway("gw", cluster_default=True),), namespaces=(ns("default"),),
             policies=(policy("p", eip4="198.51.100.99"),), pods=(pod("default", "x", "100.64.1.10"),))
    o = resolve(s).outcomes[0]
    assert (o.state, o.reason) == (PolicyState.INVALID, Reason.EIP_NOT_IN_POOL)
    assert o.message.startswith("spec.egressIP.ipv4: 198.51.100.99 ")
    assert o.eip_v4 is None and resolve(s).steerings == ()


def test_p08_default_eip_configured_and_implicit_first_address() -> None:
    s = snap(
        gateways=(
            gateway("gw-a", default4="203.0.113.200", v6=("2001:db8:e1::10-2001:db8:e1::20",)),
            gateway("gw-b", v4=("203.0.113.20-203.0.113.30",)),
        ),
        policies=(policy("a", gateway="gw-a"), policy("a2", gateway="gw-a"), policy("b", gateway="gw-b")),
    )
    intent = resolve(s)
    assert (outcome(intent, "a").eip_v4, outcome(intent, "a").eip_v6) == (ip("203.0.113.200"), ip("2001:db8:e1::10"))
    assert outcome(intent, "a2").eip_v4 == ip("203.0.113.200")  # default EIPs are shared
    assert outcome(intent, "b").eip_v4 == ip("203.0.113.20")


def test_p09_rr_gives_distinct_eips_in_creation_order() -> None:
    pols = tuple(policy(f"p{i}", gateway="gw", rr=True, created=f"2026-01-01T00:00:0{9 - i}Z") for i in range(5))
    intent = resolve(snap(gateways=(gateway("gw", default4="203.0.113.128"),), policies=pols))
    eips = {o.policy.name: o.eip_v4 for o in intent.outcomes}
    assert len(set(eips.values())) == 5
    # the configured default EIP (index 0) is never handed to rr; the oldest policy (p4) gets the lowest index
    assert eips["p4"] == ip("203.0.113.129") and eips["p0"] == ip("203.0.113.133")


def test_r08_pool_exhaustion_is_one_to_one_and_surplus_pending() -> None:
    n = 10
    pols = tuple(policy(f"p{i:02d}", gateway="gw", rr=True, created=f"t{i:02d}") for i in range(n + 20))
    intent = resolve(snap(gateways=(gateway("gw", v4=("203.0.113.140-203.0.113.149",)),), policies=pols))
    ready = [o for o in intent.outcomes if o.state is PolicyState.READY]
    pending = [o for o in intent.outcomes if o.state is PolicyState.PENDING]
    assert len(ready) == n and len({o.eip_v4 for o in ready}) == n
    assert len(pending) == 20 and all(o.reason is Reason.POOL_EXHAUSTED and o.eip_v4 is None for o in pending)
    assert {o.policy.name for o in ready} == {f"p{i:02d}" for i in range(n)}


def test_rr_is_sticky_and_a_freed_index_goes_to_the_next_new_policy() -> None:
    g = gateway("gw", v4=("203.0.113.140-203.0.113.143",))
    pols = [policy(f"p{i}", gateway="gw", rr=True, created=f"t{i}") for i in range(4)]
    first = resolve(snap(gateways=(g,), policies=tuple(pols)))
    # p1 leaves, a new policy arrives created earlier than everyone: the others keep their EIPs, it gets p1's
    newcomer = policy("new", gateway="gw", rr=True, created="t0-early")
    second = resolve(snap(gateways=(g,), policies=(pols[0], pols[2], pols[3], newcomer)), previous=first)
    for name in ("p0", "p2", "p3"):
        assert outcome(second, name).eip_v4 == outcome(first, name).eip_v4
    assert outcome(second, "new").eip_v4 == outcome(first, "p1").eip_v4


def test_rr_never_takes_an_eip_in_use_by_explicit_or_default_policies() -> None:
    g = gateway("gw", v4=("203.0.113.140-203.0.113.143",))
    pols = (
        policy("fixed", gateway="gw", eip4="203.0.113.141"),
        policy("dflt", gateway="gw"),  # implicit default = first address .140
        policy("r1", gateway="gw", rr=True, created="a"),
        policy("r2", gateway="gw", rr=True, created="b"),
        policy("r3", gateway="gw", rr=True, created="c"),
    )
    intent = resolve(snap(gateways=(g,), policies=pols))
    assert outcome(intent, "r1").eip_v4 == ip("203.0.113.142")
    assert outcome(intent, "r2").eip_v4 == ip("203.0.113.143")
    assert outcome(intent, "r3").reason is Reason.POOL_EXHAUSTED


def test_rr_dual_stack_pair_shares_the_pool_index() -> None:
    g = gateway("gw", v4=("203.0.113.140-203.0.113.142",), v6=("2001:db8:e1::/120",))
    pols = tuple(policy(f"p{i}", gateway="gw", rr=True, created=str(i)) for i in range(4))
    intent = resolve(snap(gateways=(g,), policies=pols))
    for i in range(3):
        o = outcome(intent, f"p{i}")
        assert int(o.eip_v4) - int(ip("203.0.113.140")) == int(o.eip_v6) - int(ip("2001:db8:e1::"))  # type: ignore[arg-type]
    assert outcome(intent, "p3").reason is Reason.POOL_EXHAUSTED  # capacity = the smaller pool


def test_p22_explicit_eip_honoured_and_shared() -> None:
    s = snap(
        gateways=(gateway("gw", v6=(  "2001:db8:e1::/64",)),),
        policies=(
            policy("a", gateway="gw", eip4="203.0.113.150", eip6="2001:db8:e1::7"),
            policy("b", gateway="gw", eip4="203.0.113.150", rr=True),
        ),
        pods=(pod("default", "a-1", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "a"}),),
    )
    intent = resolve(s)
    assert (outcome(intent, "a").eip_v4, outcome(intent, "a").eip_v6) == (ip("203.0.113.150"), ip("2001:db8:e1::7"))
    assert outcome(intent, "b").eip_v4 == ip("203.0.113.150")
    # b's IPv6 comes from rr: the index of its explicit IPv4 (22 = 0x16) is used by a too, so the lowest free one
    # (0 is free: no default policy; 7 is a's)
    assert outcome(intent, "b").eip_v6 == ip("2001:db8:e1::")
    [v4] = steer(intent, "100.64.1.10")
    # the tunnel endpoints: the EIP and its partner at the same pool index (.150 is index 22)
    assert v4.endpoints == (ip("203.0.113.150"), ip("2001:db8:e1::16"))


def test_rr_pairs_its_family_with_its_own_explicit_address() -> None:
    s = snap(
        gateways=(gateway("gw", v6=("2001:db8:e1::/64",)),),
        policies=(policy("b", gateway="gw", eip4="203.0.113.150", rr=True),),
    )
    assert outcome(resolve(s), "b").eip_v6 == ip("2001:db8:e1::16")


def test_p21_namespaced_policy_selects_only_its_namespace() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        policies=(policy("web", "team-a"),),
        pods=(
            pod("team-a", "web-1", "100.64.1.10", lbl={"app": "web"}),
            pod("team-b", "web-1", "100.64.1.11", lbl={"app": "web"}),
        ),
    )
    intent = resolve(s)
    assert [st.pod_ip for st in intent.steerings] == [ip("100.64.1.10")]
    assert outcome(intent, "web", "team-a").selected_ips == 1


def test_cluster_policy_namespace_selector() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        namespaces=(ns("team-a", env="prod"), ns("team-b", env="dev")),
        policies=(policy("prod", cluster=True, selector={}, ns_selector={"env": "prod"}),
                  policy("all", cluster=True, selector={"app": "db"})),
        pods=(
            pod("team-a", "web-1", "100.64.1.10", lbl={"app": "web"}),
            pod("team-b", "web-1", "100.64.1.11", lbl={"app": "web"}),
            pod("team-b", "db-1", "100.64.1.12", lbl={"app": "db"}),
        ),
    )
    intent = resolve(s)
    assert {(str(st.pod_ip), st.policy.name) for st in intent.steerings} == {
        ("100.64.1.10", "prod"),
        ("100.64.1.12", "all"),
    }


def test_ineligible_pods_are_not_selected() -> None:
    base = pod("default", "p", "100.64.1.10", lbl={"app": "web"})
    pods = (
        base,
        replace(base, name="host", ips=(ip("100.64.1.20"),), host_network=True),
        replace(base, name="done", ips=(ip("100.64.1.21"),), phase="Succeeded"),
        replace(base, name="failed", ips=(ip("100.64.1.22"),), phase="Failed"),
        replace(base, name="unscheduled", ips=(ip("100.64.1.23"),), node_name=""),
        replace(base, name="noip", ips=()),
        replace(base, name="pending", ips=(ip("100.64.1.24"),), phase="Pending"),
    )
    s = snap(gateways=(gateway("gw", cluster_default=True),), policies=(policy("web"),), pods=pods)
    assert [str(st.pod_ip) for st in resolve(s).steerings] == ["100.64.1.10", "100.64.1.24"]


def test_pod_subnet_selects_pod_ips_inside_the_subnets_of_the_namespace() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True, v6=("2001:db8:e1::/64",)),),
        policies=(policy("sub", subnet=("100.64.1.0/28", "2001:db8:64:1::/64")),),
        pods=(
            pod("default", "in", "100.64.1.10", "2001:db8:64:2::10"),
            pod("default", "out", "100.64.1.20", "2001:db8:64:1::20"),
            pod("team-a", "other-ns", "100.64.1.11"),
        ),
    )
    got = {(st.pod, str(st.pod_ip)) for st in resolve(s).steerings}
    assert got == {("in", "100.64.1.10"), ("out", "2001:db8:64:1::20")}


def test_dual_stack_pod_ips_resolved_per_family() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True, v6=("2001:db8:e1::/64",)),),
        policies=(policy("web", dest=("198.51.100.0/24", "2001:db8:198::/48")),),
        pods=(pod("default", "web-1", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "web"}),),
    )
    intent = resolve(s)
    [v4] = steer(intent, "100.64.1.10")
    [v6] = steer(intent, "2001:db8:64:1::10")
    assert (v4.eip, v4.destinations) == (ip("203.0.113.128"), (net("198.51.100.0/24"),))
    assert (v6.eip, v6.destinations) == (ip("2001:db8:e1::"), (net("2001:db8:198::/48"),))
    assert v4.endpoints == v6.endpoints == (ip("203.0.113.128"), ip("2001:db8:e1::"))


def test_family_without_pool_is_not_steered_and_says_so() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        policies=(policy("web"),),
        pods=(pod("default", "web-1", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "web"}),),
    )
    intent = resolve(s)
    assert [str(st.pod_ip) for st in intent.steerings] == ["100.64.1.10"]
    o = outcome(intent, "web")
    assert o.state is PolicyState.READY and "IPv6 not steered" in o.message and o.eip_v6 is None


def test_use_node_ip_endpoint_is_first_ranked_alive_member() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        policies=(policy("web", node_ip=True),),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}),),
    )
    intent = resolve(s)
    [st] = intent.steerings
    inst = intent.instance("gw")
    assert inst is not None
    from appliance.policy.placement import rank

    order = rank("gw", "EgressPolicy/default/web", ["gw1", "gw2"])
    address = {"gw1": ip("198.51.100.11"), "gw2": ip("198.51.100.12")}
    assert st.eip is None and st.endpoints == (address[order[0]],)
    assert outcome(intent, "web").use_node_ip and outcome(intent, "web").eip_v4 is None
    # the first-ranked member dies: the endpoint moves to the other one
    dead = resolve(replace(s, alive_members=frozenset({order[1]})))
    assert dead.steerings[0].endpoints == (address[order[1]],)
    assert inst.eips == ()  # useNodeIP holds no EIP


def test_no_alive_member_keeps_steering_but_reports_no_members() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        policies=(policy("web"),),
        pods=(pod("default", "web-1", "100.64.1.10", lbl={"app": "web"}),),
        alive_members=frozenset(),
    )
    intent = resolve(s)
    o = outcome(intent, "web")
    assert (o.state, o.reason) == (PolicyState.READY, Reason.NO_MEMBERS)
    assert len(intent.steerings) == 1  # failover.noGatewayAction decides in the data path


def test_invalid_policies_get_an_invalid_outcome_from_problems() -> None:
    bad = ObjectRef(kind="EgressPolicy", namespace="default", name="bad")
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        policies=(policy("good"),),
        problems=(
            Problem(ref=bad, field="spec.destSubnet[0]", reason=Reason.INVALID, message="not a CIDR"),
            Problem(ref=bad, field="spec.egressIP", reason=Reason.INVALID, message="useNodeIP with ipv4"),
            Problem(ref=ObjectRef(kind="EgressGateway", namespace="", name="g"), field="spec", reason=Reason.INVALID,
                    message="x"),
        ),
    )
    intent = resolve(s)
    o = outcome(intent, "bad")
    assert o.policy == PolicyRef(kind=PolicyKind.NAMESPACED, namespace="default", name="bad")
    assert (o.state, o.reason) == (PolicyState.INVALID, Reason.INVALID)
    assert "not a CIDR" in o.message and "useNodeIP" in o.message
    assert [x.policy.name for x in intent.outcomes] == ["bad", "good"]


def test_instance_eips_include_partners_and_only_ready_policies() -> None:
    s = snap(
        gateways=(gateway("gw", v4=("203.0.113.140-203.0.113.141",), v6=("2001:db8:e1::/120",)),),
        policies=(
            policy("a", gateway="gw", eip4="203.0.113.141"),
            policy("b", gateway="gw", eip4="203.0.113.1"),  # not in pool: pending, contributes nothing
        ),
    )
    inst = resolve(s).instance("gw")
    assert inst is not None
    # a: v4 explicit .141 (index 1) + v6 default (index 0); partners: v6 index 1 and v4 index 0
    assert inst.eips == (ip("203.0.113.140"), ip("203.0.113.141"), ip("2001:db8:e1::"), ip("2001:db8:e1::1"))
    assert inst.rank_of(ip("203.0.113.141")) == inst.rank_of(ip("2001:db8:e1::1"))


def test_appliance_members_and_liveness() -> None:
    s = snap(
        gateways=(gateway("gw", cluster_default=True),),
        appliances=(appliance("app1", "gw", "198.51.100.21"), appliance("app2", "gw", "198.51.100.22", alive=False),
                    appliance("other", "gw-x", "198.51.100.23")),
        alive_members=frozenset({"gw1", "app1", "app2"}),
    )
    inst = resolve(s).instance("gw")
    assert inst is not None
    assert [m.name for m in inst.members] == ["app1", "app2", "gw1", "gw2"]
    assert inst.alive == frozenset({"gw1", "app1"})


def test_sticky_rr_yields_to_a_new_explicit_policy() -> None:
    g = gateway("gw", v4=("203.0.113.140-203.0.113.143",))
    r1 = policy("r1", gateway="gw", rr=True, created="a")
    first = resolve(snap(gateways=(g,), policies=(r1,)))
    assert outcome(first, "r1").eip_v4 == ip("203.0.113.140")
    fixed = policy("fixed", gateway="gw", eip4="203.0.113.140")
    second = resolve(snap(gateways=(g,), policies=(r1, fixed)), previous=first)
    assert outcome(second, "fixed").eip_v4 == ip("203.0.113.140")
    assert outcome(second, "r1").eip_v4 == ip("203.0.113.141")


def test_previous_eip_on_another_gateway_is_not_kept() -> None:
    g1 = gateway("g1", v4=("203.0.113.140-203.0.113.143",))
    g2 = gateway("g2", v4=("203.0.113.150-203.0.113.153",))
    first = resolve(snap(gateways=(g1, g2), policies=(policy("r", gateway="g1", rr=True),)))
    second = resolve(snap(gateways=(g1, g2), policies=(policy("r", gateway="g2", rr=True),)), previous=first)
    assert outcome(second, "r").eip_v4 == ip("203.0.113.150")


def test_bench_resolution_runs_on_a_small_cluster() -> None:
    from lab.bench.resolution import bench_resolution

    figures = bench_resolution(n_pods=300, n_policies=40, n_eips=16, n_nodes=10)
    assert figures["steerings"] > 0 and figures["incremental_steerings_added"] > 0
    assert figures["ready_policies"] == 40  # 10 rr policies fit in 16 addresses
    assert {"full_resolve_seconds", "incremental_pod_add_seconds", "resolve_peak_alloc_mib"} <= set(figures)
