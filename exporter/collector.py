"""Metric families from the last collection: GPU, MIG, pod and self metrics.

Like prometheus_client's built-in collectors, `collect()` reads a snapshot and yields
families; it never touches hardware. Names, types and label sets come from the
catalogue.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import catalogue as cat
from exporter.catalogue import MetricSpec, MetricType
from exporter.integrator import PodTotals
from exporter.model import GpuReading
from exporter.pod_usage import PodDeviceKey
from exporter.state import ExporterState
from gpuledger import __version__


def new_family(spec: MetricSpec) -> Metric:
    """An empty family for a catalogue entry, with the catalogue's help and labels."""
    if spec.type is MetricType.COUNTER:
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type is MetricType.GAUGE:
        return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    raise ValueError(
        f"{spec.name}: build {spec.type.value} metrics with prometheus_client directly"
    )


class Families:
    """Families created on first use, yielded in catalogue order."""

    def __init__(self) -> None:
        self._families: dict[str, Metric] = {}

    def add(self, spec: MetricSpec, labels: list[str] | tuple[str, ...], value: float) -> None:
        family = self._families.get(spec.name)
        if family is None:
            family = self._families[spec.name] = new_family(spec)
        family.add_metric(labels, value)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


# GPU gauges read straight off the reading: (spec, attribute, scale).
_GPU_GAUGES: tuple[tuple[MetricSpec, str], ...] = (
    (cat.GPU_UTILIZATION, "utilization"),
    (cat.GPU_MEMORY_UTILIZATION, "memory_utilization"),
    (cat.GPU_MEMORY_TOTAL, "memory_total_bytes"),
    (cat.GPU_MEMORY_USED, "memory_used_bytes"),
    (cat.GPU_MEMORY_RESERVED, "memory_reserved_bytes"),
    (cat.GPU_POWER, "power_watts"),
    (cat.GPU_POWER_LIMIT, "power_limit_watts"),
    (cat.GPU_TEMPERATURE, "temperature_celsius"),
    (cat.GPU_SM_CLOCK, "sm_clock_hertz"),
    (cat.GPU_MEMORY_CLOCK, "memory_clock_hertz"),
    (cat.GPU_ROW_REMAP_FAILURE, "row_remap_failure"),
    (cat.GPU_ROW_REMAP_PENDING, "row_remap_pending"),
    (cat.GPU_LAST_XID, "last_xid_timestamp"),
    (cat.GPU_TENSOR_ACTIVE, "tensor_active"),
    (cat.GPU_GRAPHICS_ENGINE_ACTIVE, "graphics_engine_active"),
)

# Counters with a label that tells which one: (spec, label value, attribute).
_GPU_LABELLED_COUNTERS: tuple[tuple[MetricSpec, str, str], ...] = (
    (cat.GPU_ECC_ERRORS, "corrected", "ecc_corrected_total"),
    (cat.GPU_ECC_ERRORS, "uncorrected", "ecc_uncorrected_total"),
    (cat.GPU_REMAPPED_ROWS, "correctable", "remapped_rows_correctable"),
    (cat.GPU_REMAPPED_ROWS, "uncorrectable", "remapped_rows_uncorrectable"),
    (cat.GPU_PCIE_BYTES, "tx", "pcie_tx_bytes_total"),
    (cat.GPU_PCIE_BYTES, "rx", "pcie_rx_bytes_total"),
    (cat.GPU_NVLINK_BYTES, "tx", "nvlink_tx_bytes_total"),
    (cat.GPU_NVLINK_BYTES, "rx", "nvlink_rx_bytes_total"),
)


def gpu_labels(node: str, gpu: GpuReading, source: str) -> list[str]:
    return [node, str(gpu.index), gpu.uuid, gpu.model, source]


class GpuLedgerCollector:
    """Renders an `ExporterState` as the gpuledger_* metric families."""

    def __init__(self, state: Callable[[], ExporterState]) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state()
        families = Families()
        self._gpus(state, families)
        self._pods(state, families)
        self._self(state, families)
        yield from families

    def describe(self) -> list[Metric]:
        # Families depend on the hardware; no description at registration time.
        return []

    @staticmethod
    def _gpus(state: ExporterState, out: Families) -> None:
        snapshot = state.snapshot
        if snapshot is None:
            return
        source, node = snapshot.source, state.node
        for gpu in snapshot.gpus:
            labels = gpu_labels(node, gpu, source)
            out.add(
                cat.GPU_INFO,
                labels
                + [gpu.driver_version, "enabled" if gpu.mig_mode else "disabled", gpu.pci_bus_id],
                1,
            )
            out.add(cat.GPU_UP, labels, 1 if gpu.up else 0)
            totals = state.totals.gpus.get(gpu.uuid)
            if totals is not None:
                out.add(cat.GPU_BUSY_SECONDS, labels, totals.busy_seconds)
                out.add(cat.GPU_SAMPLED_SECONDS, labels, totals.sampled_seconds)
                out.add(cat.GPU_MEMORY_BYTE_SECONDS, labels, totals.memory_byte_seconds)
            for code, count in sorted(gpu.xid_counts.items()):
                out.add(cat.GPU_XID_ERRORS, labels + [str(code)], count)
            if not gpu.up:
                continue
            for spec, attribute in _GPU_GAUGES:
                value = getattr(gpu, attribute)
                if value is not None:
                    out.add(spec, labels, float(value))
            for reason, active in sorted(gpu.clock_events.items()):
                out.add(cat.GPU_CLOCK_EVENT, labels + [reason], 1 if active else 0)
            for spec, which, attribute in _GPU_LABELLED_COUNTERS:
                value = getattr(gpu, attribute)
                if value is not None:
                    out.add(spec, labels + [which], value)
            if gpu.energy_joules is not None:
                out.add(cat.GPU_ENERGY, labels, gpu.energy_joules)
            elif totals is not None and gpu.power_watts is not None:
                out.add(cat.GPU_ENERGY, labels, totals.integrated_energy_joules)
            for mig in gpu.mig:
                mig_labels = [
                    node,
                    str(gpu.index),
                    gpu.uuid,
                    gpu.model,
                    mig.profile,
                    str(mig.gpu_instance_id),
                    mig.uuid,
                    source,
                ]
                out.add(cat.MIG_INFO, mig_labels + [f"{mig.compute_fraction:.6g}"], 1)
                if mig.memory_total_bytes is not None:
                    out.add(cat.MIG_MEMORY_TOTAL, mig_labels, mig.memory_total_bytes)
                if mig.memory_used_bytes is not None:
                    out.add(cat.MIG_MEMORY_USED, mig_labels, mig.memory_used_bytes)
                if mig.utilization is not None:
                    out.add(cat.MIG_UTILIZATION, mig_labels, mig.utilization)
                    out.add(cat.MIG_BUSY_SECONDS, mig_labels, state.totals.migs.get(mig.uuid, 0.0))

    @staticmethod
    def _pods(state: ExporterState, out: Families) -> None:
        source, node = state.source, state.node

        def key_labels(k: PodDeviceKey) -> list[str]:
            return [
                k.namespace,
                k.pod,
                k.container,
                node,
                k.gpu,
                k.uuid,
                k.model,
                k.mig_profile,
                k.gpu_instance,
                k.sharing,
                source,
            ]

        def counters(labels: list[str], totals: PodTotals) -> None:
            out.add(cat.POD_GPU_ALLOCATED_SECONDS, labels, totals.allocated_seconds)
            if totals.busy_known:
                out.add(cat.POD_GPU_BUSY_SECONDS, labels, totals.busy_seconds)
            out.add(cat.POD_GPU_MEMORY_BYTE_SECONDS, labels, totals.memory_byte_seconds)
            out.add(cat.POD_GPU_ENERGY, labels, totals.energy_joules)

        for usage in state.usages:
            labels = key_labels(usage.key)
            out.add(cat.POD_GPU_ALLOCATED, labels + [usage.resource], usage.allocated)
            if usage.utilization is not None:
                out.add(cat.POD_GPU_UTILIZATION, labels, usage.utilization)
            if usage.memory_used_bytes is not None:
                out.add(cat.POD_GPU_MEMORY_USED, labels, usage.memory_used_bytes)
            totals = state.totals.pods.get(usage.key)
            if totals is not None:
                counters(labels, totals)
        # A pod that let go of its device: only its frozen counters, for a grace period,
        # so that the last scrape sees its last value. No gauges: it holds nothing now.
        for key, totals in state.totals.departed.items():
            counters(key_labels(key), totals)

    @staticmethod
    def _self(state: ExporterState, out: Families) -> None:
        node, stats = state.node, state.stats
        out.add(
            cat.EXPORTER_BUILD_INFO, [node, __version__, state.source, platform.python_version()], 1
        )
        out.add(cat.EXPORTER_COLLECTIONS, [node], stats.collections)
        if stats.last_collection_timestamp is not None:
            out.add(cat.EXPORTER_LAST_COLLECTION, [node], stats.last_collection_timestamp)
        out.add(cat.EXPORTER_DROPPED_SERIES, [node], stats.dropped_series)
        for (function, code), count in sorted(stats.nvml_errors.items()):
            out.add(cat.EXPORTER_NVML_ERRORS, [node, function, code], count)
        for (source, reason), count in sorted(stats.attribution_errors.items()):
            out.add(cat.EXPORTER_ATTRIBUTION_ERRORS, [node, source, reason], count)
        for source, stale in sorted(state.attribution.stale.items()):
            out.add(cat.EXPORTER_ATTRIBUTION_STALE, [node, source], 1 if stale else 0)
        for source, age in sorted(state.attribution.age_seconds.items()):
            out.add(cat.EXPORTER_ATTRIBUTION_AGE, [node, source], age)
        for name, up in sorted(stats.collector_up.items()):
            out.add(cat.EXPORTER_COLLECTOR_UP, [node, name], 1 if up else 0)
