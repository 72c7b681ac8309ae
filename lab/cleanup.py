"""Tear labs down completely, including the leftovers of a runner that was killed (SIGKILL, crash, Ctrl-C).

Order matters: first every process inside the lab's namespaces (found by the kernel, `ip netns pids`, not only the
recorded daemons), then the namespaces (their veth pairs and bridges vanish with them), then the host-side files
daemons keep outside the state dir (FRR's per-pathspace directories), then the state dir itself.

Three scopes: one lab by name (`down_lab`), every lab of the machine (`down_all`, what `egressgw lab down` without a
name does), and every lab and namespace under one namespace prefix (`down_prefix`: the test suite removes its own
`egt-` leftovers this way and never touches a user's `egl-` labs).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lab import netns, state
from lab.topology import SWITCH_NODE

# host paths a daemon may create per namespace (FRR `-N <pathspace>` with the pathspace = the namespace name)
PER_NAMESPACE_DIRS = ("/etc/frr/{ns}", "/run/frr/{ns}", "/var/run/frr/{ns}")
DEFAULT_PREFIX_ROOT = "egl-"


def namespaces_of(name: str) -> list[str]:
    """Every namespace that belongs to lab `name`: recorded ones, plus any `<prefix>*` the record missed."""
    meta = state.read_meta(name)
    if meta is None:
        return []
    recorded = set(meta.namespaces)
    others = {ns for other in state.list_labs() if other != name for ns in _recorded(other)}
    by_prefix = {
        ns for ns in netns.list_namespaces()
        if ns.startswith(meta.prefix) and ns not in others and _node_part(ns, meta.prefix, meta.nodes)
    }
    return sorted(recorded | by_prefix)


def _recorded(name: str) -> tuple[str, ...]:
    meta = state.read_meta(name)
    return meta.namespaces if meta else ()


def _node_part(ns: str, prefix: str, nodes: tuple[str, ...]) -> bool:
    rest = ns[len(prefix) :]
    return rest in nodes or rest == SWITCH_NODE


def remove_namespaces(namespaces: list[str], pids: list[int] | None = None) -> None:
    """Kill every process in the namespaces (and the given PIDs), then delete namespaces and per-namespace dirs."""
    if pids:
        netns.kill_all([p for p in pids if netns.alive(p)])
    for ns in namespaces:
        netns.kill_namespace(ns)
    for ns in namespaces:
        netns.delete(ns)
        for pattern in PER_NAMESPACE_DIRS:
            path = Path(pattern.format(ns=ns))
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def down_lab(name: str) -> list[str]:
    """Remove lab `name` entirely; returns the namespaces removed. Idempotent."""
    meta = state.read_meta(name)
    namespaces = namespaces_of(name)
    if meta is None:
        # state dir lost or never written: fall back to the default prefix for that name
        prefix = name if name.endswith("-") else f"{DEFAULT_PREFIX_ROOT}{name}-"
        claimed = {ns for other in state.list_labs() for ns in _recorded(other)}
        namespaces = [ns for ns in netns.list_namespaces() if ns.startswith(prefix) and ns not in claimed]
    pids = [d.pid for d in state.read_daemons(name) if netns.alive(d.pid, d.start_time)]
    remove_namespaces(namespaces, pids)
    state.remove_lab_dir(name)
    return namespaces


def down_all() -> dict[str, list[str]]:
    """Remove every lab that has a state dir, then any namespace left with the default prefix `egl-`."""
    removed = {name: down_lab(name) for name in state.list_labs()}
    strays = [ns for ns in netns.list_namespaces() if ns.startswith(DEFAULT_PREFIX_ROOT)]
    if strays:
        remove_namespaces(strays)
        removed["(leftovers)"] = strays
    return removed


def _in_scope(name: str, prefix: str) -> bool:
    """Lab `name` belongs under `prefix` when its namespace prefix does (its name, when the record is lost)."""
    meta = state.read_meta(name)
    return (meta.prefix if meta is not None else f"{name}-").startswith(prefix)


def down_prefix(prefix: str) -> dict[str, list[str]]:
    """Remove every lab whose namespace prefix starts with `prefix`, then any namespace left with that prefix that no
    other lab records. Labs under any other prefix (a user's `egl-` lab next to the tests' `egt-` ones) are
    untouched."""
    if not prefix:
        raise ValueError("an empty prefix would match every lab: use down_all() for that")
    removed = {name: down_lab(name) for name in state.list_labs() if _in_scope(name, prefix)}
    claimed = {ns for other in state.list_labs() for ns in _recorded(other)}
    strays = [ns for ns in netns.list_namespaces() if ns.startswith(prefix) and ns not in claimed]
    if strays:
        remove_namespaces(strays)
        removed["(leftovers)"] = strays
    return removed
