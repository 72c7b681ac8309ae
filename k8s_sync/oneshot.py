"""Read the cluster once (no watches) into a Store and resolve it: for `egressgw status`, `egressgw explain` and the
benchmark. Works without a running egressgw service.

`rr` stickiness: resolution keeps an `rr` policy on the EIP it had (`previous`). A one-shot reader has no previous
intent, so it rebuilds one from the EIPs the service wrote into policy status (`intent_from_status`); the service
does the same at start-up, so a restart does not reshuffle `rr` EIPs.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from appliance.intent import Intent, PolicyOutcome, PolicyState
from appliance.model import IPAddress, PolicyKind, PolicyRef
from appliance.resolution import resolve
from appliance.snapshot import Snapshot
from k8s_sync.kubeapi import JSON, KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE
from k8s_sync.reflector import Reflector
from k8s_sync.resources import Role, calico_served, watch_specs
from k8s_sync.service_cidr import detect_service_cidrs
from k8s_sync.store import Store

log = logging.getLogger(__name__)


def intent_from_status(policies: Sequence[JSON]) -> Intent:
    """A stand-in previous Intent: the gateway and EIPs written in the status of Ready policies."""
    outcomes = []
    for obj in policies:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        eip = status.get("eip") or {}
        if not ready or not status.get("gateway") or not eip:
            continue
        try:
            kind = PolicyKind(str(obj.get("kind")))
            v4: IPAddress | None = ipaddress.ip_address(eip["ipv4"]) if eip.get("ipv4") else None
            v6: IPAddress | None = ipaddress.ip_address(eip["ipv6"]) if eip.get("ipv6") else None
        except ValueError:
            continue
        ref = PolicyRef(kind=kind, namespace=str(meta.get("namespace") or "") if kind is PolicyKind.NAMESPACED
                        else "", name=str(meta.get("name") or ""))
        outcomes.append(PolicyOutcome(policy=ref, state=PolicyState.READY, gateway=str(status["gateway"]),
                                      eip_v4=v4, eip_v6=v6))
    return Intent(steerings=(), outcomes=tuple(sorted(outcomes, key=lambda o: o.policy)), instances=(),
                  cluster_cidrs=())


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    store: Store
    snapshot: Snapshot
    intent: Intent


def read_store(api: KubeApi, *, lease_namespace: str = DEFAULT_NAMESPACE, probe_service_cidr: bool = True) -> Store:
    """List every kind once into a new Store (synced when this returns)."""
    calico = calico_served(api)
    specs = watch_specs(Role.READER, lease_namespace=lease_namespace, calico=calico)
    store = Store([s.key for s in specs])
    for spec in specs:
        Reflector(api, spec, store)._list()
    if probe_service_cidr:
        store.set_service_cidrs(detect_service_cidrs(api))
    return store


def read_cluster(api: KubeApi, *, lease_namespace: str = DEFAULT_NAMESPACE, probe_service_cidr: bool = True) \
        -> ClusterView:
    store = read_store(api, lease_namespace=lease_namespace, probe_service_cidr=probe_service_cidr)
    snapshot = store.snapshot()
    previous = intent_from_status(store.raw_objects("EgressPolicy") + store.raw_objects("EgressClusterPolicy"))
    return ClusterView(store=store, snapshot=snapshot, intent=resolve(snapshot, previous=previous))


def add_kube_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)")
    parser.add_argument("--lease-namespace", default=DEFAULT_NAMESPACE,
                        help=f"namespace of the member leases (default {DEFAULT_NAMESPACE})")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")


def api_from_args(args: argparse.Namespace) -> KubeApi:
    return KubeApi(make_api_client(args.kubeconfig))
