"""`egressgw webhook`: the validating admission webhook for egressgw.io objects (see docs/operations.md).

    egressgw webhook --service egressgw-webhook.egressgw-system --secret egressgw-webhook-tls \\
        --webhook-config egressgw.io

Certificates come from `--tls-dir DIR` (files ca.crt, ca.key, tls.crt, tls.key; made there when missing) or from a
Secret (`--secret [NAMESPACE/]NAME`, made when missing, shared by the replicas); the serving certificate covers the
Service's names (`--service NAME.NAMESPACE`: NAME, NAME.NAMESPACE, NAME.NAMESPACE.svc) and every `--san`.
`--webhook-config NAME` keeps that ValidatingWebhookConfiguration's caBundle equal to the CA.
Exit codes: 0 stopped by SIGTERM/SIGINT, 1 cannot start (certificates, API server, socket), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from appliance.core.events import EventLogger, LogFormat, LogLevel, LogSettings, error_text, setup_logging
from appliance.webhook.service import StartError, WebhookSettings, run_webhook
from k8s_sync.kubeapi import KubeApi, make_api_client
from k8s_sync.leases import DEFAULT_NAMESPACE

DEFAULT_LISTEN = ":8443"


class UsageError(ValueError):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"HTTPS address (default {DEFAULT_LISTEN}: every address; [v6addr]:port for IPv6)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tls-dir", type=Path, metavar="DIR",
                       help="certificates in DIR (ca.crt, ca.key, tls.crt, tls.key); created there when missing")
    where.add_argument("--secret", metavar="[NAMESPACE/]NAME",
                       help="certificates in this Secret (created when missing, shared by the replicas); the "
                            "namespace defaults to the --service's, else $POD_NAMESPACE, else " + DEFAULT_NAMESPACE)
    parser.add_argument("--service", metavar="NAME.NAMESPACE", default="",
                        help="the Service in front of the webhook: its DNS names go into the serving certificate")
    parser.add_argument("--san", action="append", default=[], metavar="NAME",
                        help="another DNS name or IP address for the serving certificate (repeatable)")
    parser.add_argument("--webhook-config", metavar="NAME", default="",
                        help="ValidatingWebhookConfiguration whose caBundle is kept equal to the CA")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)")
    parser.add_argument("--log-format", choices=[f.value for f in LogFormat], default=LogFormat.KV.value)
    parser.add_argument("--log-level", choices=[lv.value for lv in LogLevel], default=LogLevel.INFO.value)
    parser.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (every address: `::`, which takes IPv4 too)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: expected HOST:PORT, [IPV6]:PORT or :PORT")
    host = host.removeprefix("[").removesuffix("]")
    return host or "::", int(port)


def service_names(service: str) -> tuple[str, ...]:
    if not service:
        return ()
    name, _, namespace = service.partition(".")
    if not name or not namespace or "." in namespace:
        raise UsageError(f"--service {service!r}: expected NAME.NAMESPACE")
    return (name, f"{name}.{namespace}", f"{name}.{namespace}.svc")


def settings_from(args: argparse.Namespace) -> WebhookSettings:
    host, port = parse_listen(args.listen)
    names = tuple(dict.fromkeys([*service_names(args.service), *args.san]))
    if not names:
        raise UsageError("the serving certificate needs a name: give --service NAME.NAMESPACE and/or --san NAME")
    secret = None
    if args.secret:
        namespace, _, name = args.secret.rpartition("/")
        namespace = namespace or (args.service.partition(".")[2] if args.service else "") \
            or os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE
        if not name:
            raise UsageError(f"--secret {args.secret!r}: expected [NAMESPACE/]NAME")
        secret = (namespace, name)
    return WebhookSettings(host=host, port=port, names=names, tls_dir=args.tls_dir, secret=secret,
                           webhook_config=args.webhook_config)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args)
    except UsageError as e:
        print(f"egressgw webhook: {e}", file=sys.stderr)
        return 2
    setup_logging(LogSettings(level=LogLevel(args.log_level), format=LogFormat(args.log_format)))
    log = EventLogger("egressgw.webhook")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("webhook.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        api = KubeApi(make_api_client(args.kubeconfig))
        run_webhook(settings, api, stop)
    except StartError as e:
        log.error("webhook.start_failed", error=str(e))
        return 1
    except Exception as e:  # the kubeconfig cannot be loaded
        log.error("webhook.start_failed", error=error_text(e))
        return 1
    return 0
