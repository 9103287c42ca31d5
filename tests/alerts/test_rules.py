"""The generated rules: current, valid for promtool, unit-tested, and named from the catalogue."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts import config as cfg
from alerts import promql, rules
from exporter import catalogue
from tests.realservices import require_binary

REPO = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO / "alerts" / "tests"
RUNBOOKS = REPO / "docs" / "runbooks"
# Series that come from outside gpuledger: Prometheus itself and kube-state-metrics.
EXTERNAL_NAMES = {"up", "kube_node_status_capacity"}


def _alert_rules() -> list[dict]:
    text = (rules.RULES_DIR / rules.ALERTS_FILE).read_text()
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def _recording_rules() -> list[dict]:
    text = (rules.RULES_DIR / rules.RECORDING_FILE).read_text()
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def test_committed_rule_files_are_current() -> None:
    assert rules.stale_files() == [], "run `python -m gpuledger.cli alerts generate`"


def test_stale_files_notices_an_edit(tmp_path: Path) -> None:
    rules.write(tmp_path)
    assert rules.stale_files(tmp_path) == []
    path = tmp_path / rules.ALERTS_FILE
    path.write_text(path.read_text().replace("0.05", "0.06"))
    assert rules.stale_files(tmp_path) == [str(path)]


def test_promtool_check_rules_is_clean() -> None:
    promtool = require_binary("promtool")
    files = [str(rules.RULES_DIR / rules.RECORDING_FILE), str(rules.RULES_DIR / rules.ALERTS_FILE)]
    result = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    files = sorted(str(p) for p in TESTS_DIR.glob("*.yaml"))
    assert files, "no promtool test files in alerts/tests"
    result = subprocess.run([promtool, "test", "rules", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TESTS_DIR.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in _alert_rules()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - silent == set(), "alerts without a silent case"
    assert (firing | silent) - names == set(), "tests of alerts that do not exist"


def test_firing_cases_check_labels_and_annotations() -> None:
    for path in TESTS_DIR.glob("*.yaml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                for alert in check.get("exp_alerts") or []:
                    assert alert["exp_labels"]["severity"], (path.name, check["alertname"])
                    assert set(alert["exp_annotations"]) == {
                        "summary",
                        "description",
                        "runbook_url",
                    }, (path.name, check["alertname"])


def test_every_name_in_the_rules_is_known() -> None:
    known = catalogue.exposed_names() | rules.recording_names() | EXTERNAL_NAMES
    for rule in _recording_rules() + _alert_rules():
        unknown = promql.metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} reads {unknown}"


def test_recording_rules_follow_level_metric_operations() -> None:
    for rule in _recording_rules():
        level, metric, operations = rule["record"].split(":")
        assert re.fullmatch(r"[a-z_]+", level) and operations, rule["record"]
        assert metric.startswith(catalogue.PREFIX), rule["record"]
        if metric.endswith("_total"):
            # Only a plain sum of the counter itself, no rate() taken, is still a counter
            # and keeps its name (Prometheus' naming practice strips _total with rate()):
            # the accounting rules, which ingestion asks increase() of.
            assert metric in catalogue.exposed_names() and operations == "sum", rule["record"]
            plain_sum = rf"sum by \([a-z_, ]+\) \({metric}(\{{[^}}]*\}})?\)"
            assert re.fullmatch(plain_sum, rule["expr"]), rule["record"]


def test_every_alert_is_labelled_annotated_and_has_a_runbook() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in cfg.SEVERITIES, name
        assert rule["labels"]["category"], name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        slug = rules.runbook_slug(name)
        assert annotations["runbook_url"] == f"{cfg.RulesConfig().runbook_url_base}/{slug}.md"
        runbook = RUNBOOKS / f"{slug}.md"
        assert runbook.exists(), f"{name}: no runbook at {runbook}"
        assert runbook.read_text().startswith(f"# {name}\n"), runbook
        assert f"[{slug}.md]({slug}.md)" in index, f"{name} missing from docs/runbooks/README.md"
    pages = {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"}
    assert pages == {rules.runbook_slug(r["alert"]) for r in _alert_rules()}, "orphan runbooks"


def test_annotations_name_what_the_alert_concerns() -> None:
    for rule in _alert_rules():
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        category = rule["labels"]["category"]
        if category in (rules.WASTE,) or rule["alert"] == "GpuledgerCollectiveStraggler":
            for label in ("namespace", "pod", "node"):
                assert f"$labels.{label}" in text, (rule["alert"], label)
        if category == rules.HARDWARE:
            # The GPU and node as labels; the pods that hold it from a query.
            assert "$labels.node" in text and "$labels.gpu" in text, rule["alert"]
            assert catalogue.POD_GPU_ALLOCATED.name in text, rule["alert"]


def test_xid_groups_become_one_alert_each_with_their_codes() -> None:
    config = cfg.RulesConfig()
    by_name = {a.name: a for a in rules.alerts(config)}
    for group in config.xid_groups:
        alert = by_name[f"GpuledgerGpuXid{group.name}"]
        assert alert.severity == group.severity
        assert f'xid=~"{"|".join(map(str, group.codes))}"' in alert.expr


def test_config_changes_the_generated_rules(tmp_path: Path) -> None:
    config = cfg.RulesConfig().replace(
        idle_busy_ratio=0.1,
        idle_for="2h",
        exporter_selector='job="gpu-exporter", cluster!="lab"',
        rate_window="2m",
    )
    texts = rules.render(config)
    alerts_text = texts[rules.ALERTS_FILE]
    assert "namespace_pod_gpu:gpuledger_pod_gpu_busy:ratio_rate2m < 0.1" in alerts_text
    assert "for: 2h" in alerts_text
    assert '{job="gpu-exporter", cluster!="lab"}' in texts[rules.RECORDING_FILE]
    rules.write(tmp_path, config)
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", *map(str, tmp_path.glob("*.yaml"))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("pod", "workload"),
    [
        ("pretrain-worker-3", "pretrain"),
        ("pretrain-master-0", "pretrain"),
        ("bert-finetune-2", "bert-finetune"),
        ("llama-70b-7-x7k2q", "llama-70b"),
        ("myjobset-workers-0-3-x7k2q", "myjobset-workers"),
        ("mpi-launcher-0", "mpi"),
    ],
)
def test_workload_is_the_pod_name_prefix(pod: str, workload: str) -> None:
    # Python's re and Prometheus' RE2 agree on this expression (leftmost, lazy first group);
    # alerts/tests/collectives.yaml checks the same through promtool.
    match = re.fullmatch(cfg.RulesConfig().workload_from_pod_regex, pod)
    assert match is not None and match.group(1) == workload


def test_promql_metric_names() -> None:
    expr = (
        'sum by (namespace) (rate(a_total{job="x", pod=~"p.*"}[5m])) / on(node) group_left(gpu) '
        "b:c:rate5m and absent(up == 1) unless d offset 10m > bool 0.5"
    )
    assert promql.metric_names(expr) == {"a_total", "b:c:rate5m", "up", "d"}
    assert promql.metric_names('m{node="$node"}[$__rate_interval]') == {"m"}
    assert promql.metric_names('label_replace(x, "w", "$1", "pod", "(.+)")') == {"x"}
    assert promql.selector("", 'a="b"', " ") == '{a="b"}'
    assert promql.selector() == ""
