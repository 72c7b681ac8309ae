"""The `egressgw` command line: one entry point, subcommands implemented in their own modules.

Each subcommand module exposes ``configure(parser)``, which adds its arguments and sets ``func`` (a callable
taking the parsed namespace and returning the exit code) with ``parser.set_defaults(func=...)``. Modules are imported
lazily so that `egressgw validate` does not pay for importing the Kubernetes client or pyroute2.

The product's own subcommands are listed here. Tools that ship beside the product (`egressgw lab`, `egressgw bench`,
both in the `lab` package) plug in through the entry-point group `egressgw.commands` (see pyproject.toml): the
product never imports the lab, and an installation without it simply has no such subcommands.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Sequence

#: entry-point group of subcommands that live outside the product packages
PLUGIN_GROUP = "egressgw.commands"

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("appliance.cli.validate", "check egressgw.io manifests offline"),
    "agent": ("appliance.cli.agent", "run the worker agent (steers selected pods into the tunnel)"),
    "gateway": ("appliance.cli.gateway", "run or control a gateway member (SNAT, BGP announcements)"),
    "status": ("appliance.cli.status", "show gateways, members, EIPs and policies"),
    "explain": ("appliance.cli.explain", "explain which policy, gateway and EIP apply to a pod"),
    "migrate": ("appliance.cli.migrate", "convert spidernet-io egressgateway manifests to egressgw.io"),
    "webhook": ("appliance.cli.webhook", "run the validating admission webhook for egressgw.io objects"),
}


def _summary(module: str) -> str:
    """A plug-in module's one-line help: its `SUMMARY = "..."`, read without importing it (keeps `--help` fast)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == ["SUMMARY"]
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            return node.value.value
    return ""


def subcommands() -> dict[str, tuple[str, str]]:
    """The product's subcommands, then the plug-ins registered under `egressgw.commands` (name -> module, help)."""
    found = dict(SUBCOMMANDS)
    for ep in sorted(importlib.metadata.entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        if ep.name not in found:
            found[ep.name] = (ep.value, _summary(ep.value))
    return found


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egressgw", description="Egress gateway appliance for Kubernetes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in subcommands().items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # only the chosen subcommand's module is imported (keeps start-up fast); --help lists them all
        if wanted == name:
            importlib.import_module(module).configure(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
