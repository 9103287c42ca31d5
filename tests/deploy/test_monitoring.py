"""Prometheus scrapes the exporter under the job name and the labels the rules expect."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.config import RulesConfig
from tests.deploy.manifests import OVERLAYS, find, of_kind, variant

SCRAPE_CONFIGS = OVERLAYS["plain"] / "prometheus-scrape-configs.yaml"
TARGET_LABELS = {"namespace", "pod", "container", "service", "endpoint"}


def _rules_job() -> str:
    """The job the rules in alerts/ select the exporter's series by."""
    match = re.fullmatch(r'job="([^"]+)"', RulesConfig().exporter_selector)
    assert match, f"unexpected exporter selector {RulesConfig().exporter_selector!r}"
    return match[1]


def test_the_service_monitor_gives_the_job_the_rules_select() -> None:
    objects = variant("kube-prometheus-stack")
    monitor = find(objects, "ServiceMonitor", "gpuledger-exporter")
    # Without jobLabel, prometheus-operator names the job after the Service.
    assert "jobLabel" not in monitor["spec"]
    [service] = [
        s
        for s in of_kind(objects, "Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert service["metadata"]["name"] == _rules_job()


@pytest.mark.parametrize("name", ["gpuledger-exporter", "gpuledger-accounting"])
def test_service_monitors_keep_the_series_own_namespace_and_pod(name: str) -> None:
    [endpoint] = find(variant("kube-prometheus-stack"), "ServiceMonitor", name)["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    [drop] = [r for r in endpoint["relabelings"] if r["action"] == "labeldrop"]
    assert re.fullmatch(drop["regex"], "namespace")
    assert {label for label in TARGET_LABELS if re.fullmatch(drop["regex"], label)} == TARGET_LABELS
    assert not re.fullmatch(drop["regex"], "node") and not re.fullmatch(drop["regex"], "job")


def _promtool_check(jobs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """promtool check config on the scrape jobs. Debian's Prometheus is built without
    Kubernetes discovery, so each job's kubernetes_sd_configs is checked here instead
    and replaced by a static target for promtool, which checks everything else."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `bash scripts/setup.sh` (Debian: prometheus)")
    static = []
    for job in jobs:
        job = dict(job)
        for sd in job.pop("kubernetes_sd_configs"):
            assert set(sd) <= {"role", "namespaces", "selectors"}, sd
            assert sd["role"] == "pod"
            assert sd["namespaces"] == {"names": ["gpuledger"]}
            for selector in sd["selectors"]:
                assert selector["role"] == "pod"
                assert re.fullmatch(r"app\.kubernetes\.io/name=gpuledger-[a-z]+", selector["label"])
        static.append({**job, "static_configs": [{"targets": ["127.0.0.1:9400"]}]})
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": static}))
    return subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )


def test_prometheus_sends_accounting_the_token_it_checks() -> None:
    objects = variant("kube-prometheus-stack")
    [endpoint] = find(objects, "ServiceMonitor", "gpuledger-accounting")["spec"]["endpoints"]
    deployment = find(objects, "Deployment", "gpuledger-accounting")
    [volume] = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-token"
    ]
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": volume["secret"]["secretName"], "key": "token"},
    }


def test_the_plain_scrape_configs_load_in_prometheus(tmp_path: Path) -> None:
    jobs = yaml.safe_load(SCRAPE_CONFIGS.read_text())
    result = _promtool_check(jobs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    by_name = {job["job_name"]: job for job in jobs}
    assert set(by_name) == {_rules_job(), "gpuledger-accounting"}
    for job in jobs:
        assert job["honor_labels"] is True
    # Each job keeps the port the plain overlay's annotations name.
    ports = {"gpuledger-exporter": "metrics", "gpuledger-accounting": "http"}
    for name, port in ports.items():
        [keep] = [r for r in by_name[name]["relabel_configs"] if r["action"] == "keep"]
        assert keep["regex"] == port


def test_promtool_rejects_a_broken_scrape_config(tmp_path: Path) -> None:
    """The check above can fail: the same file with a misspelt field does not load."""
    jobs = yaml.safe_load(SCRAPE_CONFIGS.read_text())
    jobs[0]["honour_labels"] = jobs[0].pop("honor_labels")
    result = _promtool_check(jobs, tmp_path)
    assert result.returncode != 0 and "honour_labels" in result.stdout + result.stderr
