"""`egressgw explain --namespace NS --pod NAME [--dest IP] [--kubeconfig F] [-o table|json]`.

Which policy applies to the pod's IPs (toward `--dest`, when given), why every other policy does not, which gateway
and EIP, and which member is primary now. Reads the API once and resolves locally (works without a running
service); the reasoning itself is `appliance.policy.explaining` (pure, the same predicates resolution uses).
Exit codes: 0 explained, 1 the API server cannot be read, 3 the pod does not exist.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys

from appliance.core.model import IPAddress
from appliance.policy.explaining import explain, render_text, to_dict
from k8s_sync.oneshot import add_kube_arguments, read_cluster_for

EXIT_NOT_FOUND = 3


def _ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", "-n", required=True, help="the pod's namespace")
    parser.add_argument("--pod", required=True, help="the pod's name")
    parser.add_argument("--dest", type=_ip, default=None, help="a destination address: which route it takes")
    add_kube_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    view = read_cluster_for(args, "explain")
    if view is None:
        return 1
    result = explain(view.snapshot, view.intent, args.namespace, args.pod, args.dest)
    if args.output == "json":
        sys.stdout.write(json.dumps(to_dict(result), indent=2) + "\n")
    else:
        sys.stdout.write(render_text(result))
    return 0 if result.found else EXIT_NOT_FOUND
