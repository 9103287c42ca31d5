"""`gpuledger exporter` as a user runs it: a process, a port, signals, bad input."""

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.realservices import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]


def gpuledger(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_simulated_exporter_serves_and_stops_cleanly_on_sigterm():
    port = free_port()
    process = gpuledger(
        "exporter", "--simulated", "--listen", f"127.0.0.1:{port}", "--interval", "0.2"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: get(url + "/readyz"), timeout=30, what="exporter ready")
        text = wait_until(
            lambda: (
                (t := get(url + "/metrics")) and "gpuledger_pod_gpu_busy_seconds_total" in t and t
            ),
            timeout=30,
            what="pod counters",
        )
        gpu_lines = [line for line in text.splitlines() if line.startswith("gpuledger_gpu_up{")]
        assert len(gpu_lines) == 8
        assert all('source="simulated"' in line for line in gpu_lines)
        assert "gpuledger_exporter_build_info" in text
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "stopping" in err


def test_unknown_scenario_is_a_clear_error():
    process = gpuledger(
        "exporter", "--simulated", "no-such-scenario", "--listen", f"127.0.0.1:{free_port()}"
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "no-such-scenario" in out and "default" in out  # names the built-in scenarios


def test_no_gpu_driver_says_to_use_simulated():
    process = gpuledger(
        "exporter", "--device", "nvml", "--listen", f"127.0.0.1:{free_port()}", "--no-kubelet"
    )
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "--simulated" in out


def test_bad_listen_address():
    process = gpuledger("exporter", "--simulated", "--listen", "nowhere")
    out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "HOST:PORT" in out


def test_port_in_use_is_a_clear_error():
    port = free_port()
    first = gpuledger("exporter", "--simulated", "--listen", f"127.0.0.1:{port}")
    try:
        wait_until(
            lambda: get(f"http://127.0.0.1:{port}/readyz"), timeout=30, what="first exporter"
        )
        second = gpuledger("exporter", "--simulated", "--listen", f"127.0.0.1:{port}")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2
        assert "cannot listen" in out
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=20)
