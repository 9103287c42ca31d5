"""Exporter health: can the numbers be trusted? Scrapes, collections, NVML and
attribution errors, the collective probe's traffic, and dropped series."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from alerts.promql import selector
from dashboards.common import (
    NAMESPACE,
    NODE,
    UP_STATES,
    Context,
    dashboard_with_variables,
    namespace_variable,
    node_variable,
    section,
    stat_panel,
    state_panel,
    table_panel,
    target,
    timeseries_panel,
)
from exporter import catalogue as c

UID = "gpuledger-exporter"
TITLE = "gpuledger / Exporter health"


def build(ctx: Context) -> db.Dashboard:
    sel = ctx.raw(NODE)
    up = f"up{selector(ctx.config.exporter_selector, ctx.cluster)}"
    rate = "[$__rate_interval]"
    # Error counters exist only once an error happened; zeros per node until then, so
    # that a quiet exporter shows 0 rather than "no data".
    zeros = f"sum by (node) ({c.EXPORTER_COLLECTIONS.name}{sel}) * 0"

    d = dashboard_with_variables(
        ctx,
        UID,
        TITLE,
        "The gpuledger exporters themselves: whether Prometheus scrapes them, whether "
        "their collection loop keeps time, and what failed (NVML, kubelet, cgroups, the "
        "API server, the in-job probe).",
        node_variable(ctx),
        namespace_variable(ctx),
    )

    d = section(
        d,
        "Scrapes",
        stat_panel("Exporters up", "Exporter targets scraped successfully.", f"sum({up})", "short"),
        stat_panel(
            "Exporter targets", "Exporter targets Prometheus knows.", f"count({up})", "short"
        ),
        stat_panel(
            "Oldest collection",
            "Age of the stalest exporter's last finished collection.",
            f"max(time() - {c.EXPORTER_LAST_COLLECTION.name}{sel})",
            "s",
        ),
        stat_panel(
            "Dropped pod series",
            "Pod series not exported in the time range because the series cap was reached.",
            f"sum(increase({c.EXPORTER_DROPPED_SERIES.name}{sel}[$__range]))",
            "short",
        ),
        table_panel(
            "Exporters",
            "Each exporter's build, source of GPU readings (nvml or simulated) and Python.",
            [
                (
                    "Up",
                    f"max by (node, version, source, python_version) "
                    f"({c.EXPORTER_BUILD_INFO.name}{sel})",
                )
            ],
            width=8,
        ),
    )

    d = section(
        d,
        "Collection loop",
        timeseries_panel(
            "Collection duration",
            "p50 and p99 of one collection (every source), per node.",
            [
                target(
                    f"histogram_quantile({q}, sum by (le, node) "
                    f"(rate({c.EXPORTER_COLLECTION_DURATION.name}_bucket{sel}{rate})))",
                    f"{{{{node}}}} p{int(q * 100)}",
                )
                for q in (0.5, 0.99)
            ],
            "s",
            width=8,
        ),
        timeseries_panel(
            "Scrape render duration",
            "p99 of rendering /metrics, per node.",
            [
                target(
                    f"histogram_quantile(0.99, sum by (le, node) "
                    f"(rate({c.EXPORTER_SCRAPE_DURATION.name}_bucket{sel}{rate})))",
                    "{{node}}",
                )
            ],
            "s",
            width=8,
        ),
        timeseries_panel(
            "Collections per second",
            "Finished collections per second, per node.",
            [
                target(
                    f"sum by (node) (rate({c.EXPORTER_COLLECTIONS.name}{sel}{rate}))",
                    "{{node}}",
                )
            ],
            "short",
            width=8,
        ),
        state_panel(
            "Collectors",
            "Whether each collector succeeded in its last collection.",
            f"max by (node, collector) ({c.EXPORTER_COLLECTOR_UP.name}{sel})",
            "{{node}} {{collector}}",
            UP_STATES,
        ),
    )

    d = section(
        d,
        "Errors",
        timeseries_panel(
            "NVML errors per second",
            "Failed NVML calls, by function and NVML error (GPU_IS_LOST, TIMEOUT...).",
            [
                target(
                    f"sum by (node, function, code) "
                    f"(rate({c.EXPORTER_NVML_ERRORS.name}{sel}{rate})) or {zeros}",
                    "{{node}} {{function}} {{code}}",
                )
            ],
            "short",
            width=8,
        ),
        timeseries_panel(
            "Attribution errors per second",
            "Failed kubelet, cgroup and API server lookups, by source and reason.",
            [
                target(
                    f"sum by (node, source, reason) "
                    f"(rate({c.EXPORTER_ATTRIBUTION_ERRORS.name}{sel}{rate})) or {zeros}",
                    "{{node}} {{source}} {{reason}}",
                )
            ],
            "short",
            width=8,
        ),
        timeseries_panel(
            "Attribution age",
            "Age of each attribution source's last good answer.",
            [
                target(
                    f"max by (node, source) ({c.EXPORTER_ATTRIBUTION_AGE.name}{sel})",
                    "{{node}} {{source}}",
                )
            ],
            "s",
            width=8,
        ),
    )

    return section(
        d,
        "Collective probe",
        timeseries_panel(
            "Probe reports per second",
            "Reports accepted from in-job probes of the selected namespaces.",
            [
                target(
                    f"sum by (node, namespace) "
                    f"(rate({c.PROBE_REPORTS.name}{ctx.raw(NODE, NAMESPACE)}{rate}))",
                    "{{node}} {{namespace}}",
                )
            ],
            "short",
            width=8,
        ),
        timeseries_panel(
            "Probe messages rejected",
            "Messages the exporter dropped, by reason (malformed, rate_limited, unattributed...).",
            [
                target(
                    f"sum by (node, reason) (increase({c.PROBE_REJECTED.name}{sel}{rate}))"
                    f" or {zeros}",
                    "{{node}} {{reason}}",
                )
            ],
            "short",
            width=8,
        ),
        timeseries_panel(
            "Probe connections",
            "Probe connections open now, per node.",
            [target(f"sum by (node) ({c.PROBE_CONNECTIONS.name}{sel})", "{{node}}")],
            "short",
            width=8,
        ),
    )
