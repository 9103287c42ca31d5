"""The alerting rules against the real exporter's series: a simulated node whose faults
start at second 20, scraped by a real Prometheus evaluating the generated rules (waits
cut to nothing). The alerts that fire are exactly those of the faults, on the right GPU.

This catches what promtool's unit tests cannot: a label or value the exporter writes
differently from what the rules expect (a throttle reason's name, an XID label).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from alerts import config as cfg
from alerts import rules
from tests import simulated_exporter
from tests.realservices import Prometheus, free_port, scrape_job, wait_until

SCENARIO = Path(__file__).with_name("fault-timeline.yaml")
FAULTS_AT_S = 20

# alert -> the GPU (index) or pod it must name; every other alert must stay silent.
EXPECTED = {
    "GpuledgerGpuThermalThrottling": {"gpu": "1"},
    "GpuledgerGpuUncorrectableEccErrors": {"gpu": "2"},
    "GpuledgerGpuXidUncorrectableMemory": {"gpu": "2", "xid": "48"},
    "GpuledgerGpuRowRemapPending": {"gpu": "2"},
    "GpuledgerGpuXidFellOffBus": {"gpu": "3", "xid": "79"},
    "GpuledgerGpuLost": {"gpu": "3"},
    "GpuledgerGpuHeldIdle": {"namespace": "team-vision", "pod": "notebook-alice", "gpu": "4"},
}


def _no_waiting(config: cfg.RulesConfig) -> cfg.RulesConfig:
    """Every `for` at zero and short windows, so that the test takes a minute; but no
    exporter is "absent" before Prometheus' first scrape of it."""
    waits = {f.name: "0s" for f in dataclasses.fields(config) if f.name.endswith("_for")}
    waits["exporter_absent_for"] = "10s"
    return config.replace(**waits, rate_window="10s", error_window="1m")


@pytest.mark.integration
def test_the_faults_and_only_they_raise_their_alerts(tmp_path: Path) -> None:
    port = free_port()
    log = open(tmp_path / "exporter.log", "wb")  # noqa: SIM115 - closed below
    exporter = simulated_exporter.start(SCENARIO, port, log)
    started = time.monotonic()
    try:
        simulated_exporter.wait_until_serving(exporter, port, tmp_path / "exporter.log")
        with Prometheus(
            tmp_path / "prometheus",
            scrape_configs=[scrape_job("gpuledger-exporter", [f"127.0.0.1:{port}"])],
            rule_files=rules.write(tmp_path / "rules", _no_waiting(cfg.RulesConfig())),
        ) as prometheus:
            prometheus.wait_for_targets_up()
            assert time.monotonic() - started < FAULTS_AT_S, "too slow to see the healthy start"

            def firing() -> dict[str, list[dict[str, str]]]:
                by_name: dict[str, list[dict[str, str]]] = {}
                for alert in prometheus.alerts():
                    if alert["state"] == "firing":
                        by_name.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
                return by_name

            # Before the faults: only the idle notebook (idle from the start).
            healthy = firing()
            assert set(healthy) <= {"GpuledgerGpuHeldIdle"}, healthy

            def all_expected() -> dict[str, list[dict[str, str]]]:
                now = firing()
                return now if set(EXPECTED) <= set(now) else {}

            alerts = wait_until(all_expected, timeout=90, interval=1, what="every fault's alert")
            # A couple more evaluations: nothing else joins.
            time.sleep(3)
            alerts = firing()
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
        log.close()

    assert set(alerts) == set(EXPECTED), f"unexpected alerts: {set(alerts) - set(EXPECTED)}"
    for name, labels in EXPECTED.items():
        assert len(alerts[name]) == 1, (name, alerts[name])
        got = alerts[name][0]
        assert {k: got.get(k) for k in labels} == labels, (name, got)
        assert got["node"] == "sim-alerts-0" and got["severity"] in cfg.SEVERITIES
