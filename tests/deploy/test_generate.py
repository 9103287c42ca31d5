"""The PrometheusRules and the dashboard ConfigMaps in the kube-prometheus-stack overlay
are current with alerts/ and dashboards/, and load in Prometheus."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import generate
from tests.deploy.manifests import DEPLOY, of_kind, variant


def test_committed_files_are_current() -> None:
    stale = [str(p.relative_to(generate.REPO)) for p in generate.stale()]
    assert not stale, f"out of date: {stale}; run `python -m deploy.generate`"
    assert generate.main(["--check"]) == 0


def test_the_rendered_rules_are_alerts_rules_unchanged() -> None:
    rendered = {
        r["metadata"]["name"]: r["spec"]["groups"]
        for r in of_kind(variant("kube-prometheus-stack"), "PrometheusRule")
    }
    sources = {p.stem: yaml.safe_load(p.read_text())["groups"] for p in generate.rule_files()}
    assert rendered == sources


def test_the_rendered_rules_load_in_prometheus(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `bash scripts/setup.sh` (Debian: prometheus)")
    files = []
    for rule in of_kind(variant("kube-prometheus-stack"), "PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        files.append(str(path))
    result = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_dashboard_configmap_is_in_the_overlay() -> None:
    committed = [
        yaml.safe_load(p.read_text())
        for p in sorted((DEPLOY / "dashboards").glob("*.yaml"))
        if p.name != "kustomization.yaml"
    ]
    assert committed, "deploy/dashboards/ holds no dashboard ConfigMaps"
    rendered = {
        c["metadata"]["name"]: c for c in of_kind(variant("kube-prometheus-stack"), "ConfigMap")
    }
    for configmap in committed:
        name = configmap["metadata"]["name"]
        assert name in rendered, f"dashboard {name} is not in the kube-prometheus-stack overlay"
        assert rendered[name]["data"] == configmap["data"]
        assert rendered[name]["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_every_object_fits_kubectl_apply() -> None:
    """Client-side apply keeps the whole object in an annotation capped at 256 KiB."""
    for obj in variant("kube-prometheus-stack"):
        size = len(json.dumps(obj, separators=(",", ":")))
        assert size < 256 * 1024, f"{obj['kind']}/{obj['metadata']['name']} is {size} bytes"


# ---------------------------------------------------------------- bad input
def _rules(tmp_path: Path, name: str, text: str) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / name).write_text(text)
    return rules


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("groups: [\n", "not valid YAML"),
        ("rules: []\n", "expected a top-level `groups:` list"),
        ("groups:\n- rules: []\n", "group 0 has no `name`"),
        ("groups:\n- name: g\n", r"\(g\) has no `rules:` list"),
        ("groups:\n- name: g\n  rules:\n  - record: r\n", r"rule 0 has no `expr`"),
        (
            "groups:\n- name: g\n  rules:\n  - record: r\n    alert: A\n    expr: up\n",
            "exactly one of `record` and `alert`",
        ),
    ],
)
def test_a_malformed_rule_file_is_refused_saying_where(
    tmp_path: Path, text: str, message: str
) -> None:
    rules = _rules(tmp_path, "broken.yaml", text)
    with pytest.raises(generate.GenerateError, match=message) as error:
        generate.prometheus_rules(rules)
    assert "broken.yaml" in str(error.value)


def test_no_rule_files_says_to_generate_them(tmp_path: Path) -> None:
    with pytest.raises(generate.GenerateError, match="run `gpuledger alerts generate`"):
        generate.prometheus_rules(tmp_path)


def test_a_file_name_that_is_no_object_name_is_refused(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "My_Rules.yaml", "groups: []\n")
    with pytest.raises(generate.GenerateError, match="rename the file"):
        generate.prometheus_rules(rules)


def test_rule_files_become_one_object_each(tmp_path: Path) -> None:
    group = "groups:\n- name: g\n  rules:\n  - record: a:b:sum\n    expr: sum(up)\n"
    rules = _rules(tmp_path, "extra.yaml", group)
    _rules(tmp_path, "gpuledger-more.yml", group)
    objects = generate.prometheus_rules(rules)
    assert [o["metadata"]["name"] for o in objects] == ["gpuledger-extra", "gpuledger-more"]
    assert objects[0]["spec"]["groups"] == [
        {"name": "g", "rules": [{"record": "a:b:sum", "expr": "sum(up)"}]}
    ]


def test_dashboards_without_a_kustomization_are_refused(tmp_path: Path) -> None:
    (tmp_path / "board.yaml").write_text("kind: ConfigMap\n")
    with pytest.raises(generate.GenerateError, match="no kustomization.yaml"):
        generate.render_kustomization(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [board.yaml]\n")
    assert "  - ../../dashboards\n" in generate.render_kustomization(tmp_path)
    assert "../../dashboards" not in generate.render_kustomization(tmp_path / "absent")


def test_stale_and_write_round_trip(tmp_path: Path) -> None:
    dirs = {
        "rules_dir": generate.RULES_DIR,
        "dashboards_dir": generate.DASHBOARDS_DIR,
        "overlay_dir": tmp_path / "overlay",
    }
    assert len(generate.stale(**dirs)) == 2
    generate.write(**dirs)
    assert generate.stale(**dirs) == []
    (tmp_path / "overlay" / "prometheusrule.yaml").write_text("# edited by hand\n")
    assert generate.stale(**dirs) == [tmp_path / "overlay" / "prometheusrule.yaml"]
