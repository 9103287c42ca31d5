"""Readings for exporter tests: a scripted DeviceSource and a few typical GPUs."""

from __future__ import annotations

from collections.abc import Callable

from exporter.attribution import Attribution, DeviceAssignment, PodRef
from exporter.model import DeviceSnapshot, GpuReading, MigReading, ProcessReading

GIB = 1024**3


def h100(index: int, **fields) -> GpuReading:
    defaults = dict(
        index=index,
        uuid=f"GPU-0000000{index}-test",
        model="NVIDIA H100 80GB HBM3",
        pci_bus_id=f"00000000:0{index}:00.0",
        driver_version="550.54.15",
        utilization=0.5,
        memory_utilization=0.25,
        memory_total_bytes=80 * GIB,
        memory_used_bytes=40 * GIB,
        memory_reserved_bytes=GIB // 2,
        power_watts=350.0,
        power_limit_watts=700.0,
        energy_joules=1000.0,
        temperature_celsius=60.0,
        sm_clock_hertz=1.98e9,
        memory_clock_hertz=2.619e9,
        clock_events={"gpu_idle": False, "sw_thermal_slowdown": False},
        ecc_corrected_total=3,
        ecc_uncorrected_total=0,
        remapped_rows_correctable=0,
        remapped_rows_uncorrectable=0,
        row_remap_pending=False,
        row_remap_failure=False,
        pcie_tx_bytes_total=10_000,
        pcie_rx_bytes_total=20_000,
        nvlink_tx_bytes_total=30_000,
        nvlink_rx_bytes_total=40_000,
    )
    defaults.update(fields)
    return GpuReading(**defaults)


def mig_gpu(index: int, instances: int = 7) -> GpuReading:
    migs = tuple(
        MigReading(
            uuid=f"MIG-{index}-{i}",
            profile="1g.10gb",
            gpu_instance_id=i + 7,
            compute_instance_id=0,
            compute_fraction=1 / 7,
            memory_total_bytes=10 * GIB,
            memory_used_bytes=GIB * (i + 1),
            utilization=0.7,
            processes=(ProcessReading(pid=5000 + index * 10 + i, used_memory_bytes=GIB * (i + 1)),),
        )
        for i in range(instances)
    )
    return h100(index, mig_mode=True, mig=migs, utilization=None)


def pod(name: str, namespace: str = "team-a", container: str = "trainer") -> PodRef:
    return PodRef(namespace=namespace, pod=name, container=container, uid=f"uid-{name}")


def assign(
    device_id: str, *pods: PodRef, resource: str = "nvidia.com/gpu"
) -> dict[str, tuple[DeviceAssignment, ...]]:
    return {device_id: tuple(DeviceAssignment(resource, device_id, p) for p in pods)}


class ScriptedSource:
    """A DeviceSource whose readings the test sets; time advances by `step` per sample."""

    name = "nvml"

    def __init__(self, gpus: list[GpuReading], step: float = 1.0, start: float = 1000.0) -> None:
        self.gpus = list(gpus)
        self.step = step
        self.now = start
        self.errors: dict[tuple[str, str], int] = {}
        self.fail_with: Exception | None = None
        self.closed = False
        self.before_sample: Callable[[ScriptedSource], None] | None = None

    def sample(self) -> DeviceSnapshot:
        if self.before_sample:
            self.before_sample(self)
        if self.fail_with is not None:
            raise self.fail_with
        self.now += self.step
        return DeviceSnapshot(
            timestamp=1_700_000_000.0 + self.now,
            monotonic=self.now,
            source=self.name,
            gpus=tuple(self.gpus),
            errors=dict(self.errors),
        )

    def close(self) -> None:
        self.closed = True


def static_attribution(attribution: Attribution):
    return lambda snapshot: attribution
