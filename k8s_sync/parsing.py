"""Raw cluster objects -> typed model, for the store: thin adapters over `appliance.api.manifests` (the one parser).

Kept separate so the store does not care which module owns the parsing, and so Calico's IPPool (not ours, and
optional) is read here: only `spec.cidr` matters, disabled pools included (their pods still exist).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import sys
from datetime import UTC, datetime

from appliance.api import manifests
from appliance.core.events import EventLogger, error_text
from appliance.core.model import Appliance, IPNetwork, Namespace, Node, Pod
from k8s_sync.kubeapi import JSON
from k8s_sync.leases import member_name_of_lease

log = EventLogger(logging.getLogger(__name__))


def parse_pod_obj(obj: JSON) -> Pod:
    return compact_pod(manifests.parse_pod(obj))


def compact_pod(pod: Pod) -> Pod:
    """`pod` with its repeated strings interned (namespace, node, phase, label keys and values): every parsed watch
    event brings fresh copies of strings that thousands of pods share; interned, they are stored once (memory at
    100k pods). Interned strings are freed when nothing refers to them any more."""
    intern = sys.intern
    return dataclasses.replace(
        pod,
        namespace=intern(pod.namespace),
        node_name=intern(pod.node_name),
        phase=intern(pod.phase),
        labels=tuple((intern(k), intern(v)) for k, v in pod.labels),
    )


def parse_node_obj(obj: JSON) -> Node:
    return manifests.parse_node(obj)


def parse_namespace_obj(obj: JSON) -> Namespace:
    return manifests.parse_namespace(obj)


def parse_appliance(obj: JSON, now: float) -> Appliance | None:
    """The appliance a member Lease registers (None for leases that are not appliances, or malformed ones)."""
    try:
        appliance: Appliance | None = manifests.parse_appliance_lease(obj, datetime.fromtimestamp(now, UTC))
    except (ValueError, KeyError, TypeError) as e:
        meta = obj.get("metadata") or {}
        log.warning("store.parse_failed", kind="Lease", object=f"{meta.get('namespace')}/{meta.get('name')}",
                    error=error_text(e))
        return None
    if appliance is None:
        return None
    # a member lease is named egressgw-member-<name>: the member is <name>
    return dataclasses.replace(appliance, name=member_name_of_lease(obj) or appliance.name)


def parse_calico_pool(obj: JSON) -> tuple[IPNetwork, ...]:
    cidr = (obj.get("spec") or {}).get("cidr")
    if not isinstance(cidr, str):
        return ()
    try:
        return (ipaddress.ip_network(cidr, strict=False),)
    except ValueError:
        log.warning("store.parse_failed", kind="IPPool", object=(obj.get("metadata") or {}).get("name"), cidr=cidr)
        return ()
