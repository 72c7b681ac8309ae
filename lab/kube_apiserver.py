"""Start a real etcd + kube-apiserver (v1.20) for tests and the lab, optionally inside a network namespace.

There is no kubelet, scheduler or controller-manager: this is only the API (see docs and
`scripts/ensure-kube-apiserver.sh`, which builds and caches the binary). Usage::

    cfg = ApiServerConfig(workdir=Path("/tmp/x"))            # free 127.0.0.1 ports
    with start_apiserver(cfg) as api:                         # waits for /readyz
        apply_crds(api, crd_files())                          # waits until Established
        ... api.kubeconfig_path, api.url, api.token ...
        api.restart_apiserver()                               # etcd keeps its data (relist tests)

With ``netns="NS"`` both processes run under ``ip netns exec NS`` (the namespace must exist; its loopback is set
up); the default ports are then the well-known ones (6443, 2379, 2380), since the namespace is fresh. Readiness
probes and CRD application then also run inside that namespace (a child ``python -m lab.kube_http``), because
the host namespace has no route into a lab namespace.

Why the flags: ``--token-auth-file`` with one ``system:masters`` token (no certificates to manage);
``--authorization-mode=Node,RBAC`` (what real clusters run: requests are judged by the shipped RBAC, not waved
through); ``--disable-admission-plugins=ServiceAccount`` (no controller-manager creates default service accounts);
``--endpoint-reconciler-type=none`` (a loopback advertise address would be refused for the `kubernetes` Endpoints).

Service accounts (`install_service_accounts`): the shipped ``deploy/rbac/`` manifests are applied unchanged, then one
token per ServiceAccount is asked of the API server's TokenRequest API (``POST .../serviceaccounts/NAME/token``,
what the kubelet does for a pod's projected token and ``kubectl create token`` for a person; it needs no
controller-manager, only the service-account signing key the server already has). The API server itself then
authenticates the bearer as ``system:serviceaccount:<ns>:<name>`` with the groups ``system:serviceaccounts``,
``system:serviceaccounts:<ns>`` and ``system:authenticated``, exactly as in a cluster, and the token dies with its
ServiceAccount. `service_account_kubeconfig` writes a kubeconfig for such a token.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.core.waiting import poll_until
from lab.kube_http import CrdError, apply_crd_files, probe_ready, request

RBAC_DIR = Path(__file__).resolve().parent.parent / "deploy" / "rbac"
#: the namespace of the shipped ServiceAccounts (deploy/rbac/namespace.yaml) and their names, by role
SA_NAMESPACE = "egressgw-system"
SERVICE_ACCOUNTS = {"agent": "egressgw-agent", "gateway": "egressgw-gateway"}
#: requested lifetime of a minted token (the API server caps it only when --service-account-max-token-expiration
#: is set; it is not): a lab may live for days
TOKEN_SECONDS = 30 * 24 * 3600
ENSURE_HINT = "run scripts/ensure-kube-apiserver.sh (builds and caches it, about 5 minutes the first time)"
CRD_DIR = Path(__file__).resolve().parent.parent / "k8s_sync" / "crds"


class ApiServerError(RuntimeError):
    """The API server (or etcd) is missing, did not start, or did not become ready."""


class BinaryMissing(ApiServerError):
    """kube-apiserver or etcd is not installed (run scripts/ensure-kube-apiserver.sh)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenUser:
    """An extra static-token user (for RBAC tests or per-node agent credentials)."""

    token: str
    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiServerConfig:
    """How to run etcd + kube-apiserver. Ports left None are chosen: free loopback ports, or 6443/2379/2380 in a
    network namespace (a fresh namespace has every port free)."""

    #: everything goes here: etcd data, certs, keys, token file, kubeconfig, logs
    workdir: Path
    #: the apiserver's advertise address and the one its kubeconfig names (in the namespace when `netns` is set)
    address: str = "127.0.0.1"
    #: the address it listens on (default: `address`); "::" listens on every IPv6 and IPv4 address of the namespace
    bind_address: str | None = None
    port: int | None = None
    etcd_client_port: int | None = None
    etcd_peer_port: int | None = None
    #: run both processes in this existing network namespace (`ip netns exec`)
    netns: str | None = None
    service_cluster_ip_range: str = "100.100.0.0/16"
    #: default: $KUBE_TEST_BIN/kube-apiserver, else ~/.cache/kube-test-bin/kube-apiserver
    apiserver_binary: Path | None = None
    etcd_binary: Path = Path("/usr/bin/etcd")
    extra_tokens: tuple[TokenUser, ...] = ()
    extra_apiserver_args: tuple[str, ...] = ()
    #: seconds to wait for /readyz
    ready_timeout: float = 60.0
    #: kill both processes when the starting thread dies (tests: no orphans after a hard kill; the lab: False,
    #: its daemons outlive `egressgw lab up`)
    die_with_parent: bool = False


def default_apiserver_binary() -> Path:
    base = os.environ.get("KUBE_TEST_BIN") or str(Path.home() / ".cache" / "kube-test-bin")
    return Path(base) / "kube-apiserver"


def crd_files() -> tuple[Path, ...]:
    """The project's CRD manifests (k8s_sync/crds/*.yaml), sorted."""
    return tuple(sorted(CRD_DIR.glob("*.yaml")))


def free_port(address: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        port: int = s.getsockname()[1]
        return port


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class ApiServer:
    """A running etcd + kube-apiserver pair. Create it with `start_apiserver`."""

    def __init__(self, config: ApiServerConfig, *, port: int, etcd_client_port: int, etcd_peer_port: int) -> None:
        self.config = config
        self.port = port
        self.etcd_client_port = etcd_client_port
        self.etcd_peer_port = etcd_peer_port
        self.token = secrets.token_hex(16)
        self.url = f"https://{_url_host(config.address)}:{port}"
        self.workdir = config.workdir
        self.kubeconfig_path = config.workdir / "kubeconfig"
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None

    # ----- lifecycle -----

    def start(self) -> None:
        binary = self.config.apiserver_binary or default_apiserver_binary()
        if not os.access(binary, os.X_OK):
            raise BinaryMissing(f"kube-apiserver not found at {binary}: {ENSURE_HINT}")
        if not os.access(self.config.etcd_binary, os.X_OK):
            raise BinaryMissing(f"etcd not found at {self.config.etcd_binary}: {ENSURE_HINT}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config.netns:
            subprocess.run(["ip", "-n", self.config.netns, "link", "set", "lo", "up"], check=True)
        self._write_credentials()
        self._write_kubeconfig()
        try:
            self._etcd = self._spawn(self._etcd_command(), "etcd.log")
            self._start_apiserver(binary)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the apiserver, then etcd (SIGTERM, then SIGKILL after 10 s). Idempotent."""
        _terminate(self._apiserver)
        self._apiserver = None
        _terminate(self._etcd)
        self._etcd = None

    def stop_apiserver(self) -> None:
        """Stop only the apiserver (etcd keeps running and keeps the data)."""
        _terminate(self._apiserver)
        self._apiserver = None

    def restart_apiserver(self) -> None:
        """Stop and start the apiserver process alone; waits for /readyz. Watch caches start empty, so watches
        from an old resourceVersion may get 410 Gone - a deterministic way to test relisting."""
        self.stop_apiserver()
        self._start_apiserver(self.config.apiserver_binary or default_apiserver_binary())

    def service_account_kubeconfigs(self) -> dict[str, Path]:
        """Apply deploy/rbac/ and write one kubeconfig per role (`<workdir>/kubeconfig.<role>`, a ServiceAccount
        token, never admin): {"agent": path, "gateway": path}. For a server the host reaches (no `netns`); a lab
        goes through its forwarder with `install_service_accounts` instead."""
        if self.config.netns:
            raise ApiServerError("service_account_kubeconfigs: the host has no route into a lab namespace")
        tokens = install_service_accounts(self.url, self.token)
        return {role: service_account_kubeconfig(self.workdir / f"kubeconfig.{role}", self.url, token, role)
                for role, token in tokens.items()}

    @property
    def apiserver_pid(self) -> int | None:
        return self._apiserver.pid if self._apiserver else None

    @property
    def etcd_pid(self) -> int | None:
        return self._etcd.pid if self._etcd else None

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- internals -----

    def _prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.config.netns] if self.config.netns else []

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / log_name, "ab") as log:
            return subprocess.Popen(
                self._prefix() + command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent if self.config.die_with_parent else None,
            )

    def _start_apiserver(self, binary: Path) -> None:
        self._apiserver = self._spawn(self._apiserver_command(binary), "kube-apiserver.log")
        try:
            self._wait_ready()
        except BaseException:
            self.stop_apiserver()
            raise

    def _etcd_command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.etcd_client_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(self.config.etcd_binary), "--name", "egressgw", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"egressgw={peer}", "--unsafe-no-fsync", "--logger", "zap",
            "--log-level", "warn",
        ]

    def _apiserver_command(self, binary: Path) -> list[str]:
        w = self.workdir
        return [
            str(binary),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_client_port}",
            f"--bind-address={self.config.bind_address or self.config.address}",
            f"--advertise-address={self.config.address}",
            f"--secure-port={self.port}",
            "--insecure-port=0",
            f"--cert-dir={w / 'certs'}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={w / 'sa.pub'}",
            f"--service-account-signing-key-file={w / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={self.config.service_cluster_ip_range}",
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
            *self.config.extra_apiserver_args,
        ]

    def _write_credentials(self) -> None:
        key, pub = self.workdir / "sa.key", self.workdir / "sa.pub"
        if not key.exists():
            _make_rsa_keypair(key, pub)
        lines = [f"{self.token},egressgw-admin,egressgw-admin,system:masters"]
        for t in self.config.extra_tokens:
            groups = ",".join(t.groups)
            lines.append(f'{t.token},{t.user},{t.user},"{groups}"' if groups else f"{t.token},{t.user},{t.user}")
        path = self.workdir / "tokens.csv"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)

    def _write_kubeconfig(self) -> None:
        self.kubeconfig_path.write_text(yaml.safe_dump(kubeconfig(self.url, self.token)))
        self.kubeconfig_path.chmod(0o600)

    def _wait_ready(self) -> None:
        if self.config.netns:
            cmd = [*self._prefix(), sys.executable, "-m", "lab.kube_http", "probe", "--url", self.url,
                   "--token", self.token, "--timeout", str(self.config.ready_timeout)]
            ok = subprocess.run(cmd, capture_output=True).returncode == 0
            if ok and self._apiserver is not None and self._apiserver.poll() is None:
                return
        else:
            def ready_or_exited() -> str:
                """'ready', 'exited' (either process: no point waiting on), or '' (keep polling)."""
                if any(p is not None and p.poll() is not None for p in (self._apiserver, self._etcd)):
                    return "exited"
                return "ready" if probe_ready(self.url, self.token) else ""

            if poll_until(ready_or_exited, timeout=self.config.ready_timeout, interval=0.2) == "ready":
                return
        raise ApiServerError(
            f"kube-apiserver at {self.url} not ready within {self.config.ready_timeout:.0f} s\n"
            f"--- {self.workdir / 'kube-apiserver.log'} (tail) ---\n{_tail(self.workdir / 'kube-apiserver.log')}\n"
            f"--- {self.workdir / 'etcd.log'} (tail) ---\n{_tail(self.workdir / 'etcd.log')}"
        )


def kubeconfig(url: str, token: str, *, user: str = "egressgw-admin") -> dict[str, Any]:
    """A kubeconfig dict for `url` with a bearer token (the server certificate is self-signed: not verified)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "egressgw", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "egressgw", "context": {"cluster": "egressgw", "user": user}}],
        "current-context": "egressgw",
    }


def rbac_files() -> tuple[Path, ...]:
    """The shipped RBAC manifests: the namespace first, then the roles (deploy/rbac/)."""
    files = sorted(RBAC_DIR.glob("*.yaml"), key=lambda p: (p.name != "namespace.yaml", p.name))
    if not files:
        raise ApiServerError(f"no RBAC manifests found in {RBAC_DIR}")
    return tuple(files)


#: where each kind of the RBAC manifests lives in the API (path template; `{ns}` for namespaced kinds)
_RBAC_PATHS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def apply_manifests(url: str, admin_token: str, paths: Sequence[Path]) -> None:
    """Create or replace every object of the YAML files in `paths` (kinds of `_RBAC_PATHS` only), as they are."""
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            kind, meta = doc["kind"], doc["metadata"]
            if kind not in _RBAC_PATHS:
                raise ApiServerError(f"{path}: kind {kind} is not one apply_manifests knows")
            base = url + _RBAC_PATHS[kind].format(ns=meta.get("namespace", ""))
            status, body = request(base, admin_token, "POST", doc)
            if status == 409 and kind not in ("Namespace", "ServiceAccount"):  # kept: tokens stay valid
                status, current = request(f"{base}/{meta['name']}", admin_token)
                doc = {**doc, "metadata": {**meta, "resourceVersion": current["metadata"]["resourceVersion"]}}
                status, body = request(f"{base}/{meta['name']}", admin_token, "PUT", doc)
            if status not in (200, 201, 409):
                raise ApiServerError(f"applying {kind} {meta['name']} from {path}: HTTP {status}: {body}")


def service_account_token(url: str, admin_token: str, name: str, *, namespace: str = SA_NAMESPACE,
                          seconds: int = TOKEN_SECONDS) -> str:
    """A token for ServiceAccount `namespace/name` from the TokenRequest API (the ServiceAccount must exist)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}}
    status, answer = request(f"{url}/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", admin_token,
                             "POST", body)
    if status != 201 or not isinstance(answer, dict) or not (answer.get("status") or {}).get("token"):
        raise ApiServerError(f"TokenRequest for {namespace}/{name}: HTTP {status}: {answer}")
    return str(answer["status"]["token"])


def install_service_accounts(url: str, admin_token: str) -> dict[str, str]:
    """Apply the shipped deploy/rbac/ manifests unchanged and mint one token per role: {"agent": token, ...}."""
    apply_manifests(url, admin_token, rbac_files())
    return {role: service_account_token(url, admin_token, sa) for role, sa in SERVICE_ACCOUNTS.items()}


def service_account_kubeconfig(path: Path, url: str, token: str, role: str) -> Path:
    """Write a kubeconfig for the role's ServiceAccount token to `path` (mode 0600) and return `path`."""
    user = f"system:serviceaccount:{SA_NAMESPACE}:{SERVICE_ACCOUNTS[role]}"
    path.write_text(yaml.safe_dump(kubeconfig(url, token, user=user)))
    path.chmod(0o600)
    return path


def start_apiserver(config: ApiServerConfig) -> ApiServer:
    """Start etcd + kube-apiserver and wait for /readyz. Raises ApiServerError (with log tails) on failure.
    Chosen free ports are retried (twice) with new ones, in case another process took one meanwhile."""
    chosen = not config.netns and None in (config.port, config.etcd_client_port, config.etcd_peer_port)
    for attempt in range(3 if chosen else 1):
        if config.netns:
            port, client, peer = config.port or 6443, config.etcd_client_port or 2379, config.etcd_peer_port or 2380
        else:
            port = config.port or free_port(config.address)
            client = config.etcd_client_port or free_port()
            peer = config.etcd_peer_port or free_port()
        if attempt:
            shutil.rmtree(config.workdir / "etcd", ignore_errors=True)  # bootstrapped with the old peer port
        server = ApiServer(config, port=port, etcd_client_port=client, etcd_peer_port=peer)
        try:
            server.start()
        except BinaryMissing:
            raise
        except ApiServerError:
            if attempt == 2 or not chosen:
                raise
            continue
        return server
    raise AssertionError("unreachable")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the parent thread exits (Linux prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _make_rsa_keypair(key: Path, pub: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()))
    key.chmod(0o600)
    pub.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))


def apply_crds(server: ApiServer, paths: Sequence[Path] | None = None, *, timeout: float = 30.0) -> None:
    """Create (or replace) the CRDs in `paths` (default: the project's) and wait until each is Established."""
    files = tuple(paths) if paths is not None else crd_files()
    if not files:
        raise ApiServerError(f"no CRD files found in {CRD_DIR}")
    if server.config.netns:
        cmd = ["ip", "netns", "exec", server.config.netns, sys.executable, "-m", "lab.kube_http", "apply-crds",
               "--url", server.url, "--token", server.token, "--timeout", str(timeout),
               *map(str, files)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ApiServerError(f"applying CRDs in netns {server.config.netns} failed: {done.stderr.strip()}")
        return
    try:
        apply_crd_files(server.url, server.token, files, timeout)
    except CrdError as e:
        raise ApiServerError(str(e)) from e
