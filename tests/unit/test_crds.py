"""The CRD files are the rendering of appliance/api/crd_schema.py (both copies), and describe every field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from appliance.api.crd_schema import KINDS, TARGETS, rendered


def test_crd_files_are_fresh() -> None:
    for target in TARGETS:
        for name, text in rendered().items():
            path = target / name
            assert path.exists() and path.read_text() == text, \
                f"{path} is stale: run `python -m appliance.api.crd_schema`"
    assert sorted(p.name for p in TARGETS[0].glob("*.yaml")) == sorted(rendered())


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = [] if "description" in schema or path.endswith(("]", "*")) else [path]
    for key, sub in (schema.get("properties") or {}).items():
        if path == "" and key in ("apiVersion", "kind", "metadata"):
            continue
        missing += _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        missing += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        missing += _walk(schema["additionalProperties"], f"{path}*")
    return missing


def test_every_field_is_described_and_structural() -> None:
    for path in sorted(TARGETS[0].glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        (version,) = crd["spec"]["versions"]
        schema = version["schema"]["openAPIV3Schema"]
        assert _walk(schema, "") == [], path
        assert "x-kubernetes-preserve-unknown-fields" not in path.read_text()
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["kind"] in KINDS
        assert crd["spec"]["names"]["shortNames"] == [KINDS[crd["spec"]["names"]["kind"]][1]]


def test_namespaced_scope() -> None:
    scopes = {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: yaml.safe_load(p.read_text())["spec"]["scope"]
              for p in Path(TARGETS[0]).glob("*.yaml")}
    assert scopes == {"EgressGateway": "Cluster", "EgressPolicy": "Namespaced", "EgressClusterPolicy": "Cluster",
                      "EgressClusterInfo": "Cluster"}
