"""The admission decision of `egressgw webhook`: THE validation (`validate_all`), asked about one object at a time.

Why it cannot disagree with the services or `egressgw validate`: it calls the same `validate_all`, with the same
messages and field paths, and nothing else decides. What admission adds is the question's shape:

- the candidate is validated together with the egressgw.io objects already in the cluster (`existing`, listed by the
  server for each request), so the cross-object rules hold at admission too (an address already in another gateway's
  pool, a second `clusterDefault` gateway, a policy's EIP outside the pool of the gateway it names);
- the request is denied when admitting it adds any problem: on the candidate itself, or on another object it would
  make invalid (the services order objects oldest first, so an UPDATE of an old gateway can break a newer one);
  an object that was already invalid before is not the candidate's fault and does not block it;
- on UPDATE, the old object is the accepted version for the immutable-field rule (`validate_all(accepted=...)`);
- `gateways_complete` is off, as for `egressgw validate`: applying a directory creates objects in file order, so a
  policy may arrive before the gateway it names. What the services would still refuse once the gateways are known
  (an explicit EIP in no gateway's pool) comes back as an admission *warning* (`kubectl` prints it), and the
  services report it on the object's status, as always.

Objects being deleted (`metadata.deletionTimestamp` set) and DELETE/CONNECT operations are always allowed: an
object must be removable even when it is invalid. `AdmissionReview` v1 and v1beta1 requests are both read (same
shape) and answered in the version they came in. Pure: dicts in, dicts out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.api.validation import object_ref, policy_object_ref, validate_all
from appliance.core.snapshot import Problem

JSON = dict[str, Any]

REVIEW_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
#: operations the decision looks at; anything else (DELETE, CONNECT) is allowed
CHECKED_OPERATIONS = ("CREATE", "UPDATE")
#: HTTP-like code of a denial in the AdmissionResponse status (the API server shows it to the client)
DENIED_CODE = 422


class ReviewError(ValueError):
    """The body is not an AdmissionReview request this webhook can answer."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionRequest:
    """What the decision needs from an AdmissionReview request."""

    uid: str
    review_version: str
    operation: str
    obj: Mapping[str, Any] | None
    old: Mapping[str, Any] | None
    namespace: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    allowed: bool
    #: the problems admitting the object would add (empty when allowed)
    problems: tuple[Problem, ...] = ()
    #: one line per problem (`problem_text`), as `egressgw validate` prints them
    message: str = ""
    #: problems the services would report once every gateway is known: allowed, but said
    warnings: tuple[str, ...] = ()


def problem_text(problem: Problem) -> str:
    """`Kind/name: field.path: message`: what `egressgw validate` prints after the file name."""
    where = f"{problem.field}: " if problem.field else ""
    return f"{problem.ref}: {where}{problem.message}"


def parse_review(body: Any) -> AdmissionRequest:
    """The request of an AdmissionReview (v1 or v1beta1). Raises ReviewError when it is not one."""
    if not isinstance(body, Mapping) or body.get("kind") != "AdmissionReview":
        raise ReviewError("not an AdmissionReview")
    version = body.get("apiVersion")
    if version not in REVIEW_VERSIONS:
        raise ReviewError(f"unsupported AdmissionReview version {version!r} (served: {', '.join(REVIEW_VERSIONS)})")
    request = body.get("request")
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise ReviewError("AdmissionReview without request.uid")
    obj, old = request.get("object"), request.get("oldObject")
    namespace = request.get("namespace")
    return AdmissionRequest(
        uid=request["uid"], review_version=str(version), operation=str(request.get("operation") or ""),
        obj=obj if isinstance(obj, Mapping) else None, old=old if isinstance(old, Mapping) else None,
        namespace=namespace if isinstance(namespace, str) else "",
    )


def _with_namespace(obj: Mapping[str, Any], namespace: str) -> Mapping[str, Any]:
    """The object with the request's namespace filled in when its metadata has none (the ref must match the
    cluster's copy, which always carries it)."""
    meta = obj.get("metadata")
    if not namespace or not isinstance(meta, Mapping) or meta.get("namespace"):
        return obj
    filled = copy.deepcopy(dict(obj))
    filled["metadata"] = {**meta, "namespace": namespace}
    return filled


def _being_deleted(obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata")
    return isinstance(meta, Mapping) and bool(meta.get("deletionTimestamp"))


def admit(obj: Mapping[str, Any], *, old: Mapping[str, Any] | None = None,
          existing: Sequence[Mapping[str, Any]] = ()) -> Decision:
    """Whether `obj` may be stored, given `old` (UPDATE) and the egressgw.io objects already in the cluster."""
    if _being_deleted(obj):
        return Decision(allowed=True)
    ref = object_ref(obj)
    others = [o for o in existing if object_ref(o) != ref]
    accepted = {policy_object_ref(p): p for p in validate_all([old]).policies} if old is not None else None

    def added(*, complete: bool) -> list[Problem]:
        """Problems on the candidate, and on other objects that had none before it came."""
        broken = {p.ref for p in validate_all(others, gateways_complete=complete).problems}
        after = validate_all([*others, obj], accepted=accepted, gateways_complete=complete).problems
        return [p for p in after if p.ref == ref or p.ref not in broken]

    problems = added(complete=False)
    if not problems:
        warnings = tuple(problem_text(p) for p in added(complete=True))
        return Decision(allowed=True, warnings=warnings)
    own = [p for p in problems if p.ref == ref]
    caused = [p for p in problems if p.ref != ref]
    lines = [problem_text(p) for p in own]
    lines += [f"this change would make {p.ref} invalid: {problem_text(p)}" for p in caused]
    return Decision(allowed=False, problems=tuple(own + caused), message="\n".join(lines))


def decide(request: AdmissionRequest, existing: Sequence[Mapping[str, Any]] = ()) -> Decision:
    """The decision for one parsed request (see the module docstring for what is checked)."""
    if request.operation not in CHECKED_OPERATIONS or request.obj is None:
        return Decision(allowed=True)
    obj = _with_namespace(request.obj, request.namespace)
    old = _with_namespace(request.old, request.namespace) if request.old is not None else None
    return admit(obj, old=old if request.operation == "UPDATE" else None, existing=existing)


def review_response(request: AdmissionRequest, decision: Decision) -> JSON:
    """The AdmissionReview answer, in the version the request came in."""
    response: JSON = {"uid": request.uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = {"code": DENIED_CODE, "reason": "Invalid", "message": decision.message}
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    return {"apiVersion": request.review_version, "kind": "AdmissionReview", "response": response}
