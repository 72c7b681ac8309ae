"""`egressgw migrate FILE...`: convert spidernet-io egressgateway (v1beta1) manifests to egressgw.io/v1alpha1.

The field names are the same where the meaning is (see docs/api.md), so conversion copies the spec fields we share
and drops the rest with a warning (`nodeSelector.policy`, status, server-set metadata, spidernet finalizers).
Namespaces labelled `spidernet.io/egressgateway-default` also get `egressgw.io/default-gateway`. Spidernet's
internal kinds (EgressTunnel, Egress*EndpointSlice) have no counterpart and are skipped. The output (YAML on stdout)
is validated with the service's own validation; problems are reported on stderr.
Exit 0: converted and valid. Exit 1: converted, but the output has validation problems. Exit 2: unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from appliance.api.validation import SPIDERNET_GROUP, validate_all
from appliance.cli.validate import LoadError, format_problem, load_documents
from appliance.core.model import API_VERSION, DEFAULT_GATEWAY_LABEL

SPIDERNET_DEFAULT_LABEL = "spidernet.io/egressgateway-default"
_SPIDERNET_FINALIZER_PREFIX = "egressgateway.spidernet.io/"
_KEEP_META = ("name", "namespace", "labels", "annotations")
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

# kind -> spec keys copied (nested dicts are copied whole unless listed in _NESTED)
_SPEC_KEYS = {
    "EgressGateway": ("ippools", "nodeSelector", "clusterDefault"),
    "EgressPolicy": ("egressGatewayName", "egressIP", "appliedTo", "destSubnet", "priority"),
    "EgressClusterPolicy": ("egressGatewayName", "egressIP", "appliedTo", "destSubnet", "priority"),
    "EgressClusterInfo": ("autoDetect", "extraCidr"),
}
# (kind, spec key) -> the sub-keys we share
_NESTED = {
    ("EgressGateway", "ippools"): ("ipv4", "ipv6", "ipv4DefaultEIP", "ipv6DefaultEIP"),
    ("EgressGateway", "nodeSelector"): ("selector",),
    ("EgressPolicy", "egressIP"): ("ipv4", "ipv6", "useNodeIP", "allocatorPolicy"),
    ("EgressClusterPolicy", "egressIP"): ("ipv4", "ipv6", "useNodeIP", "allocatorPolicy"),
    ("EgressPolicy", "appliedTo"): ("podSelector", "podSubnet"),
    ("EgressClusterPolicy", "appliedTo"): ("podSelector", "podSubnet", "namespaceSelector"),
    ("EgressClusterInfo", "autoDetect"): ("podCidrMode", "clusterIP", "nodeIP"),
}


def _metadata(meta: Mapping[str, Any], warnings: list[str], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: meta[k] for k in _KEEP_META if meta.get(k)}
    annotations = {k: v for k, v in (out.get("annotations") or {}).items() if k != _LAST_APPLIED}
    if annotations:
        out["annotations"] = annotations
    else:
        out.pop("annotations", None)
    if any(f.startswith(_SPIDERNET_FINALIZER_PREFIX) for f in meta.get("finalizers") or ()):
        warnings.append(f"{where}: dropped spidernet finalizers (egressgw uses none)")
    return out


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def convert(obj: Mapping[str, Any], warnings: list[str]) -> dict[str, Any] | None:
    """Our object for one spidernet object (None: skipped, with a warning); other API groups pass through,
    Namespaces with spidernet's default-gateway label gain ours."""
    kind = str(obj.get("kind", ""))
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    where = f"{kind}/{namespace + '/' if namespace else ''}{meta.get('name', '?')}"
    group = str(obj.get("apiVersion", "")).partition("/")[0]
    if group != SPIDERNET_GROUP:
        labels = meta.get("labels") or {}
        if kind == "Namespace" and SPIDERNET_DEFAULT_LABEL in labels:
            out = dict(obj)
            out["metadata"] = {**meta, "labels": {**labels, DEFAULT_GATEWAY_LABEL: labels[SPIDERNET_DEFAULT_LABEL]}}
            warnings.append(f"{where}: added label {DEFAULT_GATEWAY_LABEL}={labels[SPIDERNET_DEFAULT_LABEL]}")
            return out
        return dict(obj)
    if kind not in _SPEC_KEYS:
        warnings.append(f"{where}: skipped (spidernet-internal kind, no egressgw counterpart)")
        return None
    spec_in = obj.get("spec") or {}
    spec: dict[str, Any] = {}
    for key, value in spec_in.items():
        if key not in _SPEC_KEYS[kind]:
            warnings.append(f"{where}: dropped spec.{key} (no egressgw counterpart)")
            continue
        if (kind, key) in _NESTED and isinstance(value, Mapping):
            shared = _NESTED[(kind, key)]
            for sub in value:
                if sub not in shared and not _empty(value[sub]):
                    warnings.append(f"{where}: dropped spec.{key}.{sub} (no egressgw counterpart)")
            value = {k: v for k, v in value.items() if k in shared and not _empty(v)}
        if not _empty(value):
            spec[key] = value
    if obj.get("status"):
        warnings.append(f"{where}: dropped status (egressgw writes its own)")
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": _metadata(meta, warnings, where), "spec": spec}


def migrate_files(paths: Sequence[Path], out: TextIO, err: TextIO) -> int:
    converted: list[dict[str, Any]] = []
    warnings: list[str] = []
    try:
        for path in paths:
            for doc in load_documents(path):
                if isinstance(doc, Mapping) and (new := convert(doc, warnings)) is not None:
                    converted.append(new)
    except LoadError as e:
        print(f"egressgw migrate: {e}", file=err)
        return 2
    header = [f"# Converted by `egressgw migrate` from {', '.join(map(str, paths))}."]
    header.append(f"# Namespace defaults: spidernet's label {SPIDERNET_DEFAULT_LABEL}=<gateway> is "
                  f"{DEFAULT_GATEWAY_LABEL}=<gateway> here; label every namespace that used it.")
    header += [f"# warning: {w}" for w in warnings]
    out.write("\n".join(header) + "\n")
    out.write(yaml.safe_dump_all(converted, sort_keys=False, explicit_start=True) if converted else "")
    for w in warnings:
        print(f"egressgw migrate: warning: {w}", file=err)
    problems = validate_all(converted).problems
    for problem in problems:
        print(format_problem("<output>", problem), file=err)
    return 1 if problems else 0


def run(args: argparse.Namespace) -> int:
    return migrate_files([Path(f) for f in args.files], sys.stdout, sys.stderr)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="spidernet-io egressgateway YAML manifests")
    parser.set_defaults(func=run)
