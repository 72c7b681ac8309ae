"""The egressgw.io API schemas: the single source of the CRD manifests and of the validator's field list.

`k8s_sync/crds/*.yaml` (and the copies in `deploy/crds/`) are rendered from here with
``python -m appliance.api.crd_schema`` (``--check`` fails when the files are stale; a unit test does the same). The
offline validator walks the same schemas (`appliance.api.schema_check`), so the API server and `egressgw validate`
agree on field names, types, enums and ranges; the semantic rules (addresses, ranges, cross-object checks) are in
`appliance.api.validation`, because the 1.20 API server ignores CEL rules and would prune, not reject, unknown fields.
Pure data: no I/O here except in `main`.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import yaml

from appliance.core.model import GROUP, MAX_PRIORITY, VERSION

Schema = dict[str, Any]


def _s(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _b(description: str) -> Schema:
    return {"type": "boolean", "description": description}


def _i(description: str, minimum: int, maximum: int) -> Schema:
    return {"type": "integer", "description": description, "minimum": minimum, "maximum": maximum}


def _list(description: str, item: Schema) -> Schema:
    return {"type": "array", "description": description, "items": item}


def _obj(description: str, properties: dict[str, Schema], required: tuple[str, ...] = ()) -> Schema:
    out: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def label_selector(description: str) -> Schema:
    return _obj(description, {
        "matchLabels": {"type": "object", "description": "Labels that must all be present with these values.",
                        "additionalProperties": {"type": "string"}},
        "matchExpressions": _list("Requirements that must all hold.", _obj(
            "One label requirement.",
            {"key": _s("The label key."),
             "operator": _s("In, NotIn, Exists or DoesNotExist.", enum=["In", "NotIn", "Exists", "DoesNotExist"]),
             "values": _list("The values for In and NotIn (non-empty); must be empty for Exists and DoesNotExist.",
                             _s("A label value."))},
            ("key", "operator"))),
    })


def _families(description: str, item: str) -> Schema:
    return _obj(description, {"ipv4": _list(f"IPv4 {item}.", _s(f"An IPv4 {item.rstrip('s')}.")),
                              "ipv6": _list(f"IPv6 {item}.", _s(f"An IPv6 {item.rstrip('s')}."))})


CONDITIONS: Schema = {
    "type": "array",
    "description": "Standard conditions: Ready (True when in effect) and Invalid (True when validation refused the "
                   "object; the reason and message name the field).",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": _obj("One condition.", {
        "type": _s("Condition type: Ready or Invalid."),
        "status": _s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _s("Machine-readable CamelCase reason, e.g. GatewayNotFound, EIPNotInPool, ImmutableField."),
        "message": _s("Human-readable detail; names the field path when the object is invalid."),
        "lastTransitionTime": _s("When the status last changed.", format="date-time"),
        "observedGeneration": {"type": "integer", "format": "int64",
                               "description": "metadata.generation the condition was computed from."},
    }, ("type", "status")),
}

GATEWAY_SPEC = _obj("Desired state of the gateway instance.", {
    "ippools": _obj("The egress IP (EIP) pools of this gateway.", {
        "ipv4": _list("IPv4 EIPs: single addresses (203.0.113.130), ranges (203.0.113.130-203.0.113.139) or CIDRs "
                      "(203.0.113.128/28: its host addresses, without the network and broadcast address when the "
                      "prefix holds more than 2). No address may be in another gateway's pool.",
                      _s("An IPv4 pool entry.")),
        "ipv6": _list("IPv6 EIPs, same forms as ipv4 (a CIDR without its subnet-router anycast address, the first). "
                      "When both lists are given they must hold the same number of "
                      "addresses (the n-th IPv4 EIP pairs with the n-th IPv6 EIP).", _s("An IPv6 pool entry.")),
        "ipv4DefaultEIP": _s("The IPv4 EIP used by policies with allocatorPolicy default; must be in ipv4. "
                             "Default: the first address of the pool (of a CIDR: its first host address)."),
        "ipv6DefaultEIP": _s("The IPv6 EIP used by policies with allocatorPolicy default; must be in ipv6. "
                             "Default: the first address of the pool (of a CIDR: its first host address)."),
    }),
    "nodeSelector": _obj("Which cluster nodes are members of this gateway.", {
        "selector": label_selector("Label selector for member nodes; must not be empty (an empty selector would "
                                   "select every node)."),
    }, ("selector",)),
    "appliancesOnly": _b("True when the members are only gateway appliances outside the cluster (registered with a "
                         "coordination.k8s.io Lease labelled egressgw.io/gateway=<name>); nodeSelector must then be "
                         "absent. Appliances may also join a gateway that has a nodeSelector."),
    "clusterDefault": _b("The gateway used by policies that name no gateway and whose namespace has no "
                         "egressgw.io/default-gateway label. At most one gateway may set it."),
    "tunnel": _obj("The tunnel from workers to the members (its endpoint is the EIP itself).", {
        "type": _s("vxlan (default) or wireguard (encrypted).", enum=["vxlan", "wireguard"]),
        "vni": _i("VXLAN network identifier of this gateway instance (default 7700).", 1, 16777215),
        "port": _i("UDP port (default 4789 for vxlan, 51820 for wireguard).", 1, 65535),
        "mtu": _i("Inner MTU of the tunnel (default: the underlay MTU minus the tunnel overhead).", 1280, 9000),
        "family": _s("Underlay address family between workers and members: ipv4 or ipv6. Both ends use it: member "
                     "and worker addresses are the Nodes' InternalIPs (appliances' Lease addresses) of this family, "
                     "workers tunnel from and members reply to those. Default: each node's IPv4 address when it has "
                     "one, else its IPv6 address (dual-stack Nodes tunnel over IPv4; set ipv6 for an IPv6-only "
                     "underlay).", enum=["ipv4", "ipv6"]),
    }),
    "bgp": _obj("Attributes of the EIP announcements (BGP) of this gateway.", {
        "communities": _list("Standard communities (ASN:VALUE, each 0..65535) added to every EIP route.",
                             _s("A standard community, e.g. 64513:100.")),
        "largeCommunities": _list("Large communities (ASN:DATA1:DATA2, each 0..4294967295) added to every EIP route.",
                                  _s("A large community, e.g. 64513:1:2.")),
    }),
    "failover": _obj("What happens when members fail and return.", {
        "noGatewayAction": _s("When no member is healthy: FailClosed (default) drops the selected traffic, FailOpen "
                              "lets it leave with the node IP.", enum=["FailClosed", "FailOpen"]),
        "failbackHoldSeconds": {"type": "number", "minimum": 0, "maximum": 3600,
                                "description": "Seconds a returning member stays healthy before it announces with "
                                               "its normal preference again (default 30)."},
    }),
})

GATEWAY_STATUS = _obj("Observed state, written by egressgw.", {
    "members": _list("The members of this gateway.", _obj("One member.", {
        "name": _s("Node or appliance name."),
        "kind": _s("Node or Appliance.", enum=["Node", "Appliance"]),
        "healthy": _b("True when the member is alive and healthy."),
        "eips": _list("The EIPs this member is primary for.", _s("An EIP.")),
    }, ("name",))),
    "eips": _list("Every EIP in use, with its primary and backup members.", _obj("One EIP.", {
        "ip": _s("The EIP."),
        "primary": _s("The member that carries it (preferred by the upstream routers)."),
        "backups": _list("Members that take over, in order.", _s("A member name.")),
    }, ("ip",))),
    "ipUsage": _obj("Pool usage.", {
        "ipv4Total": {"type": "integer", "format": "int64", "description": "IPv4 addresses in the pool."},
        "ipv4Free": {"type": "integer", "format": "int64", "description": "IPv4 addresses not used by a policy."},
        "ipv6Total": {"type": "integer", "format": "int64", "description": "IPv6 addresses in the pool."},
        "ipv6Free": {"type": "integer", "format": "int64", "description": "IPv6 addresses not used by a policy."},
    }),
    "conditions": CONDITIONS,
})


def policy_spec(cluster: bool) -> Schema:
    applied: dict[str, Schema] = {
        "podSelector": label_selector("Pods whose labels match. Not together with podSubnet."),
        "podSubnet": _list("Pod addresses in these CIDRs. Not together with podSelector.", _s("A CIDR.")),
    }
    if cluster:
        applied["namespaceSelector"] = label_selector("Only pods in namespaces whose labels match (default: all).")
    return _obj("Desired state of the policy.", {
        "egressGatewayName": _s("The EgressGateway to use; immutable. Empty: the namespace's default gateway (label "
                                "egressgw.io/default-gateway) then the cluster default. A missing gateway leaves the "
                                "policy Pending until it appears."),
        "egressIP": _obj("Which egress IP to use; immutable.", {
            "ipv4": _s("An explicit IPv4 EIP from the gateway's pool.", format="ipv4"),
            "ipv6": _s("An explicit IPv6 EIP from the gateway's pool.", format="ipv6"),
            "useNodeIP": _b("Leave with the gateway member's own address instead of an EIP; not together with ipv4 "
                            "or ipv6."),
            "allocatorPolicy": _s("default: share the gateway's default EIP; rr: a pool EIP (dual-stack pair) of its "
                                  "own, the lowest free one, in policy creation order.", enum=["default", "rr"]),
        }),
        "appliedTo": _obj("The selected pods: podSelector or podSubnet (exactly one)" + (
            ", or a non-empty namespaceSelector alone (every pod of those namespaces)." if cluster else "."), applied),
        "destSubnet": _list("Destination CIDRs this policy applies to; empty means every destination outside the "
                            "cluster.", _s("A destination CIDR.")),
        "priority": _i("Higher wins when several policies select the same pod and destination (ties: the more "
                       "specific destSubnet entry, then EgressPolicy before EgressClusterPolicy, then the name).",
                       0, MAX_PRIORITY),
    }, ("appliedTo",))


POLICY_STATUS = _obj("Observed state, written by egressgw.", {
    "eip": _obj("The EIPs the selected pods leave with.", {"ipv4": _s("IPv4 EIP."), "ipv6": _s("IPv6 EIP.")}),
    "gateway": _s("The gateway in use (resolved when egressGatewayName is empty)."),
    "primary": _s("The member carrying the EIP(s); comma-separated when the IPv4 and IPv6 primaries differ."),
    "selectedIPs": {"type": "integer", "format": "int64", "description": "Pod addresses currently steered."},
    "conditions": CONDITIONS,
})

CLUSTER_INFO_SPEC = _obj("What egressgw treats as cluster-internal (never steered to a gateway).", {
    "autoDetect": _obj("Detection switches.", {
        "podCidrMode": _s("Pod CIDR source: auto (Calico IPPools when present, else Node podCIDRs), k8s (Node "
                          "spec.podCIDRs), calico, or empty (none).", enum=["auto", "k8s", "calico", ""]),
        "clusterIP": _b("Detect the Service CIDR (default true)."),
        "nodeIP": _b("Treat node addresses as cluster-internal (default true)."),
    }),
    "extraCidr": _list("More cluster-internal CIDRs.", _s("A CIDR.")),
})

CLUSTER_INFO_STATUS = _obj("What egressgw detected.", {
    "podCidrMode": _s("The pod CIDR source in effect."),
    "nodeIP": {"type": "object", "description": "Node name to its addresses.",
               "additionalProperties": _families("Addresses of one node.", "addresses")},
    "clusterIP": _families("The Service CIDRs.", "CIDRs"),
    "podCIDR": {"type": "object", "description": "Pod CIDRs by source (a node name or a Calico IPPool).",
                "additionalProperties": _families("CIDRs of one source.", "CIDRs")},
    "extraCidr": _list("spec.extraCidr as applied.", _s("A CIDR.")),
    "conditions": CONDITIONS,
})

_POLICY_COLUMNS: list[dict[str, Any]] = [
    {"name": "Gateway", "type": "string", "jsonPath": ".status.gateway"},
    {"name": "IPv4", "type": "string", "jsonPath": ".status.eip.ipv4"},
    {"name": "IPv6", "type": "string", "jsonPath": ".status.eip.ipv6"},
    {"name": "Primary", "type": "string", "jsonPath": ".status.primary"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

#: kind -> (plural, shortName, namespaced, description, spec schema, status schema, printer columns)
KINDS: dict[str, tuple[str, str, bool, str, Schema, Schema, list[dict[str, Any]]]] = {
    "EgressGateway": ("egressgateways", "egw", False,
                      "A gateway instance: its members (nodes and appliances), EIP pools, tunnel and failover.",
                      GATEWAY_SPEC, GATEWAY_STATUS, [
                          {"name": "IPv4DefaultEIP", "type": "string", "jsonPath": ".spec.ippools.ipv4DefaultEIP"},
                          {"name": "IPv6DefaultEIP", "type": "string", "jsonPath": ".spec.ippools.ipv6DefaultEIP"},
                          {"name": "ClusterDefault", "type": "boolean", "jsonPath": ".spec.clusterDefault"},
                          {"name": "IPv4Total", "type": "integer", "jsonPath": ".status.ipUsage.ipv4Total"},
                          {"name": "IPv4Free", "type": "integer", "jsonPath": ".status.ipUsage.ipv4Free"},
                          {"name": "IPv6Total", "type": "integer", "jsonPath": ".status.ipUsage.ipv6Total",
                           "priority": 1},
                          {"name": "IPv6Free", "type": "integer", "jsonPath": ".status.ipUsage.ipv6Free",
                           "priority": 1},
                          {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                      ]),
    "EgressPolicy": ("egresspolicies", "egp", True,
                     "Pods of this namespace that leave the cluster through an egress gateway with a stable EIP.",
                     policy_spec(cluster=False), POLICY_STATUS, _POLICY_COLUMNS),
    "EgressClusterPolicy": ("egressclusterpolicies", "egcp", False,
                            "Like EgressPolicy, for pods of any namespace (appliedTo.namespaceSelector).",
                            policy_spec(cluster=True), POLICY_STATUS, _POLICY_COLUMNS),
    "EgressClusterInfo": ("egressclusterinfos", "egci", False,
                          "Singleton (name: default): the cluster-internal CIDRs that are never steered.",
                          CLUSTER_INFO_SPEC, CLUSTER_INFO_STATUS, [
                              {"name": "PodCidrMode", "type": "string", "jsonPath": ".spec.autoDetect.podCidrMode"},
                              {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                          ]),
}


@functools.cache
def object_schema(kind: str) -> Schema:
    """The whole object's schema (apiVersion, kind, metadata, spec, status) for `kind`. Cached: never modify it."""
    _, _, _, description, spec, status, _ = KINDS[kind]
    return {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": _s("egressgw.io/v1alpha1"),
            "kind": _s(kind),
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        **({"required": ["spec"]} if kind != "EgressClusterInfo" else {}),
    }


def crd_manifest(kind: str) -> dict[str, Any]:
    plural, short, namespaced, _, _, _, columns = KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": [short], "categories": ["egressgw"]},
            "scope": "Namespaced" if namespaced else "Cluster",
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": object_schema(kind)},
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
            }],
        },
    }


def rendered() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    header = "# Generated by `python -m appliance.api.crd_schema` from appliance/api/crd_schema.py - do not edit.\n"
    return {f"{GROUP}_{KINDS[k][0]}.yaml": header + yaml.safe_dump(crd_manifest(k), sort_keys=False, width=120)
            for k in KINDS}


ROOT = Path(__file__).resolve().parents[2]
TARGETS = (ROOT / "k8s_sync" / "crds", ROOT / "deploy" / "crds")


def main(argv: list[str]) -> int:
    """Write the CRD files (or, with --check, exit 1 if any is missing or stale)."""
    check = "--check" in argv
    stale = []
    for target in TARGETS:
        for name, text in rendered().items():
            path = target / name
            if path.exists() and path.read_text() == text:
                continue
            stale.append(path)
            if not check:
                target.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for path in stale:
        print(f"{'stale' if check else 'wrote'}: {path}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
