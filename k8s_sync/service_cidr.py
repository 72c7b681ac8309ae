"""Detect the cluster's Service CIDR(s) from the API alone (no controller-manager flags, no node access).

Kubernetes does not publish `--service-cluster-ip-range` before the ServiceCIDR API (networking.k8s.io, beta in
1.31, GA in 1.33). So:

1. If `networking.k8s.io/{v1,v1beta1}/servicecidrs` is served, read `spec.cidrs` of every ServiceCIDR.
2. Otherwise ask the allocator: create a Service whose `clusterIP` cannot be in any real range (`0.0.0.1`, and `::1`
   for IPv6). The API server refuses it with 422 and says `The range of valid IPs is 100.100.0.0/16`; we parse that.
   Nothing is created. (A dry run would be nicer but 1.20 skips IP allocation under dryRun, so it says nothing.)
   Should a probe ever be accepted, the Service is deleted at once. Needs RBAC `create` on services in the probe
   namespace (default: the lease namespace).
3. Nothing found: return () - `EgressClusterInfo.spec.extraCidr` is then how the operator names the range.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets

from appliance.core.events import EventLogger
from appliance.core.model import IPNetwork
from k8s_sync.kubeapi import ApiError, KubeApi

log = EventLogger(logging.getLogger(__name__))

RANGE_RE = re.compile(r"range of valid IPs is ([0-9A-Fa-f:.,/ ]+)")
PROBE_IPS = ("0.0.0.1", "::1")


def parse_range_message(message: str) -> tuple[IPNetwork, ...]:
    """The CIDRs in an allocator error message ("... The range of valid IPs is 10.96.0.0/12")."""
    out: list[IPNetwork] = []
    for match in RANGE_RE.finditer(message):
        for token in re.split(r"[ ,]+", match.group(1).strip()):
            try:
                out.append(ipaddress.ip_network(token.rstrip("."), strict=False))
            except ValueError:
                continue
    return tuple(out)


def _from_servicecidr_api(api: KubeApi) -> tuple[IPNetwork, ...] | None:
    for version in ("v1", "v1beta1"):
        try:
            found = api.get(f"/apis/networking.k8s.io/{version}/servicecidrs")
        except ApiError as e:
            if e.status in (404, 403):
                continue
            raise
        nets: list[IPNetwork] = []
        for item in found.get("items") or ():
            for cidr in (item.get("spec") or {}).get("cidrs") or ():
                try:
                    nets.append(ipaddress.ip_network(cidr, strict=False))
                except ValueError:
                    continue
        return tuple(nets)
    return None


def _probe(api: KubeApi, namespace: str, ip: str) -> tuple[IPNetwork, ...]:
    name = f"egressgw-cidr-probe-{secrets.token_hex(4)}"
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "ports": [{"port": 1, "protocol": "TCP"}]}}
    try:
        api.create(f"/api/v1/namespaces/{namespace}/services", body)
    except ApiError as e:
        if e.status == 422:
            return parse_range_message(e.message)
        if e.status in (403, 404):  # no RBAC, or the namespace does not exist
            log.warning("service_cidr.probe_refused", namespace=namespace, status=e.status, message=e.message)
            return ()
        raise
    try:
        api.delete(f"/api/v1/namespaces/{namespace}/services/{name}")
    except ApiError:
        log.warning("service_cidr.probe_cleanup_failed", service=f"{namespace}/{name}")
    return ()


def detect_service_cidrs(api: KubeApi, *, namespace: str) -> tuple[IPNetwork, ...]:
    """The Service CIDRs, sorted (IPv4 first); () when undetectable. Raises on connection errors (retry later).

    Without the ServiceCIDR API the probe creates a Service in `namespace`: the services' own (lease) namespace,
    the one namespace where the shipped RBAC (deploy/rbac/) lets them create and delete Services."""
    nets = _from_servicecidr_api(api)
    if not nets:
        found: set[IPNetwork] = set()
        for ip in PROBE_IPS:
            found.update(_probe(api, namespace, ip))
        nets = tuple(found)
    result = tuple(sorted(set(nets), key=lambda n: (n.version, int(n.network_address), n.prefixlen)))
    log.info("service_cidr.detected", cidrs=[str(c) for c in result])
    return result
