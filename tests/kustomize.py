"""Render deploy/kubernetes's kustomizations without a cluster or a kustomize binary.

Only the part of Kustomize those files use: `resources` (files and directories),
`namespace`, inline JSON 6902 `patches` aimed by kind and name, and
`configMapGenerator` with `files` and no name hash. Anything else is refused, so
the manifests cannot drift into features rendered differently here; where
`kubectl kustomize` is installed, tests compare the two renderings.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import yaml

KNOWN_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "patches",
    "configMapGenerator",
    "generatorOptions",
}
# Kinds without a namespace among those the manifests use.
CLUSTER_KINDS = {"Namespace", "ClusterIssuer", "ClusterRole", "ClusterRoleBinding"}


def render(directory: Path) -> list[dict]:
    """The objects `kubectl kustomize directory` gives, in file order."""
    directory = Path(directory)
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN_KEYS
    if unknown:
        raise NotImplementedError(f"{directory}: kustomization keys {sorted(unknown)}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    objects += _generated(directory, spec)
    for patch in spec.get("patches", []):
        _patch(objects, patch)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = spec["namespace"]
            elif obj["kind"] not in CLUSTER_KINDS:
                obj["metadata"]["namespace"] = spec["namespace"]
    return objects


def _generated(directory: Path, spec: dict) -> list[dict]:
    options = spec.get("generatorOptions", {})
    generators = spec.get("configMapGenerator", [])
    if generators and not options.get("disableNameSuffixHash"):
        raise NotImplementedError("configMapGenerator with a name hash")
    maps = []
    for generator in generators:
        if set(generator) - {"name", "files"}:
            raise NotImplementedError(f"configMapGenerator keys {sorted(generator)}")
        data = {}
        for entry in generator["files"]:
            key, _, path = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
            data[key] = (directory / path).read_text()
        metadata = {"name": generator["name"]}
        if options.get("labels"):
            metadata["labels"] = dict(options["labels"])
        maps.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data})
    return maps


def _patch(objects: list[dict], patch: dict) -> None:
    target = patch["target"]
    operations = yaml.safe_load(patch["patch"])
    matched = [
        o
        for o in objects
        if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]
    ]
    if not matched:
        raise ValueError(f"patch target {target} matches nothing")
    for obj in matched:
        for operation in operations:
            _apply(obj, operation)


def _apply(obj: dict, operation: dict) -> None:
    """One JSON 6902 operation: add, replace or remove."""
    parts = operation["path"][1:].split("/")
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in parts]
    node = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index]
        else:
            raise NotImplementedError(op)
    elif op in ("add", "replace"):
        if op == "replace" and last not in node:
            raise KeyError(f"replace of missing {operation['path']}")
        node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    else:
        raise NotImplementedError(op)


def kubectl_render(directory: Path) -> list[dict] | None:
    """`kubectl kustomize directory`, parsed; None where kubectl is not installed."""
    if shutil.which("kubectl") is None:
        return None
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def by_identity(objects: list[dict]) -> dict[tuple, dict]:
    """Objects keyed by (kind, namespace, name)."""
    return {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects}
