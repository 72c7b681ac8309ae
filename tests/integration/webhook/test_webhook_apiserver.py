"""`egressgw webhook` registered with a real kube-apiserver (v1.20), driven by `kubectl apply`.

The API server is this module's own (a webhook registered on the session's shared one would judge every other
test's objects). The webhook runs as a real process (`python -m appliance.cli webhook`), bootstraps its certificates
into a Secret, writes its CA into the ValidatingWebhookConfiguration (made from the shipped
deploy/webhook/validatingwebhookconfiguration.yaml, with a `url` clientConfig: the API server runs on this host), and
from then on every invalid example is refused by `kubectl apply` naming the field, valid ones pass, an immutable
field cannot change, and with the webhook stopped the shipped failurePolicy holds (and so does the other one).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.core.waiting import wait_until
from k8s_sync.kubeapi import ApiError, KubeApi, make_api_client
from lab.kube_apiserver import (
    ApiServer,
    ApiServerConfig,
    ApiServerError,
    TokenUser,
    apply_crds,
    free_port,
    kubeconfig,
    start_apiserver,
)

pytestmark = pytest.mark.apiserver

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))
MANIFEST = ROOT / "deploy" / "webhook" / "validatingwebhookconfiguration.yaml"
CONFIG_NAME = "egressgw-webhook"
SECRET = ("egressgw-system", "egressgw-webhook-tls")
CONFIG_PATH = f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{CONFIG_NAME}"
SECRET_PATH = f"/api/v1/namespaces/{SECRET[0]}/secrets/{SECRET[1]}"
#: invalid examples the API server's CRD schema refuses before any admission webhook is asked (same list as
#: tests/integration/test_crds_apiserver.py); spidernet's API has no CRD here at all
SCHEMA_REFUSES = {"bad-selector-operator", "negative-priority", "overflowing-priority", "policy-malformed-eip",
                  "unknown-allocator-policy", "unknown-tunnel-type", "wrong-type", "wrong-type-priority"}
NOT_SERVED = {"spidernet-api-version"}
#: unknown fields: kubectl 1.32 refuses them itself against the published schema (the 1.20 API server would prune
#: them silently), before sending anything
KUBECTL_REFUSES = {"unknown-field", "namespace-selector-on-policy"}
#: an invalid example only egressgw's validation catches (the schema accepts it)
ONLY_WE_REFUSE = EXAMPLES / "invalid" / "pod-selector-and-subnet.yaml"
DENIED = 'admission webhook "validate.egressgw.io" denied the request'
#: the webhook's ServiceAccount, as a static token (RBAC matches ServiceAccount subjects by this user name)
WEBHOOK_USER = TokenUser(token=secrets.token_hex(16), user="system:serviceaccount:egressgw-system:egressgw-webhook",
                         groups=("system:serviceaccounts", "system:serviceaccounts:egressgw-system"))


def expected_field(path: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in path.read_text().splitlines()
                if line.startswith("# expect:"))


class Cluster:
    def __init__(self, server: ApiServer, workdir: Path) -> None:
        self.server = server
        self.workdir = workdir
        self.api = KubeApi(make_api_client(str(server.kubeconfig_path)))
        self.webhook: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        #: the webhook runs as its ServiceAccount would: only what deploy/webhook/rbac.yaml grants
        self.webhook_kubeconfig = workdir / "webhook.kubeconfig"
        self.webhook_kubeconfig.write_text(yaml.safe_dump(kubeconfig(server.url, WEBHOOK_USER.token)))

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["kubectl", f"--kubeconfig={self.server.kubeconfig_path}", *args], input=stdin,
                              capture_output=True, text=True, timeout=120)

    def start_webhook(self, port: int | None = None, log_name: str = "webhook.log") -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "appliance.cli", "webhook", f"--listen=127.0.0.1:{port or self.port}",
               f"--secret={SECRET[0]}/{SECRET[1]}", "--san=127.0.0.1", f"--webhook-config={CONFIG_NAME}",
               f"--kubeconfig={self.webhook_kubeconfig}"]
        with open(self.workdir / log_name, "ab") as log:
            return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)

    def log_tail(self, log_name: str = "webhook.log") -> str:
        return "\n".join((self.workdir / log_name).read_text(errors="replace").splitlines()[-30:])

    def ca_bundle(self) -> str:
        return str(self.api.get(CONFIG_PATH)["webhooks"][0]["clientConfig"].get("caBundle") or "")

    def webhook_effective(self) -> bool:
        """A server-side dry run of an invalid object (under a name never stored) is denied by the webhook."""
        probe = yaml.safe_load(ONLY_WE_REFUSE.read_text())
        probe["metadata"]["name"] = "webhook-probe"
        done = self.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(probe))
        return done.returncode != 0 and DENIED in done.stderr

    def failure_policy(self, policy: str) -> None:
        config = self.api.get(CONFIG_PATH)
        config["webhooks"][0]["failurePolicy"] = policy
        self.api.replace(CONFIG_PATH, config)


def stop(proc: subprocess.Popen[bytes] | None) -> int | None:
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return None


def registration(port: int) -> dict[str, Any]:
    """The shipped configuration, pointed at this host's webhook by URL (no Service: the API server is local)."""
    config = yaml.safe_load(MANIFEST.read_text())
    for webhook in config["webhooks"]:
        webhook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/validate"}
    return dict(config)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("webhook-apiserver")
    try:
        server = start_apiserver(ApiServerConfig(workdir=workdir, die_with_parent=True, extra_tokens=(WEBHOOK_USER,)))
    except ApiServerError as e:
        pytest.fail(f"cannot start the test kube-apiserver: {e}", pytrace=False)
    c = Cluster(server, workdir)
    try:
        apply_crds(server)
        for ns in ("egressgw-system", "shop", "tenant-a"):
            c.api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        c.api.create("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", registration(c.port))
        rbac = c.kubectl("apply", "-f", str(ROOT / "deploy" / "webhook" / "rbac.yaml"))
        assert rbac.returncode == 0, rbac.stderr
        c.webhook = c.start_webhook()
        wait_until(c.ca_bundle, timeout=60, what="the webhook to write its CA into the configuration",
                   describe=c.log_tail)
        wait_until(c.webhook_effective, timeout=60, what="the API server to call the webhook", describe=c.log_tail)
        yield c
    finally:
        stop(c.webhook)
        server.stop()


@pytest.fixture
def clean(cluster: Cluster) -> Iterator[Cluster]:
    """Every egressgw.io object is deleted after the test (the examples' pools overlap each other)."""
    yield cluster
    for plural in ("egresspolicies", "egressclusterpolicies", "egressgateways", "egressclusterinfos"):
        cluster.kubectl("delete", plural, "--all", "--all-namespaces", "--wait=false")


def test_the_bootstrap_stores_the_certificates_and_the_ca_in_the_configuration(cluster: Cluster) -> None:
    secret = cluster.api.get(SECRET_PATH)
    assert secret["type"] == "kubernetes.io/tls"
    assert set(secret["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert cluster.ca_bundle() == secret["data"]["ca.crt"]
    ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
    # the served certificate is the stored one and verifies with the CA the API server was given
    served = ssl.get_server_certificate(("127.0.0.1", cluster.port), ca_certs=None)
    assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(
        base64.b64decode(secret["data"]["tls.crt"]).decode())
    context = ssl.create_default_context(cadata=ca)
    with context.wrap_socket(socket.create_connection(("127.0.0.1", cluster.port), timeout=10),
                             server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


def test_the_shipped_manifests_are_accepted_by_the_api_server(cluster: Cluster) -> None:
    files = sorted((ROOT / "deploy" / "webhook").glob("*.yaml"))
    assert MANIFEST in files
    others = [a for f in files if f != MANIFEST for a in ("-f", str(f))]
    done = cluster.kubectl("apply", "--dry-run=server", *others)
    assert done.returncode == 0, done.stderr
    assert sorted(line.split()[0] for line in done.stdout.splitlines()) == sorted([
        "clusterrole.rbac.authorization.k8s.io/egressgw-webhook",
        "clusterrolebinding.rbac.authorization.k8s.io/egressgw-webhook",
        "deployment.apps/egressgw-webhook", "role.rbac.authorization.k8s.io/egressgw-webhook",
        "rolebinding.rbac.authorization.k8s.io/egressgw-webhook", "service/egressgw-webhook",
        "serviceaccount/egressgw-webhook"])
    # the configuration as shipped (service clientConfig), under another name: the test's own points at a url
    config = yaml.safe_load(MANIFEST.read_text())
    config["metadata"]["name"] = "egressgw-webhook-shipped"
    done = cluster.kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(config))
    assert done.returncode == 0, done.stderr


def test_the_webhook_has_no_more_rights_than_it_needs(cluster: Cluster) -> None:
    webhook = KubeApi(make_api_client(str(cluster.webhook_kubeconfig)))
    with pytest.raises(ApiError) as refused:
        webhook.get("/api/v1/namespaces/egressgw-system/secrets")  # only its own Secret, by name
    assert refused.value.status == 403
    with pytest.raises(ApiError) as refused:
        webhook.get("/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations")
    assert refused.value.status == 403
    with pytest.raises(ApiError) as refused:
        webhook.create("/apis/egressgw.io/v1alpha1/egressgateways", yaml.safe_load(
            (EXAMPLES / "gateway.yaml").read_text().split("---")[0]))
    assert refused.value.status == 403


def test_a_second_replica_serves_the_same_certificate(cluster: Cluster) -> None:
    before = cluster.api.get(SECRET_PATH)
    port = free_port()
    replica = cluster.start_webhook(port, "replica.log")
    try:
        def served() -> str:
            try:
                return ssl.get_server_certificate(("127.0.0.1", port))
            except OSError:
                return ""
        pem = wait_until(served, timeout=60, what="the second replica to serve",
                         describe=lambda: cluster.log_tail("replica.log"))
        after = cluster.api.get(SECRET_PATH)
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]  # read, not rewritten
        assert ssl.PEM_cert_to_DER_cert(pem) == ssl.PEM_cert_to_DER_cert(
            base64.b64decode(after["data"]["tls.crt"]).decode())
    finally:
        assert stop(replica) == 0


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_kubectl_apply_of_every_invalid_example_is_refused_with_the_field(clean: Cluster, path: Path) -> None:
    done = clean.kubectl("apply", "-f", str(path))
    assert done.returncode != 0, done.stdout
    if path.stem in NOT_SERVED:
        assert "no matches for kind" in done.stderr
        return
    if path.stem in KUBECTL_REFUSES:
        field = expected_field(path)
        assert f'unknown field "{field.rsplit(".", 1)[1]}"' in done.stderr, done.stderr
        # past kubectl's own check, the API server prunes the field; the webhook finds it in kubectl's record
        done = clean.kubectl("apply", "--validate=false", "-f", str(path))
        assert done.returncode != 0, done.stdout
        assert DENIED in done.stderr and f"{field}: dropped by the API server" in done.stderr, done.stderr
    elif path.stem in SCHEMA_REFUSES:  # the 1.20 schema validator names list items without their index
        assert re.sub(r"\[\d+\]", "", expected_field(path)) in done.stderr, done.stderr
        assert DENIED not in done.stderr
    else:
        assert DENIED in done.stderr and expected_field(path) in done.stderr, done.stderr


def test_the_valid_examples_are_admitted_and_an_immutable_field_cannot_change(clean: Cluster) -> None:
    # a policy before the gateway it names: admitted, with a warning for what the services will report until then
    done = clean.kubectl("apply", "-f", str(EXAMPLES / "tenant-policy.yaml"))
    assert done.returncode == 0, done.stderr
    assert ("Warning: EgressPolicy/tenant-a/payments: spec.egressIP.ipv4: 203.0.113.170 is not in the ipv4 pool of "
            "any EgressGateway") in done.stderr
    done = clean.kubectl("apply", "-f", str(EXAMPLES))
    assert done.returncode == 0, done.stderr
    policy = clean.api.get("/apis/egressgw.io/v1alpha1/namespaces/tenant-a/egresspolicies/payments")
    assert policy["spec"]["egressIP"]["ipv4"] == "203.0.113.170"

    manifest = yaml.safe_load((EXAMPLES / "tenant-policy.yaml").read_text())
    mutable = copy.deepcopy(manifest)
    mutable["spec"]["priority"] = 3
    done = clean.kubectl("apply", "-f", "-", stdin=json.dumps(mutable))
    assert done.returncode == 0, done.stderr

    moved = copy.deepcopy(mutable)
    moved["spec"]["egressIP"]["ipv4"] = "203.0.113.161"
    done = clean.kubectl("apply", "-f", "-", stdin=json.dumps(moved))
    assert done.returncode != 0
    assert DENIED in done.stderr
    assert "spec.egressIP.ipv4: immutable: was 203.0.113.170, now 203.0.113.161" in done.stderr
    stored = clean.api.get("/apis/egressgw.io/v1alpha1/namespaces/tenant-a/egresspolicies/payments")
    assert stored["spec"]["egressIP"]["ipv4"] == "203.0.113.170" and stored["spec"]["priority"] == 3


def test_with_the_webhook_down_the_failure_policy_holds(clean: Cluster) -> None:
    shipped = yaml.safe_load(MANIFEST.read_text())["webhooks"][0]["failurePolicy"]
    assert shipped == "Ignore"  # docs/operations.md explains the choice
    assert stop(clean.webhook) == 0  # SIGTERM: a graceful stop
    try:
        # Ignore (shipped): the API server admits what only the webhook would refuse; the services report it
        done = clean.kubectl("apply", "-f", str(ONLY_WE_REFUSE))
        assert done.returncode == 0, done.stderr
        # Fail: nothing is admitted while the webhook is away, with a message saying so
        clean.failure_policy("Fail")
        valid = EXAMPLES / "gateway.yaml"

        def refused_unreachable() -> str:
            done = clean.kubectl("apply", "--dry-run=server", "-f", str(valid))
            return done.stderr if done.returncode != 0 and "failed calling webhook" in done.stderr else ""
        message = wait_until(refused_unreachable, timeout=60, what="Fail to take effect")
        assert "validate.egressgw.io" in message
    finally:
        clean.failure_policy(shipped)
        clean.webhook = clean.start_webhook()
        wait_until(clean.webhook_effective, timeout=60, what="the webhook to be back", describe=clean.log_tail)
    # the object let in while the webhook was away: its status can still be written (the services report it there;
    # /status is not matched by the webhook), while a spec change that leaves it invalid is refused
    path = f"/apis/egressgw.io/v1alpha1/namespaces/shop/egresspolicies/{ONLY_WE_REFUSE.stem}"
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": "Invalid", "message": "test",
                              "lastTransitionTime": "2030-01-01T00:00:00Z"}]}
    assert clean.api.merge_patch(f"{path}/status", {"status": status})["status"] == status
    with pytest.raises(ApiError) as refused:
        clean.api.merge_patch(path, {"spec": {"priority": 4}})
    assert DENIED in refused.value.message and "spec.appliedTo: podSelector and podSubnet" in refused.value.message
