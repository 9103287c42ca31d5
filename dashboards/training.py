"""Training job: is this job healthy, and is its communication fast? Per pod GPU use and
memory, bus bandwidth per operation, and which rank straggles."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from alerts.promql import selector
from dashboards.common import (
    NAMESPACE,
    NODE,
    Context,
    dashboard_with_variables,
    namespace_variable,
    node_variable,
    query_variable,
    section,
    table_panel,
    target,
    timeseries_panel,
)
from exporter import catalogue as c

UID = "gpuledger-training"
TITLE = "gpuledger / Training job"


def workload_variable(ctx: Context) -> db.QueryVariable:
    """The workloads (pod name prefixes) of pods that hold GPUs or report collectives."""
    names = f"{c.POD_GPU_ALLOCATED.name}|{c.COLLECTIVE_SECONDS.name}"
    series = selector(f'__name__=~"{names}"', ctx.config.exporter_selector, ctx.cluster, NAMESPACE)
    return query_variable(
        "workload",
        "Workload",
        f"label_values({series}, pod)",
        regex=f"/^{ctx.config.workload_from_pod_regex}$/",
    )


def build(ctx: Context) -> db.Dashboard:
    n = ctx.names
    wl = ctx.config.workload_label
    pods = f'pod=~"{ctx.config.pods_of_workload_regex("$workload")}"'
    raw = ctx.raw(NAMESPACE, pods, NODE)
    rate = "[$__rate_interval]"

    def per_pod(metric: str) -> str:
        return f"sum by (pod) ({metric}{raw})"

    d = dashboard_with_variables(
        ctx,
        UID,
        TITLE,
        "One training job (the pods whose names share the workload's prefix): GPU use "
        "and memory per pod, collective bus bandwidth per operation from the in-job "
        "probe, and the stragglers. Bus bandwidth is as nccl-tests defines it.",
        namespace_variable(ctx),
        workload_variable(ctx),
        node_variable(ctx),
    )

    d = section(
        d,
        "GPUs",
        timeseries_panel(
            "GPU busy share per pod",
            "Busy over held GPU-equivalents of each pod: under 5 % for 30 minutes raises "
            "GpuledgerGpuHeldIdle.",
            [
                target(
                    f"{per_pod(c.POD_GPU_UTILIZATION.name)} / {per_pod(c.POD_GPU_ALLOCATED.name)}",
                    "{{pod}}",
                )
            ],
            "percentunit",
        ),
        timeseries_panel(
            "GPUs held per pod",
            "GPU-equivalents each pod holds.",
            [target(per_pod(c.POD_GPU_ALLOCATED.name), "{{pod}}")],
            "short",
            stack=True,
        ),
        timeseries_panel(
            "GPU memory used per pod",
            "Device memory used by each pod's processes.",
            [target(per_pod(c.POD_GPU_MEMORY_USED.name), "{{pod}}")],
            "bytes",
        ),
        timeseries_panel(
            "GPU power per pod",
            "Each pod's share of its GPUs' power (energy counters, per second).",
            [
                target(
                    f"sum by (pod) (rate({c.POD_GPU_ENERGY.name}{raw}{rate}))",
                    "{{pod}}",
                )
            ],
            "watt",
        ),
    )

    bus = f"rate({c.COLLECTIVE_BUS_BYTES.name}{raw}{rate})"
    seconds = f"rate({c.COLLECTIVE_SECONDS.name}{raw}{rate})"
    d = section(
        d,
        "Collectives",
        timeseries_panel(
            "Bus bandwidth per operation",
            "Bus bytes per second of collective time, over all the job's pods; their time "
            "includes waiting for late ranks, so a straggler lowers it too.",
            [
                target(
                    f"sum by (operation) ({bus}) / sum by (operation) ({seconds})",
                    "{{operation}}",
                )
            ],
            "Bps",
        ),
        timeseries_panel(
            "Bus bandwidth per pod and operation",
            "Each pod's bus bandwidth: one pod far from the others is a straggler.",
            [
                target(
                    f"sum by (pod, operation) ({bus}) / sum by (pod, operation) ({seconds})",
                    "{{pod}} {{operation}}",
                )
            ],
            "Bps",
        ),
        timeseries_panel(
            "Time in collectives per pod",
            "Share of wall time each pod spends inside collectives.",
            [target(f"sum by (pod) ({seconds})", "{{pod}}")],
            "percentunit",
        ),
        timeseries_panel(
            "Collective payload per operation",
            "Bytes per second moved by collectives (message size as nccl-tests counts "
            "it), summed over the job's pods.",
            [
                target(
                    f"sum by (operation) (rate({c.COLLECTIVE_BYTES.name}{raw}{rate}))",
                    "{{operation}}",
                )
            ],
            "Bps",
        ),
        table_panel(
            "Collectives per pod",
            "Calls per second, world size and the probe's last reported bus bandwidth.",
            [
                (
                    "Calls/s",
                    f"sum by (pod, operation) (rate({c.COLLECTIVE_CALLS.name}{raw}{rate}))",
                ),
                (
                    "World size",
                    f"max by (pod, operation) ({c.COLLECTIVE_WORLD_SIZE.name}{raw})",
                ),
                (
                    "Last busbw",
                    f"max by (pod, operation) ({c.COLLECTIVE_BUSBW.name}{raw})",
                ),
            ],
            units={"Last busbw": "Bps"},
        ),
    )

    rec = ctx.rec(NAMESPACE, f'{wl}=~"$workload"', NODE)
    group = f"{ctx.config.cluster_label}, namespace, {wl}, operation"
    job = ctx.config.step_time_job_label
    loadgen = selector(ctx.config.step_time_selector, ctx.cluster)
    steps = f"{c.LOADGEN_STEP_SECONDS.name}{loadgen}"
    work = f"{c.LOADGEN_STEP_WORK_SECONDS.name}{loadgen}"
    step_group = f"{ctx.config.cluster_label}, {job}, phase"
    rank = f"{{{{{job}}}}} rank {{{{rank}}}}"
    return section(
        d,
        "Stragglers",
        timeseries_panel(
            "Bus bandwidth against the workload's median",
            "Each pod's bus bandwidth over the median of its workload's pods (1 = the "
            "median). In a synchronous job a rank that arrives late waits least, so it "
            "shows above the others; a slow link shows below.",
            [
                target(
                    f"{n.pod_busbw}{rec} / on({group}) group_left()"
                    f" quantile by ({group}) (0.5, {n.pod_busbw}{rec})",
                    "{{pod}} {{operation}}",
                )
            ],
            "percentunit",
            width=8,
        ),
        timeseries_panel(
            "Step time per rank (load generator)",
            "Each rank's last step, whole and its own work only (without waiting for "
            "peers), from jobs that export the load generator's step metrics.",
            [target(steps, f"{rank} step"), target(work, f"{rank} own work")],
            "s",
            width=8,
        ),
        timeseries_panel(
            "Own work per step against the job's median",
            "Each rank's own work per step over the median rank's (1 = the median): a "
            "straggler stands out here, while whole steps are equal in synchronous "
            "training.",
            [
                target(
                    f"{work} / on({step_group}) group_left()"
                    f" quantile by ({step_group}) (0.5, {work})",
                    rank,
                )
            ],
            "percentunit",
            width=8,
        ),
    )
