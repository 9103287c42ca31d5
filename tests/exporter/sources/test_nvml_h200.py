"""The NVML source on answers recorded from a real NVIDIA H200 (scripts/gpu_check.py).

fixtures/nvml_trace_h200.json.gz: every NVML call the exporter made over 94 one-second
collections on 2026-11-28 (driver 580.159.04, nvidia-ml-py 13.615.71, torch 2.11.0 +
CUDA 13.0), while the load generator trained gpt2-124m in bf16 (steady 25 s, idle
15 s, a memory ramp to half the card, steady 15 s) and a one-rank NCCL group ran
all_reduce. fixtures/metrics_h200.txt: the exporter's /metrics at the end of that run,
with the GPU attributed to pod gpu-check/trainer-0 through the fake kubelet.

Replaying the trace gives the source exactly what the real driver said, so these tests
hold the decoding (units, counter widths, NotSupported handling) to a real card.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pynvml
import pytest
from prometheus_client.parser import text_string_to_metric_families

from alerts.config import RulesConfig
from exporter import catalogue as cat
from exporter.app import Exporter
from exporter.sources.nvml import NvmlSource
from tests.fakes import nvml_trace
from tests.fakes.nvml_trace import ReplayedNvml, snapshot_json

FIXTURES = Path(__file__).parent / "fixtures"
TRACE = nvml_trace.load(FIXTURES / "nvml_trace_h200.json.gz")
RECORDED = TRACE["snapshots"]
GPUS = [snapshot["gpus"][0] for snapshot in RECORDED]


def without_times(snapshot):
    return {k: v for k, v in snapshot.items() if k not in ("timestamp", "monotonic")}


@pytest.fixture(scope="module")
def replayed():
    nvml = ReplayedNvml(TRACE)
    source = NvmlSource(nvml, xid_events=True, xid_wait_ms=20)
    try:
        snapshots = [snapshot_json(source.sample()) for _ in RECORDED]
    finally:
        source.close()
    return nvml, snapshots


def test_replay_reads_what_the_exporter_read_on_the_h200(replayed):
    nvml, snapshots = replayed
    assert [without_times(s) for s in snapshots] == [without_times(s) for s in RECORDED]
    assert nvml.divergences == []
    sampling = {c["fn"] for c in TRACE["calls"]} - nvml_trace.WAIT_FUNCTIONS
    assert nvml.remaining(sampling) == []


def test_identity_and_memory_v2_of_the_card(replayed):
    gpu = replayed[1][0]["gpus"][0]
    assert gpu["model"] == "NVIDIA H200" and gpu["driver_version"] == "580.159.04"
    assert gpu["uuid"] == TRACE["gpu_uuid"] and gpu["up"] and not gpu["mig_mode"]
    assert gpu["memory_total_bytes"] == 150_754_820_096  # 140.4 GiB usable of 141 GB
    for reading in GPUS:
        # v2 memory info: `used` leaves out what the driver reserves.
        assert reading["memory_reserved_bytes"] > 0
        assert (
            reading["memory_used_bytes"] + reading["memory_reserved_bytes"]
            <= (reading["memory_total_bytes"])
        )


def test_energy_counter_agrees_with_power_over_time():
    """mJ -> J and mW -> W: the energy counter's growth is the integral of power draw."""
    for before, after in zip(RECORDED, RECORDED[1:], strict=False):
        a, b = before["gpus"][0], after["gpus"][0]
        assert b["energy_joules"] >= a["energy_joules"]
    span = RECORDED[-1]["timestamp"] - RECORDED[0]["timestamp"]
    integral = sum(
        (b["timestamp"] - a["timestamp"])
        * (a["gpus"][0]["power_watts"] + b["gpus"][0]["power_watts"])
        / 2
        for a, b in zip(RECORDED, RECORDED[1:], strict=False)
    )
    growth = GPUS[-1]["energy_joules"] - GPUS[0]["energy_joules"]
    assert span > 80 and growth > 30_000
    # Power is an average over NVML's own window: 1 s samples of a load that steps
    # between ~85 W and ~690 W agree with the counter to a few percent.
    assert growth == pytest.approx(integral, rel=0.05)


def test_busy_and_idle_phases_are_seen_with_the_process_that_made_them():
    busy = [g for g in GPUS if g["utilization"] >= 0.8]
    idle = [g for g in GPUS if g["utilization"] == 0]
    assert len(busy) >= 40 and len(idle) >= 15
    for gpu in busy:
        (process,) = gpu["processes"]  # the load generator alone was training
        assert process["used_memory_bytes"] > 10 * 1024**3
    peak = max(p["used_memory_bytes"] for g in GPUS for p in g["processes"])
    assert peak > 0.45 * GPUS[0]["memory_total_bytes"]  # the ramp to half the card


def test_process_samples_agree_with_the_gpu_but_lag_one_collection():
    """In steady state the process's SM samples and the GPU's utilization agree. At a
    change of load the process samples arrive a collection late: the driver publishes
    them about a second after the GPU's own utilization moves. A shared GPU's split
    between pods is therefore one collection behind at each start and stop."""
    sm = [g["processes"][0]["sm_utilization"] if g["processes"] else None for g in GPUS]
    util = [g["utilization"] for g in GPUS]
    steady = [
        i for i in range(1, len(GPUS) - 1) if min(util[i - 1 : i + 2]) >= 0.75 and sm[i] is not None
    ]
    assert len(steady) >= 40
    for i in steady:
        assert sm[i] == pytest.approx(util[i], abs=0.12)
    starts = [i for i in range(1, len(GPUS) - 1) if util[i - 1] <= 0.3 and util[i] >= 0.8]
    stops = [i for i in range(1, len(GPUS) - 1) if util[i - 1] >= 0.8 and util[i] == 0]
    assert starts and stops
    for i in starts:
        assert sm[i] <= 0.3 and sm[i + 1] >= 0.8
    for i in stops:
        assert sm[i] >= 0.8 and sm[i + 1] == 0


def test_a_loaded_h200_at_its_power_cap_raises_no_throttling_alert_reason():
    """Under full training load the H200 sits at its 700 W cap with SW power cap set:
    normal, so the throttling alerts must not count that reason."""
    loaded = [g for g in GPUS if g["power_watts"] > 600]
    assert loaded and all(g["clock_events"]["sw_power_cap"] for g in loaded)
    config = RulesConfig()
    alerting = set(config.thermal_reasons) | set(config.power_reasons)
    for gpu in GPUS:
        assert not {reason for reason, on in gpu["clock_events"].items() if on} & alerting


def test_pcie_counters_are_32_bit_and_nvlink_is_asked_once():
    calls = [c for c in TRACE["calls"] if c["fn"] == "nvmlDeviceGetFieldValues"]
    # PCIe answered as NVML_VALUE_TYPE_UNSIGNED_INT: the source's counter wraps at 2**32.
    pcie = [g["pcie_tx_bytes_total"] for g in GPUS]
    assert all(b >= a for a, b in zip(pcie, pcie[1:], strict=False)) and pcie[-1] > pcie[0]
    # This VM's H200 has no NVLink: the all-links field and the link count answered
    # NotSupported in the first collection and were never asked again.
    nvlink = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
    nvlink_asks = [
        c
        for c in calls
        if any(isinstance(a, dict) and a["tuple"][0] == nvlink for a in c["args"][1])
    ]
    assert len(nvlink_asks) == 1
    assert all(g["nvlink_tx_bytes_total"] is None for g in GPUS)


def test_the_exporter_renders_the_h200_readings_within_its_catalogue(replayed):
    nvml = ReplayedNvml(TRACE)
    exporter = Exporter(NvmlSource(nvml, xid_events=False), "h200-node")
    try:
        for _ in range(3):
            exporter.loop.collect_once()
        text = exporter.renderer.render().decode()
    finally:
        exporter.stop()
    check_catalogue(text)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: run `make test`, which installs Debian's prometheus"
        )
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout


def test_the_scrape_taken_on_the_h200_matches_the_catalogue():
    text = (FIXTURES / "metrics_h200.txt").read_text()
    seen = check_catalogue(text)
    assert {cat.POD_GPU_BUSY_SECONDS.name, "gpuledger_collective_bytes_total"} <= seen
    pods = {
        s.labels.get("pod")
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if f.name == "gpuledger_pod_gpu_allocated"
    }
    assert pods == {"trainer-0"}


def check_catalogue(text: str) -> set[str]:
    seen = set()
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(cat.PREFIX):
            continue  # dcgm-exporter's names, with --dcgm-compat
        spec = cat.CATALOGUE.get(family.name) or cat.CATALOGUE.get(family.name + "_total")
        assert spec is not None, f"{family.name} is not in the catalogue"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(spec.labels), sample
        seen.add(spec.name)
    return seen
