"""The layers are checked by a machine: import-linter's contracts hold, they catch a pure module doing I/O, and no
import is hidden inside a function or a TYPE_CHECKING block to dodge a cycle.

`.importlinter` holds the contracts (scripts/test.sh runs `lint-imports` too); docs/architecture.md explains them.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("appliance", "bgp", "k8s_sync")
PACKAGES = (*PRODUCT, "lab")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: a line carrying this marker may import inside a function: a heavy optional dependency, with the reason after it
LAZY_MARKER = "# lazy import:"


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the dev extras (scripts/setup.sh)"
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})


def _copy_tree(dest: Path) -> None:
    for pkg in (*PACKAGES, "tests"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.yml", "*.yaml",
                                                                              "*.json", "routers", "golden"))
    shutil.copy(ROOT / ".importlinter", dest / ".importlinter")


def test_the_contracts_hold() -> None:
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert " 0 broken" in " ".join(res.stdout.split()), res.stdout[-4000:]


@pytest.mark.parametrize(("module", "injected", "expected"), [
    ("appliance/core/model.py", "import subprocess",
     ("appliance.core is not allowed to import subprocess", "appliance.core.model -> subprocess")),
    ("appliance/datapath/plan/worker.py", "import pyroute2",
     ("appliance.datapath.plan is not allowed to import pyroute2", "appliance.datapath.plan.worker -> pyroute2")),
    ("bgp/announcing.py", "import socket", ("bgp.announcing is not allowed to import socket",)),
    ("appliance/policy/resolution.py", "import appliance.runtime.config",
     ("appliance.policy is not allowed to import appliance.runtime",)),
    ("bgp/health.py", "import appliance.policy.resolution", ("bgp is not allowed to import appliance.policy",)),
    ("k8s_sync/store.py", "import lab.system", ("k8s_sync is not allowed to import lab",)),
])
def test_a_forbidden_import_breaks_a_contract(tmp_path: Path, module: str, injected: str,
                                              expected: tuple[str, ...]) -> None:
    """Mutation check of the contracts: copy the tree, add one forbidden import, lint-imports must fail naming it."""
    _copy_tree(tmp_path)
    target = tmp_path / module
    source = target.read_text()
    # after `from __future__` (which must stay first), or at the very top
    marker = "from __future__ import annotations\n"
    target.write_text(source.replace(marker, marker + injected + "\n", 1) if marker in source
                      else injected + "\n" + source)
    res = _lint_imports(tmp_path)
    assert res.returncode != 0
    report = " ".join(res.stdout.split())
    for phrase in expected:
        assert phrase in report, res.stdout[-4000:]


def _hidden_imports(path: Path) -> list[str]:
    """Imports below module level (in a function or class) or under `if TYPE_CHECKING:`, without the lazy marker."""
    source = path.read_text()
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    lines = source.splitlines()
    tree = ast.parse(source)
    top_level: set[int] = set()
    found: list[str] = []
    for node in tree.body:
        top_level.add(id(node))
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.append(f"{where}:{node.lineno}: TYPE_CHECKING block")
        if isinstance(node, ast.Try | ast.If):
            top_level.update(id(n) for n in [*node.body, *node.orelse])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top_level:
            line = lines[node.lineno - 1]
            if LAZY_MARKER not in line:
                found.append(f"{where}:{node.lineno}: {line.strip()}")
    return found


def test_no_import_is_hidden_inside_a_function() -> None:
    hidden = [h for pkg in PACKAGES for f in sorted((ROOT / pkg).rglob("*.py")) for h in _hidden_imports(f)]
    assert hidden == [], "imports inside functions or TYPE_CHECKING (move them to the top, or mark a heavy " \
                         f"optional dependency with '{LAZY_MARKER} <why>'):\n" + "\n".join(hidden)


def test_the_hidden_import_finder_sees_what_it_must(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import os\n\n\ndef f() -> None:\n"
                     "    import json\n    import ctypes  # lazy import: only on Linux\n")
    found = _hidden_imports(probe)
    assert [f.split(": ", 1)[1] for f in found] == ["TYPE_CHECKING block", "import json"]


def test_no_benchmark_or_testbed_module_in_the_product() -> None:
    names = [p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")
             if any(word in p.stem for word in ("bench", "testbed", "scenario"))]
    assert names == []
