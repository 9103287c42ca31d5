"""Node and GPU detail: one node's GPUs (load, memory, power, heat, clocks, errors,
links), its MIG instances and the pods that hold them."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom

from dashboards.common import (
    EVENT_STATES,
    NAMESPACE,
    Context,
    dashboard_with_variables,
    namespace_variable,
    node_variable,
    query_variable,
    section,
    stat_panel,
    state_panel,
    table_panel,
    target,
    timeseries_panel,
)
from exporter import catalogue as c

UID = "gpuledger-node"
TITLE = "gpuledger / Node and GPU"
THIS_NODE = 'node="$node"'
GPUS = 'gpu=~"$gpu"'


def build(ctx: Context) -> db.Dashboard:
    gpus = ctx.raw(THIS_NODE, GPUS)
    node = ctx.raw(THIS_NODE)
    by_gpu = "GPU {{gpu}}"
    not_idle = ctx.raw(THIS_NODE, GPUS, 'reason!="gpu_idle"')
    uncorrected = ctx.raw(THIS_NODE, GPUS, 'type="uncorrected"')
    corrected = ctx.raw(THIS_NODE, GPUS, 'type="corrected"')

    def rate_by_gpu(counter: str, label: str) -> prom.Dataquery:
        """The per-second rate of `counter` on the selected GPUs, by GPU and `label`."""
        return target(
            f"sum by (gpu, {label}) (rate({counter}{gpus}[$__rate_interval]))",
            f"GPU {{{{gpu}}}} {{{{{label}}}}}",
        )

    d = dashboard_with_variables(
        ctx,
        UID,
        TITLE,
        "One node's GPUs: utilisation, memory, power, temperature, clocks and their "
        "throttle reasons, ECC and XID errors, row remapping, PCIe and NVLink traffic, "
        "MIG instances and the pods holding each device.",
        node_variable(ctx, multi=False),
        namespace_variable(ctx),
        query_variable("gpu", "GPU", f"label_values({c.GPU_INFO.name}{node}, gpu)"),
    )

    d = section(
        d,
        "Now",
        stat_panel(
            "GPUs", "GPUs the exporter reports.", f"count({c.GPU_INFO.name}{gpus})", "short"
        ),
        stat_panel(
            "GPUs answering",
            "GPUs whose last NVML collection succeeded.",
            f"sum({c.GPU_UP.name}{gpus})",
            "short",
        ),
        stat_panel(
            "GPUs held",
            "GPU-equivalents held by pods.",
            f"sum({c.POD_GPU_ALLOCATED.name}{gpus})",
            "short",
        ),
        stat_panel(
            "Average utilisation",
            "Mean utilisation of the selected GPUs over the last sample period.",
            f"avg({c.GPU_UTILIZATION.name}{gpus})",
            "percentunit",
        ),
        stat_panel("Power", "Board power, summed.", f"sum({c.GPU_POWER.name}{gpus})", "watt"),
        stat_panel(
            "Hottest GPU",
            "Highest die temperature.",
            f"max({c.GPU_TEMPERATURE.name}{gpus})",
            "celsius",
        ),
    )

    d = section(
        d,
        "Load and memory",
        timeseries_panel(
            "Utilisation",
            "Share of the sample period in which a kernel ran (NVML utilization.gpu).",
            [target(f"{c.GPU_UTILIZATION.name}{gpus}", by_gpu)],
            "percentunit",
            width=8,
        ),
        timeseries_panel(
            "Tensor pipes active",
            "Share of cycles the tensor pipes were active (where the device reports it).",
            [target(f"{c.GPU_TENSOR_ACTIVE.name}{gpus}", by_gpu)],
            "percentunit",
            width=8,
        ),
        timeseries_panel(
            "Memory used",
            "Device memory allocated by processes, over the memory installed.",
            [
                target(
                    f"{c.GPU_MEMORY_USED.name}{gpus} / {c.GPU_MEMORY_TOTAL.name}{gpus}",
                    by_gpu,
                )
            ],
            "percentunit",
            width=8,
        ),
    )

    d = section(
        d,
        "Power, heat and clocks",
        timeseries_panel(
            "Power against limit",
            "Board power draw, and the enforced power limit (dashed in most themes).",
            [
                target(f"{c.GPU_POWER.name}{gpus}", by_gpu),
                target(f"max({c.GPU_POWER_LIMIT.name}{gpus})", "limit"),
            ],
            "watt",
            width=8,
        ),
        timeseries_panel(
            "Temperature",
            "GPU die temperature.",
            [target(f"{c.GPU_TEMPERATURE.name}{gpus}", by_gpu)],
            "celsius",
            width=8,
            minimum=None,
        ),
        timeseries_panel(
            "SM clock",
            "Current SM clock: a drop under load is throttling.",
            [target(f"{c.GPU_SM_CLOCK.name}{gpus}", by_gpu)],
            "hertz",
            width=8,
        ),
        state_panel(
            "Clock event reasons",
            "Active throttle reasons per GPU (gpu_idle left out: an idle GPU is not a "
            "fault). Thermal and hardware power reasons raise alerts after 15 minutes.",
            f"max by (gpu, reason) ({c.GPU_CLOCK_EVENT.name}{not_idle})",
            "GPU {{gpu}} {{reason}}",
            EVENT_STATES,
        ),
    )

    d = section(
        d,
        "Errors",
        table_panel(
            "GPU health",
            "Per GPU: answering NVML, ECC errors since the driver loaded, remapped rows, "
            "and whether a row remap is pending or has failed.",
            [
                ("Up", f"max by (gpu) ({c.GPU_UP.name}{gpus})"),
                (
                    "Uncorrected ECC",
                    f"sum by (gpu) ({c.GPU_ECC_ERRORS.name}{uncorrected})",
                ),
                (
                    "Corrected ECC",
                    f"sum by (gpu) ({c.GPU_ECC_ERRORS.name}{corrected})",
                ),
                ("Remapped rows", f"sum by (gpu) ({c.GPU_REMAPPED_ROWS.name}{gpus})"),
                ("Remap pending", f"max by (gpu) ({c.GPU_ROW_REMAP_PENDING.name}{gpus})"),
                ("Remap failed", f"max by (gpu) ({c.GPU_ROW_REMAP_FAILURE.name}{gpus})"),
            ],
            width=12,
        ),
        table_panel(
            "XID events",
            "XID critical errors the exporter saw since it started, by GPU and code, and "
            "the time of each GPU's last XID. The alerts group codes by meaning.",
            [
                ("Events", f"sum by (gpu, xid) ({c.GPU_XID_ERRORS.name}{gpus})"),
                ("Last XID", f"max by (gpu) ({c.GPU_LAST_XID.name}{gpus}) * 1000"),
            ],
            width=12,
            units={"Last XID": "dateTimeAsIso"},
        ),
        timeseries_panel(
            "ECC errors per second",
            "Rate of ECC errors by GPU and type.",
            [rate_by_gpu(c.GPU_ECC_ERRORS.name, "type")],
            "short",
            width=24,
        ),
    )

    d = section(
        d,
        "Interconnect",
        timeseries_panel(
            "PCIe throughput",
            "PCIe bytes per second by GPU and direction.",
            [rate_by_gpu(c.GPU_PCIE_BYTES.name, "direction")],
            "Bps",
        ),
        timeseries_panel(
            "NVLink throughput",
            "NVLink bytes per second over all links, by GPU and direction.",
            [rate_by_gpu(c.GPU_NVLINK_BYTES.name, "direction")],
            "Bps",
        ),
    )

    pod_labels = "namespace, pod, container, gpu, mig_profile, gpu_instance, sharing"
    pods = ctx.raw(THIS_NODE, GPUS, NAMESPACE)

    def per_container(metric: str) -> str:
        return f"sum by ({pod_labels}) ({metric}{pods})"

    d = section(
        d,
        "Pods",
        table_panel(
            "Pods on this node",
            "Each container of the selected namespaces's share of each device: GPU-equivalents held, busy "
            "GPU-equivalents and device memory used.",
            [
                ("Held", per_container(c.POD_GPU_ALLOCATED.name)),
                ("Busy", per_container(c.POD_GPU_UTILIZATION.name)),
                ("Memory", per_container(c.POD_GPU_MEMORY_USED.name)),
            ],
            width=12,
            units={"Memory": "bytes"},
        ),
        timeseries_panel(
            "Busy GPU-equivalents by pod",
            "Busy GPU-equivalents of each pod on the node.",
            [
                target(
                    f"sum by (namespace, pod) ({c.POD_GPU_UTILIZATION.name}{pods})",
                    "{{namespace}}/{{pod}}",
                )
            ],
            "short",
            stack=True,
        ),
    )

    mig = "GPU {{gpu}} {{mig_profile}} #{{gpu_instance}}"
    return section(
        d,
        "MIG instances",
        timeseries_panel(
            "MIG utilisation",
            "Utilisation of each MIG instance (where the source reports it).",
            [target(f"{c.MIG_UTILIZATION.name}{gpus}", mig)],
            "percentunit",
        ),
        timeseries_panel(
            "MIG memory used",
            "Memory used over memory of each MIG instance.",
            [target(f"{c.MIG_MEMORY_USED.name}{gpus} / {c.MIG_MEMORY_TOTAL.name}{gpus}", mig)],
            "percentunit",
        ),
    )
