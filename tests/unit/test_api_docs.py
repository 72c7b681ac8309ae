"""docs/api.md and the status the code writes agree, and bad input is reported the same way everywhere.

- The "Status conditions" tables of docs/api.md list exactly the condition types (per kind) and the reasons the code
  can write: taken from the code's enums and constants, compared both ways.
- Planned statuses for a world full of bad input only use those types and reasons, and every message of a problem
  (Invalid or Pending) starts with the field path rooted at the object (`spec.`/`metadata.`).
- An explicit EIP outside the pools is Invalid (`EIPNotInPool`, `spec.egressIP.ipv4`), never Pending or allocated.
- Fields the API server pruned are found through kubectl's last-applied-configuration annotation (`pruned_fields`).
"""

from __future__ import annotations

import json
import re
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from appliance.api.crd_schema import object_schema
from appliance.api.validation import LAST_APPLIED, pruned_fields, validate_all
from appliance.core.model import Pod
from appliance.core.snapshot import Reason, Snapshot
from appliance.policy.cluster_cidrs import pod_ip_coverage
from k8s_sync.status_planning import CONDITION_TYPES, condition_reasons
from tests.unit.test_sync_status_planning import plan, policy, world

ROOT = Path(__file__).resolve().parents[2]
V = "egressgw.io/v1alpha1"
NAME = re.compile(r"`([A-Za-z][A-Za-z0-9]*)`")


def section(title: str) -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]
    return rows


def documented() -> tuple[dict[str, set[str]], set[str]]:
    """(kind -> condition types, reasons) from docs/api.md's Status conditions section."""
    types: dict[str, set[str]] = {}
    reasons: set[str] = set()
    for row in table_rows(section("Status conditions")):
        if row[0] == "Kind" or row[0] == "Reason":
            continue
        if len(row) == 2:
            for kind in NAME.findall(row[0]):
                types[kind] = set(NAME.findall(row[1]))
        else:
            (reason,) = NAME.findall(row[0])
            reasons.add(reason)
    return types, reasons


def coverage_reasons() -> set[str]:
    """The PodCIDRsIncomplete reasons, from the code that writes them: covered, and a pod IP nothing covers."""
    stray = Pod(namespace="a", name="p", node_name="w1", ips=(ip_address("198.51.100.250"),))
    return {pod_ip_coverage(Snapshot()).reason, pod_ip_coverage(Snapshot(pods=(stray,))).reason}


def test_docs_list_exactly_the_condition_types_per_kind() -> None:
    types, _ = documented()
    assert types == {kind: {str(t) for t in ts} for kind, ts in CONDITION_TYPES.items()}


def test_docs_list_exactly_the_reasons_the_code_writes() -> None:
    _, reasons = documented()
    code = set(condition_reasons()) | coverage_reasons()
    assert sorted(code - reasons) == [], "reasons the code writes that docs/api.md does not list"
    assert sorted(reasons - code) == [], "reasons docs/api.md lists that the code never writes"


# ----- what is really written for bad input ---------------------------------------------------------------------

def applied(obj: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """`obj` as `kubectl apply` would have stored it from a manifest that also had `spec` fields (then pruned)."""
    manifest = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "metadata": {k: obj["metadata"][k] for k in ("name", "namespace") if k in obj["metadata"]},
                "spec": {**obj["spec"], **spec}}
    obj["metadata"]["annotations"] = {LAST_APPLIED: json.dumps(manifest)}
    return obj


BAD = {
    "ok": policy("ok"),
    "eip-outside": policy("eip-outside", eip={"ipv4": "198.51.100.99"}),
    "eip-nowhere": policy("eip-nowhere", {"egressGatewayName": "absent"}, eip={"ipv4": "198.51.100.98"}),
    "eip-default-gw": policy("eip-default-gw", {"egressGatewayName": ""}, eip={"ipv4": "198.51.100.97"}),
    "gone": policy("gone", {"egressGatewayName": "absent"}),
    "priority": policy("priority", {"priority": -1}),
    "pruned": applied(policy("pruned"), appliedTo={"podSelector": {"matchLabels": {"app": "web"}},
                                                   "namespaceSelector": {"matchLabels": {"team": "a"}}}),
    **{f"rr{i}": policy(f"rr{i}", eip={"allocatorPolicy": "rr"}) for i in range(4)},
}


@pytest.fixture(scope="module")
def statuses() -> dict[str, dict[str, Any]]:
    store, raw = world(list(BAD.values()))
    return {w.ref.name: w.status for w in plan(store, raw).writes}


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_written_conditions_use_only_documented_types_and_reasons(statuses: dict[str, dict[str, Any]]) -> None:
    types, reasons = documented()
    for name, st in statuses.items():
        kind = "EgressGateway" if name == "gw" else "EgressPolicy"
        assert {c["type"] for c in st["conditions"]} == types[kind], name
        assert {c["reason"] for c in st["conditions"]} <= reasons, name


def test_every_problem_message_starts_with_a_rooted_field_path(statuses: dict[str, dict[str, Any]]) -> None:
    seen = 0
    for name, st in statuses.items():
        for c in st["conditions"]:
            if c["type"] in ("Invalid", "Pending") and c["status"] == "True":
                seen += 1
                for part in c["message"].split("; "):
                    assert re.match(r"(spec|metadata)\.[A-Za-z]", part), (name, c)
    assert seen >= 6


def test_an_eip_outside_the_pools_is_invalid_and_never_allocated(statuses: dict[str, dict[str, Any]]) -> None:
    for name in ("eip-outside", "eip-nowhere"):
        st = statuses[name]
        invalid = cond(st, "Invalid")
        assert (invalid["status"], invalid["reason"]) == ("True", "EIPNotInPool"), st
        assert invalid["message"].startswith("spec.egressIP.ipv4: 198.51.100.9")
        assert cond(st, "Pending")["status"] == "False" and cond(st, "Ready")["status"] == "False"
        assert not st.get("eip")
    # a policy naming a missing gateway, with no EIP of its own, waits for it
    assert (cond(statuses["gone"], "Pending")["reason"], cond(statuses["gone"], "Invalid")["status"]) == (
        "GatewayNotFound", "False")
    # rr allocation never counted the refused addresses: 3 rr policies get the 3 non-default addresses
    assert sorted(statuses[f"rr{i}"].get("eip", {}).get("ipv4", "") for i in range(4)) == [
        "", "203.0.113.129", "203.0.113.130", "203.0.113.131"]


def test_a_pruned_field_makes_the_policy_invalid_naming_it(statuses: dict[str, dict[str, Any]]) -> None:
    invalid = cond(statuses["pruned"], "Invalid")
    assert invalid["status"] == "True" and invalid["reason"] == "Invalid"
    assert invalid["message"].startswith("spec.appliedTo.namespaceSelector: dropped by the API server")
    assert "only allowed in an EgressClusterPolicy" in invalid["message"]


# ----- the pure parts ---------------------------------------------------------------------------------------------

def live_policy(kind: str = "EgressPolicy", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": V, "kind": kind, "metadata": {"name": "p", "namespace": "a"},
            "spec": {"appliedTo": {"podSelector": {}}, **spec}}


NS_SELECTOR = {"podSelector": {}, "namespaceSelector": {"matchLabels": {"team": "a"}}}


@pytest.mark.parametrize(("obj", "expected"), [
    (live_policy(), []),  # no annotation: nothing to compare with
    (applied(live_policy(), appliedTo=NS_SELECTOR), ["spec.appliedTo.namespaceSelector"]),
    (applied(live_policy(), egressIp={"ipv4": "203.0.113.130"}), ["spec.egressIp"]),
    (applied(live_policy("EgressClusterPolicy", appliedTo=NS_SELECTOR)), []),  # valid there: nothing pruned
    (applied(live_policy(priority=3)), []),  # the annotation matches the object
], ids=["no-annotation", "namespace-selector", "typo", "cluster-policy", "same"])
def test_pruned_fields(obj: dict[str, Any], expected: list[str]) -> None:
    got = pruned_fields(obj, object_schema(obj["kind"]))
    assert [f for f, _ in got] == expected
    for _, message in got:
        assert "dropped by the API server" in message and LAST_APPLIED in message


def test_pruned_fields_ignores_what_is_not_evidence() -> None:
    broken = live_policy()
    broken["metadata"]["annotations"] = {LAST_APPLIED: "{not json"}
    other = applied(live_policy(), egressIp={})
    other["metadata"]["annotations"][LAST_APPLIED] = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                                                                 "spec": {"egressIp": {}}})
    still_there = applied(live_policy(egressIp={}))  # the live object has it: reported once, as an unknown field
    for obj in (broken, other):
        assert pruned_fields(obj, object_schema("EgressPolicy")) == []
    assert pruned_fields(still_there, object_schema("EgressPolicy")) == []
    assert [p.field for p in validate_all([still_there]).problems] == ["spec.egressIp"]


def gateway(name: str, pool: str) -> dict[str, Any]:
    return {"apiVersion": V, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"ippools": {"ipv4": [pool]}, "appliancesOnly": True}}


@pytest.mark.parametrize(("gateway_name", "eip", "complete", "refused"), [
    ("gw", "203.0.113.200", False, True),  # outside the named gateway's pool: always refused
    ("gw", "203.0.113.130", False, False),
    ("", "198.51.100.99", True, True),  # no gateway named, in no pool of the whole cluster
    ("absent", "198.51.100.99", True, True),  # the named gateway is missing and no pool holds it
    ("absent", "203.0.113.200", True, False),  # in another gateway's pool: Pending GatewayNotFound, not a spec error
    ("", "198.51.100.99", False, False),  # a policy file on its own: the cluster's gateways are unknown
])
def test_explicit_eip_outside_every_pool(gateway_name: str, eip: str, complete: bool, refused: bool) -> None:
    pol = live_policy(egressIP={"ipv4": eip}, **({"egressGatewayName": gateway_name} if gateway_name else {}))
    result = validate_all([gateway("gw", "203.0.113.128/28"), gateway("other", "203.0.113.192/28"), pol],
                          gateways_complete=complete)
    problems = [(p.field, p.reason) for p in result.problems]
    assert problems == ([("spec.egressIP.ipv4", Reason.EIP_NOT_IN_POOL)] if refused else [])
    assert bool(result.policies) is not refused
