"""The kinds egressgw reads, and which subset each role watches (with server-side filtering).

Role choices (documented in docs/cluster-sync.md):
- **gateway** members (and the status writer, which runs on them) watch every pod: they SNAT by pod IP, route
  replies to the pod's worker, and status counts every selected IP.
- **agent** (worker node) watches only its own node's pods (`fieldSelector=spec.nodeName=<node>`): it steers only
  local pods. Policies, gateways, namespaces and nodes are still watched whole: which EIP a policy gets (`rr`
  allocation, gateway defaults) depends on every policy and gateway, never on pods of other nodes, so the agent's
  intent for its own pods is the same as the gateway's.
- The **agent** also watches every other node's pods (`spec.nodeName!=<node>`), trimmed to key, IPs, hostNetwork
  and phase, of which the store keeps only those with an IP outside the detected cluster-internal ranges ("remote
  strays", `k8s_sync.store.REMOTE_PODS`): without them pod-to-pod traffic to a pod network the detection misses
  (IPv4-only node podCIDRs in a dual-stack cluster) would be steered to a gateway.
- Finished pods are filtered by the server (`status.phase!=Succeeded,status.phase!=Failed`): they are never selected,
  and a pod that finishes arrives as DELETED.
- Leases: only the configured namespace (default `egressgw-system`).
- Calico `IPPool`: only when the CRD is served (checked by discovery at start).
"""

from __future__ import annotations

import enum

from appliance.core.model import GROUP, VERSION
from k8s_sync.kubeapi import ApiError, KubeApi, Resource
from k8s_sync.leases import DEFAULT_NAMESPACE, LEASES
from k8s_sync.reflector import WatchSpec, trim_metadata_only, trim_pod, trim_pod_ips
from k8s_sync.store import REMOTE_PODS

RESOURCES: dict[str, Resource] = {
    "EgressGateway": Resource(kind="EgressGateway", group=GROUP, version=VERSION, plural="egressgateways",
                              namespaced=False),
    "EgressPolicy": Resource(kind="EgressPolicy", group=GROUP, version=VERSION, plural="egresspolicies",
                             namespaced=True),
    "EgressClusterPolicy": Resource(kind="EgressClusterPolicy", group=GROUP, version=VERSION,
                                    plural="egressclusterpolicies", namespaced=False),
    "EgressClusterInfo": Resource(kind="EgressClusterInfo", group=GROUP, version=VERSION, plural="egressclusterinfos",
                                  namespaced=False),
    "Pod": Resource(kind="Pod", group="", version="v1", plural="pods", namespaced=True),
    "Namespace": Resource(kind="Namespace", group="", version="v1", plural="namespaces", namespaced=False),
    "Node": Resource(kind="Node", group="", version="v1", plural="nodes", namespaced=False),
    "Lease": LEASES,
    "IPPool": Resource(kind="IPPool", group="crd.projectcalico.org", version="v1", plural="ippools",
                       namespaced=False),
}

LIVE_PODS = "status.phase!=Succeeded,status.phase!=Failed"


class Role(enum.StrEnum):
    GATEWAY = "gateway"
    AGENT = "agent"
    #: a one-shot reader (status/explain commands, benchmarks): everything, no filtering beyond finished pods
    READER = "reader"


def calico_served(api: KubeApi) -> bool:
    """Whether crd.projectcalico.org/v1 ippools is served (discovery)."""
    try:
        found = api.get("/apis/crd.projectcalico.org/v1")
    except ApiError as e:
        if e.status == 404:
            return False
        raise
    return any(r.get("name") == "ippools" for r in found.get("resources") or ())


def watch_specs(role: Role, *, node_name: str = "", lease_namespace: str = DEFAULT_NAMESPACE,
                calico: bool = False) -> tuple[WatchSpec, ...]:
    pods = LIVE_PODS
    if role is Role.AGENT:
        if not node_name:
            raise ValueError("the agent role needs its node name (pods are filtered by spec.nodeName)")
        pods = f"spec.nodeName={node_name},{LIVE_PODS}"
    specs = [
        WatchSpec(key=k, resource=RESOURCES[k]) for k in ("EgressGateway", "EgressPolicy", "EgressClusterPolicy",
                                                          "EgressClusterInfo")
    ]
    specs += [
        WatchSpec(key="Pod", resource=RESOURCES["Pod"], field_selector=pods, trim=trim_pod),
        WatchSpec(key="Namespace", resource=RESOURCES["Namespace"], trim=trim_metadata_only()),
        WatchSpec(key="Node", resource=RESOURCES["Node"],
                  trim=trim_metadata_only(keep_spec=("podCIDR", "podCIDRs"), keep_status=("addresses",))),
        WatchSpec(key="Lease", resource=LEASES, namespace=lease_namespace),
    ]
    if role is Role.AGENT:
        specs.append(WatchSpec(key=REMOTE_PODS, resource=RESOURCES["Pod"], trim=trim_pod_ips,
                               field_selector=f"spec.nodeName!={node_name},{LIVE_PODS}"))
    if calico:
        specs.append(WatchSpec(key="IPPool", resource=RESOURCES["IPPool"]))
    return tuple(specs)
