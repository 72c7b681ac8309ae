"""Planners and the model stay pure: no I/O library is imported by them, directly or through our own modules.

Which modules count as "planning/model" is decided by name, so new planners are picked up automatically: under
appliance/ and bgp/, `model`, `intent`, `snapshot`, `validation`, `manifests`, the resolution modules
(`resolution*`, `placement`, `cluster_cidrs`, `explaining`, `selection`, `eip_allocation`, `precedence`,
`incremental`), `planning*`, `announcing*`, and nftables rendering modules (`*nft*render*`, `render*nft*`,
`rendering*`). Their source is parsed (never imported) and every `import` outside `if TYPE_CHECKING:` is followed
through our own packages; reaching a forbidden module anywhere on that path is a failure that names the path.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = ("appliance", "bgp", "k8s_sync", "lab")
SCANNED_DIRS = ("appliance", "bgp")
PURE_NAME = re.compile(
    r"^(model|intent|snapshot|validation|manifests|placement|cluster_cidrs|explaining|selection|eip_allocation"
    r"|precedence|incremental)$"
    r"|^(resolution|planning|announcing|rendering)\w*$"
    r"|nft\w*render|render\w*nft"
)
FORBIDDEN = frozenset(
    {"pyroute2", "kubernetes", "subprocess", "socket", "requests", "urllib3", "http", "threading", "asyncio",
     "selectors", "multiprocessing", "concurrent", "exabgp"}
)


def pure_modules() -> list[str]:
    found = []
    for d in SCANNED_DIRS:
        for path in sorted((ROOT / d).glob("*.py")):
            if PURE_NAME.search(path.stem):
                found.append(f"{d}.{path.stem}")
    return found


def source_of(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path, module: str) -> set[str]:
    """Absolute names of the modules `path` imports at run time (TYPE_CHECKING blocks skipped)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parent = ".".join(parts[: len(parts) - node.level + 1])
                    base = f"{parent}.{base}" if base else parent
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])

    visit(tree.body)
    return names


def forbidden_path(start: str) -> list[str] | None:
    """The import chain from `start` to a forbidden module, or None."""
    seen: set[str] = set()
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        module, chain = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        path = source_of(module)
        if path is None:
            continue
        for name in sorted(runtime_imports(path, module)):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                return [*chain, name]
            if top in OWN_PACKAGES and source_of(name) is not None:
                stack.append((name, [*chain, name]))
    return None


def test_the_pure_module_list_covers_the_known_planners() -> None:
    mods = set(pure_modules())
    for expected in ("appliance.model", "appliance.intent", "appliance.snapshot", "appliance.resolution",
                     "appliance.placement", "appliance.cluster_cidrs", "bgp.announcing"):
        assert expected in mods


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_imports_no_io_library(module: str) -> None:
    chain = forbidden_path(module)
    assert chain is None, f"{module} reaches an I/O library: {' -> '.join(chain or [])}"


def test_the_checker_catches_a_transitive_import(tmp_path: Path) -> None:
    src = "from __future__ import annotations\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import socket\n"
    p = tmp_path / "m.py"
    p.write_text(src + "def f():\n    import subprocess\n")
    assert "subprocess" in runtime_imports(p, "pkg.m") and "socket" not in runtime_imports(p, "pkg.m")
    p.write_text("from .sibling import x\n")
    assert "pkg.sibling" in runtime_imports(p, "pkg.m")
