"""The on-disk record of a running lab: `/run/egressgw-lab/<lab>/`.

Layout (one writer per file, so concurrent `start_daemon` calls from tests and the CLI never race):
- `meta.json`: lab name, topology file, namespace prefix and the full list of namespaces; written *before* anything
  is created, so `lab down` can clean up after a runner that was killed half-way.
- `daemons/<node>.<name>.json`: one record per long-running process (argv, PID, kernel start time, log path).
- `logs/<node>.<name>.log`: the process's stdout and stderr.
- `nodes/<node>/`: the node's working directory (etcd data, rendered configs, control sockets).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_ROOT = Path(os.environ.get("EGRESSGW_LAB_STATE", "/run/egressgw-lab"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    name: str
    topology: str  # path of the .clab.yml
    topology_name: str
    prefix: str
    namespaces: tuple[str, ...]
    nodes: tuple[str, ...]  # linux nodes in file order
    switch: str | None  # namespace holding the bridges, if any
    without: tuple[str, ...]
    created: float
    runner_pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonRecord:
    node: str
    name: str
    argv: tuple[str, ...]
    pid: int
    start_time: int | None
    log: str
    started: float


def lab_dir(name: str) -> Path:
    return STATE_ROOT / name


def write_meta(meta: Meta) -> Path:
    d = lab_dir(meta.name)
    for sub in ("daemons", "logs", "nodes"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    _write_json(d / "meta.json", asdict(meta))
    return d


def read_meta(name: str) -> Meta | None:
    try:
        raw = json.loads((lab_dir(name) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    for key in ("namespaces", "nodes", "without"):
        raw[key] = tuple(raw.get(key, ()))
    return Meta(**raw)


def list_labs() -> list[str]:
    if not STATE_ROOT.is_dir():
        return []
    return sorted(p.name for p in STATE_ROOT.iterdir() if p.is_dir())


def write_daemon(lab: str, rec: DaemonRecord) -> None:
    _write_json(lab_dir(lab) / "daemons" / f"{rec.node}.{rec.name}.json", asdict(rec))


def remove_daemon(lab: str, node: str, name: str) -> None:
    (lab_dir(lab) / "daemons" / f"{node}.{name}.json").unlink(missing_ok=True)


def read_daemons(lab: str) -> list[DaemonRecord]:
    out: list[DaemonRecord] = []
    d = lab_dir(lab) / "daemons"
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            raw = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        raw["argv"] = tuple(raw["argv"])
        out.append(DaemonRecord(**raw))
    return sorted(out, key=lambda r: r.started)


def remove_lab_dir(name: str) -> None:
    shutil.rmtree(lab_dir(name), ignore_errors=True)


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
