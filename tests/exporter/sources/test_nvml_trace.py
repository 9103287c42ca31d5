"""The NVML trace recorder and replayer (tests/fakes/nvml_trace.py) are exact: what the
source read while recording, it reads again on replay, call for call."""

from __future__ import annotations

import ctypes

import pynvml
import pytest

from exporter.sources.nvml import NvmlSource
from tests.fakes import nvml_trace
from tests.fakes.fake_pynvml import FakeMig, FakeProcess, GiB, fake_gpu, make_fake_pynvml
from tests.fakes.nvml_trace import RecordingNvml, ReplayedNvml, snapshot_json

SAMPLES = 4


def fleet():
    """A plain GPU with two processes, a MIG GPU with one instance, a GPU lacking a
    function: every kind of answer the source decodes."""
    mig = FakeMig(
        uuid="MIG-aaaaaaaa-0000-0000-0000-000000000000",
        gpu_instance_id=3,
        gpu_instance_slices=3,
        memory_mib=40192,
        name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
        memory_used=5 * GiB,
        processes=[FakeProcess(303, 4 * GiB)],
    )
    return make_fake_pynvml(
        [
            fake_gpu(
                0,
                utilization_gpu=71,
                memory_used=30 * GiB,
                processes=[FakeProcess(101, 20 * GiB), FakeProcess(202, None)],
                nvlink_tx_kib=[5] * 18,
                pcie_tx_bytes=1234,
            ),
            fake_gpu(1, max_mig_devices=7, mig_enabled=True, migs={0: mig}),
            fake_gpu(2, unsupported={"nvmlDeviceGetTotalEnergyConsumption"}),
        ]
    )


def strip_times(snapshot):
    return {k: v for k, v in snapshot_json(snapshot).items() if k not in ("timestamp", "monotonic")}


def record(fake):
    recorder = RecordingNvml(fake)
    source = NvmlSource(recorder, xid_events=True, clock=lambda: fake.now, xid_wait_ms=20)
    snapshots = []
    try:
        for step in range(SAMPLES):
            fake.add_process_sample(0, 101, sm=40 + step, mem=10)
            fake.add_process_sample(0, 202, sm=20, mem=5)
            fake.gpus[0].utilization_gpu = 60 + step
            fake.advance(1.0)
            snapshots.append(strip_times(source.sample()))
    finally:
        source.close()
    return recorder.trace(snapshots=snapshots)


def replay(trace):
    replayed = ReplayedNvml(trace)
    source = NvmlSource(replayed, xid_events=True, clock=lambda: 0.0, xid_wait_ms=20)
    try:
        snapshots = [strip_times(source.sample()) for _ in range(SAMPLES)]
    finally:
        source.close()
    return replayed, snapshots


def test_a_replayed_trace_gives_the_source_the_same_readings(tmp_path):
    trace = record(fleet())
    assert trace["snapshots"][0]["gpus"][0]["processes"], "the recording saw processes"
    path = nvml_trace.save(trace, tmp_path / "trace.json.gz")
    replayed, snapshots = replay(nvml_trace.load(path))
    assert snapshots == trace["snapshots"]
    assert replayed.divergences == []
    sampling = {c["fn"] for c in trace["calls"] if c["fn"] not in nvml_trace.WAIT_FUNCTIONS}
    assert replayed.remaining(sampling) == []


def test_answers_keep_their_pynvml_types():
    trace = record(fleet())
    kinds = {c["fn"]: c["result"] for c in trace["calls"] if c.get("result")}
    assert kinds["nvmlDeviceGetMemoryInfo"]["struct"] == "c_nvmlMemory_v2_t"
    assert kinds["nvmlDeviceGetProcessUtilization"][0]["struct"] == (
        "c_nvmlProcessUtilizationSample_t"
    )
    assert "friendly" in kinds["nvmlDeviceGetComputeRunningProcesses"][0]
    errors = {c["fn"]: c["error"] for c in trace["calls"] if "error" in c}
    assert errors["nvmlDeviceGetTotalEnergyConsumption"] == pynvml.NVML_ERROR_NOT_SUPPORTED
    decoded = ReplayedNvml(trace).nvmlDeviceGetHandleByIndex(0)
    assert isinstance(decoded, ctypes.c_void_p)


def test_a_source_asking_something_else_is_told_and_listed():
    trace = record(fleet())
    replayed = ReplayedNvml(trace)
    replayed.nvmlInit()
    with pytest.raises(pynvml.NVMLError_Unknown):
        replayed.nvmlDeviceGetHandleByIndex(9)
    assert replayed.divergences == ['["nvmlDeviceGetHandleByIndex",[9]]']


def test_a_wait_past_the_recording_times_out_like_a_quiet_gpu():
    replayed = ReplayedNvml({"format": 1, "calls": []})
    with pytest.raises(pynvml.NVMLError_Timeout):
        replayed.nvmlEventSetWait_v2(ctypes.c_void_p(1), 10)
    assert replayed.divergences == []


def test_a_structure_of_another_size_names_the_version_to_use():
    fake = fleet()
    trace = record(fake)
    for call in trace["calls"]:
        if call["fn"] == "nvmlDeviceGetUtilizationRates" and "result" in call:
            call["result"]["hex"] += "00"
    replayed = ReplayedNvml(trace)
    replayed.nvmlInit()
    handle = replayed.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(nvml_trace.TraceError, match="use the recording's version"):
        replayed.nvmlDeviceGetUtilizationRates(handle)


def test_a_trace_of_another_format_is_refused(tmp_path):
    path = nvml_trace.save({"format": 99, "calls": []}, tmp_path / "t.json")
    with pytest.raises(nvml_trace.TraceError, match="format 99"):
        nvml_trace.load(path)
