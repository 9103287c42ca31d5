"""One configuration of the selectors and thresholds that the rules are generated from.

Like kubernetes-mixin's `_config`: every selector, threshold and duration lives here,
with its default and the reason for it. `rules.py` turns a `RulesConfig` into rule
files; `gpuledger alerts generate --config FILE` applies a YAML file of overrides.

Calibration: `alerts/calibration.md` records where each default comes from (NVIDIA's
XID catalogue, measured noise, operating practice) and which of them `gpuledger
calibrate` checks against the load generator's ground truth.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# A Prometheus duration, as rule files accept it (`for`, range selectors, offsets).
DURATION_RE = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class XidGroup:
    """XID codes that mean the same thing for an operator, and so get one alert."""

    name: str  # CamelCase: becomes part of the alert name, GpuledgerGpuXid<name>
    codes: tuple[int, ...]
    severity: str
    meaning: str  # one line for the description
    action: str  # what the on-call does first


def _default_xid_groups() -> tuple[XidGroup, ...]:
    # Meanings from NVIDIA's XID catalogue (docs.nvidia.com/deploy/xid-errors) and the
    # dynamic page retirement / row remapping guides. Codes that are application faults
    # (13, 31, 43, 45) are left out on purpose: they say the program crashed, not the GPU.
    return (
        XidGroup(
            "UncorrectableMemory",
            (48, 94, 95),
            "critical",
            "uncorrectable ECC error in device memory (48 double-bit ECC, 94 contained, "
            "95 uncontained)",
            "drain the GPU; 94 needs the affected application restarted, 48 and 95 a GPU reset",
        ),
        XidGroup(
            "RowRemapFailure",
            (64,),
            "critical",
            "row remapping (or page retirement) failed: a bad memory row could not be replaced",
            "drain the node and open an RMA case with the GPU's serial number",
        ),
        XidGroup(
            "RowRemapEvent",
            (63,),
            "warning",
            "a memory row was marked for remapping; it takes effect at the next GPU reset",
            "reset the GPU when its jobs finish (cordon, drain, nvidia-smi -r)",
        ),
        XidGroup(
            "Nvlink",
            (74,),
            "critical",
            "NVLink error: a link between GPUs failed or retrained",
            "drain the node; collectives over this link are slow or failing",
        ),
        XidGroup(
            "FellOffBus",
            (79,),
            "critical",
            "the GPU has fallen off the bus and no longer answers the driver",
            "drain the node and reboot it; repeated events mean hardware service",
        ),
        XidGroup(
            "HighSingleBitEccRate",
            (92,),
            "warning",
            "high rate of corrected single-bit ECC errors: memory is degrading",
            "watch for uncorrectable errors; plan a GPU reset or replacement",
        ),
    )


@dataclass(frozen=True)
class RulesConfig:
    """Selectors, thresholds and durations of gpuledger's recording and alerting rules."""

    # ---------------------------------------------------------------- selectors
    # Label matchers (inside {}) for the exporter's series. Empty: any job. The DaemonSet's
    # ServiceMonitor in deploy/ scrapes with job="gpuledger-exporter".
    exporter_selector: str = 'job="gpuledger-exporter"'
    # kube-state-metrics, for the GPU node inventory.
    kube_state_metrics_selector: str = 'job="kube-state-metrics"'
    # The load generator's (or a training job's own) step-time series.
    step_time_selector: str = ""
    # Label that tells clusters apart when one Prometheus (Thanos, Mimir) holds several.
    # Kept in every aggregation; harmless when the series have no such label.
    cluster_label: str = "cluster"
    # kube-state-metrics names the extended resource nvidia.com/gpu as nvidia_com_gpu.
    gpu_resource: str = "nvidia_com_gpu"

    # ---------------------------------------------------------------- workloads
    # The pods of one training job share a name prefix: Indexed Jobs (`name-3-x7k2q`),
    # JobSets (`name-workers-0-3-x7k2q`), Kubeflow PyTorchJobs (`name-worker-3`),
    # StatefulSets (`name-3`). The prefix becomes the `workload` label. label_replace
    # anchors the expression at both ends.
    workload_label: str = "workload"
    # What follows the workload's name in a pod's name (a role, indices, a random suffix).
    workload_pod_suffix_regex: str = "(-(master|worker|launcher))?(-[0-9]+)+(-[a-z0-9]{5})?"
    # The load generator labels its step times by `job`; Prometheus renames a scraped
    # `job` label to `exported_job` (unless honor_labels is set on the scrape).
    step_time_job_label: str = "exported_job"

    # ---------------------------------------------------------------- rule evaluation
    # Window of the rate5m recording rules: at least 4 scrapes at the usual 60 s
    # interval (kubernetes-mixin uses 5m for the same reason).
    rate_window: str = "5m"
    # How often Prometheus scrapes the exporter (deploy/'s ServiceMonitor: 15s). The
    # accounting rules are evaluated at this interval: a sum of counters evaluated more
    # often than its parts are scraped becomes a staircase, and increase() over an hour
    # of a staircase misses up to one evaluation interval at the hour's edge.
    exporter_scrape_interval: str = "15s"

    # ---------------------------------------------------------------- held but idle
    # A pod's busy share of a GPU it holds, below which the GPU counts as idle. Training
    # steps on the CPU-bound side (data loading, checkpointing) drop a healthy job to
    # 20-40 % for minutes; a forgotten notebook stays at 0-1 %. 5 % separates the two
    # with room on both sides.
    idle_busy_ratio: float = 0.05
    # Long enough that a checkpoint, an evaluation pass or a job's start-up (image pull,
    # dataset download, compile) does not page anyone; short enough that a forgotten
    # 8-GPU pod is found within the hour.
    idle_for: str = "30m"

    # ---------------------------------------------------------------- memory
    # Used over total device memory. The PyTorch caching allocator holds up to ~95 % on
    # a busy GPU by design, so the alert starts above it: at 98 % the next allocation
    # spike is an out-of-memory error.
    memory_full_ratio: float = 0.98
    memory_full_for: str = "15m"

    # ---------------------------------------------------------------- throttling
    # NVML clock event reasons (the exporter's `reason` label). SW power cap is left out:
    # a GPU at its power limit under full load is normal, not a fault (a training H200
    # had it set in every collection above 600 W: tests/exporter/sources/test_nvml_h200.py). So is hw_slowdown:
    # NVML sets it for heat and for power alike (with hw_thermal_slowdown or
    # hw_power_brake_slowdown beside it), so it would make a thermal event a power alert.
    thermal_reasons: tuple[str, ...] = ("hw_thermal_slowdown", "sw_thermal_slowdown")
    power_reasons: tuple[str, ...] = ("hw_power_brake_slowdown",)
    # Short throttle events come and go with load spikes; a quarter of an hour of them
    # is a cooling or power problem.
    throttle_for: str = "15m"

    # ---------------------------------------------------------------- errors
    # Window over which an XID or ECC event keeps its alert firing: long enough that a
    # 1-minute evaluation with a scrape missed still sees it, short enough to resolve.
    error_window: str = "10m"
    xid_groups: tuple[XidGroup, ...] = field(default_factory=_default_xid_groups)
    # A pending row remap is harmless until the GPU is reset; give jobs time to finish.
    row_remap_pending_for: str = "1h"
    # A GPU that stops answering NVML for longer than a collection retry.
    gpu_lost_for: str = "5m"

    # ---------------------------------------------------------------- collectives
    # A workload's collective bandwidth (bytes per second of collective time) compared
    # with its own average over the baseline window, which ends `baseline_offset` ago so
    # that the drop itself is not in it.
    bandwidth_baseline_window: str = "1h"
    bandwidth_baseline_offset: str = "10m"
    # Measured (alerts/calibration.md): gloo all-reduce bus bandwidth averaged over 300
    # calls varied by 16 % between runs on a shared 2-core machine; a 30 % drop over
    # 5 minutes, against an hour's average, is a link, a switch port or a noisy neighbour.
    bandwidth_drop_ratio: float = 0.30
    bandwidth_drop_for: str = "10m"
    # A rank whose bandwidth (or own work per step) is this far from its workload's median.
    # In a synchronous job the late rank waits least inside collectives, so its measured
    # bandwidth is *higher* than its peers': the comparison is on absolute deviation.
    # Measured (alerts/calibration.md): healthy gloo ranks agree within 0.1 %; a rank 5 ms
    # late to each 8 MiB all-reduce stood 16 % off the median, 20 ms late 110 %.
    straggler_deviation_ratio: float = 0.5
    # With two ranks the median is their mean and both deviate alike: need three.
    straggler_min_ranks: int = 3
    straggler_for: str = "10m"

    # ---------------------------------------------------------------- the exporter
    # Scrape failures for 5 minutes: longer than a DaemonSet rolling restart.
    exporter_down_for: str = "5m"
    # No exporter target at all (the DaemonSet deleted, the ServiceMonitor broken).
    exporter_absent_for: str = "15m"
    # A GPU node (kube-state-metrics capacity > 0) without an exporter: longer than a
    # node's start-up (driver install by the GPU operator takes up to 10 minutes).
    node_without_exporter_for: str = "15m"
    # The collection loop has not finished a collection for this long (the HTTP server
    # still answers, so `up` stays 1): 12 missed collections at the 5 s default.
    collection_stale_seconds: float = 60.0
    collection_stale_for: str = "5m"
    # An attribution source (kubelet, cgroup, API server) serving its last good answer:
    # pods that start meanwhile are not charged.
    attribution_stale_for: str = "10m"

    # ---------------------------------------------------------------- annotations
    runbook_url_base: str = "https://github.com/gpuledger/gpuledger/blob/main/docs/runbooks"

    def __post_init__(self) -> None:
        validate(self)

    @property
    def workload_from_pod_regex(self) -> str:
        """Regex whose first group is the workload, for label_replace on `pod`."""
        return f"(.+?){self.workload_pod_suffix_regex}"

    def pods_of_workload_regex(self, workload: str) -> str:
        """Regex matching the pods of `workload` (a name, or a Grafana variable)."""
        return f"{workload}{self.workload_pod_suffix_regex}"

    def replace(self, **changes: Any) -> RulesConfig:
        return dataclasses.replace(self, **changes)


class ConfigError(ValueError):
    """The rules configuration (or a file of overrides) is not valid."""


def validate(config: RulesConfig) -> None:
    """Raise ConfigError naming the setting and what it must be."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        durations = ("_for", "_window", "_offset", "_interval")
        if f.name.endswith(durations) and not DURATION_RE.match(str(value)):
            raise ConfigError(
                f"{f.name}: {value!r} is not a Prometheus duration (for example 5m, 1h30m)"
            )
        if f.name.endswith("_ratio") and not 0 < float(value) < 1:
            raise ConfigError(f"{f.name}: {value!r} must be a ratio between 0 and 1 (exclusive)")
    if config.straggler_min_ranks < 3:
        raise ConfigError(
            f"straggler_min_ranks: {config.straggler_min_ranks} is too small; a median "
            "needs at least 3 ranks to single out one"
        )
    if config.collection_stale_seconds <= 0:
        raise ConfigError("collection_stale_seconds must be positive")
    try:
        re.compile(config.workload_from_pod_regex)
    except re.error as error:
        raise ConfigError(f"workload_pod_suffix_regex: not a regular expression: {error}") from None
    for name in ("cluster_label", "workload_label", "step_time_job_label"):
        if not re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", getattr(config, name)):
            raise ConfigError(f"{name}: {getattr(config, name)!r} is not a Prometheus label name")
    names = [g.name for g in config.xid_groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"xid_groups: group names must be unique, got {names}")
    for group in config.xid_groups:
        if not re.match(r"^[A-Z][A-Za-z0-9]*$", group.name):
            raise ConfigError(f"xid_groups: name {group.name!r} must be CamelCase letters")
        if group.severity not in SEVERITIES:
            raise ConfigError(
                f"xid_groups: {group.name} severity {group.severity!r} is not one of {SEVERITIES}"
            )
        if not group.codes:
            raise ConfigError(f"xid_groups: {group.name} has no XID codes")


def from_mapping(overrides: dict[str, Any], base: RulesConfig | None = None) -> RulesConfig:
    """A configuration with `overrides` applied over `base` (the defaults)."""
    base = base or RulesConfig()
    known = {f.name: f for f in dataclasses.fields(RulesConfig)}
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(known))}"
        )
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        default = getattr(base, key)
        if key == "xid_groups":
            changes[key] = _xid_groups(value)
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
            changes[key] = tuple(value)
        else:
            changes[key] = _scalar(key, value, default)
    return dataclasses.replace(base, **changes)


def _scalar(key: str, value: Any, default: Any) -> Any:
    # YAML gives int for "3" and float for "0.3"; a float setting accepts both.
    if (
        isinstance(default, float)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    ):
        return float(value)
    if type(value) is type(default):
        return value
    raise ConfigError(
        f"{key}: expected a {type(default).__name__}, got {value!r} ({type(value).__name__})"
    )


def _xid_groups(value: Any) -> tuple[XidGroup, ...]:
    if not isinstance(value, list):
        raise ConfigError("xid_groups: expected a list of {name, codes, severity, meaning, action}")
    groups = []
    for item in value:
        try:
            groups.append(
                XidGroup(
                    name=str(item["name"]),
                    codes=tuple(int(c) for c in item["codes"]),
                    severity=str(item["severity"]),
                    meaning=str(item["meaning"]),
                    action=str(item["action"]),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(
                f"xid_groups: each entry needs name, codes (integers), severity, meaning and "
                f"action; {item!r} is wrong ({error!r})"
            ) from None
    return tuple(groups)


def load(path: Path | None) -> RulesConfig:
    """The defaults, with the overrides of the YAML file at `path` (if any) applied."""
    if path is None:
        return RulesConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as error:
        raise ConfigError(f"cannot read rules config {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value at the top level")
    return from_mapping(data)
