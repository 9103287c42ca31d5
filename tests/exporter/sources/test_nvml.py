"""NvmlSource against the fake pynvml: values, units, NVML's error rules, MIG, XIDs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pynvml
import pytest

from exporter.model import DeviceSnapshot
from exporter.sources import DeviceSource
from exporter.sources.nvml import NvmlSource, NvmlUnavailable
from tests.fakes.fake_pynvml import (
    FakeMig,
    FakeNvml,
    FakeProcess,
    GiB,
    MiB,
    fake_gpu,
    make_fake_pynvml,
)

Sources = list[NvmlSource]


@pytest.fixture
def opened() -> Iterator[Sources]:
    """Sources made by a test, closed after it whatever happens."""
    sources: Sources = []
    yield sources
    for source in sources:
        source.close()


def open_source(
    fake: FakeNvml, opened: Sources, *, xid_events: bool = False, **options
) -> NvmlSource:
    source = NvmlSource(
        fake, xid_events=xid_events, clock=lambda: fake.now, xid_wait_ms=20, **options
    )
    opened.append(source)
    return source


# ---------------------------------------------------------------- values and units


def test_reads_every_field_in_base_units(opened: Sources) -> None:
    gpu = fake_gpu(
        0,
        utilization_gpu=73,
        utilization_memory=41,
        memory_total=80 * GiB,
        memory_used=30 * GiB,
        memory_reserved=600 * MiB,
        power_mw=412_345,
        power_limit_mw=700_000,
        energy_mj=5_000_500,
        temperature_c=64,
        sm_clock_mhz=1755,
        memory_clock_mhz=2619,
        clock_event_reasons=(
            pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        ),
        ecc_corrected=12,
        ecc_uncorrected=1,
        remapped_rows=(3, 1, 1, 0),
        pcie_tx_bytes=10_000,
        pcie_rx_bytes=20_000,
        nvlink_tx_kib=[1, 2, 3] + [0] * 15,
        nvlink_rx_kib=[10] * 18,
    )
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    assert isinstance(source, DeviceSource)

    snapshot = source.sample()

    assert isinstance(snapshot, DeviceSnapshot)
    assert (snapshot.source, snapshot.timestamp, snapshot.errors) == ("nvml", fake.now, {})
    (reading,) = snapshot.gpus
    assert reading.up and reading.error is None
    assert (reading.index, reading.uuid, reading.model) == (0, gpu.uuid, "NVIDIA H100 80GB HBM3")
    assert reading.pci_bus_id == "00000000:17:00.0"  # pynvml gives bytes: decoded
    assert reading.driver_version == "550.54.15"
    assert reading.utilization == pytest.approx(0.73)
    assert reading.memory_utilization == pytest.approx(0.41)
    assert reading.memory_total_bytes == 80 * GiB
    assert reading.memory_used_bytes == 30 * GiB
    assert reading.memory_reserved_bytes == 600 * MiB
    assert reading.power_watts == pytest.approx(412.345)
    assert reading.power_limit_watts == pytest.approx(700.0)
    assert reading.energy_joules == pytest.approx(5000.5)
    assert reading.temperature_celsius == 64.0
    assert reading.sm_clock_hertz == pytest.approx(1.755e9)
    assert reading.memory_clock_hertz == pytest.approx(2.619e9)
    active = {name for name, on in reading.clock_events.items() if on}
    assert active == {"sw_power_cap", "hw_thermal_slowdown"}
    assert {"gpu_idle", "hw_slowdown", "sync_boost", "sw_thermal_slowdown"} <= set(
        reading.clock_events
    )
    assert (reading.ecc_corrected_total, reading.ecc_uncorrected_total) == (12, 1)
    assert (reading.remapped_rows_correctable, reading.remapped_rows_uncorrectable) == (3, 1)
    assert (reading.row_remap_pending, reading.row_remap_failure) == (True, False)
    assert (reading.pcie_tx_bytes_total, reading.pcie_rx_bytes_total) == (10_000, 20_000)
    # NVLink throughput fields count KiB, summed over all links.
    assert reading.nvlink_tx_bytes_total == 6 * 1024
    assert reading.nvlink_rx_bytes_total == 180 * 1024
    assert reading.mig_mode is False and reading.mig == ()


def test_energy_counter_follows_power_over_time(opened: Sources) -> None:
    fake = make_fake_pynvml([fake_gpu(0, power_mw=300_000)])
    source = open_source(fake, opened)
    before = source.sample().gpus[0].energy_joules
    fake.advance(10)
    after = source.sample()
    assert after.gpus[0].energy_joules - before == pytest.approx(3000.0)
    assert after.timestamp == fake.now


def test_only_the_clock_event_reasons_the_gpu_supports_are_reported(opened: Sources) -> None:
    supported = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonGpuIdle
    gpu = fake_gpu(
        0,
        supported_clock_event_reasons=supported,
        clock_event_reasons=pynvml.nvmlClocksEventReasonGpuIdle,
    )
    source = open_source(make_fake_pynvml([gpu]), opened)
    assert source.sample().gpus[0].clock_events == {"gpu_idle": True, "sw_power_cap": False}


def test_clock_events_fall_back_to_the_throttle_reason_functions(opened: Sources) -> None:
    gpu = fake_gpu(0, clock_event_reasons=pynvml.nvmlClocksThrottleReasonHwSlowdown)
    gpu.unsupported |= {
        "nvmlDeviceGetCurrentClocksEventReasons",
        "nvmlDeviceGetSupportedClocksEventReasons",
    }
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    for _ in range(3):
        events = source.sample().gpus[0].clock_events
        assert events["hw_slowdown"] is True and events["sw_power_cap"] is False
    assert fake.call_count("nvmlDeviceGetCurrentClocksEventReasons", gpu.uuid) == 1
    assert fake.call_count("nvmlDeviceGetCurrentClocksThrottleReasons", gpu.uuid) == 3


def test_memory_info_falls_back_to_v1_where_v2_is_not_supported(opened: Sources) -> None:
    gpu = fake_gpu(0, memory_used=10 * GiB, memory_reserved=1 * GiB)
    gpu.unsupported.add("nvmlDeviceGetMemoryInfo_v2")
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    for _ in range(3):
        reading = source.sample().gpus[0]
    # v1 counts what the driver reserves as used, and cannot tell it apart.
    assert reading.memory_used_bytes == 11 * GiB
    assert reading.memory_reserved_bytes is None
    assert reading.memory_total_bytes == 80 * GiB
    assert fake.call_count("nvmlDeviceGetMemoryInfo_v2", gpu.uuid) == 1
    assert fake.call_count("nvmlDeviceGetMemoryInfo", gpu.uuid) == 3


# ---------------------------------------------------------------- NVML error rules


def test_not_supported_is_asked_once_per_gpu_and_not_counted(opened: Sources) -> None:
    plain = fake_gpu(0)
    limited = fake_gpu(1)
    limited.unsupported |= {"nvmlDeviceGetPowerUsage", "nvmlDeviceGetRemappedRows"}
    fake = make_fake_pynvml([plain, limited])
    source = open_source(fake, opened)
    for _ in range(4):
        snapshot = source.sample()
    assert snapshot.errors == {}
    assert snapshot.gpus[1].power_watts is None
    assert snapshot.gpus[1].remapped_rows_correctable is None
    assert snapshot.gpus[1].row_remap_failure is None
    assert snapshot.gpus[0].power_watts == pytest.approx(70.0)
    assert fake.call_count("nvmlDeviceGetPowerUsage", limited.uuid) == 1
    assert fake.call_count("nvmlDeviceGetRemappedRows", limited.uuid) == 1
    # The other GPU is still asked every time.
    assert fake.call_count("nvmlDeviceGetPowerUsage", plain.uuid) == 4


def test_other_errors_are_counted_by_function_and_code_and_leave_the_field_none(
    opened: Sources,
) -> None:
    fake = make_fake_pynvml([fake_gpu(0, temperature_c=50)])
    fake.fail(0, "nvmlDeviceGetTemperature", pynvml.NVML_ERROR_UNKNOWN, times=2)
    fake.fail(0, "nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_NO_PERMISSION, times=1)
    source = open_source(fake, opened)

    first = source.sample()
    assert first.gpus[0].up
    assert first.gpus[0].temperature_celsius is None
    assert first.gpus[0].power_watts is None
    assert first.gpus[0].utilization == 0.0  # the rest is read
    assert first.errors == {
        ("nvmlDeviceGetTemperature", "Unknown"): 1,
        ("nvmlDeviceGetPowerUsage", "NoPermission"): 1,
    }
    second = source.sample()
    assert second.errors[("nvmlDeviceGetTemperature", "Unknown")] == 2
    # Errors other than NotSupported are transient: the function is asked again.
    third = source.sample()
    assert third.gpus[0].temperature_celsius == 50.0
    assert third.gpus[0].power_watts == pytest.approx(70.0)
    assert third.errors == {
        ("nvmlDeviceGetTemperature", "Unknown"): 2,
        ("nvmlDeviceGetPowerUsage", "NoPermission"): 1,
    }


def test_a_failing_field_value_fails_alone(opened: Sources) -> None:
    gpu = fake_gpu(0, pcie_rx_bytes=777)
    gpu.field_errors[pynvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES] = pynvml.NVML_ERROR_UNKNOWN
    source = open_source(make_fake_pynvml([gpu]), opened)
    snapshot = source.sample()
    assert snapshot.gpus[0].pcie_tx_bytes_total is None
    assert snapshot.gpus[0].pcie_rx_bytes_total == 777
    assert snapshot.errors == {("nvmlDeviceGetFieldValues", "Unknown"): 1}


def test_nvlink_is_summed_per_link_where_the_driver_has_no_aggregate(opened: Sources) -> None:
    gpu = fake_gpu(0, nvlink_aggregate_scope=False, nvlink_tx_kib=[5] * 18, nvlink_rx_kib=[7] * 18)
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    first = source.sample().gpus[0]
    assert (first.nvlink_tx_bytes_total, first.nvlink_rx_bytes_total) == (90 * 1024, 126 * 1024)
    gpu.nvlink_tx_kib[3] += 1000
    assert source.sample().gpus[0].nvlink_tx_bytes_total == (90 + 1000) * 1024


def test_a_gpu_without_nvlink_reports_none_without_errors(opened: Sources) -> None:
    gpu = fake_gpu(0, nvlink_tx_kib=[], nvlink_rx_kib=[], pcie_tx_bytes=5)
    source = open_source(make_fake_pynvml([gpu]), opened)
    for _ in range(2):
        snapshot = source.sample()
    reading = snapshot.gpus[0]
    assert (reading.nvlink_tx_bytes_total, reading.nvlink_rx_bytes_total) == (None, None)
    assert reading.pcie_tx_bytes_total == 5
    assert snapshot.errors == {}


def test_a_32_bit_pcie_counter_that_wraps_keeps_counting_up(opened: Sources) -> None:
    gpu = fake_gpu(
        0, pcie_value_type=pynvml.NVML_VALUE_TYPE_UNSIGNED_INT, pcie_tx_bytes=2**32 - 100
    )
    source = open_source(make_fake_pynvml([gpu]), opened)
    assert source.sample().gpus[0].pcie_tx_bytes_total == 2**32 - 100
    gpu.pcie_tx_bytes = 50  # wrapped
    assert source.sample().gpus[0].pcie_tx_bytes_total == 2**32 + 50


# ---------------------------------------------------------------- processes


def test_processes_with_memory_and_averaged_utilization_samples(opened: Sources) -> None:
    gpu = fake_gpu(
        0,
        processes=[
            FakeProcess(pid=100, used_memory=2 * GiB),
            FakeProcess(pid=200, used_memory=None),  # NVML: not available
            FakeProcess(pid=300, used_memory=(1 << 64) - 1),  # raw NVML_VALUE_NOT_AVAILABLE
        ],
    )
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    fake.add_process_sample(0, pid=100, sm=40, mem=10)
    fake.advance(0.5)
    fake.add_process_sample(0, pid=100, sm=60, mem=30)

    first = {p.pid: p for p in source.sample().gpus[0].processes}
    assert set(first) == {100, 200, 300}
    assert first[100].used_memory_bytes == 2 * GiB
    assert first[200].used_memory_bytes is None and first[300].used_memory_bytes is None
    assert first[100].sm_utilization == pytest.approx(0.5)
    assert first[100].memory_utilization == pytest.approx(0.2)
    assert first[200].sm_utilization is None

    # No sample newer than the last one seen: NVML says NOT_FOUND. Not an error.
    fake.advance(1)
    second = source.sample()
    assert all(p.sm_utilization is None for p in second.gpus[0].processes)
    assert second.errors == {}

    # Each sample is seen once: only the new one counts.
    fake.advance(1)
    fake.add_process_sample(0, pid=200, sm=90, mem=5)
    third = {p.pid: p for p in source.sample().gpus[0].processes}
    assert third[200].sm_utilization == pytest.approx(0.9)
    assert third[100].sm_utilization is None


def test_zero_samples_reported_as_success_is_not_an_error(opened: Sources) -> None:
    # pynvml raises NVMLError(NVML_SUCCESS) when the driver answers with zero samples.
    fake = make_fake_pynvml([fake_gpu(0, processes=[FakeProcess(pid=5)])])
    fake.fail(0, "nvmlDeviceGetProcessUtilization", pynvml.NVML_SUCCESS)
    source = open_source(fake, opened)
    snapshot = source.sample()
    assert snapshot.gpus[0].processes[0].sm_utilization is None
    assert snapshot.errors == {}


def test_process_list_falls_back_to_v2_on_an_older_driver(opened: Sources) -> None:
    gpu = fake_gpu(0, processes=[FakeProcess(pid=42, used_memory=GiB)])
    fake = make_fake_pynvml([gpu])
    fake.fail(0, "nvmlDeviceGetComputeRunningProcesses", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    source = open_source(fake, opened)
    for _ in range(2):
        snapshot = source.sample()
    assert [p.pid for p in snapshot.gpus[0].processes] == [42]
    assert snapshot.errors == {}
    assert fake.call_count("nvmlDeviceGetComputeRunningProcesses", gpu.uuid) == 1
    assert fake.call_count("nvmlDeviceGetComputeRunningProcesses_v2", gpu.uuid) == 2


# ---------------------------------------------------------------- MIG


def mig_gpu() -> tuple:
    big = FakeMig(
        uuid="MIG-aaaa",
        gpu_instance_id=1,
        gpu_instance_slices=3,
        memory_mib=40_192,
        name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
        memory_used=4 * GiB,
        processes=[FakeProcess(pid=11, used_memory=3 * GiB)],
    )
    small = FakeMig(
        uuid="MIG-bbbb",
        gpu_instance_id=9,
        gpu_instance_slices=1,
        memory_mib=9_984,
        name="",  # no suffix: the profile is built from the attributes
        processes=[FakeProcess(pid=22, used_memory=1 * GiB)],
    )
    gpu = fake_gpu(0, max_mig_devices=7, mig_enabled=True, migs={0: big, 3: small})
    return gpu, big, small


def test_mig_instances_with_empty_slots_and_their_processes(opened: Sources) -> None:
    gpu, big, small = mig_gpu()
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    for _ in range(2):
        snapshot = source.sample()
    reading = snapshot.gpus[0]
    assert reading.up and reading.mig_mode is True
    assert reading.utilization is None  # NotSupported on a MIG-enabled GPU
    assert snapshot.errors == {}  # empty slots (NOT_FOUND) are not errors
    first, second = reading.mig
    assert (first.uuid, first.profile, first.gpu_instance_id) == ("MIG-aaaa", "3g.40gb", 1)
    assert first.compute_fraction == pytest.approx(3 / 7)
    assert first.memory_total_bytes == 40_192 * MiB
    assert first.memory_used_bytes == 4 * GiB
    assert first.utilization is None
    assert [(p.pid, p.used_memory_bytes) for p in first.processes] == [(11, 3 * GiB)]
    assert (second.uuid, second.profile, second.gpu_instance_id) == ("MIG-bbbb", "1g.10gb", 9)
    assert second.compute_fraction == pytest.approx(1 / 7)
    assert [p.pid for p in second.processes] == [22]
    # The parent lists every instance's processes.
    assert sorted(p.pid for p in reading.processes) == [11, 22]
    # Identity is read once per instance; what MIG lacks is asked once.
    assert fake.call_count("nvmlDeviceGetAttributes", "MIG-aaaa") == 1
    assert fake.call_count("nvmlDeviceGetUtilizationRates", "MIG-aaaa") == 1
    assert fake.call_count("nvmlDeviceGetMigDeviceHandleByIndex", gpu.uuid) == 14


def test_a_destroyed_mig_instance_disappears(opened: Sources) -> None:
    gpu, big, small = mig_gpu()
    source = open_source(make_fake_pynvml([gpu]), opened)
    assert [m.uuid for m in source.sample().gpus[0].mig] == ["MIG-aaaa", "MIG-bbbb"]
    del gpu.migs[3]
    snapshot = source.sample()
    assert [m.uuid for m in snapshot.gpus[0].mig] == ["MIG-aaaa"]
    assert snapshot.errors == {}


def test_a_mig_mode_change_forgets_what_was_not_supported(opened: Sources) -> None:
    gpu, _, _ = mig_gpu()
    gpu.mig_enabled = False
    gpu.utilization_gpu = 10
    fake = make_fake_pynvml([gpu])
    source = open_source(fake, opened)
    assert source.sample().gpus[0].utilization == pytest.approx(0.1)
    gpu.mig_enabled = True
    assert source.sample().gpus[0].utilization is None
    gpu.mig_enabled = False
    reading = source.sample().gpus[0]
    assert reading.mig == () and reading.utilization == pytest.approx(0.1)


# ---------------------------------------------------------------- lost GPUs


def test_a_gpu_lost_mid_run_is_down_while_the_others_are_served(opened: Sources) -> None:
    fake = make_fake_pynvml(3)
    lost = fake.gpus[1]
    source = open_source(fake, opened)
    assert all(g.up for g in source.sample().gpus)

    fake.make_lost(1)
    fake.gpus[0].utilization_gpu = 55
    snapshot = source.sample()
    down = snapshot.gpus[1]
    assert not down.up
    assert "GpuIsLost" in (down.error or "")
    assert (down.uuid, down.model) == (lost.uuid, lost.name)  # identity is kept
    assert down.power_watts is None
    assert snapshot.gpus[0].up and snapshot.gpus[0].utilization == pytest.approx(0.55)
    assert snapshot.gpus[2].up and snapshot.gpus[2].power_watts == pytest.approx(70.0)
    assert sum(n for (_, code), n in snapshot.errors.items() if code == "GpuIsLost") == 1

    # While lost, a collection only tries to get the handle again.
    power_calls = fake.call_count("nvmlDeviceGetPowerUsage", lost.uuid)
    handle_calls = fake.call_count("nvmlDeviceGetHandleByIndex", lost.uuid)
    assert not source.sample().gpus[1].up
    assert fake.call_count("nvmlDeviceGetPowerUsage", lost.uuid) == power_calls
    assert fake.call_count("nvmlDeviceGetHandleByIndex", lost.uuid) == handle_calls + 1

    # After a reset the old handle is dead; the source fetches a new one.
    fake.recover(1)
    lost.power_mw = 123_000
    back = source.sample().gpus[1]
    assert back.up and back.error is None
    assert back.power_watts == pytest.approx(123.0)


def test_a_gpu_lost_before_start_is_down_then_identified_when_it_answers(
    opened: Sources,
) -> None:
    fake = make_fake_pynvml(2)
    fake.make_lost(0)
    source = open_source(fake, opened)
    snapshot = source.sample()
    assert not snapshot.gpus[0].up
    assert snapshot.gpus[0].error == "nvmlDeviceGetHandleByIndex(0) failed: GpuIsLost"
    assert snapshot.gpus[1].up
    fake.recover(0)
    back = source.sample().gpus[0]
    assert back.up and back.uuid == fake.gpus[0].uuid and back.model


def test_reset_required_marks_the_gpu_down(opened: Sources) -> None:
    fake = make_fake_pynvml(1)
    fake.fail(0, "nvmlDeviceGetUtilizationRates", pynvml.NVML_ERROR_RESET_REQUIRED)
    source = open_source(fake, opened)
    snapshot = source.sample()
    assert not snapshot.gpus[0].up
    assert snapshot.errors == {("nvmlDeviceGetUtilizationRates", "ResetRequired"): 1}
    assert source.sample().gpus[0].up


# ---------------------------------------------------------------- XID events


def wait_for_xids(source: NvmlSource, index: int, expected: dict[int, int]) -> DeviceSnapshot:
    """The event thread counts asynchronously: sample until it has (or give up at 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        snapshot = source.sample()
        if snapshot.gpus[index].xid_counts == expected or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.01)


def test_xid_events_are_counted_per_code_with_the_last_time(opened: Sources) -> None:
    fake = make_fake_pynvml(2)
    source = open_source(fake, opened, xid_events=True)
    assert source.xid_thread_running
    fake.inject_xid(0, 79)
    fake.advance(5)
    fake.inject_xid(0, 79)
    fake.inject_xid(1, 48)
    snapshot = wait_for_xids(source, 0, {79: 2})
    assert snapshot.gpus[0].xid_counts == {79: 2}
    assert snapshot.gpus[0].last_xid_timestamp == fake.now
    snapshot = wait_for_xids(source, 1, {48: 1})
    assert snapshot.gpus[1].xid_counts == {48: 1}
    assert snapshot.errors == {}

    source.close()
    assert not source.xid_thread_running
    assert all(event_set.freed for event_set in fake.event_sets)
    assert not fake.initialized


def test_xids_of_a_lost_gpu_are_still_reported(opened: Sources) -> None:
    fake = make_fake_pynvml(1)
    source = open_source(fake, opened, xid_events=True)
    fake.make_lost(0)
    fake.inject_xid(0, 79)
    snapshot = wait_for_xids(source, 0, {79: 1})
    assert not snapshot.gpus[0].up
    assert snapshot.gpus[0].xid_counts == {79: 1}


def test_a_recovered_gpu_is_registered_again_for_xids(opened: Sources) -> None:
    fake = make_fake_pynvml(1)
    source = open_source(fake, opened, xid_events=True)
    fake.make_lost(0)
    source.sample()
    fake.recover(0)
    source.sample()
    assert fake.call_count("nvmlDeviceRegisterEvents", fake.gpus[0].uuid) == 2
    fake.inject_xid(0, 31)
    assert wait_for_xids(source, 0, {31: 1}).gpus[0].xid_counts == {31: 1}


def test_a_gpu_without_xid_events_does_not_stop_the_others(opened: Sources) -> None:
    fake = make_fake_pynvml([fake_gpu(0, xid_supported=False), fake_gpu(1)])
    source = open_source(fake, opened, xid_events=True)
    fake.inject_xid(0, 13)  # not registered: never delivered
    fake.inject_xid(1, 13)
    snapshot = wait_for_xids(source, 1, {13: 1})
    assert snapshot.gpus[1].xid_counts == {13: 1}
    assert snapshot.gpus[0].xid_counts == {}
    assert snapshot.errors == {}


def test_without_xid_events_no_thread_runs(opened: Sources) -> None:
    fake = make_fake_pynvml(1)
    source = open_source(fake, opened, xid_events=False)
    assert not source.xid_thread_running
    assert fake.event_sets == []


# ---------------------------------------------------------------- start and stop


def test_no_driver_raises_nvml_unavailable_with_what_to_do() -> None:
    fake = make_fake_pynvml(1, init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(NvmlUnavailable) as raised:
        NvmlSource(fake)
    message = str(raised.value)
    assert "DriverNotLoaded" in message
    assert "GPU node" in message and "--simulated" in message


def test_no_library_raises_nvml_unavailable() -> None:
    fake = make_fake_pynvml(1, init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(NvmlUnavailable, match="LibraryNotFound"):
        NvmlSource(fake)


def test_a_bad_xid_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="xid_wait_ms must be a positive"):
        NvmlSource(make_fake_pynvml(1), xid_wait_ms=0)


def test_close_is_idempotent_and_sampling_after_it_is_refused(opened: Sources) -> None:
    fake = make_fake_pynvml(1)
    source = open_source(fake, opened)
    source.close()
    source.close()
    assert fake.call_count("nvmlShutdown") == 1
    with pytest.raises(RuntimeError, match="after close"):
        source.sample()


def test_identity_is_read_once(opened: Sources) -> None:
    fake = make_fake_pynvml(1)
    source = open_source(fake, opened)
    for _ in range(3):
        source.sample()
    uuid = fake.gpus[0].uuid
    for function in ("nvmlDeviceGetUUID", "nvmlDeviceGetName", "nvmlDeviceGetPciInfo"):
        assert fake.call_count(function, uuid) == 1
    assert fake.call_count("nvmlSystemGetDriverVersion") == 1


def test_an_unexpected_failure_on_one_gpu_spares_the_others(
    opened: Sources, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = make_fake_pynvml(2)
    source = open_source(fake, opened)
    healthy = fake.nvmlDeviceGetPowerUsage

    def power(handle):
        if fake.nvmlDeviceGetUUID(handle) == fake.gpus[0].uuid:
            raise ValueError("garbled value")
        return healthy(handle)

    monkeypatch.setattr(fake, "nvmlDeviceGetPowerUsage", power)
    snapshot = source.sample()
    assert not snapshot.gpus[0].up
    assert snapshot.gpus[0].error == "unexpected ValueError while reading: garbled value"
    assert snapshot.gpus[1].up and snapshot.gpus[1].power_watts == pytest.approx(70.0)
    assert snapshot.errors == {("sample", "ValueError"): 1}
