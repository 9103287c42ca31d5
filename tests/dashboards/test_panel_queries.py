"""Every panel query, with its dashboard's variables substituted as Grafana would, against
a real Prometheus that scrapes a running exporter (simulated GPUs with faults), in-job
probe reports and the load generator's step metrics. A query that returns nothing fails.

No Grafana server runs on these machines, so this is how the dashboards are proven.
The rules and dashboards are built by the same code as the committed ones, with a 10 s
rate window instead of 5 m: rate() divides by the whole window, so a 5 m window would
need 5 minutes of data before the recording rules show true values.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from alerts import rules
from alerts.config import RulesConfig
from dashboards import generate
from dashboards.common import Context
from exporter import catalogue as c
from tests import simulated_exporter
from tests.realservices import Prometheus, free_port, scrape_job

REPO = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("faulty-node.yaml")
# Grafana's built-in variables, at values that suit a Prometheus scraping every second.
BUILTINS = {"__rate_interval": "10s", "__interval": "2s", "__range": "1m"}
# Feeders' bus bandwidth relative to each other: the fourth one plays the straggler.
FEEDER_SPEEDS = (1.0, 1.0, 1.0, 2.5)
CONFIG = RulesConfig().replace(rate_window="10s")
CONTEXT = Context(CONFIG, rules.RecordingNames(CONFIG))


@dataclass
class Stack:
    prometheus: Prometheus
    node: str


def _loadgen_ranks() -> tuple[CollectorRegistry, list[Gauge]]:
    """Three ranks' step metrics, named and labelled by the catalogue as the load
    generator exports them (rank 2 works three times as long per step)."""
    registry = CollectorRegistry()
    gauges = []
    for spec in (c.LOADGEN_STEP_SECONDS, c.LOADGEN_STEP_WORK_SECONDS):
        gauge = Gauge(spec.name, spec.help, spec.labels, registry=registry)
        for rank in range(3):
            work = 0.3 if rank < 2 else 0.9
            value = 1.0 if spec is c.LOADGEN_STEP_SECONDS else work
            gauge.labels(job="calibration", rank=str(rank), phase="steady").set(value)
        gauges.append(gauge)
    return registry, gauges


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("panels")
    port, socket_path = free_port(), workdir / "probe.sock"
    processes: list[subprocess.Popen] = []
    log = open(workdir / "processes.log", "wb")  # noqa: SIM115 - closed below
    loadgen_server = None
    try:
        processes.append(
            simulated_exporter.start(SCENARIO, port, log, "--probe-socket", str(socket_path))
        )
        simulated_exporter.wait_until_serving(processes[0], port, workdir / "processes.log")
        for i, speed in enumerate(FEEDER_SPEEDS):
            argv = [sys.executable, "-m", "tests.dashboards.probe_feeder", str(socket_path)]
            argv += [str(speed)] + (["--malformed-first"] if i == 0 else [])
            processes.append(subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        registry, _gauges = _loadgen_ranks()
        loadgen_port = free_port()
        loadgen_server, _thread = start_http_server(
            loadgen_port, addr="127.0.0.1", registry=registry
        )
        with Prometheus(
            workdir / "prometheus",
            scrape_configs=[
                scrape_job("gpuledger-exporter", [f"127.0.0.1:{port}"]),
                scrape_job("loadgen", [f"127.0.0.1:{loadgen_port}"]),
            ],
            rule_files=rules.write(workdir / "rules", CONFIG),
        ) as prometheus:
            prometheus.wait_for_targets_up()
            # Rates need two samples; the busbw rule needs feeders' counters twice.
            for ready in (
                CONTEXT.names.pod_allocated,
                CONTEXT.names.pod_busbw,
                c.PROBE_REJECTED.name,
                c.GPU_XID_ERRORS.name,
            ):
                prometheus.wait_until(lambda q=ready: prometheus.query(q), timeout=60, what=ready)
            node = prometheus.query(c.GPU_INFO.name)[0]["metric"]["node"]
            yield Stack(prometheus, node)
    finally:
        if loadgen_server is not None:
            loadgen_server.shutdown()
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def substitute(text: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $name and ${name}; unknown names ($1 of label_replace) stay."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def label_values(prometheus: Prometheus, query: str) -> list[str]:
    """What Grafana's `label_values(selector, label)` lists, from the series API."""
    match = re.fullmatch(r"label_values\((.*), (\w+)\)", query)
    assert match, f"not a label_values query: {query}"
    selector, label = match.groups()
    now = time.time()
    series = prometheus.api("series", **{"match[]": selector, "start": now - 300, "end": now})
    return sorted({s[label] for s in series if s.get(label)})


def resolve_variables(prometheus: Prometheus, model: dict) -> dict[str, str]:
    """Each variable's value: All (`.*`) where it has All, else its first option."""
    values = dict(BUILTINS)
    for variable in model["templating"]["list"]:
        if variable["type"] != "query":
            continue
        options = label_values(prometheus, substitute(variable["query"], values))
        if variable.get("regex"):
            pattern = re.compile(variable["regex"].strip("/"))
            options = sorted({m.group(1) for o in options if (m := pattern.search(o))})
        # No series carries a cluster label on one Prometheus: Grafana then uses "".
        if variable["name"] != "cluster":
            assert options, f"{model['uid']}: variable {variable['name']} lists nothing"
        values[variable["name"]] = (
            variable["allValue"] if variable.get("includeAll") else (options or [""])[0]
        )
    return values


# The cost dashboard reads the accounting service's metrics: its panels are proven in
# tests/dashboards/test_cost_dashboard.py against a real accounting service.
EXPORTER_DASHBOARDS = [uid for uid in generate.BUILDERS if uid != "gpuledger-cost"]


@pytest.mark.integration
@pytest.mark.parametrize("uid", EXPORTER_DASHBOARDS)
def test_every_panel_query_returns_data(stack: Stack, uid: str) -> None:
    model = generate.build(uid, CONTEXT)
    values = resolve_variables(stack.prometheus, model)
    if "node" in values and values["node"] != ".*":
        assert values["node"] == stack.node

    def empty_queries() -> list[str]:
        failures = []
        for title, expr in generate.queries(model):
            query = substitute(expr, values)
            assert "$" not in query.replace('"$1"', ""), f"{title}: unsubstituted {query}"
            if not stack.prometheus.query(query):
                failures.append(f"{title}: {query}")
        return failures

    # Range windows fill as the scrapes come in: give the slowest a few more seconds.
    deadline = time.monotonic() + 20
    while (failures := empty_queries()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not failures, "panels without data:\n" + "\n".join(failures)


@pytest.mark.integration
def test_the_straggler_panel_singles_out_the_slow_feeder(stack: Stack) -> None:
    names = CONTEXT.names
    relative = stack.prometheus.query(
        f"{names.pod_busbw} / on(namespace, workload, operation) group_left()"
        f" quantile by (namespace, workload, operation) (0.5, {names.pod_busbw})"
    )
    by_pod: dict[str, float] = {}
    for series in relative:
        by_pod.setdefault(series["metric"]["pod"], float(series["value"][1]))
    assert len(by_pod) == len(FEEDER_SPEEDS)
    high = [pod for pod, ratio in by_pod.items() if ratio > 2]
    assert len(high) == 1, by_pod
    assert all(0.9 < ratio < 1.1 for pod, ratio in by_pod.items() if pod not in high), by_pod
