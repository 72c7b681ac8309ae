"""Read the cluster once (no watches) into a Store and resolve it: for `egressgw status`, `egressgw explain` and the
benchmark. Works without a running egressgw service.

`rr` stickiness: resolution keeps an `rr` policy on the EIP it had (`previous`). A one-shot reader has no previous
intent, so it rebuilds one from the EIPs the service wrote into policy status (`intent_from_status`); the service
does the same at start-up, so a restart does not reshuffle `rr` EIPs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from appliance.core.intent import Intent
from appliance.core.snapshot import Snapshot
from appliance.policy.resolution import resolve
from k8s_sync.kubeapi import KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE
from k8s_sync.reflector import Reflector
from k8s_sync.resources import Role, calico_served, watch_specs
from k8s_sync.service_cidr import detect_service_cidrs
from k8s_sync.status_planning import intent_from_status
from k8s_sync.store import Store

__all__ = [
    "ClusterView", "add_kube_arguments", "api_from_args", "intent_from_status", "read_cluster", "read_cluster_for",
    "read_store",
]


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
        store.set_service_cidrs(detect_service_cidrs(api, namespace=lease_namespace))
    return store


def read_cluster(api: KubeApi, *, lease_namespace: str = DEFAULT_NAMESPACE, probe_service_cidr: bool = True) \
        -> ClusterView:
    store = read_store(api, lease_namespace=lease_namespace, probe_service_cidr=probe_service_cidr)
    snapshot = store.snapshot()
    previous = intent_from_status(store.raw_objects("EgressPolicy") + store.raw_objects("EgressClusterPolicy"))
    return ClusterView(store=store, snapshot=snapshot, intent=resolve(snapshot, previous=previous))


def add_kube_arguments(parser: argparse.ArgumentParser, *, outputs: tuple[str, ...] = ("table", "json")) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)")
    parser.add_argument("--context", default=None, help="the kubeconfig context to use (default: its current one)")
    parser.add_argument("--lease-namespace", default=DEFAULT_NAMESPACE,
                        help=f"namespace of the member leases (default {DEFAULT_NAMESPACE})")
    parser.add_argument("-o", "--output", choices=outputs, default=outputs[0], help="output format")


def api_from_args(args: argparse.Namespace) -> KubeApi:
    return KubeApi(make_api_client(args.kubeconfig, context=getattr(args, "context", None)))


def read_cluster_for(args: argparse.Namespace, command: str) -> ClusterView | None:
    """`read_cluster` with a command's kube arguments (`add_kube_arguments`); None when the cluster cannot be read,
    after printing `egressgw <command>: cannot read the cluster: <error>` to stderr (the command exits 1)."""
    try:
        return read_cluster(api_from_args(args), lease_namespace=args.lease_namespace)
    except Exception as e:
        print(f"egressgw {command}: cannot read the cluster: {e}", file=sys.stderr)
        return None
