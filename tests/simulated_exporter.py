"""A real exporter on simulated GPUs (`gpuledger exporter --simulated`), for the
integration tests that scrape it with a real Prometheus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest

from tests.realservices import http_get, wait_until

REPO = Path(__file__).resolve().parents[1]


def start(scenario: Path, port: int, log: IO[bytes], *args: str) -> subprocess.Popen:
    """The exporter playing `scenario` on 127.0.0.1:`port`, collecting every 0.5 s, with
    `args` added to its command line; its output goes to `log`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpuledger.cli",
            "--log-format",
            "text",
            "exporter",
            "--simulated",
            str(scenario),
            "--listen",
            f"127.0.0.1:{port}",
            "--interval",
            "0.5",
            *args,
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_until_serving(exporter: subprocess.Popen, port: int, log_path: Path) -> None:
    """Wait for the exporter's /metrics; fail with the end of its log if it exits first."""

    def serves() -> bool:
        if exporter.poll() is not None:
            pytest.fail("the exporter exited:\n" + log_path.read_text()[-3000:])
        return bool(http_get(f"http://127.0.0.1:{port}/metrics", timeout=2))

    wait_until(serves, timeout=60, what="the exporter's /metrics")
