"""Generate gpuledger's Prometheus recording and alerting rules from one configuration.

Every metric name comes from the catalogue (exporter/catalogue.py) and every threshold
from `RulesConfig`, so the committed rule files in alerts/rules/ are a pure function of
the two; `gpuledger alerts check` regenerates them and fails when they differ.

Recording rules follow the `level:metric:operations` convention (kubernetes-mixin):
the level names the labels kept (besides the cluster label), the metric loses `_total`
when rated, and the operations say what was done (`rate5m`, `increase1h`, `sum`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alerts.config import RulesConfig
from alerts.promql import selector
from exporter import catalogue as c

RECORDING_FILE = "gpuledger-recording.yaml"
ALERTS_FILE = "gpuledger-alerts.yaml"
RULES_DIR = Path(__file__).parent / "rules"

# Categories route alerts in Alertmanager (alerts/alertmanager/alertmanager.yaml):
# hardware goes to the GPU infrastructure team, the rest to the namespace's team.
HARDWARE, WASTE, WORKLOAD, MONITORING = "hardware", "waste", "workload", "monitoring"


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    severity: str
    category: str
    summary: str
    description: str
    for_: str = "0m"


def _base(name: str) -> str:
    """A counter's name without `_total`, as recording rules name it once rated."""
    return name.removesuffix("_total")


# The exporter's per-pod-and-device usage counters, the ones accounting charges from.
POD_COUNTERS = (
    c.POD_GPU_ALLOCATED_SECONDS.name,
    c.POD_GPU_BUSY_SECONDS.name,
    c.POD_GPU_MEMORY_BYTE_SECONDS.name,
    c.POD_GPU_ENERGY.name,
)


class RecordingNames:
    """Recording-rule names for one configuration (the rate window is part of them)."""

    def __init__(self, config: RulesConfig) -> None:
        rate = f"rate{config.rate_window}"
        alloc, busy = _base(c.POD_GPU_ALLOCATED_SECONDS.name), _base(c.POD_GPU_BUSY_SECONDS.name)
        memory = _base(c.POD_GPU_MEMORY_BYTE_SECONDS.name)
        energy = _base(c.POD_GPU_ENERGY.name)
        gpu_busy = _base(c.GPU_BUSY_SECONDS.name)
        busbw = c.COLLECTIVE_BUSBW.name
        self.pod_device_allocated = f"namespace_pod_gpu:{alloc}:{rate}"
        self.pod_device_busy = f"namespace_pod_gpu:{busy}:{rate}"
        self.pod_device_busy_ratio = f"namespace_pod_gpu:gpuledger_pod_gpu_busy:ratio_{rate}"
        self.pod_allocated = f"namespace_pod:{alloc}:{rate}"
        self.pod_busy = f"namespace_pod:{busy}:{rate}"
        self.pod_memory = f"namespace_pod:{memory}:{rate}"
        self.pod_energy = f"namespace_pod:{energy}:{rate}"
        self.namespace_allocated = f"namespace:{alloc}:{rate}"
        self.namespace_busy = f"namespace:{busy}:{rate}"
        self.namespace_idle = f"namespace:gpuledger_pod_gpu_idle_seconds:{rate}"
        self.node_gpus = "node:gpuledger_gpu_count:sum"
        self.node_allocated = f"node:{alloc}:{rate}"
        self.node_busy = f"node:{gpu_busy}:{rate}"
        self.node_power = f"node:{c.GPU_POWER.name}:sum"
        self.device_busy_ratio = f"node_gpu:gpuledger_gpu_busy:ratio_{rate}"
        self.model_gpus = "model:gpuledger_gpu_count:sum"
        self.model_allocated = f"model:{alloc}:{rate}"
        self.model_busy = f"model:{gpu_busy}:{rate}"
        self.cluster_gpus = "cluster:gpuledger_gpu_count:sum"
        self.cluster_allocated = f"cluster:{alloc}:{rate}"
        self.cluster_busy = f"cluster:{gpu_busy}:{rate}"
        self.cluster_pod_busy = f"cluster:{busy}:{rate}"
        self.pod_hourly = {
            metric: f"namespace_pod:{_base(metric)}:increase1h" for metric in POD_COUNTERS
        }
        # Accounting reads these instead of the per-device counters (see
        # accounting.ingest.IngestQueries.recorded): one series per pod, not per GPU.
        self.pod_counter_sums = {metric: f"namespace_pod:{metric}:sum" for metric in POD_COUNTERS}
        self.node_model_gpus = "node_model_source:gpuledger_gpu_count:sum"
        self.namespace_hourly = {
            metric: name.replace("namespace_pod:", "namespace:", 1)
            for metric, name in self.pod_hourly.items()
        }
        self.pod_collective_bytes = (
            f"namespace_pod_operation:{_base(c.COLLECTIVE_BYTES.name)}:{rate}"
        )
        self.pod_busbw = f"namespace_workload_pod_operation:{busbw}:{rate}"
        self.workload_busbw = f"namespace_workload_operation:{busbw}:{rate}"


def recording_names(config: RulesConfig | None = None) -> set[str]:
    """Every series name the recording rules write (dashboards and accounting may read them)."""
    return {r["record"] for g in recording_groups(config or RulesConfig()) for r in g["rules"]}


def recording_groups(config: RulesConfig) -> list[dict[str, Any]]:
    n = RecordingNames(config)
    cl = config.cluster_label
    sel = selector(config.exporter_selector)
    w = config.rate_window
    pod_device = f"{cl}, namespace, pod, node, gpu, uuid, model, mig_profile, gpu_instance"
    pod = f"{cl}, namespace, pod, node, model"
    device = f"{cl}, node, gpu, uuid, model"

    def record(name: str, expr: str) -> dict[str, str]:
        return {"record": name, "expr": expr}

    usage = [
        # GPU-equivalents held and kept busy by each pod on each device. Counters, so
        # the rates are exact whatever the scrape interval (DESIGN.md).
        record(
            n.pod_device_allocated,
            f"sum by ({pod_device}) (rate({c.POD_GPU_ALLOCATED_SECONDS.name}{sel}[{w}]))",
        ),
        record(
            n.pod_device_busy,
            f"sum by ({pod_device}) (rate({c.POD_GPU_BUSY_SECONDS.name}{sel}[{w}]))",
        ),
        record(n.pod_device_busy_ratio, f"{n.pod_device_busy} / ({n.pod_device_allocated} > 0)"),
        record(n.pod_allocated, f"sum by ({pod}) ({n.pod_device_allocated})"),
        record(n.pod_busy, f"sum by ({pod}) ({n.pod_device_busy})"),
        # Byte-seconds per second: the average bytes held over the window.
        record(
            n.pod_memory,
            f"sum by ({pod}) (rate({c.POD_GPU_MEMORY_BYTE_SECONDS.name}{sel}[{w}]))",
        ),
        # Joules per second: watts.
        record(n.pod_energy, f"sum by ({pod}) (rate({c.POD_GPU_ENERGY.name}{sel}[{w}]))"),
        record(n.namespace_allocated, f"sum by ({cl}, namespace) ({n.pod_allocated})"),
        record(n.namespace_busy, f"sum by ({cl}, namespace) ({n.pod_busy})"),
        # Held but not busy: the waste that idle alerts and the fleet dashboard show.
        record(n.namespace_idle, f"clamp_min({n.namespace_allocated} - {n.namespace_busy}, 0)"),
        record(n.node_allocated, f"sum by ({cl}, node) ({n.pod_allocated})"),
        record(n.model_allocated, f"sum by ({cl}, model) ({n.pod_allocated})"),
        record(n.cluster_allocated, f"sum by ({cl}) ({n.pod_allocated})"),
        record(n.cluster_pod_busy, f"sum by ({cl}) ({n.pod_busy})"),
    ]
    devices = [
        record(n.node_gpus, f"count by ({cl}, node) ({c.GPU_INFO.name}{sel})"),
        record(n.model_gpus, f"count by ({cl}, model) ({c.GPU_INFO.name}{sel})"),
        record(n.cluster_gpus, f"count by ({cl}) ({c.GPU_INFO.name}{sel})"),
        record(
            n.device_busy_ratio,
            f"sum by ({device}) (rate({c.GPU_BUSY_SECONDS.name}{sel}[{w}]))"
            f" / (sum by ({device}) (rate({c.GPU_SAMPLED_SECONDS.name}{sel}[{w}])) > 0)",
        ),
        record(n.node_busy, f"sum by ({cl}, node) (rate({c.GPU_BUSY_SECONDS.name}{sel}[{w}]))"),
        record(n.model_busy, f"sum by ({cl}, model) (rate({c.GPU_BUSY_SECONDS.name}{sel}[{w}]))"),
        record(n.cluster_busy, f"sum by ({cl}) (rate({c.GPU_BUSY_SECONDS.name}{sel}[{w}]))"),
        record(n.node_power, f"sum by ({cl}, node) ({c.GPU_POWER.name}{sel})"),
    ]
    # Hourly increases for accounting: a month is 720 samples per series, read at the
    # hour (`sum_over_time(name[30d:1h])`), instead of a month of raw counters.
    hourly = [
        record(name, f"sum by ({pod}) (increase({metric}{sel}[1h]))")
        for metric, name in n.pod_hourly.items()
    ] + [
        record(n.namespace_hourly[metric], f"sum by ({cl}, namespace) ({name})")
        for metric, name in n.pod_hourly.items()
    ]
    # A pod's counters summed over its devices. A sum of counters is a counter only
    # when its parts reset together; a pod's parts do: they come from one exporter
    # (a pod runs on one node), restart with it, and the exporter keeps a pod's series
    # until all of them have gone (exporter.integrator). So increase() of the sum is
    # the sum of the increases, on one series per pod instead of one per device.
    pod_key = f"{cl}, namespace, pod, node, model, sharing"
    accounting = [
        record(name, f"sum by ({pod_key}) ({metric}{sel})")
        for metric, name in n.pod_counter_sums.items()
    ] + [
        # GPUs that report, by node, model and device source (one per uuid, even
        # while a restarted exporter's old and new series overlap).
        record(
            n.node_model_gpus,
            f"count by ({cl}, node, model, source) "
            f"(group by ({cl}, node, model, uuid, source) ({c.GPU_SAMPLED_SECONDS.name}{sel}))",
        ),
    ]
    workload = (
        f'"{config.workload_label}", "$1", "pod", "{_escape(config.workload_from_pod_regex)}"'
    )
    collective_by = f"{cl}, namespace, pod, node, operation"
    by_workload = f"{cl}, namespace, {config.workload_label}, operation"
    collectives = [
        record(
            n.pod_collective_bytes,
            f"sum by ({collective_by}) (rate({c.COLLECTIVE_BYTES.name}{sel}[{w}]))",
        ),
        # Bus bandwidth from the counters (bus bytes per second of collective time), as
        # nccl-tests defines it; exact whatever the probe's report and scrape intervals.
        record(
            n.pod_busbw,
            f"label_replace(sum by ({collective_by}) (rate({c.COLLECTIVE_BUS_BYTES.name}{sel}[{w}]))"
            f" / (sum by ({collective_by}) (rate({c.COLLECTIVE_SECONDS.name}{sel}[{w}])) > 0),"
            f" {workload})",
        ),
        # A workload's bandwidth is its least-waiting rank's: a rank that arrives late to
        # a collective barely waits in it, so its bus bandwidth is the links' own, while
        # its peers' time includes waiting for it. A straggler then leaves this figure
        # alone (GpuledgerCollectiveStraggler is for it) and only slower links lower it.
        record(n.workload_busbw, f"max by ({by_workload}) ({n.pod_busbw})"),
    ]
    return [
        {"name": "gpuledger.usage.rules", "rules": usage},
        {"name": "gpuledger.devices.rules", "rules": devices},
        # Evaluated every 5 minutes: an hour's increase moves little between evaluations.
        {"name": "gpuledger.hourly.rules", "interval": "5m", "rules": hourly},
        {"name": "gpuledger.collectives.rules", "rules": collectives},
        # At the exporter's scrape interval: one evaluation per scrape (see the config).
        {
            "name": "gpuledger.accounting.rules",
            "interval": config.exporter_scrape_interval,
            "rules": accounting,
        },
    ]


def _escape(regex: str) -> str:
    """A regex inside a double-quoted PromQL string."""
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def _regex_of(values: tuple[Any, ...]) -> str:
    return "|".join(str(v) for v in values)


def _pods_on_gpu(config: RulesConfig) -> str:
    """Template text listing the pods that hold the alert's GPU (by node and uuid)."""
    query = f'{c.POD_GPU_ALLOCATED.name}{{node="%s", uuid="%s"}}'
    return (
        f"{{{{ with printf `{query}` $labels.node $labels.uuid | query }}}}"
        "Pods on it: {{ range . }}{{ .Labels.namespace }}/{{ .Labels.pod }} {{ end }}"
        "{{ else }}No pod holds it.{{ end }}"
    )


def alerts(config: RulesConfig) -> list[Alert]:
    n = RecordingNames(config)
    cl = config.cluster_label
    sel = config.exporter_selector
    s = selector(sel)
    device = f"{cl}, node, gpu, uuid, model"
    gpu = "GPU {{ $labels.gpu }} ({{ $labels.model }}) on node {{ $labels.node }}"
    pods = _pods_on_gpu(config)
    result: list[Alert] = []

    result.append(
        Alert(
            "GpuledgerGpuHeldIdle",
            f"{n.pod_device_busy_ratio} < {config.idle_busy_ratio}",
            "warning",
            WASTE,
            "{{ $labels.namespace }}/{{ $labels.pod }} holds a GPU on {{ $labels.node }} "
            "and leaves it idle",
            "Pod {{ $labels.pod }} in namespace {{ $labels.namespace }} on node "
            "{{ $labels.node }} holds GPU {{ $labels.gpu }} ({{ $labels.model }}) but kept "
            f"it busy {{{{ $value | humanizePercentage }}}} of the time (under "
            f"{config.idle_busy_ratio:.0%} for {config.idle_for}).",
            config.idle_for,
        )
    )

    holders = f"max by ({cl}, node, uuid, namespace, pod) ({c.POD_GPU_ALLOCATED.name}{s}) * 0 + 1"
    full = (
        f"(max by ({device}) ({c.GPU_MEMORY_USED.name}{s})"
        f" / max by ({device}) ({c.GPU_MEMORY_TOTAL.name}{s} > 0))"
        f" > {config.memory_full_ratio}"
    )
    result.append(
        Alert(
            "GpuledgerGpuMemoryNearFull",
            # One alert per pod holding the GPU (so it routes to the pod's team), or one
            # for the GPU when no pod holds it (memory leaked outside Kubernetes).
            f"({full}) * on({cl}, node, uuid) group_right(gpu, model) ({holders})"
            f" or on({cl}, node, uuid) ({full})",
            "warning",
            WORKLOAD,
            "GPU memory of {{ $labels.node }} GPU {{ $labels.gpu }} is nearly full",
            f"{gpu} has {{{{ $value | humanizePercentage }}}} of its memory in use "
            f"(over {config.memory_full_ratio:.0%} for {config.memory_full_for}); the next "
            "allocation may fail. "
            "{{ with $labels.pod }}Pod {{ $labels.namespace }}/{{ . }} holds it."
            "{{ else }}No pod holds it.{{ end }}",
            config.memory_full_for,
        )
    )

    for kind, reasons in (("Thermal", config.thermal_reasons), ("Power", config.power_reasons)):
        result.append(
            Alert(
                f"GpuledgerGpu{kind}Throttling",
                f"max by ({device}) ({c.GPU_CLOCK_EVENT.name}"
                f"{selector(sel, f'reason=~{_quote(_regex_of(reasons))}')}) == 1",
                "warning",
                HARDWARE,
                f"{{{{ $labels.node }}}} GPU {{{{ $labels.gpu }}}} is {kind.lower()} throttled",
                f"{gpu} has run with its clocks slowed by {kind.lower()} "
                f"({', '.join(reasons)}) for {config.throttle_for}. {pods}",
                config.throttle_for,
            )
        )

    window = config.error_window
    for group in config.xid_groups:
        xid_sel = selector(sel, f"xid=~{_quote(_regex_of(group.codes))}")
        metric = f"{c.GPU_XID_ERRORS.name}{xid_sel}"
        by = f"{device}, xid"
        result.append(
            Alert(
                f"GpuledgerGpuXid{group.name}",
                # A counter that appears with its first event has no earlier sample for
                # increase() to start from: a series that is new within the window and
                # above zero counts too.
                f"sum by ({by}) (increase({metric}[{window}])) > 0"
                f" or sum by ({by}) ({metric} > 0 unless {metric} offset {window})",
                group.severity,
                HARDWARE,
                "{{ $labels.node }} GPU {{ $labels.gpu }} reported XID {{ $labels.xid }}",
                f"{gpu} reported XID {{{{ $labels.xid }}}} in the last {window}: "
                f"{group.meaning}. Action: {group.action}. {pods}",
            )
        )

    ecc = selector(sel, 'type="uncorrected"')
    result.append(
        Alert(
            "GpuledgerGpuUncorrectableEccErrors",
            f"sum by ({device}) (increase({c.GPU_ECC_ERRORS.name}{ecc}[{window}])) > 0",
            "critical",
            HARDWARE,
            "{{ $labels.node }} GPU {{ $labels.gpu }} has uncorrectable ECC errors",
            f"{gpu} counted {{{{ $value | humanize }}}} uncorrectable ECC errors in the last {window}. "
            f"Applications on it may have read corrupt data or crashed. {pods}",
        )
    )
    result.append(
        Alert(
            "GpuledgerGpuRowRemapFailure",
            f"max by ({device}) ({c.GPU_ROW_REMAP_FAILURE.name}{s}) == 1",
            "critical",
            HARDWARE,
            "{{ $labels.node }} GPU {{ $labels.gpu }} failed to remap a memory row",
            f"{gpu} could not remap a faulty memory row: it has run out of spare rows and "
            f"needs service (RMA). {pods}",
        )
    )
    result.append(
        Alert(
            "GpuledgerGpuRowRemapPending",
            f"max by ({device}) ({c.GPU_ROW_REMAP_PENDING.name}{s}) == 1",
            "warning",
            HARDWARE,
            "{{ $labels.node }} GPU {{ $labels.gpu }} waits for a reset to remap a row",
            f"{gpu} has a memory row remap pending for {config.row_remap_pending_for}; it "
            f"takes effect at the next GPU reset. {pods}",
            config.row_remap_pending_for,
        )
    )
    result.append(
        Alert(
            "GpuledgerGpuLost",
            f"max by ({device}) ({c.GPU_UP.name}{s}) == 0",
            "critical",
            HARDWARE,
            "{{ $labels.node }} GPU {{ $labels.gpu }} does not answer",
            f"{gpu} has not answered the exporter's NVML calls for {config.gpu_lost_for}. {pods}",
            config.gpu_lost_for,
        )
    )

    wl = config.workload_label
    baseline = (
        f"avg_over_time({n.workload_busbw}[{config.bandwidth_baseline_window}]"
        f" offset {config.bandwidth_baseline_offset})"
    )
    result.append(
        Alert(
            "GpuledgerCollectiveBandwidthDrop",
            f"{n.workload_busbw} / {baseline} < {1 - config.bandwidth_drop_ratio:g}",
            "warning",
            WORKLOAD,
            f"{{{{ $labels.namespace }}}}/{{{{ $labels.{wl} }}}} {{{{ $labels.operation }}}} "
            "bandwidth dropped",
            f"Collective {{{{ $labels.operation }}}} of workload {{{{ $labels.{wl} }}}} in "
            f"namespace {{{{ $labels.namespace }}}} runs at {{{{ $value | humanizePercentage }}}} "
            f"of its average bandwidth over the {config.bandwidth_baseline_window} before "
            f"(alert under {1 - config.bandwidth_drop_ratio:.0%}).",
            config.bandwidth_drop_for,
        )
    )

    group_by = f"{cl}, namespace, {wl}, operation"
    median = f"quantile by ({group_by}) (0.5, {n.pod_busbw})"
    result.append(
        Alert(
            "GpuledgerCollectiveStraggler",
            _straggler_expr(n.pod_busbw, median, group_by, config),
            "warning",
            WORKLOAD,
            f"{{{{ $labels.namespace }}}}/{{{{ $labels.pod }}}} straggles in "
            f"{{{{ $labels.{wl} }}}}",
            f"Pod {{{{ $labels.pod }}}} in namespace {{{{ $labels.namespace }}}} on node "
            f"{{{{ $labels.node }}}}: its {{{{ $labels.operation }}}} bandwidth is "
            f"{{{{ $value | humanizePercentage }}}} away from the median of workload "
            f"{{{{ $labels.{wl} }}}}. Higher than its peers means it arrives late (slow "
            "compute or input); lower means its link is slow.",
            config.straggler_for,
        )
    )

    job = config.step_time_job_label
    # A rank's own work per step (not its wait for peers): in synchronous training every
    # rank's whole step lasts as long as the slowest's, so only this tells them apart.
    steps = (
        f"avg_over_time({c.LOADGEN_STEP_WORK_SECONDS.name}{selector(config.step_time_selector)}"
        f"[{config.rate_window}])"
    )
    step_group = f"{cl}, {job}, phase"
    result.append(
        Alert(
            "GpuledgerStepTimeStraggler",
            _straggler_expr(
                steps, f"quantile by ({step_group}) (0.5, {steps})", step_group, config
            ),
            "warning",
            WORKLOAD,
            f"Rank {{{{ $labels.rank }}}} of {{{{ $labels.{job} }}}} straggles",
            f"Rank {{{{ $labels.rank }}}} of job {{{{ $labels.{job} }}}}"
            "{{ with $labels.pod }} (pod {{ $labels.namespace }}/{{ . }}"
            "{{ with $labels.node }} on node {{ . }}{{ end }}){{ end }}"
            " spends {{ $value | humanizePercentage }} more or less time on its own work per "
            "step than the median rank of its job.",
            config.straggler_for,
        )
    )

    exporter = selector(sel)
    result.append(
        Alert(
            "GpuledgerExporterDown",
            f"up{exporter} == 0",
            "warning",
            MONITORING,
            "gpuledger exporter {{ $labels.instance }} is down",
            "Prometheus cannot scrape the gpuledger exporter at {{ $labels.instance }}"
            "{{ with $labels.node }} on node {{ . }}{{ end }}"
            f" for {config.exporter_down_for}: its GPUs are unmonitored and not charged.",
            config.exporter_down_for,
        )
    )
    result.append(
        Alert(
            "GpuledgerExporterAbsent",
            f"absent(up{exporter} == 1)",
            "critical",
            MONITORING,
            "No gpuledger exporter is up",
            f"Prometheus has had no healthy gpuledger exporter target ({sel or 'any job'}) "
            f"for {config.exporter_absent_for}: no GPU is monitored or charged.",
            config.exporter_absent_for,
        )
    )
    ksm = selector(config.kube_state_metrics_selector, f'resource="{config.gpu_resource}"')
    result.append(
        Alert(
            "GpuledgerGpuNodeWithoutExporter",
            f"max by ({cl}, node) (kube_node_status_capacity{ksm}) > 0"
            f" unless on({cl}, node) max by ({cl}, node) ({c.EXPORTER_BUILD_INFO.name}{s})",
            "warning",
            MONITORING,
            "GPU node {{ $labels.node }} has no gpuledger exporter",
            "Node {{ $labels.node }} offers {{ $value }} GPUs to Kubernetes but no gpuledger "
            f"exporter reports from it (for {config.node_without_exporter_for}): check the "
            "DaemonSet's node selector and tolerations.",
            config.node_without_exporter_for,
        )
    )
    result.append(
        Alert(
            "GpuledgerExporterCollectionStale",
            f"time() - max by ({cl}, node) ({c.EXPORTER_LAST_COLLECTION.name}{s})"
            f" > {config.collection_stale_seconds:g}",
            "warning",
            MONITORING,
            "gpuledger exporter on {{ $labels.node }} stopped collecting",
            "The gpuledger exporter on node {{ $labels.node }} last finished a collection "
            "{{ $value | humanizeDuration }} ago: its metrics are frozen while the exporter "
            "still answers scrapes.",
            config.collection_stale_for,
        )
    )
    result.append(
        Alert(
            "GpuledgerExporterAttributionStale",
            f"max by ({cl}, node, source) ({c.EXPORTER_ATTRIBUTION_STALE.name}{s}) == 1",
            "warning",
            MONITORING,
            "gpuledger attribution on {{ $labels.node }} is stale ({{ $labels.source }})",
            "The gpuledger exporter on node {{ $labels.node }} cannot read {{ $labels.source }} "
            f"and has used its last good answer for {config.attribution_stale_for}: pods "
            "started since are not charged for their GPUs.",
            config.attribution_stale_for,
        )
    )
    return result


def _quote(text: str) -> str:
    return '"' + _escape(text) + '"'


def _straggler_expr(series: str, median: str, group_by: str, config: RulesConfig) -> str:
    """Series whose absolute deviation from their group's median, relative to it, is large."""
    on = f"on({group_by}) group_left()"
    return (
        f"abs({series} - {on} {median}) / {on} ({median} > 0)"
        f" > {config.straggler_deviation_ratio:g}"
        f" and on({group_by}) (count by ({group_by}) ({series}) >= {config.straggler_min_ranks})"
    )


def runbook_slug(alert_name: str) -> str:
    """GpuledgerGpuHeldIdle -> gpu-held-idle (docs/runbooks/gpu-held-idle.md)."""
    words: list[str] = []
    for char in alert_name.removeprefix("Gpuledger"):
        if char.isupper() and words:
            words.append("-")
        words.append(char.lower())
    return "".join(words)


def alerting_groups(config: RulesConfig) -> list[dict[str, Any]]:
    by_category: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts(config):
        rule: dict[str, Any] = {"alert": alert.name, "expr": alert.expr}
        if alert.for_ != "0m":
            rule["for"] = alert.for_
        rule["labels"] = {"severity": alert.severity, "category": alert.category}
        rule["annotations"] = {
            "summary": alert.summary,
            "description": alert.description,
            "runbook_url": f"{config.runbook_url_base}/{runbook_slug(alert.name)}.md",
        }
        by_category.setdefault(alert.category, []).append(rule)
    return [
        {"name": f"gpuledger.{cat}.alerts", "rules": rules} for cat, rules in by_category.items()
    ]


class _Dumper(yaml.SafeDumper):
    """Block style for long strings, no aliases: readable, diff-friendly rule files."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = (
    "# Generated by `gpuledger alerts generate` from alerts/config.py and the metric\n"
    "# catalogue (exporter/catalogue.py). Do not edit: change the config and regenerate.\n"
)


def render(config: RulesConfig | None = None) -> dict[str, str]:
    """File name -> YAML text of the rule files for `config` (the defaults if None)."""
    config = config or RulesConfig()

    def dump(groups: list[dict[str, Any]]) -> str:
        body = yaml.dump(
            {"groups": groups}, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True
        )
        return HEADER + body

    return {
        RECORDING_FILE: dump(recording_groups(config)),
        ALERTS_FILE: dump(alerting_groups(config)),
    }


def write(directory: Path = RULES_DIR, config: RulesConfig | None = None) -> list[Path]:
    """Write the rule files into `directory`; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render(config).items():
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


def stale_files(directory: Path = RULES_DIR, config: RulesConfig | None = None) -> list[str]:
    """Rule files in `directory` that differ from what `config` generates."""
    stale = []
    for name, text in render(config).items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            stale.append(str(path))
    return stale
