"""Talk to the test kube-apiserver without the Kubernetes client: the readiness probe and applying CRD files.

Kept free of the client (and of `lab.kube_apiserver`) so it starts fast and also runs *inside* a lab network
namespace as ``python -m lab.kube_http probe|apply-crds ...``, which is how `lab.kube_apiserver` reaches an API
server that the host namespace has no route to. TLS is not verified: the server's certificate is self-signed.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from appliance.core.waiting import poll_until


class CrdError(RuntimeError):
    """A CRD could not be applied or did not become Established."""


def _insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")  # plain text (readyz) or a stream of JSON lines (watch)


def request(url: str, token: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON or text) for one API call with a bearer token; JSON body when given."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=_insecure_context(), timeout=10) as resp:
            return resp.status, _decode(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, _decode(e.read())


def probe_ready(url: str, token: str) -> bool:
    try:
        status, body = request(f"{url}/readyz", token)
    except (OSError, ValueError):
        return False
    return status == 200 and body == "ok"


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def apply_crd_files(url: str, token: str, paths: Sequence[Path], timeout: float) -> None:
    names = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            name = doc["metadata"]["name"]
            names.append(name)
            status, body = request(f"{url}{CRD_PATH}", token, "POST", doc)
            if status == 409:
                status, current = request(f"{url}{CRD_PATH}/{name}", token)
                doc = {**doc, "metadata": {**doc["metadata"],
                                           "resourceVersion": current["metadata"]["resourceVersion"]}}
                status, body = request(f"{url}{CRD_PATH}/{name}", token, "PUT", doc)
            if status not in (200, 201):
                raise CrdError(f"applying CRD {name} from {path} failed ({status}): {body}")
    pending = list(names)
    conditions: list[Any] = []

    def all_established() -> bool:
        """Drop the CRDs (in order) the server reports Established; true when none is left."""
        nonlocal conditions
        while pending:
            _, body = request(f"{url}{CRD_PATH}/{pending[0]}", token)
            conditions = body.get("status", {}).get("conditions") or [] if isinstance(body, dict) else []
            if not any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                return False
            pending.pop(0)
        return True

    if not poll_until(all_established, timeout=timeout, interval=0.1):
        raise CrdError(f"CRD {pending[0]} not Established within {timeout} s: {conditions}")


def _main(argv: Sequence[str] | None = None) -> int:
    """Helpers run inside a network namespace: `probe` and `apply-crds`."""
    parser = argparse.ArgumentParser(prog="python -m lab.kube_http")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("probe", "apply-crds"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--token", required=True)
        p.add_argument("--timeout", type=float, default=60.0)
        if name == "apply-crds":
            p.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "probe":
        return 0 if poll_until(lambda: probe_ready(args.url, args.token), timeout=args.timeout, interval=0.2) else 1
    try:
        apply_crd_files(args.url, args.token, args.files, args.timeout)
    except CrdError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
