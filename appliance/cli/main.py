"""The `egressgw` command line: one entry point, subcommands implemented in their own modules.

Each subcommand module exposes ``configure(parser)``, which adds its arguments and sets ``func`` (a callable
taking the parsed namespace and returning the exit code) with ``parser.set_defaults(func=...)``. Modules are imported
lazily so that `egressgw validate` does not pay for importing the Kubernetes client or pyroute2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("appliance.cli.validate", "check egressgw.io manifests offline"),
    "agent": ("appliance.cli.agent", "run the worker agent (steers selected pods into the tunnel)"),
    "gateway": ("appliance.cli.gateway", "run or control a gateway member (SNAT, BGP announcements)"),
    "status": ("appliance.cli.status", "show gateways, members, EIPs and policies"),
    "explain": ("appliance.cli.explain", "explain which policy, gateway and EIP apply to a pod"),
    "migrate": ("appliance.cli.migrate", "convert spidernet-io egressgateway manifests to egressgw.io"),
    "lab": ("lab.commands", "realise containerlab topologies with network namespaces; the demo"),
    "bench": ("lab.bench.command", "run benchmarks and write their figures as JSON"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egressgw", description="Egress gateway appliance for Kubernetes.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
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
