"""`explain`: the applying policy, why each other one does not apply, gateway/EIP/primary, text and JSON forms."""

from __future__ import annotations

import json
from dataclasses import replace

from appliance.core.model import EgressClusterInfo, IPAddress
from appliance.core.snapshot import ObjectRef, Problem, Reason, Snapshot
from appliance.policy.explaining import Verdict, explain, render_text, to_dict
from appliance.policy.placement import primary
from appliance.policy.resolution import resolve
from tests.unit.resolution_builders import gateway, gw_node, ip, net, node, ns, pod, policy

SNAP = Snapshot(
    gateways=(gateway("gw", cluster_default=True), gateway("gw-b", v4=("203.0.113.10",))),
    nodes=(gw_node("gw1", "198.51.100.11"), gw_node("gw2", "198.51.100.12"), node("w1", "100.127.0.11")),
    namespaces=(ns("team-a", env="prod"), ns("team-b")),
    pods=(
        pod("team-a", "web-1", "100.64.1.10", "2001:db8:64:1::10", lbl={"app": "web"}),
        replace(pod("team-a", "batch", "100.64.1.11", lbl={"app": "web"}), phase="Succeeded"),
    ),
    policies=(
        policy("web", "team-a"),  # everything, priority 0
        policy("partner", "team-a", app="web", dest=("198.51.100.0/24",), gateway="gw-b"),  # more specific
        policy("other-ns", "team-b", app="web"),
        policy("db", "team-a", app="db"),
        policy("sub", "team-a", subnet=("100.64.9.0/24",)),
        policy("ext", "team-a", app="web", dest=("203.0.113.0/28",), priority=5, gateway="missing"),
        policy("prod", cluster=True, app="web", ns_selector={"env": "prod"}, dest=("100.64.0.0/10",)),
    ),
    problems=(Problem(ref=ObjectRef(kind="EgressPolicy", namespace="team-a", name="broken"), field="spec.destSubnet",
                      reason=Reason.INVALID, message="bad CIDR"),),
    cluster_info=EgressClusterInfo(extra_cidr=(net("100.64.0.0/10"),)),
)
INTENT = resolve(SNAP)


def verdicts(dest: IPAddress | None, pod_ip: str = "100.64.1.10") -> dict[str, Verdict]:
    e = explain(SNAP, INTENT, "team-a", "web-1", dest)
    [x] = [x for x in e.ips if x.pod_ip == ip(pod_ip)]
    return {v.policy.name: v.verdict for v in x.verdicts}


def test_every_policy_gets_a_verdict_with_a_destination() -> None:
    assert verdicts(ip("198.51.100.7")) == {
        "partner": Verdict.APPLIES,  # /24 beats web's everything at equal priority
        "web": Verdict.LOWER_PRECEDENCE,
        "other-ns": Verdict.NAMESPACE_MISMATCH,
        "db": Verdict.SELECTOR_MISMATCH,
        "sub": Verdict.POD_SUBNET_MISMATCH,
        "ext": Verdict.PENDING,
        "prod": Verdict.DEST_NOT_MATCHED,
        "broken": Verdict.INVALID,
    }
    assert verdicts(ip("8.8.8.8"))["web"] is Verdict.APPLIES
    assert verdicts(ip("8.8.8.8"))["partner"] is Verdict.DEST_NOT_MATCHED
    assert verdicts(ip("100.64.2.5"))["prod"] is Verdict.CLUSTER_INTERNAL


def test_chosen_route_names_gateway_eip_and_primary() -> None:
    e = explain(SNAP, INTENT, "team-a", "web-1", ip("198.51.100.7"))
    chosen = e.ips[0].chosen
    assert chosen is not None
    assert (chosen.policy.name, chosen.gateway, chosen.eip) == ("partner", "gw-b", ip("203.0.113.10"))
    inst = INTENT.instance("gw-b")
    assert inst is not None and chosen.primary == primary(inst, ip("203.0.113.10"))
    assert chosen.primary in ("gw1", "gw2")
    internal = explain(SNAP, INTENT, "team-a", "web-1", ip("100.64.2.5"))
    assert internal.dest_cluster_internal and internal.ips[0].chosen is None


def test_without_destination_all_routes_are_listed() -> None:
    e = explain(SNAP, INTENT, "team-a", "web-1", None)
    v4 = e.ips[0]
    assert [r.policy.name for r in v4.routes] == ["partner", "prod", "web"]  # precedence order
    assert verdicts(None)["web"] is Verdict.APPLIES
    # the gateway has no IPv6 pool: IPv6 traffic is not steered by anyone
    assert verdicts(None, "2001:db8:64:1::10")["web"] is Verdict.FAMILY_NOT_STEERED


def test_missing_and_ineligible_pods() -> None:
    assert not explain(SNAP, INTENT, "team-a", "nope", None).found
    e = explain(SNAP, INTENT, "team-a", "batch", None)
    assert e.found and e.ineligible is not None and e.ips == ()
    assert "not found" in render_text(explain(SNAP, INTENT, "x", "y", None))
    assert "Finished" in render_text(e)


def test_text_and_json_renderings() -> None:
    e = explain(SNAP, INTENT, "team-a", "web-1", ip("198.51.100.7"))
    text = render_text(e)
    assert "to 198.51.100.7: EgressPolicy/team-a/partner via gateway gw-b, EIP 203.0.113.10" in text
    assert "LowerPrecedence" in text and "taken by EgressPolicy/team-a/partner" in text
    d = json.loads(json.dumps(to_dict(e)))
    assert d["ips"][0]["chosen"]["eip"] == "203.0.113.10"
    assert {p["policy"]: p["verdict"] for p in d["ips"][0]["policies"]}["EgressPolicy/team-a/web"] == "LowerPrecedence"


def test_use_node_ip_route_names_the_member_and_no_eip() -> None:
    s = replace(SNAP, policies=(policy("web", "team-a", node_ip=True),), problems=())
    intent = resolve(s)
    e = explain(s, intent, "team-a", "web-1", ip("8.8.8.8"))
    chosen = e.ips[0].chosen
    assert chosen is not None and chosen.eip is None and chosen.primary in ("gw1", "gw2")
    assert chosen.endpoints == ({"gw1": ip("198.51.100.11"), "gw2": ip("198.51.100.12")}[chosen.primary],)
    assert "useNodeIP" in render_text(e)
    assert to_dict(e)["ips"][0]["chosen"]["useNodeIP"] is True
