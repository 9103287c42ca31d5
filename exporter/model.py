"""What a device source reports: plain readings of one collection, no metric logic.

A field is None when the device does not support it (NotSupported in NVML) or the
source cannot read it now; collectors then omit the series rather than invent a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ProcessReading:
    """One process that holds memory or runs kernels on a GPU or MIG instance."""

    pid: int
    used_memory_bytes: int | None = None
    # From nvmlDeviceGetProcessUtilization: share of the sample period (0-1). None: no samples.
    sm_utilization: float | None = None
    memory_utilization: float | None = None


@dataclass(frozen=True)
class MigReading:
    """One MIG instance (a GPU instance with its compute instance)."""

    uuid: str
    profile: str  # e.g. "1g.10gb"
    gpu_instance_id: int
    compute_instance_id: int
    compute_fraction: float  # share of the parent GPU's SMs, e.g. 1/7
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    utilization: float | None = None
    processes: tuple[ProcessReading, ...] = ()


@dataclass(frozen=True)
class GpuReading:
    """One physical GPU at one collection."""

    index: int
    uuid: str
    model: str
    up: bool = True
    error: str | None = None  # why `up` is False
    pci_bus_id: str = ""
    driver_version: str = ""
    mig_mode: bool = False
    utilization: float | None = None  # 0-1
    memory_utilization: float | None = None  # 0-1
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_reserved_bytes: int | None = None
    power_watts: float | None = None
    power_limit_watts: float | None = None
    energy_joules: float | None = None  # the device's own counter since driver load
    temperature_celsius: float | None = None
    sm_clock_hertz: float | None = None
    memory_clock_hertz: float | None = None
    # Clock event (throttle) reasons by name -> active; only those the device reports.
    clock_events: dict[str, bool] = field(default_factory=dict)
    ecc_corrected_total: int | None = None
    ecc_uncorrected_total: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    row_remap_pending: bool | None = None
    row_remap_failure: bool | None = None
    pcie_tx_bytes_total: int | None = None
    pcie_rx_bytes_total: int | None = None
    nvlink_tx_bytes_total: int | None = None
    nvlink_rx_bytes_total: int | None = None
    # XID events seen since the exporter started: code -> count; last event's unix time.
    xid_counts: dict[int, int] = field(default_factory=dict)
    last_xid_timestamp: float | None = None
    tensor_active: float | None = None
    graphics_engine_active: float | None = None
    processes: tuple[ProcessReading, ...] = ()
    mig: tuple[MigReading, ...] = ()


@dataclass(frozen=True)
class DeviceSnapshot:
    """Everything a source read in one collection."""

    timestamp: float  # unix time of the collection
    monotonic: float  # time.monotonic() of the collection, for integration
    source: str  # "nvml" or "simulated"
    gpus: tuple[GpuReading, ...]
    # NVML (or simulated) errors since start: (function, error name) -> count
    errors: dict[tuple[str, str], int] = field(default_factory=dict)
