"""The shipped RBAC (deploy/rbac/, applied unchanged) on a real API server running `--authorization-mode=Node,RBAC`:
each role may do exactly what the product needs, as the identity a ServiceAccount token really authenticates as.

- The table: every (verb, resource, namespace) the agent or gateway uses, plus the neighbours it must NOT have, asked
  with a SelfSubjectAccessReview made WITH the role's token (so the answer is for the user and groups the API server
  derived from that token, not for a name we typed).
- Real calls as each role: the agent is refused a status patch (403 naming its ServiceAccount user) and a Lease
  write, the gateway makes both; the Service-CIDR probe works in the lease namespace and is refused in `default`;
  the cluster sync of each role (every reflector: list + watch) gets synced; the gateway records an Event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.core.waiting import wait_until
from k8s_sync.cluster import ClusterSync
from k8s_sync.kubeapi import ApiError, KubeApi, make_api_client
from k8s_sync.leases import LEASES, MemberIdentity, MemberLease
from k8s_sync.resources import Role
from k8s_sync.service_cidr import detect_service_cidrs
from lab.kube_apiserver import SA_NAMESPACE, SERVICE_ACCOUNTS, ApiServer
from tests.kube_support import Kube, kube_session, lease_namespace_api

pytestmark = pytest.mark.apiserver

NS = SA_NAMESPACE
OTHER = "rbac-some-app"  # a namespace of the users' (policies, pods)
EGW = "egressgw.io"
A, G = "agent", "gateway"

#: (verb, group, resource, subresource, namespace or "" for cluster-wide) -> the roles allowed
TABLE: list[tuple[str, str, str, str, str, frozenset[str]]] = [
    # reflectors: list + watch, cluster-wide
    *[(v, "", r, "", "", frozenset({A, G})) for v in ("list", "watch") for r in ("pods", "nodes", "namespaces")],
    *[(v, EGW, r, "", "", frozenset({A, G})) for v in ("list", "watch")
      for r in ("egressgateways", "egresspolicies", "egressclusterpolicies", "egressclusterinfos")],
    ("list", "crd.projectcalico.org", "ippools", "", "", frozenset({A, G})),
    ("watch", "crd.projectcalico.org", "ippools", "", "", frozenset({A, G})),
    ("list", "networking.k8s.io", "servicecidrs", "", "", frozenset({A, G})),
    ("list", "coordination.k8s.io", "leases", "", NS, frozenset({A, G})),
    ("watch", "coordination.k8s.io", "leases", "", NS, frozenset({A, G})),
    # WireGuard public key annotation on the own Node
    ("patch", "", "nodes", "", "", frozenset({A, G})),
    # the Service-CIDR probe, in the lease namespace only
    ("create", "", "services", "", NS, frozenset({A, G})),
    ("delete", "", "services", "", NS, frozenset({A, G})),
    ("create", "", "services", "", "default", frozenset()),
    ("create", "", "services", "", OTHER, frozenset()),
    # status: the gateway's leader patches it; nobody updates or touches the spec
    ("patch", EGW, "egresspolicies", "status", OTHER, frozenset({G})),
    ("patch", EGW, "egressgateways", "status", "", frozenset({G})),
    ("patch", EGW, "egressclusterpolicies", "status", "", frozenset({G})),
    ("patch", EGW, "egressclusterinfos", "status", "", frozenset({G})),
    ("update", EGW, "egresspolicies", "status", OTHER, frozenset()),
    ("get", EGW, "egresspolicies", "", OTHER, frozenset({G})),  # the writer re-reads after a 409
    ("patch", EGW, "egresspolicies", "", OTHER, frozenset()),
    ("update", EGW, "egressgateways", "", "", frozenset()),
    ("create", EGW, "egresspolicies", "", OTHER, frozenset()),
    ("delete", EGW, "egressgateways", "", "", frozenset()),
    # Events about the objects (the policy's namespace; `default` for cluster-scoped objects)
    ("create", "", "events", "", OTHER, frozenset({G})),
    ("create", "", "events", "", "default", frozenset({G})),
    ("patch", "", "events", "", OTHER, frozenset()),
    # Leases: member + leader Lease for gateways, in the lease namespace only; the agent holds none
    *[(v, "coordination.k8s.io", "leases", "", NS, frozenset({G}))
      for v in ("get", "create", "update", "patch", "delete")],
    ("create", "coordination.k8s.io", "leases", "", "default", frozenset()),
    ("create", "coordination.k8s.io", "leases", "", "kube-node-lease", frozenset()),
    # nothing else
    ("get", "", "secrets", "", NS, frozenset()),
    ("list", "", "secrets", "", "", frozenset()),
    ("create", "", "pods", "", OTHER, frozenset()),
    ("delete", "", "pods", "", OTHER, frozenset()),
    ("update", "", "nodes", "", "", frozenset()),
    ("delete", "", "nodes", "", "", frozenset()),
    ("create", "", "serviceaccounts", "token", NS, frozenset()),
    ("create", "rbac.authorization.k8s.io", "rolebindings", "", NS, frozenset()),
    ("list", "apps", "daemonsets", "", NS, frozenset()),
]


@pytest.fixture(scope="module")
def role_apis(role_kubeconfigs: dict[str, Path]) -> Iterator[dict[str, KubeApi]]:
    clients = {role: make_api_client(str(path)) for role, path in role_kubeconfigs.items()}
    try:
        yield {role: KubeApi(c) for role, c in clients.items()}
    finally:
        for c in clients.values():
            c.close()


@pytest.fixture(scope="module")
def admin(apiserver: ApiServer) -> Iterator[KubeApi]:
    with lease_namespace_api(apiserver) as api:
        try:
            api.create("/api/v1/namespaces", {"metadata": {"name": OTHER}})
        except ApiError as e:
            if e.status != 409:
                raise
        yield api


def allowed(api: KubeApi, verb: str, group: str, resource: str, sub: str, namespace: str) -> bool:
    attrs: dict[str, Any] = {"verb": verb, "group": group, "resource": resource}
    if sub:
        attrs["subresource"] = sub
    if namespace:
        attrs["namespace"] = namespace
    review = api.create("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                         "spec": {"resourceAttributes": attrs}})
    return bool(review["status"].get("allowed"))


def test_each_role_may_do_exactly_what_it_needs(role_apis: dict[str, KubeApi], admin: KubeApi) -> None:
    wrong = []
    for verb, group, resource, sub, namespace, roles in TABLE:
        for role, api in role_apis.items():
            got = allowed(api, verb, group, resource, sub, namespace)
            if got != (role in roles):
                what = f"{verb} {group or 'core'}/{resource}{'/' + sub if sub else ''} in {namespace or '*'}"
                wrong.append(f"{role}: {what}: allowed={got}, want {role in roles}")
    assert not wrong, "\n".join(wrong)


def test_tokens_authenticate_as_the_service_accounts(role_apis: dict[str, KubeApi]) -> None:
    for role, api in role_apis.items():
        with pytest.raises(ApiError) as refused:
            api.get(f"/api/v1/namespaces/{NS}/secrets")
        assert refused.value.status == 403
        assert f'"system:serviceaccount:{NS}:{SERVICE_ACCOUNTS[role]}"' in refused.value.message


def test_status_and_lease_writes_by_role(role_apis: dict[str, KubeApi], admin: KubeApi) -> None:
    with kube_session(admin) as kube:
        gw = kube.unique("rbac-gw")
        kube.gateway(gw, {"ippools": {"ipv4": ["203.0.113.128/29"]},
                          "nodeSelector": {"selector": {"matchLabels": {"rbac": gw}}}})
        pol = kube.unique("rbac-pol")
        kube.policy(OTHER, pol, {"egressGatewayName": gw, "appliedTo": {"podSelector": {"matchLabels": {"a": "b"}}}})
        status_path = kube.path("EgressPolicy", OTHER, pol, "status")
        patch: dict[str, Any] = {"status": {"conditions": []}}
        with pytest.raises(ApiError) as refused:
            role_apis[A].merge_patch(status_path, patch)
        assert refused.value.status == 403
        role_apis[G].merge_patch(status_path, patch)

        member = MemberLease(role_apis[G], MemberIdentity(name=kube.unique("rbac-member"), gateway=gw,
                                                          address="198.51.100.70"), namespace=NS, duration=10)
        member.renew_once()
        member.renew_once()  # the second renewal is a patch
        assert role_apis[A].get(LEASES.path(NS))["items"], "the agent reads the member Leases"
        agent = role_apis[A]
        writes: list[Callable[[], object]] = [
            lambda: agent.merge_patch(member.path, {"spec": {"holderIdentity": "agent"}}),
            lambda: agent.delete(member.path),
            lambda: agent.create(LEASES.path(NS), {"metadata": {"name": "agent-lease"}, "spec": {}}),
        ]
        for write in writes:
            with pytest.raises(ApiError) as refused:
                write()
            assert refused.value.status == 403
        member.release()
        with pytest.raises(ApiError) as gone:
            admin.get(member.path)
        assert gone.value.status == 404

        event = role_apis[G].create(f"/api/v1/namespaces/{OTHER}/events", {
            "metadata": {"generateName": f"{pol}."}, "reason": "Test", "message": "rbac", "type": "Normal",
            "involvedObject": {"apiVersion": "egressgw.io/v1alpha1", "kind": "EgressPolicy", "name": pol,
                               "namespace": OTHER}})
        assert event["metadata"]["name"].startswith(pol)


def test_service_cidr_probe_works_in_the_lease_namespace_only(role_apis: dict[str, KubeApi],
                                                               admin: KubeApi) -> None:
    for role, api in role_apis.items():
        assert [str(n) for n in detect_service_cidrs(api, namespace=NS)] == ["100.100.0.0/16"], role
        assert detect_service_cidrs(api, namespace="default") == (), role  # 403: logged, nothing found


@pytest.mark.parametrize("role", [Role.AGENT, Role.GATEWAY])
def test_each_roles_cluster_sync_lists_and_watches_everything(role: Role, role_apis: dict[str, KubeApi],
                                                             admin: KubeApi) -> None:
    with kube_session(admin) as kube:
        _sync_until_complete(role, role_apis[str(role)], kube)


def _sync_until_complete(role: Role, api: KubeApi, kube: Kube) -> None:
    node = kube.unique("rbac-node")
    kube.node(node, ips=("198.51.100.71",))
    sync = ClusterSync(api, role=role, node_name=node, lease_namespace=NS)
    sync.start()
    try:
        wait_until(sync.store.synced, timeout=30, what=f"the {role} cluster sync to finish its first lists")
        wait_until(lambda: any(n.name == node for n in sync.store.snapshot().nodes), timeout=30,
                   what="the node in the snapshot")
        wait_until(lambda: bool(sync.store.snapshot().service_cidrs), timeout=30, what="the Service CIDR")
        assert [str(c) for c in sync.store.snapshot().service_cidrs] == ["100.100.0.0/16"]
        assert all(r.stats["errors"] == 0 for r in sync.reflectors), [(r.spec.key, r.stats) for r in sync.reflectors]
    finally:
        sync.stop()
