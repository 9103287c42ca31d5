"""Fleet overview: is every GPU doing useful work? GPUs held against busy, and the idle
waste, by namespace, GPU model and node."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.common import (
    NAMESPACE,
    NODE,
    Context,
    bargauge_panel,
    cluster_variable,
    dashboard,
    datasource_variable,
    namespace_variable,
    node_variable,
    row,
    stat_panel,
    table_panel,
    target,
    timeseries_panel,
)
from exporter import catalogue as c

UID = "gpuledger-fleet"
TITLE = "gpuledger / Fleet overview"


def build(ctx: Context) -> db.Dashboard:
    n = ctx.names
    pods = ctx.rec(NAMESPACE, NODE)
    held = f"{n.pod_allocated}{pods}"
    busy = f"{n.pod_busy}{pods}"
    installed = f"{n.node_gpus}{ctx.rec(NODE)}"
    device_busy = f"{n.node_busy}{ctx.rec(NODE)}"
    idle_by_pod = f"sum by (namespace, pod, node, model) ({held} - {busy})"

    d = (
        dashboard(
            UID,
            TITLE,
            "GPUs installed, held by pods and kept busy; the idle waste by namespace, model "
            "and node. Held and busy are GPU-equivalents (a MIG 1g instance is 1/7, a "
            "time-sliced share 1/n) from the exporter's counters, through the recording rules.",
        )
        .with_variable(datasource_variable())
        .with_variable(cluster_variable(ctx))
        .with_variable(namespace_variable(ctx))
        .with_variable(node_variable(ctx))
    )

    d = (
        d.with_row(row("Now"))
        .with_panel(
            stat_panel(
                "GPUs installed",
                "Physical GPUs the exporters report on the selected nodes.",
                f"sum({installed})",
                "short",
            )
        )
        .with_panel(
            stat_panel(
                "GPUs held",
                "GPU-equivalents that pods of the selected namespaces hold.",
                f"sum({held})",
                "short",
            )
        )
        .with_panel(
            stat_panel(
                "GPUs busy",
                "Busy GPU-equivalents of those pods (utilisation integrated over time).",
                f"sum({busy})",
                "short",
            )
        )
        .with_panel(
            stat_panel(
                "Held but idle",
                "GPU-equivalents held and not busy: paid for, doing nothing.",
                f"clamp_min(sum({held}) - sum({busy}), 0)",
                "short",
            )
        )
        .with_panel(
            stat_panel(
                "Busy share of held",
                "How much of the time held GPUs were busy.",
                f"sum({busy}) / sum({held})",
                "percentunit",
            )
        )
        .with_panel(
            stat_panel(
                "Firing gpuledger alerts",
                "gpuledger alerts firing now in this Prometheus.",
                'count(ALERTS{alertstate="firing", alertname=~"Gpuledger.+"}) or vector(0)',
                "short",
            )
        )
    )

    d = (
        d.with_row(row("Held against busy"))
        .with_panel(
            timeseries_panel(
                "GPUs installed, held and busy",
                "Installed GPUs, GPU-equivalents held by pods, busy GPU-equivalents of those "
                "pods, and busy GPUs counting every process (also outside pods).",
                [
                    target(f"sum({installed})", "installed"),
                    target(f"sum({held})", "held by pods"),
                    target(f"sum({busy})", "busy (pods)"),
                    target(f"sum({device_busy})", "busy (all processes)"),
                ],
                "short",
            )
        )
        .with_panel(
            timeseries_panel(
                "Held but idle, by namespace",
                "GPU-equivalents held and not busy, per namespace: the waste to chase.",
                [target(f"sum by (namespace) ({held} - {busy})", "{{namespace}}")],
                "short",
                stack=True,
            )
        )
    )

    d = (
        d.with_row(row("By namespace"))
        .with_panel(
            timeseries_panel(
                "GPUs held by namespace",
                "GPU-equivalents held, per namespace.",
                [target(f"sum by (namespace) ({held})", "{{namespace}}")],
                "short",
                stack=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "Busy share of held GPUs by namespace",
                "Busy over held GPU-equivalents, per namespace.",
                [
                    target(
                        f"sum by (namespace) ({busy}) / sum by (namespace) ({held})",
                        "{{namespace}}",
                    )
                ],
                "percentunit",
            )
        )
        .with_panel(
            table_panel(
                "Namespaces",
                "Held, busy and idle GPU-equivalents per namespace now.",
                [
                    ("Held", f"sum by (namespace) ({held})"),
                    ("Busy", f"sum by (namespace) ({busy})"),
                    ("Idle", f"sum by (namespace) ({held} - {busy})"),
                    ("Busy share", f"sum by (namespace) ({busy}) / sum by (namespace) ({held})"),
                ],
                width=12,
                units={"Busy share": "percentunit"},
            )
        )
        .with_panel(
            bargauge_panel(
                "Idle GPU-hours in the time range, by namespace",
                "GPU-hours held and not busy over the dashboard's time range, from the raw "
                "counters.",
                "sort_desc(sum by (namespace) ("
                f"increase({c.POD_GPU_ALLOCATED_SECONDS.name}{ctx.raw(NAMESPACE, NODE)}[$__range])"
                f" - increase({c.POD_GPU_BUSY_SECONDS.name}{ctx.raw(NAMESPACE, NODE)}[$__range])"
                ")) / 3600",
                "{{namespace}}",
                "short",
            )
        )
    )

    d = (
        d.with_row(row("By GPU model"))
        .with_panel(
            timeseries_panel(
                "GPUs held by model",
                "GPU-equivalents held, per GPU model.",
                [target(f"sum by (model) ({held})", "{{model}}")],
                "short",
                stack=True,
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Busy share by model",
                "Average busy ratio of the GPUs of each model (every process).",
                [target(f"avg by (model) ({n.device_busy_ratio}{ctx.rec(NODE)})", "{{model}}")],
                "percentunit",
                width=8,
            )
        )
        .with_panel(
            bargauge_panel(
                "GPUs installed by model",
                "Physical GPUs per model on the selected nodes.",
                f"sort_desc(count by (model) ({c.GPU_INFO.name}{ctx.raw(NODE)}))",
                "{{model}}",
                "short",
                width=8,
            )
        )
    )

    d = (
        d.with_row(row("By node"))
        .with_panel(
            table_panel(
                "Nodes",
                "Per node: GPUs installed, held by the selected namespaces, busy (every "
                "process) and the busy share of installed GPUs.",
                [
                    ("Installed", f"sum by (node) ({installed})"),
                    ("Held", f"sum by (node) ({held})"),
                    ("Busy", f"sum by (node) ({device_busy})"),
                    ("Busy share", f"sum by (node) ({device_busy}) / sum by (node) ({installed})"),
                ],
                width=12,
                units={"Busy share": "percentunit"},
            )
        )
        .with_panel(
            bargauge_panel(
                "Busy share by node",
                "Busy GPUs over installed GPUs, per node.",
                f"sort_desc(sum by (node) ({device_busy}) / sum by (node) ({installed}))",
                "{{node}}",
                "percentunit",
                maximum=1,
            )
        )
    )

    return d.with_row(row("Idle waste")).with_panel(
        table_panel(
            "Pods holding idle GPUs",
            "The 20 pods with the most GPU-equivalents held and not busy now (over 0.1).",
            [
                ("Idle GPUs", f"topk(20, {idle_by_pod} > 0.1)"),
                (
                    "Held GPUs",
                    f"sum by (namespace, pod, node, model) ({held})"
                    f" and on(namespace, pod) topk(20, {idle_by_pod} > 0.1)",
                ),
            ],
        )
    )
