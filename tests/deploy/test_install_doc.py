"""docs/install.md says what the manifests do: its paths exist, its example overlay
renders and does what it says, and its dcgm-exporter table covers --dcgm-compat."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from exporter import dcgm_compat
from tests.deploy import schemas
from tests.deploy.manifests import DEPLOY, REPO, container, find, kustomize, of_kind
from tests.deploy.test_images import argv_of, parse

DOC = (REPO / "docs" / "install.md").read_text()


def test_every_path_the_doc_names_exists() -> None:
    paths = set(re.findall(r"\b((?:deploy|docker|alerts|docs)/[\w./*-]*[\w*])", DOC))
    assert "deploy/overlays/kube-prometheus-stack" in paths
    for path in paths:
        if "my-cluster" in path:
            continue  # the reader's own overlay
        assert list(REPO.glob(path)), f"docs/install.md names {path}, which does not exist"


def _tested_blocks() -> dict[str, str]:
    """Code blocks preceded by `<!-- test: PATH -->`, by PATH."""
    return dict(re.findall(r"<!-- test: (\S+) -->\n```yaml\n(.*?)```", DOC, re.S))


def test_the_example_overlay_renders_and_does_what_it_says(tmp_path: Path) -> None:
    [(path, text)] = _tested_blocks().items()
    copy = tmp_path / "repo"
    shutil.copytree(DEPLOY, copy / "deploy", ignore=shutil.ignore_patterns("__pycache__"))
    overlay = copy / path
    overlay.parent.mkdir(parents=True)
    overlay.write_text(text)
    prices = (REPO / "accounting" / "pricebooks" / "default.yaml").read_text()
    (overlay.parent / "price-book.yaml").write_text(prices.replace("3.20", "3.10"))
    objects = kustomize(overlay.parent)
    for obj in objects:
        schemas.validate(obj)

    daemonset = find(objects, "DaemonSet", "gpuledger-exporter")
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert spec["nodeSelector"] == {"node.example.com/accelerator": "nvidia"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    exporter = container(daemonset, "exporter")
    assert exporter["image"] == "registry.example.com/gpuledger/exporter:0.1.0"
    assert parse(argv_of(exporter, objects)).dcgm_compat is True
    for obj in [*of_kind(objects, "ServiceMonitor"), *of_kind(objects, "PrometheusRule")]:
        assert obj["metadata"]["labels"]["release"] == "prometheus"
    assert (
        find(objects, "PersistentVolumeClaim", "gpuledger-ledger")["spec"]["storageClassName"]
        == "fast-ssd"
    )
    assert find(objects, "ClusterRole", "gpuledger-accounting-all-owners")
    configmaps = {
        c["metadata"]["name"].rpartition("-")[0]: c for c in of_kind(objects, "ConfigMap")
    }
    assert "3.10" in configmaps["gpuledger-price-book"]["data"]["price-book.yaml"]
    assert configmaps["gpuledger-accounting"]["data"]["prometheus-url"].startswith(
        "http://prometheus-kube-prometheus-prometheus."
    )


def test_the_dcgm_table_covers_every_compatible_metric_and_label() -> None:
    source = Path(dcgm_compat.__file__).read_text()
    names = set(re.findall(r'"(DCGM_FI_[A-Z_]+)"', source))
    assert len(names) >= 11
    table = {
        row.split("|")[1].strip().strip("`")
        for row in DOC.splitlines()
        if row.startswith("| `DCGM_")
    }
    assert table == names
    for label in dcgm_compat.LABELS:
        assert f"`{label}`" in DOC, f"docs/install.md does not name the label {label}"


@pytest.mark.parametrize("image", ["exporter", "accounting", "loadgen"])
def test_the_build_commands_name_the_dockerfiles(image: str) -> None:
    assert f"docker build -f docker/{image}.Dockerfile" in DOC
