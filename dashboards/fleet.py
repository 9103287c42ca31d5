"""Fleet overview: is every GPU doing useful work? GPUs held against busy, and the idle
waste, by namespace, GPU model and node."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import table

from dashboards.common import (
    NAMESPACE,
    NODE,
    Context,
    bargauge_panel,
    dashboard_with_variables,
    namespace_variable,
    node_variable,
    ratio_by,
    section,
    stat_panel,
    table_panel,
    target,
    timeseries_panel,
)
from exporter import catalogue as c

UID = "gpuledger-fleet"
TITLE = "gpuledger / Fleet overview"


def share_table(
    title: str,
    description: str,
    by: str,
    columns: list[tuple[str, str]],
    busy: str,
    total: str,
) -> table.Panel:
    """A half-width table of `columns` summed by `by`, then the busy share of `total`."""
    return table_panel(
        title,
        description,
        [
            *((header, f"sum by ({by}) ({expr})") for header, expr in columns),
            ("Busy share", ratio_by(by, busy, total)),
        ],
        width=12,
        units={"Busy share": "percentunit"},
    )


def build(ctx: Context) -> db.Dashboard:
    n = ctx.names
    pods = ctx.rec(NAMESPACE, NODE)
    held = f"{n.pod_allocated}{pods}"
    busy = f"{n.pod_busy}{pods}"
    installed = f"{n.node_gpus}{ctx.rec(NODE)}"
    device_busy = f"{n.node_busy}{ctx.rec(NODE)}"
    idle_by_pod = f"sum by (namespace, pod, node, model) ({held} - {busy})"

    d = dashboard_with_variables(
        ctx,
        UID,
        TITLE,
        "GPUs installed, held by pods and kept busy; the idle waste by namespace, model "
        "and node. Held and busy are GPU-equivalents (a MIG 1g instance is 1/7, a "
        "time-sliced share 1/n) from the exporter's counters, through the recording rules.",
        namespace_variable(ctx),
        node_variable(ctx),
    )

    d = section(
        d,
        "Now",
        stat_panel(
            "GPUs installed",
            "Physical GPUs the exporters report on the selected nodes.",
            f"sum({installed})",
            "short",
        ),
        stat_panel(
            "GPUs held",
            "GPU-equivalents that pods of the selected namespaces hold.",
            f"sum({held})",
            "short",
        ),
        stat_panel(
            "GPUs busy",
            "Busy GPU-equivalents of those pods (utilisation integrated over time).",
            f"sum({busy})",
            "short",
        ),
        stat_panel(
            "Held but idle",
            "GPU-equivalents held and not busy: paid for, doing nothing.",
            f"clamp_min(sum({held}) - sum({busy}), 0)",
            "short",
        ),
        stat_panel(
            "Busy share of held",
            "How much of the time held GPUs were busy.",
            f"sum({busy}) / sum({held})",
            "percentunit",
        ),
        stat_panel(
            "Firing gpuledger alerts",
            "gpuledger alerts firing now in this Prometheus.",
            'count(ALERTS{alertstate="firing", alertname=~"Gpuledger.+"}) or vector(0)',
            "short",
        ),
    )

    d = section(
        d,
        "Held against busy",
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
        ),
        timeseries_panel(
            "Held but idle, by namespace",
            "GPU-equivalents held and not busy, per namespace: the waste to chase.",
            [target(f"sum by (namespace) ({held} - {busy})", "{{namespace}}")],
            "short",
            stack=True,
        ),
    )

    d = section(
        d,
        "By namespace",
        timeseries_panel(
            "GPUs held by namespace",
            "GPU-equivalents held, per namespace.",
            [target(f"sum by (namespace) ({held})", "{{namespace}}")],
            "short",
            stack=True,
        ),
        timeseries_panel(
            "Busy share of held GPUs by namespace",
            "Busy over held GPU-equivalents, per namespace.",
            [target(ratio_by("namespace", busy, held), "{{namespace}}")],
            "percentunit",
        ),
        share_table(
            "Namespaces",
            "Held, busy and idle GPU-equivalents per namespace now.",
            "namespace",
            [("Held", held), ("Busy", busy), ("Idle", f"{held} - {busy}")],
            busy,
            held,
        ),
        bargauge_panel(
            "Idle GPU-hours in the time range, by namespace",
            "GPU-hours held and not busy over the dashboard's time range, from the raw counters.",
            "sort_desc(sum by (namespace) ("
            f"increase({c.POD_GPU_ALLOCATED_SECONDS.name}{ctx.raw(NAMESPACE, NODE)}[$__range])"
            f" - increase({c.POD_GPU_BUSY_SECONDS.name}{ctx.raw(NAMESPACE, NODE)}[$__range])"
            ")) / 3600",
            "{{namespace}}",
            "short",
        ),
    )

    d = section(
        d,
        "By GPU model",
        timeseries_panel(
            "GPUs held by model",
            "GPU-equivalents held, per GPU model.",
            [target(f"sum by (model) ({held})", "{{model}}")],
            "short",
            stack=True,
            width=8,
        ),
        timeseries_panel(
            "Busy share by model",
            "Average busy ratio of the GPUs of each model (every process).",
            [target(f"avg by (model) ({n.device_busy_ratio}{ctx.rec(NODE)})", "{{model}}")],
            "percentunit",
            width=8,
        ),
        bargauge_panel(
            "GPUs installed by model",
            "Physical GPUs per model on the selected nodes.",
            f"sort_desc(count by (model) ({c.GPU_INFO.name}{ctx.raw(NODE)}))",
            "{{model}}",
            "short",
            width=8,
        ),
    )

    d = section(
        d,
        "By node",
        share_table(
            "Nodes",
            "Per node: GPUs installed, held by the selected namespaces, busy (every "
            "process) and the busy share of installed GPUs.",
            "node",
            [("Installed", installed), ("Held", held), ("Busy", device_busy)],
            device_busy,
            installed,
        ),
        bargauge_panel(
            "Busy share by node",
            "Busy GPUs over installed GPUs, per node.",
            f"sort_desc({ratio_by('node', device_busy, installed)})",
            "{{node}}",
            "percentunit",
            maximum=1,
        ),
    )

    return section(
        d,
        "Idle waste",
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
        ),
    )
