"""The example Alertmanager configuration: valid, routes by category, team and severity,
and, with a real Prometheus and a real Alertmanager, delivers our alerts on those routes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from alerts import config as cfg
from alerts import rules
from alerts.cli import ALERTMANAGER_EXAMPLE
from exporter import catalogue as c
from tests.realservices import Alertmanager, Prometheus, require_binary, scrape_job, wait_until

# The example's receivers all post to this alert router; the test puts its own there.
ROUTER = "http://alert-router.monitoring.svc:8080"


def test_amtool_accepts_the_example() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER_EXAMPLE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"category": "hardware", "severity": "critical", "node": "n1"}, "gpu-infra-pager"),
        ({"category": "hardware", "severity": "warning", "node": "n1"}, "gpu-infra-tickets"),
        ({"category": "monitoring", "severity": "critical"}, "platform-pager"),
        ({"category": "monitoring", "severity": "warning"}, "platform-tickets"),
        ({"category": "waste", "severity": "warning", "namespace": "team-llm"}, "team-llm-chat"),
        (
            {"category": "workload", "severity": "critical", "namespace": "team-llm-eval"},
            "team-llm-pager",
        ),
        (
            {"category": "waste", "severity": "warning", "namespace": "team-vision"},
            "team-vision-chat",
        ),
        ({"category": "waste", "severity": "warning", "namespace": "sandbox"}, "platform-tickets"),
        (
            {"category": "workload", "severity": "critical", "namespace": "sandbox"},
            "platform-pager",
        ),
    ],
)
def test_routes_by_category_team_and_severity(labels: dict[str, str], receiver: str) -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_EXAMPLE}",
            *(f"{k}={v}" for k, v in labels.items()),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == receiver


class _Handler(BaseHTTPRequestHandler):
    """GET: a fake exporter's /metrics. POST: a webhook; the path names the receiver."""

    server: _Router

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.server.metrics().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.path.strip("/"), payload))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Router(ThreadingHTTPServer):
    def __init__(self, metrics: Callable[[], str]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.metrics = metrics
        self.received: list[tuple[str, dict]] = []

    def alerts(self) -> list[tuple[str, dict]]:
        """(receiver, alert) for every alert delivered so far."""
        return [(receiver, a) for receiver, payload in self.received for a in payload["alerts"]]


@pytest.fixture
def router() -> Iterator[_Router]:
    started = time.time()
    # A notebook that has held GPU 0 since the start and never used it; GPU 1's row
    # remapping failed. Counters grow with wall time, as the exporter's do.
    pod = (
        'namespace="team-llm", pod="notebook-0", container="jupyter", node="gpu-node-1", '
        'gpu="0", uuid="GPU-0", model="NVIDIA H100 80GB HBM3", source="simulated"'
    )
    gpu1 = 'node="gpu-node-1", gpu="1", uuid="GPU-1", model="NVIDIA H100 80GB HBM3", source="simulated"'
    server = _Router(
        lambda: (
            f"{c.POD_GPU_ALLOCATED_SECONDS.name}{{{pod}}} {time.time() - started:.3f}\n"
            f"{c.POD_GPU_BUSY_SECONDS.name}{{{pod}}} 0\n"
            f"{c.GPU_ROW_REMAP_FAILURE.name}{{{gpu1}}} 1\n"
        )
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.integration
def test_alerts_arrive_on_the_right_route(tmp_path: Path, router: _Router) -> None:
    address = f"127.0.0.1:{router.server_address[1]}"
    # The real rules, with the held-idle wait cut to nothing so that the test is short.
    config = cfg.RulesConfig().replace(idle_for="0s")
    rule_files = rules.write(tmp_path / "rules", config)
    am_config = yaml.safe_load(
        ALERTMANAGER_EXAMPLE.read_text().replace(ROUTER, f"http://{address}")
    )
    am_config["route"].update(group_wait="1s", group_interval="1s")
    with (
        Alertmanager(tmp_path / "am", config=am_config) as alertmanager,
        Prometheus(
            tmp_path / "prom",
            scrape_configs=[scrape_job("gpuledger-exporter", [address])],
            rule_files=rule_files,
            alertmanager_url=alertmanager.url,
        ),
    ):

        def delivered() -> dict[str, set[str]]:
            by_receiver: dict[str, set[str]] = {}
            for receiver, alert in router.alerts():
                by_receiver.setdefault(receiver, set()).add(alert["labels"]["alertname"])
            names = set().union(*by_receiver.values()) if by_receiver else set()
            wanted = {"GpuledgerGpuHeldIdle", "GpuledgerGpuRowRemapFailure"}
            return by_receiver if wanted <= names else {}

        by_receiver = wait_until(delivered, timeout=90, what="both alerts delivered")
    assert by_receiver["gpu-infra-pager"] == {"GpuledgerGpuRowRemapFailure"}
    assert by_receiver["team-llm-chat"] == {"GpuledgerGpuHeldIdle"}
    assert set(by_receiver) == {"gpu-infra-pager", "team-llm-chat"}
    idle = next(a for _, a in router.alerts() if a["labels"]["alertname"] == "GpuledgerGpuHeldIdle")
    assert idle["labels"]["namespace"] == "team-llm" and idle["labels"]["pod"] == "notebook-0"
    assert idle["annotations"]["runbook_url"].endswith("/gpu-held-idle.md")
