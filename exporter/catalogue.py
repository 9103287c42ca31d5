"""The metric catalogue: the one place that defines every metric gpuledger exports.

Each metric has a name, a type, a unit, a help text and a label set. The exporter's
collectors, the load generator, the alert and recording rules, the dashboards and the
accounting queries all take their names from here, and tests check them against it,
so a rename cannot silently break a panel or an alert.

Conventions (Prometheus): one prefix, `gpuledger_`; base units (bytes, seconds,
joules, hertz, ratios 0-1); `_total` on counters. Counters for accounting, gauges for
the present.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

PREFIX = "gpuledger_"


class MetricType(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"
    INFO = "info"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: what it is called, what it counts, in which unit, by which labels."""

    name: str
    type: MetricType
    unit: str
    help: str
    labels: tuple[str, ...]

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """Names that appear in the exposition text (and so in PromQL)."""
        if self.type is MetricType.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        if self.type is MetricType.INFO:
            return (f"{self.name}_info",) if not self.name.endswith("_info") else (self.name,)
        return (self.name,)


# Label sets shared by families.
NODE = ("node",)
GPU = ("node", "gpu", "uuid", "model", "source")
MIG = ("node", "gpu", "uuid", "model", "mig_profile", "gpu_instance", "mig_uuid", "source")
POD = ("namespace", "pod", "container")
# A pod's share of one device: the whole GPU, one MIG instance or one time-sliced replica.
POD_DEVICE = POD + (
    "node",
    "gpu",
    "uuid",
    "model",
    "mig_profile",
    "gpu_instance",
    "sharing",
    "source",
)
COLLECTIVE = POD + ("node", "operation")

CATALOGUE: dict[str, MetricSpec] = {}


def _define(
    name: str, type_: MetricType, unit: str, help_: str, labels: tuple[str, ...]
) -> MetricSpec:
    full = PREFIX + name
    if full in CATALOGUE:
        raise ValueError(f"metric {full} is defined twice in the catalogue")
    if type_ is MetricType.COUNTER and not full.endswith("_total"):
        raise ValueError(f"counter {full} must end in _total")
    spec = MetricSpec(full, type_, unit, help_, labels)
    CATALOGUE[full] = spec
    return spec


G, C, H = MetricType.GAUGE, MetricType.COUNTER, MetricType.HISTOGRAM

# ---------------------------------------------------------------- per GPU (present)
GPU_INFO = _define(
    "gpu_info",
    G,
    "",
    "One per GPU: its identity; value 1. source is nvml or simulated.",
    GPU + ("driver_version", "mig_mode", "pci_bus_id"),
)
GPU_UP = _define(
    "gpu_up", G, "", "1 if the GPU answered the last collection, 0 if it is lost or failing.", GPU
)
GPU_UTILIZATION = _define(
    "gpu_utilization_ratio",
    G,
    "ratio",
    "Fraction of the last sample period in which a kernel ran on the GPU (NVML utilization.gpu).",
    GPU,
)
GPU_MEMORY_UTILIZATION = _define(
    "gpu_memory_utilization_ratio",
    G,
    "ratio",
    "Fraction of the last sample period in which device memory was read or written.",
    GPU,
)
GPU_MEMORY_TOTAL = _define("gpu_memory_total_bytes", G, "bytes", "Device memory installed.", GPU)
GPU_MEMORY_USED = _define(
    "gpu_memory_used_bytes", G, "bytes", "Device memory allocated by processes.", GPU
)
GPU_MEMORY_RESERVED = _define(
    "gpu_memory_reserved_bytes",
    G,
    "bytes",
    "Device memory reserved by the driver and firmware.",
    GPU,
)
GPU_POWER = _define("gpu_power_watts", G, "watts", "Power draw of the board.", GPU)
GPU_POWER_LIMIT = _define(
    "gpu_power_limit_watts", G, "watts", "Enforced power limit of the board.", GPU
)
GPU_TEMPERATURE = _define("gpu_temperature_celsius", G, "celsius", "GPU die temperature.", GPU)
GPU_SM_CLOCK = _define("gpu_sm_clock_hertz", G, "hertz", "Current SM clock.", GPU)
GPU_MEMORY_CLOCK = _define("gpu_memory_clock_hertz", G, "hertz", "Current memory clock.", GPU)
GPU_CLOCK_EVENT = _define(
    "gpu_clock_event_active",
    G,
    "",
    "1 while the clock event (throttle) reason is active, else 0.",
    GPU + ("reason",),
)
GPU_ROW_REMAP_FAILURE = _define(
    "gpu_row_remap_failure", G, "", "1 if a row remapping failed: the GPU needs service.", GPU
)
GPU_ROW_REMAP_PENDING = _define(
    "gpu_row_remap_pending", G, "", "1 if a row remapping waits for a GPU reset.", GPU
)
GPU_LAST_XID = _define(
    "gpu_last_xid_timestamp_seconds",
    G,
    "seconds",
    "Unix time of the last XID event of this GPU.",
    GPU,
)
GPU_TENSOR_ACTIVE = _define(
    "gpu_tensor_active_ratio",
    G,
    "ratio",
    "Fraction of cycles the tensor pipes were active (where the source has it).",
    GPU,
)
GPU_GRAPHICS_ENGINE_ACTIVE = _define(
    "gpu_graphics_engine_active_ratio",
    G,
    "ratio",
    "Fraction of time the graphics or compute engine was active (where the source has it).",
    GPU,
)

# ---------------------------------------------------------------- per GPU (counters)
GPU_ENERGY = _define(
    "gpu_energy_joules_total",
    C,
    "joules",
    "Energy used by the GPU since the driver loaded (NVML total energy, mJ exported in J).",
    GPU,
)
GPU_BUSY_SECONDS = _define(
    "gpu_busy_seconds_total",
    C,
    "seconds",
    "Integral of utilization over time, sampled faster than the scrape: busy GPU-seconds.",
    GPU,
)
GPU_SAMPLED_SECONDS = _define(
    "gpu_sampled_seconds_total",
    C,
    "seconds",
    "Time covered by the exporter's samples of this GPU (the denominator of busy ratios).",
    GPU,
)
GPU_MEMORY_BYTE_SECONDS = _define(
    "gpu_memory_used_byte_seconds_total",
    C,
    "byte-seconds",
    "Integral of used device memory over time.",
    GPU,
)
GPU_ECC_ERRORS = _define(
    "gpu_ecc_errors_total",
    C,
    "errors",
    "ECC errors since the driver loaded (volatile), by type corrected or uncorrected.",
    GPU + ("type",),
)
GPU_REMAPPED_ROWS = _define(
    "gpu_remapped_rows_total",
    C,
    "rows",
    "Rows remapped, by cause correctable or uncorrectable.",
    GPU + ("cause",),
)
GPU_XID_ERRORS = _define(
    "gpu_xid_errors_total",
    C,
    "events",
    "XID critical error events seen by the exporter, by XID code.",
    GPU + ("xid",),
)
GPU_PCIE_BYTES = _define(
    "gpu_pcie_bytes_total", C, "bytes", "PCIe bytes, by direction tx or rx.", GPU + ("direction",)
)
GPU_NVLINK_BYTES = _define(
    "gpu_nvlink_bytes_total",
    C,
    "bytes",
    "NVLink bytes over all links, by direction tx or rx.",
    GPU + ("direction",),
)

# ---------------------------------------------------------------- per MIG instance
MIG_INFO = _define(
    "mig_info",
    G,
    "",
    "One per MIG instance: its identity and the share of the GPU it has.",
    MIG + ("compute_fraction",),
)
MIG_MEMORY_TOTAL = _define("mig_memory_total_bytes", G, "bytes", "Memory of the MIG instance.", MIG)
MIG_MEMORY_USED = _define(
    "mig_memory_used_bytes", G, "bytes", "Memory used in the MIG instance.", MIG
)
MIG_UTILIZATION = _define(
    "mig_utilization_ratio",
    G,
    "ratio",
    "Utilization of the MIG instance (where the source has it).",
    MIG,
)
MIG_BUSY_SECONDS = _define(
    "mig_busy_seconds_total",
    C,
    "seconds",
    "Integral of the MIG instance's utilization over time.",
    MIG,
)

# ---------------------------------------------------------------- per pod
POD_GPU_ALLOCATED = _define(
    "pod_gpu_allocated",
    G,
    "gpus",
    "GPU-equivalents this container holds on the device: 1 for a whole GPU, the "
    "compute fraction for a MIG instance, 1/n for a GPU time-sliced among n pods.",
    POD_DEVICE + ("resource",),
)
POD_GPU_UTILIZATION = _define(
    "pod_gpu_utilization_ratio",
    G,
    "ratio",
    "Busy GPU-equivalents of this container on the device over the last sample.",
    POD_DEVICE,
)
POD_GPU_MEMORY_USED = _define(
    "pod_gpu_memory_used_bytes",
    G,
    "bytes",
    "Device memory used by this container's processes.",
    POD_DEVICE,
)
POD_GPU_ALLOCATED_SECONDS = _define(
    "pod_gpu_allocated_seconds_total",
    C,
    "seconds",
    "GPU-seconds held: integral of pod_gpu_allocated over time.",
    POD_DEVICE,
)
POD_GPU_BUSY_SECONDS = _define(
    "pod_gpu_busy_seconds_total",
    C,
    "seconds",
    "Busy GPU-seconds: integral of pod_gpu_utilization_ratio over time.",
    POD_DEVICE,
)
POD_GPU_MEMORY_BYTE_SECONDS = _define(
    "pod_gpu_memory_used_byte_seconds_total",
    C,
    "byte-seconds",
    "Integral of this container's used device memory over time.",
    POD_DEVICE,
)
POD_GPU_ENERGY = _define(
    "pod_gpu_energy_joules_total",
    C,
    "joules",
    "The container's share of the device's energy (by busy share on shared GPUs).",
    POD_DEVICE,
)

# ---------------------------------------------------------------- collectives (in-job probe)
COLLECTIVE_BYTES = _define(
    "collective_bytes_total",
    C,
    "bytes",
    "Bytes moved by collectives of this pod (message size as nccl-tests counts it).",
    COLLECTIVE,
)
COLLECTIVE_SECONDS = _define(
    "collective_seconds_total", C, "seconds", "Time spent in collectives of this pod.", COLLECTIVE
)
COLLECTIVE_CALLS = _define(
    "collective_calls_total", C, "calls", "Collective calls of this pod.", COLLECTIVE
)
COLLECTIVE_ALGBW = _define(
    "collective_algorithm_bandwidth_bytes_per_second",
    G,
    "bytes/second",
    "Algorithm bandwidth (bytes / time) over the last report period.",
    COLLECTIVE,
)
COLLECTIVE_BUSBW = _define(
    "collective_bus_bandwidth_bytes_per_second",
    G,
    "bytes/second",
    "Bus bandwidth (algbw x nccl-tests factor) over the last report period.",
    COLLECTIVE,
)
COLLECTIVE_WORLD_SIZE = _define(
    "collective_world_size", G, "ranks", "World size of the pod's process group.", COLLECTIVE
)
COLLECTIVE_BUSBW_HISTOGRAM = _define(
    "collective_bus_bandwidth",
    H,
    "bytes/second",
    "Distribution of per-report bus bandwidth.",
    COLLECTIVE,
)
PROBE_REPORTS = _define(
    "probe_reports_total", C, "reports", "Probe reports accepted, by pod.", POD + ("node",)
)
PROBE_REJECTED = _define(
    "probe_rejected_total",
    C,
    "reports",
    "Probe messages dropped, by reason (malformed, oversized, unsupported_version, "
    "rate_limited, too_many_connections, unattributed, implausible, too_many_series).",
    ("node", "reason"),
)
COLLECTIVE_BUS_BYTES = _define(
    "collective_bus_bytes_total",
    C,
    "bytes",
    "Bytes x nccl-tests bus factor, per call: rate(this) / rate(seconds_total) is busbw.",
    COLLECTIVE,
)
PROBE_DROPPED_REPORTS = _define(
    "probe_dropped_reports_total",
    C,
    "reports",
    "Reports the pod's probes could not deliver (exporter missing or slow), as they count them.",
    POD + ("node",),
)
PROBE_CONNECTIONS = _define(
    "probe_connections", G, "connections", "Probe connections open now.", NODE
)

# ---------------------------------------------------------------- NCCL Inspector (re-labelled)
# Inspector's own labels kept: operation (AllReduce -> all_reduce), communicator, its size.
NCCL_INSPECTOR = POD + ("node", "uuid", "operation", "comm", "nranks", "n_nodes", "message_size")
NCCL_INSPECTOR_BUSBW = _define(
    "nccl_inspector_bus_bandwidth_bytes_per_second",
    G,
    "bytes/second",
    "NCCL Inspector's bus bandwidth in its last dump (mean over the dump's operations).",
    NCCL_INSPECTOR,
)
NCCL_INSPECTOR_ALGBW = _define(
    "nccl_inspector_algorithm_bandwidth_bytes_per_second",
    G,
    "bytes/second",
    "NCCL Inspector's algorithm bandwidth in its last dump (where the Inspector writes it).",
    NCCL_INSPECTOR,
)
NCCL_INSPECTOR_EXEC_TIME = _define(
    "nccl_inspector_exec_time_seconds",
    G,
    "seconds",
    "NCCL Inspector's execution time of one operation in its last dump (mean).",
    NCCL_INSPECTOR,
)
NCCL_INSPECTOR_OPERATIONS = _define(
    "nccl_inspector_operations",
    G,
    "operations",
    "Operations NCCL Inspector aggregated in its last dump (where the Inspector writes it).",
    NCCL_INSPECTOR,
)
NCCL_INSPECTOR_FILE_AGE = _define(
    "nccl_inspector_file_age_seconds",
    G,
    "seconds",
    "Age of the Inspector's file of this GPU; files older than the reader's limit are ignored.",
    ("node", "uuid"),
)

# ---------------------------------------------------------------- links (per GPU and NIC)
IB_BYTES = _define(
    "infiniband_bytes_total",
    C,
    "bytes",
    "InfiniBand/RoCE port data bytes (4 x port_*_data), by direction.",
    ("node", "device", "port", "direction"),
)
POD_IB_BYTES = _define(
    "pod_infiniband_bytes_total",
    C,
    "bytes",
    "InfiniBand/RoCE port bytes of NICs this pod holds, by direction; a NIC shared by n "
    "pods gives each 1/n of its bytes.",
    POD + ("node", "device", "port", "direction"),
)
POD_NVLINK_BYTES = _define(
    "pod_nvlink_bytes_total",
    C,
    "bytes",
    "NVLink bytes of GPUs this pod holds, by direction; a GPU shared by n pods (time-sliced, "
    "MIG) gives each 1/n of its bytes.",
    POD + ("node", "gpu", "uuid", "direction"),
)
POD_PCIE_BYTES = _define(
    "pod_pcie_bytes_total",
    C,
    "bytes",
    "PCIe bytes of GPUs this pod holds, by direction; shared GPUs split as for NVLink.",
    POD + ("node", "gpu", "uuid", "direction"),
)

# ---------------------------------------------------------------- the exporter itself
EXPORTER_BUILD_INFO = _define(
    "exporter_build_info",
    G,
    "",
    "Build of the exporter; value 1.",
    ("node", "version", "source", "python_version"),
)
EXPORTER_COLLECTION_DURATION = _define(
    "exporter_collection_duration_seconds",
    H,
    "seconds",
    "Time one collection (all sources) took.",
    NODE,
)
EXPORTER_SCRAPE_DURATION = _define(
    "exporter_scrape_duration_seconds", H, "seconds", "Time rendering /metrics took.", NODE
)
EXPORTER_LAST_COLLECTION = _define(
    "exporter_last_collection_timestamp_seconds",
    G,
    "seconds",
    "Unix time of the last finished collection.",
    NODE,
)
EXPORTER_COLLECTIONS = _define(
    "exporter_collections_total", C, "collections", "Collections finished.", NODE
)
EXPORTER_NVML_ERRORS = _define(
    "exporter_nvml_errors_total",
    C,
    "errors",
    "NVML calls that failed, by function and NVML error name.",
    ("node", "function", "code"),
)
EXPORTER_ATTRIBUTION_ERRORS = _define(
    "exporter_attribution_errors_total",
    C,
    "errors",
    "Attribution failures, by source (kubelet, cgroup, apiserver) and reason.",
    ("node", "source", "reason"),
)
EXPORTER_ATTRIBUTION_STALE = _define(
    "exporter_attribution_stale",
    G,
    "",
    "1 while a source's mapping is stale (last good answer kept), by source.",
    ("node", "source"),
)
EXPORTER_ATTRIBUTION_AGE = _define(
    "exporter_attribution_age_seconds",
    G,
    "seconds",
    "Age of the last good answer of each attribution source.",
    ("node", "source"),
)
EXPORTER_DROPPED_SERIES = _define(
    "exporter_dropped_series_total",
    C,
    "series",
    "Pod series not exported, or departed pods' counters dropped before their grace "
    "period ended, because the series cap was reached.",
    NODE,
)
EXPORTER_COLLECTOR_UP = _define(
    "exporter_collector_up",
    G,
    "",
    "1 if the named collector succeeded in the last collection.",
    ("node", "collector"),
)

# ---------------------------------------------------------------- the load generator (ground truth)
LOADGEN = ("job", "rank", "phase")
LOADGEN_STEPS = _define(
    "loadgen_steps_total", C, "steps", "Training steps finished by this rank.", LOADGEN
)
LOADGEN_TOKENS = _define(
    "loadgen_tokens_total", C, "tokens", "Tokens trained on by this rank.", LOADGEN
)
LOADGEN_STEP_SECONDS = _define(
    "loadgen_step_seconds", G, "seconds", "Duration of the last step.", LOADGEN
)
LOADGEN_STEP_WORK_SECONDS = _define(
    "loadgen_step_work_seconds",
    G,
    "seconds",
    "Time of the last step this rank spent on its own work (compute, waiting for data, "
    "injected slowness), not waiting for peers: in synchronous training every rank's step "
    "takes as long as the slowest's, so this is where a straggler shows.",
    LOADGEN,
)
LOADGEN_FLOPS = _define(
    "loadgen_achieved_flops", G, "flop/second", "Achieved model FLOP/s over the last step.", LOADGEN
)
LOADGEN_MFU = _define(
    "loadgen_mfu_ratio", G, "ratio", "Model FLOP utilisation over the last step.", LOADGEN
)
LOADGEN_BUSY = _define(
    "loadgen_device_busy_ratio",
    G,
    "ratio",
    "The job's own measure of device busy time over wall time, last step.",
    LOADGEN,
)
LOADGEN_MEMORY = _define(
    "loadgen_memory_used_bytes", G, "bytes", "Device memory the rank holds.", LOADGEN
)
LOADGEN_PHASE = _define(
    "loadgen_phase_active", G, "", "1 for the phase running now.", LOADGEN + ("kind",)
)
LOADGEN_LOSS = _define("loadgen_loss", G, "", "Training loss of the last step.", LOADGEN)
LOADGEN_BUSY_SECONDS = _define(
    "loadgen_device_busy_seconds_total",
    C,
    "seconds",
    "The job's own measure of device busy time (CUDA events on GPUs, compute time on the CPU).",
    LOADGEN,
)
LOADGEN_STALL_SECONDS = _define(
    "loadgen_input_stall_seconds_total", C, "seconds", "Time steps waited for data.", LOADGEN
)
LOADGEN_COLLECTIVE_BYTES = _define(
    "loadgen_collective_bytes_total",
    C,
    "bytes",
    "Bytes this rank all-reduced (message size as nccl-tests counts it), timed by the job.",
    LOADGEN,
)
LOADGEN_COLLECTIVE_SECONDS = _define(
    "loadgen_collective_seconds_total",
    C,
    "seconds",
    "Time this rank spent in all_reduce calls, including waiting for peers.",
    LOADGEN,
)
LOADGEN_BUSBW = _define(
    "loadgen_collective_bus_bandwidth_bytes_per_second",
    G,
    "bytes/second",
    "Bus bandwidth (algbw x 2(n-1)/n) of the last all_reduce, as the job measured it.",
    LOADGEN,
)
LOADGEN_PEAK_FLOPS = _define(
    "loadgen_peak_flops",
    G,
    "flop/second",
    "Peak the MFU is computed against: datasheet dense bf16 on GPUs, measured matmul on the CPU.",
    ("job", "rank"),
)

# ---------------------------------------------------------------- accounting (gpuledger accounting serve)
# Cost from the ledger, per team and namespace; __idle__ and __unattributed__ are rows
# (team = namespace = the row's name), so each family sums to the cluster's cost.
ACCOUNTING_TEAM = ("team", "namespace")
ACCOUNTING_MONTH_COST = _define(
    "accounting_month_cost",
    G,
    "currency",
    "Cost of the ledger's hours of the current UTC month so far, on the allocation or usage "
    "basis (docs/cost-model.md), in the price book's currency.",
    ACCOUNTING_TEAM + ("basis", "currency"),
)
ACCOUNTING_MONTH_WASTE_COST = _define(
    "accounting_month_waste_cost",
    G,
    "currency",
    "Cost of GPU time held but not busy in the current UTC month (idle_cost_in_allocation).",
    ACCOUNTING_TEAM + ("currency",),
)
ACCOUNTING_MONTH_GPU_SECONDS = _define(
    "accounting_month_gpu_seconds",
    G,
    "seconds",
    "GPU-seconds held or busy (state) in the current UTC month, from the ledger.",
    ACCOUNTING_TEAM + ("state",),
)
ACCOUNTING_LAST_HOUR_COST = _define(
    "accounting_last_hour_cost",
    G,
    "currency",
    "Cost (allocation basis) of the latest hour in the ledger: the cost rate per hour.",
    ACCOUNTING_TEAM + ("currency",),
)
ACCOUNTING_LAST_HOUR = _define(
    "accounting_ledger_last_hour_timestamp_seconds",
    G,
    "seconds",
    "Unix time of the start of the latest hour in the ledger.",
    (),
)
ACCOUNTING_MONTH_MISSING = _define(
    "accounting_month_missing_seconds",
    G,
    "seconds",
    "Time of the current UTC month, up to the last complete hour, that the ledger lacks.",
    (),
)
ACCOUNTING_INGEST_RUNS = _define(
    "accounting_ingest_runs_total",
    C,
    "runs",
    "Scheduled ingestion runs, by result (success or error).",
    ("result",),
)
ACCOUNTING_INGEST_LAST_SUCCESS = _define(
    "accounting_ingest_last_success_timestamp_seconds",
    G,
    "seconds",
    "Unix time the last successful ingestion run ended.",
    (),
)
ACCOUNTING_INGEST_DURATION = _define(
    "accounting_ingest_duration_seconds",
    G,
    "seconds",
    "Time the last ingestion run took, by part: total, prometheus, kube, ledger, gpuledger.",
    ("part",),
)
ACCOUNTING_API_REQUESTS = _define(
    "accounting_api_requests_total",
    C,
    "requests",
    "Requests to the accounting HTTP API, by handler and HTTP status code.",
    ("handler", "code"),
)


def spec(name: str) -> MetricSpec:
    """Look a metric up by its full name (with or without the prefix)."""
    full = name if name.startswith(PREFIX) else PREFIX + name
    try:
        return CATALOGUE[full]
    except KeyError:
        raise KeyError(f"{full} is not in the metric catalogue (exporter/catalogue.py)") from None


def exposed_names() -> set[str]:
    """Every series name the catalogue allows in PromQL, including histogram suffixes."""
    return {n for s in CATALOGUE.values() for n in s.exposed_names}
