"""The admission decision (`appliance.api.admission`) says what `egressgw validate` says, object by object.

Every invalid example is denied with exactly the lines `egressgw validate FILE` prints (without the file name); every
valid example is admitted, alone and as `kubectl apply -f examples/` would send them (file order, one object at a
time, each against what was admitted before); an immutable field cannot change on UPDATE.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import pytest

from appliance.api.admission import (
    AdmissionRequest,
    Decision,
    ReviewError,
    admit,
    decide,
    parse_review,
    review_response,
)
from appliance.cli.validate import load_documents, validate_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
VALID = sorted(EXAMPLES.glob("*.yaml"))


def apply_in_order(docs: list[Any], existing: list[Any] | None = None) -> list[tuple[Any, Decision]]:
    """Admit each document against the ones admitted before it (what `kubectl apply -f` makes the webhook see)."""
    stored = list(existing or [])
    out = []
    for doc in docs:
        decision = admit(doc, existing=stored)
        out.append((doc, decision))
        if decision.allowed:
            stored.append(doc)
    return out


def validate_lines(path: Path) -> list[str]:
    out = io.StringIO()
    assert validate_files([path], out, io.StringIO()) == 1
    prefix = f"{path}: "
    return [line.removeprefix(prefix) for line in out.getvalue().splitlines()]


def expected_field(path: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                if line.startswith("# expect:"))


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_every_invalid_example_is_denied_with_the_lines_validate_prints(path: Path) -> None:
    decisions = apply_in_order(load_documents(path))
    denied = [d for _, d in decisions if not d.allowed]
    assert denied, f"{path.name}: every object admitted"
    lines = [line for d in denied for line in d.message.splitlines()]
    assert sorted(lines) == sorted(validate_lines(path))
    assert any(f": {expected_field(path)}: " in line for line in lines)


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_every_valid_example_is_admitted(path: Path) -> None:
    for doc, decision in apply_in_order(load_documents(path)):
        assert decision.allowed, (doc["metadata"]["name"], decision.message)
        assert not decision.problems and not decision.message


def test_all_valid_examples_are_admitted_as_kubectl_apply_of_the_directory_sends_them() -> None:
    docs = [doc for path in VALID for doc in load_documents(path)]
    assert all(d.allowed for _, d in apply_in_order(docs))


def tenant_policy() -> dict[str, Any]:
    (doc,) = load_documents(EXAMPLES / "tenant-policy.yaml")
    assert isinstance(doc, dict)
    return doc


def gateways() -> list[Any]:
    return load_documents(EXAMPLES / "gateway.yaml")


def test_update_of_an_immutable_field_is_denied_with_its_path() -> None:
    old = tenant_policy()
    new = copy.deepcopy(old)
    new["spec"]["egressIP"]["ipv4"] = "203.0.113.161"
    decision = admit(new, old=old, existing=[*gateways(), old])
    assert not decision.allowed
    assert decision.message == ("EgressPolicy/tenant-a/payments: spec.egressIP.ipv4: immutable: was 203.0.113.170, "
                                "now 203.0.113.161 (delete and re-create the policy to change it; the previous "
                                "version stays in effect)")
    # the same object created anew (no old version) is fine: the EIP is in tenant-a's pool
    assert admit(new, existing=gateways()).allowed


def test_update_of_a_mutable_field_is_admitted() -> None:
    old = tenant_policy()
    new = copy.deepcopy(old)
    new["spec"]["priority"] = 5
    new["spec"]["appliedTo"]["podSelector"]["matchLabels"] = {"app": "billing"}
    assert admit(new, old=old, existing=[*gateways(), old]).allowed


def test_an_update_that_breaks_another_object_is_denied_and_says_which() -> None:
    default, tenant = gateways()
    default["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    tenant["metadata"]["creationTimestamp"] = "2024-02-01T00:00:00Z"
    grown = copy.deepcopy(default)
    grown["spec"]["ippools"]["ipv4"] = ["203.0.113.128/26"]  # now holds tenant-a's 203.0.113.160-170
    grown["spec"]["ippools"]["ipv6"] = ["2001:db8:e1::101-2001:db8:e1::13e"]  # 62 = the /26's hosts
    decision = admit(grown, old=default, existing=[default, tenant])
    assert not decision.allowed
    assert decision.message.startswith("this change would make EgressGateway/tenant-a invalid: EgressGateway/tenant-a: "
                                       "spec.ippools.ipv4[0]: 203.0.113.160 is already in the pool of EgressGateway "
                                       "default")


def test_objects_already_invalid_do_not_block_an_unrelated_one() -> None:
    clash = load_documents(EXAMPLES / "invalid" / "duplicate-pool-ip.yaml")
    policy = tenant_policy()
    policy["spec"].pop("egressIP")
    decision = admit(policy, existing=clash)
    assert decision.allowed, decision.message


def test_what_only_the_whole_cluster_refuses_is_a_warning() -> None:
    policy = tenant_policy()  # names tenant-a, which does not exist yet: a forward reference
    decision = admit(policy, existing=[])
    assert decision.allowed
    assert decision.warnings == ("EgressPolicy/tenant-a/payments: spec.egressIP.ipv4: 203.0.113.170 is not in the "
                                 "ipv4 pool of any EgressGateway (EgressGateway tenant-a does not exist or is "
                                 "invalid)",)


def test_an_object_being_deleted_is_always_allowed() -> None:
    bad = load_documents(EXAMPLES / "invalid" / "negative-priority.yaml")[0]
    assert not admit(bad).allowed
    bad["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert admit(bad).allowed


def review(version: str, operation: str, obj: Any, old: Any = None, namespace: str = "") -> dict[str, Any]:
    return {"apiVersion": version, "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": operation, "object": obj, "oldObject": old,
                        "namespace": namespace}}


@pytest.mark.parametrize("version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_a_review_is_answered_in_its_own_version(version: str) -> None:
    bad = load_documents(EXAMPLES / "invalid" / "negative-priority.yaml")[0]
    request = parse_review(review(version, "CREATE", bad, namespace="shop"))
    answer = review_response(request, decide(request))
    assert answer["apiVersion"] == version and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == "u-1" and answer["response"]["allowed"] is False
    assert answer["response"]["status"]["message"] == \
        "EgressPolicy/shop/negative-priority: spec.priority: -1 is below the minimum 0"
    good = parse_review(review(version, "CREATE", tenant_policy(), namespace="tenant-a"))
    assert review_response(good, decide(good, gateways()))["response"] == {"uid": "u-1", "allowed": True}


def test_the_namespace_comes_from_the_request_when_the_object_has_none() -> None:
    old = tenant_policy()
    new = copy.deepcopy(old)
    new["spec"]["egressGatewayName"] = "default"
    for o in (old, new):
        del o["metadata"]["namespace"]
    request = parse_review(review("admission.k8s.io/v1", "UPDATE", new, old, namespace="tenant-a"))
    decision = decide(request, gateways())
    assert not decision.allowed
    assert decision.message.startswith("EgressPolicy/tenant-a/payments: spec.egressGatewayName: immutable")


def test_delete_and_missing_objects_are_allowed() -> None:
    bad = load_documents(EXAMPLES / "invalid" / "negative-priority.yaml")[0]
    assert decide(parse_review(review("admission.k8s.io/v1", "DELETE", None, bad))).allowed


@pytest.mark.parametrize("body", [
    None, [], {"kind": "Pod"}, {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v2", "request": {}},
    {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}},
])
def test_what_is_not_a_review_is_refused(body: Any) -> None:
    with pytest.raises(ReviewError):
        parse_review(body)


def test_the_request_keeps_what_the_decision_needs() -> None:
    r = parse_review(review("admission.k8s.io/v1", "CREATE", {"a": 1}, namespace="ns"))
    assert r == AdmissionRequest(uid="u-1", review_version="admission.k8s.io/v1", operation="CREATE",
                                 obj={"a": 1}, old=None, namespace="ns")
