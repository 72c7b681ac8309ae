"""`egressgw validate FILE...`: check egressgw.io manifests offline with the service's own validation.

All files are validated together, so cross-object rules (an address in two gateways' pools, two clusterDefault
gateways, a policy EIP outside the pools of a gateway defined in another file) apply across them. Objects of other
API groups (e.g. a Namespace with the default-gateway label) are accepted and ignored.
Exit 0: every object is valid. Exit 1: one line per problem, `FILE: Kind/name: field.path: message`.
Exit 2: a file could not be read or parsed as YAML (the message says which and why).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from appliance.api.validation import object_ref, validate_all
from appliance.core.snapshot import ObjectRef, Problem


class LoadError(Exception):
    """A file is unreadable or not YAML."""


def load_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document of `path` (`kind: List` objects are expanded)."""
    try:
        text = path.read_text() if str(path) != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as e:
        raise LoadError(f"{path}: cannot read: {e}") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise LoadError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from e
    out: list[Any] = []
    for doc in docs:
        if isinstance(doc, Mapping) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            out.extend(doc["items"])
        else:
            out.append(doc)
    return out


def format_problem(file: str, problem: Problem) -> str:
    where = f"{problem.field}: " if problem.field else ""
    return f"{file}: {problem.ref}: {where}{problem.message}"


def validate_files(paths: Sequence[Path], out: TextIO, err: TextIO) -> int:
    objects: list[Any] = []
    files_of: dict[ObjectRef, list[str]] = {}
    file_of_index: dict[int, str] = {}
    try:
        for path in paths:
            for doc in load_documents(path):
                file_of_index[len(objects)] = str(path)
                if isinstance(doc, Mapping):
                    files_of.setdefault(object_ref(doc), []).append(str(path))
                objects.append(doc)
    except LoadError as e:
        print(f"egressgw validate: {e}", file=err)
        return 2
    result = validate_all(objects)
    for problem in result.problems:
        files = files_of.get(problem.ref)
        if files:
            file = files[-1] if "duplicate object" in problem.message else files[0]
        elif problem.ref.name.startswith("#"):
            file = file_of_index.get(int(problem.ref.name[1:]), "?")
        else:
            file = "?"
        print(format_problem(file, problem), file=out)
    return 1 if result.problems else 0


def run(args: argparse.Namespace) -> int:
    return validate_files([Path(f) for f in args.files], sys.stdout, sys.stderr)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML files (multi-document; '-' for stdin)")
    parser.set_defaults(func=run)
