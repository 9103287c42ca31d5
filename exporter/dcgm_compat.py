"""dcgm-exporter's default metric names, label names and units (`--dcgm-compat`).

A team moving from dcgm-exporter keeps its dashboards and alerts working on day one.
The units are dcgm-exporter's, not Prometheus base units: utilisation in percent,
framebuffer in MiB, clocks in MHz, energy in millijoules.

Where a GPU is shared, dcgm-exporter repeats the GPU's value on each pod's series, so
sum() by pod counts the GPU several times. Here the two series that can be split
(DCGM_FI_DEV_GPU_UTIL and DCGM_FI_DEV_FB_USED) carry each pod's share instead, and the
others carry no pod labels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric, UnknownMetricFamily

from exporter.attribution import PodRef
from exporter.model import GpuReading
from exporter.pod_usage import EXCLUSIVE, assignments_by_device
from exporter.state import ExporterState

LABELS = ("gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod")
MIB = 1024 * 1024

# name -> (help, how to read it off a GpuReading); None values are not exported.
_GAUGES: dict[str, tuple[str, Callable[[GpuReading], float | None]]] = {
    "DCGM_FI_DEV_GPU_TEMP": ("GPU temperature (in C).", lambda g: g.temperature_celsius),
    "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", lambda g: g.power_watts),
    "DCGM_FI_DEV_SM_CLOCK": (
        "SM clock frequency (in MHz).",
        lambda g: None if g.sm_clock_hertz is None else g.sm_clock_hertz / 1e6,
    ),
    "DCGM_FI_DEV_MEM_CLOCK": (
        "Memory clock frequency (in MHz).",
        lambda g: None if g.memory_clock_hertz is None else g.memory_clock_hertz / 1e6,
    ),
    "DCGM_FI_DEV_FB_FREE": (
        "Framebuffer memory free (in MiB).",
        lambda g: (
            None
            if g.memory_total_bytes is None or g.memory_used_bytes is None
            else (g.memory_total_bytes - g.memory_used_bytes - (g.memory_reserved_bytes or 0)) / MIB
        ),
    ),
    "DCGM_FI_DEV_XID_ERRORS": (
        "Value of the last XID error encountered.",
        lambda g: float(max(g.xid_counts)) if g.xid_counts else 0.0,
    ),
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": (
        "Ratio of time the graphics engine is active.",
        lambda g: g.graphics_engine_active,
    ),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": (
        "Ratio of cycles the tensor (HMMA) pipe is active.",
        lambda g: g.tensor_active,
    ),
}


class DcgmCompatCollector:
    """The same readings under dcgm-exporter's names."""

    def __init__(self, state: Callable[[], ExporterState]) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        if state.snapshot is None:
            return
        node = state.node
        holders = assignments_by_device(state.attribution)
        split = {}
        for usage in state.usages:
            if usage.key.sharing != EXCLUSIVE and not usage.key.mig_profile:
                split.setdefault(usage.key.uuid, []).append(usage)

        util = GaugeMetricFamily("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", labels=LABELS)
        fb_used = GaugeMetricFamily(
            "DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=LABELS
        )
        # dcgm-exporter declares it a counter without `_total`; prometheus_client would add
        # the suffix to a counter and break day-one queries, so it goes out untyped.
        energy = UnknownMetricFamily(
            "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
            "Total energy consumption since boot (in mJ).",
            labels=LABELS,
        )
        gauges = {
            name: GaugeMetricFamily(name, help_, labels=LABELS)
            for name, (help_, _) in _GAUGES.items()
        }

        for gpu in state.snapshot.gpus:
            if not gpu.up:
                continue
            base = [str(gpu.index), gpu.uuid, f"nvidia{gpu.index}", gpu.model, node]
            assignments = holders.get(gpu.uuid, [])
            owner = assignments[0].pod if len(assignments) == 1 else None
            labels = base + _pod_labels(owner)
            shares = split.get(gpu.uuid)
            if shares:
                for usage in shares:
                    pod = PodRef(usage.key.namespace, usage.key.pod, usage.key.container)
                    if usage.utilization is not None:
                        util.add_metric(base + _pod_labels(pod), usage.utilization * 100)
                    if usage.memory_used_bytes is not None:
                        fb_used.add_metric(base + _pod_labels(pod), usage.memory_used_bytes / MIB)
            else:
                if gpu.utilization is not None:
                    util.add_metric(labels, gpu.utilization * 100)
                if gpu.memory_used_bytes is not None:
                    fb_used.add_metric(labels, gpu.memory_used_bytes / MIB)
            gauge_labels = labels if owner is not None else base + _pod_labels(None)
            if gpu.energy_joules is not None:
                energy.add_metric(gauge_labels, gpu.energy_joules * 1000)
            for name, (_, read) in _GAUGES.items():
                value = read(gpu)
                if value is not None:
                    gauges[name].add_metric(gauge_labels, value)
        yield util
        yield fb_used
        yield energy
        yield from gauges.values()


def _pod_labels(pod: PodRef | None) -> list[str]:
    if pod is None:
        return ["", "", ""]
    return [pod.container, pod.namespace, pod.pod]
