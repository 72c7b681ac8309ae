"""`egressgw lab ...`: bring labs up and down, show their status, run commands inside their nodes.

Subcommands: `up FILE [--name-prefix P] [--name N] [--without NODE...]`, `down [NAME]` (no name: every lab found,
and leftover `egl-*` namespaces), `down --prefix P` (only the labs and namespaces under prefix P: what the test suite
uses on its own `egt-` prefix), `status [NAME]`, `exec [--lab NAME] NODE -- CMD...`, and `demo` (implemented in
`lab/demo.py` by the end-to-end work; dispatched lazily when that module exists).
Exit codes: 0 ok, 1 runtime failure, 2 invalid topology or usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import signal
import subprocess
import sys
import time
from types import FrameType

from lab import cleanup, netns, state
from lab.runner import Lab, LabError, LabUsageError
from lab.topology import TopologyError

#: the one-line help of `egressgw lab` (read by appliance.cli.main without importing this module)
SUMMARY = "realise containerlab topologies with network namespaces; the demo"


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)
    up = sub.add_parser("up", help="realise a containerlab topology file with network namespaces")
    up.add_argument("file", help="a .clab.yml topology file")
    up.add_argument("--name-prefix", help="namespace prefix (default egl-<lab name>-); lets two copies coexist")
    up.add_argument("--name", help="lab instance name (default: the topology's name, or the prefix)")
    up.add_argument("--without", action="append", default=[], metavar="NODE",
                    help="create NODE but do not start its daemons (repeatable), e.g. --without api")
    up.add_argument("--ready-timeout", type=float, default=90.0)
    up.set_defaults(func=run_up)
    down = sub.add_parser("down", help="remove a lab (or every lab): processes, namespaces, links, state")
    down.add_argument("name", nargs="?")
    down.add_argument("--prefix", help="instead of a name: every lab and leftover namespace whose namespace prefix "
                                       "starts with PREFIX (e.g. egt- for the test suite's); nothing else")
    down.set_defaults(func=run_down)
    st = sub.add_parser("status", help="nodes, namespaces, daemons and router sessions")
    st.add_argument("name", nargs="?")
    st.set_defaults(func=run_status)
    ex = sub.add_parser("exec", help="run a command inside a node's namespace")
    ex.add_argument("--lab", help="lab name (needed when several labs are up)")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    ex.set_defaults(func=run_exec)
    # prefix_chars "+": every argument (`--topology FILE`, `--help`) goes to lab/demo.py's own parser; with "-" an
    # option right after `demo` is not taken by the REMAINDER positional and argparse refuses it
    demo = sub.add_parser("demo", help="the guided demo (lab/demo.py)", add_help=False, prefix_chars="+")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)
    demo.set_defaults(func=run_demo)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_up(args: argparse.Namespace) -> int:
    # SIGTERM and SIGHUP tear the half-built lab down just like Ctrl-C (Lab.up cleans up on any exception)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    started = time.monotonic()
    try:
        lab = Lab.up(args.file, prefix=args.name_prefix, name=args.name, without=tuple(args.without),
                     ready_timeout=args.ready_timeout)
    except (TopologyError, LabUsageError) as exc:
        print(f"egressgw lab up: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"egressgw lab up: {exc}", file=sys.stderr)
        return 2
    except (LabError, OSError) as exc:
        print(f"egressgw lab up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("egressgw lab up: interrupted; everything created was removed", file=sys.stderr)
        return 130
    print(f"lab {lab.name} up in {time.monotonic() - started:.1f} s "
          f"({len(lab.meta.namespaces)} namespaces, prefix {lab.prefix}, state {lab.state_dir})")
    print(f"  egressgw lab status {lab.name}   egressgw lab exec --lab {lab.name} NODE -- CMD   "
          f"egressgw lab down {lab.name}")
    return 0


def run_down(args: argparse.Namespace) -> int:
    if args.name and args.prefix is not None:
        print("egressgw lab down: give a NAME or --prefix, not both", file=sys.stderr)
        return 2
    if args.prefix is not None and not args.prefix:
        print("egressgw lab down: --prefix must not be empty (that would be every lab: omit it)", file=sys.stderr)
        return 2
    if args.name:
        removed = {args.name: cleanup.down_lab(args.name)}
    elif args.prefix:
        removed = cleanup.down_prefix(args.prefix)
    else:
        removed = cleanup.down_all()
    for name, namespaces in removed.items():
        print(f"removed {name}: {len(namespaces)} namespaces")
    if not removed:
        print("no lab found")
    return 0


def _pick(name: str | None) -> str:
    if name:
        return name
    labs = state.list_labs()
    if len(labs) == 1:
        return labs[0]
    if not labs:
        raise LabError("no lab is up")
    raise LabError(f"several labs are up ({', '.join(labs)}): name one with --lab NAME")


def run_status(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `egressgw lab status | head` ends quietly
    names = [args.name] if args.name else state.list_labs()
    if not names:
        print("no lab is up")
        return 0
    rc = 0
    for name in names:
        try:
            lab = Lab.attach(name)
        except (LabError, OSError) as exc:
            print(f"lab {name}: {exc}")
            rc = 1
            continue
        print(f"lab {lab.name}  topology {lab.meta.topology}  prefix {lab.prefix}")
        daemons = lab.daemons()
        print(f"  {'NODE':<10} {'NAMESPACE':<26} {'NS':<4} {'PROCS':>5}  DAEMONS")
        for ns in lab.meta.namespaces:
            nname = ns[len(lab.prefix) :]
            mine = [d for d in daemons if d.node == nname]
            ds = " ".join(f"{d.name}:{d.pid}:{'up' if lab.daemon_alive(d) else 'DEAD'}" for d in mine)
            exists = netns.exists(ns)
            print(f"  {nname:<10} {ns:<26} {'ok' if exists else 'GONE':<4} {len(netns.pids(ns)):>5}  {ds}")
            if not exists or any(not lab.daemon_alive(d) for d in mine):
                rc = 1
        for node in lab.topology.linux_nodes:
            cmd = dict(node.labels).get("egressgw.status")
            if cmd and netns.exists(lab.netns(node.name)):
                argv = [lab.expand(node.name, t) for t in shlex.split(cmd)]
                out = lab.exec(node.name, argv, check=False, timeout=10)
                print(f"  --- {node.name}: {cmd}")
                for line in (out.stdout + out.stderr).strip().splitlines():
                    if not line.startswith("% Can't open configuration file"):  # vtysh: no per-pathspace vtysh.conf
                        print(f"      {line}")
    return rc


def run_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("egressgw lab exec: give a command after --", file=sys.stderr)
        return 2
    try:
        lab = Lab.attach(_pick(args.lab))
        ns = lab.netns(args.node)
    except KeyError:
        print(f"egressgw lab exec: no node {args.node!r}", file=sys.stderr)
        return 2
    except LabError as exc:
        print(f"egressgw lab exec: {exc}", file=sys.stderr)
        return 2
    return subprocess.call(netns.in_ns(ns, argv))


def run_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("lab.demo") is None:
        print("egressgw lab demo: not available (lab/demo.py is not installed)", file=sys.stderr)
        return 2
    demo = importlib.import_module("lab.demo")
    code: int = demo.run(args)
    return code
