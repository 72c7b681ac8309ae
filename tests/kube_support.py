"""Raw-JSON Kubernetes helpers for the integration tests on the session kube-apiserver (sync and service tests).

`Kube`: creates pods (with IPs set by a status merge-patch, as a kubelet would), nodes, gateways and policies;
cluster-scoped objects created through it are deleted by `finish()` (namespaces are not: they never finish deleting
on this API server). `lease_namespace_api(apiserver)`: a `KubeApi` on it with the lease namespace created;
`kube_session(api)`: a `Kube` that is finished afterwards. Waiting: `appliance.core.waiting.wait_until`.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from k8s_sync.kubeapi import JSON, ApiError, KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE
from k8s_sync.resources import RESOURCES
from lab.kube_apiserver import ApiServer

_ids = itertools.count()


class Kube:
    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.cleanup: list[str] = []
        self.suffix = uuid.uuid4().hex[:6]

    def unique(self, base: str) -> str:
        return f"{base}-{self.suffix}-{next(_ids)}"

    def path(self, kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        return RESOURCES[kind].path(namespace, name, sub)

    def create(self, obj: JSON) -> JSON:
        kind = obj["kind"]
        ns = obj["metadata"].get("namespace")
        created = self.api.create(self.path(kind, ns), obj)
        if not RESOURCES[kind].namespaced:
            self.cleanup.append(self.path(kind, None, obj["metadata"]["name"]))
        return created

    def get(self, kind: str, name: str, namespace: str | None = None) -> JSON:
        return self.api.get(self.path(kind, namespace, name))

    def patch(self, kind: str, name: str, patch: JSON, namespace: str | None = None) -> JSON:
        return self.api.merge_patch(self.path(kind, namespace, name), patch)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete at once (gracePeriodSeconds=0: there is no kubelet to finish a graceful pod deletion)."""
        self.api.delete(self.path(kind, namespace, name), {"gracePeriodSeconds": 0})

    def gateway(self, name: str, spec: JSON) -> JSON:
        return self.create({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressGateway",
                            "metadata": {"name": name}, "spec": spec})

    def policy(self, namespace: str, name: str, spec: JSON) -> JSON:
        return self.create({"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy",
                            "metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def node(self, name: str, *, labels: dict[str, str] | None = None, ips: tuple[str, ...] = (),
             pod_cidrs: tuple[str, ...] = ()) -> JSON:
        node = self.create({"apiVersion": "v1", "kind": "Node",
                            "metadata": {"name": name, "labels": labels or {}},
                            "spec": {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)} if pod_cidrs else {}})
        if ips:
            node = self.api.merge_patch(self.path("Node", None, name, "status"),
                                        {"status": {"addresses": [{"type": "InternalIP", "address": a}
                                                                  for a in ips]}})
        return node

    def pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None, node: str = "",
            ips: tuple[str, ...] = ()) -> JSON:
        spec: JSON = {"containers": [{"name": "c", "image": "example.invalid/none"}]}
        if node:
            spec["nodeName"] = node
        pod = self.create({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                           "spec": spec})
        if ips:
            pod = self.set_pod_ips(namespace, name, ips)
        return pod

    def set_pod_ips(self, namespace: str, name: str, ips: tuple[str, ...], phase: str = "Running") -> JSON:
        return self.api.merge_patch(self.path("Pod", namespace, name, "status"),
                                    {"status": {"podIP": ips[0], "podIPs": [{"ip": i} for i in ips],
                                                "phase": phase}})

    def namespace(self, name: str, labels: dict[str, str] | None = None) -> JSON:
        return self.create({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": name, "labels": labels or {}}})

    def finish(self) -> None:
        for path in reversed(self.cleanup):
            if "/namespaces/" in path and path.count("/") <= 4:
                continue
            try:
                self.api.delete(path)
            except ApiError as e:
                if e.status != 404:
                    raise


@contextmanager
def lease_namespace_api(apiserver: ApiServer) -> Iterator[KubeApi]:
    """A `KubeApi` on `apiserver` with the lease namespace created (once: it may exist already); closed after."""
    client = make_api_client(str(apiserver.kubeconfig_path))
    api = KubeApi(client)
    try:
        api.create("/api/v1/namespaces", {"metadata": {"name": DEFAULT_NAMESPACE}})
    except ApiError as e:
        if e.status != 409:
            raise
    try:
        yield api
    finally:
        client.close()


@contextmanager
def kube_session(api: KubeApi) -> Iterator[Kube]:
    """A `Kube` on `api` whose cluster-scoped objects are deleted afterwards."""
    k = Kube(api)
    try:
        yield k
    finally:
        k.finish()
