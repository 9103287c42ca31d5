"""GPU cost: who pays what this month, how well they use it, and the cost trend; from
the metrics of `gpuledger accounting serve` (the catalogue's accounting section).

The exact numbers of a month are in the ledger's reports and API; these panels show
the same chargeback as the service last computed it, refreshed after each hourly
ingestion. `__idle__` (capacity no pod held) and `__unattributed__` (busy GPU time no
pod held) are rows of their own, so the team panels sum to the cluster's cost.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.common import (
    Context,
    bargauge_panel,
    dashboard_with_variables,
    query_variable,
    section,
    stat_panel,
    table_panel,
    target,
    timeseries_panel,
)
from exporter import catalogue as c

UID = "gpuledger-cost"
TITLE = "gpuledger / GPU cost"

TEAM = 'team=~"$team"'
NAMESPACE = 'namespace=~"$namespace"'
CURRENCY = 'currency="$currency"'
# Rows that are not a team's work.
NOT_WORKLOAD = 'team!~"__idle__|__unattributed__"'
ALLOCATION, USAGE = 'basis="allocation"', 'basis="usage"'
HELD, BUSY = 'state="held"', 'state="busy"'
IDLE_ROW = 'team="__idle__"'


def team_variable(ctx: Context) -> db.QueryVariable:
    return query_variable(
        "team", "Team", f"label_values({c.ACCOUNTING_MONTH_COST.name}{ctx.rec()}, team)"
    )


def cost_namespace_variable(ctx: Context) -> db.QueryVariable:
    return query_variable(
        "namespace",
        "Namespace",
        f"label_values({c.ACCOUNTING_MONTH_COST.name}{ctx.rec(TEAM)}, namespace)",
    )


def currency_variable(ctx: Context) -> db.QueryVariable:
    return query_variable(
        "currency",
        "Currency",
        f"label_values({c.ACCOUNTING_MONTH_COST.name}{ctx.rec()}, currency)",
        multi=False,
        include_all=False,
    )


def build(ctx: Context) -> db.Dashboard:
    money = ctx.rec(TEAM, NAMESPACE, CURRENCY)
    cost = c.ACCOUNTING_MONTH_COST.name
    allocation = f"{cost}{ctx.rec(TEAM, NAMESPACE, CURRENCY, ALLOCATION)}"
    usage = f"{cost}{ctx.rec(TEAM, NAMESPACE, CURRENCY, USAGE)}"
    idle_capacity = f"{cost}{ctx.rec(CURRENCY, ALLOCATION, IDLE_ROW)}"
    waste = f"{c.ACCOUNTING_MONTH_WASTE_COST.name}{money}"
    seconds = c.ACCOUNTING_MONTH_GPU_SECONDS.name
    held = f"{seconds}{ctx.rec(TEAM, NAMESPACE, HELD)}"
    busy = f"{seconds}{ctx.rec(TEAM, NAMESPACE, BUSY)}"
    work_held = f"{seconds}{ctx.rec(TEAM, NAMESPACE, NOT_WORKLOAD, HELD)}"
    work_busy = f"{seconds}{ctx.rec(TEAM, NAMESPACE, NOT_WORKLOAD, BUSY)}"
    hourly = f"{c.ACCOUNTING_LAST_HOUR_COST.name}{money}"
    service = ctx.rec()

    d = (
        dashboard_with_variables(
            ctx,
            UID,
            TITLE,
            "What each team's GPUs cost this month on the allocation basis (what they held) "
            "and the usage basis (what they kept busy), what they paid for GPUs they held "
            "but left idle, and the cost per hour; from `gpuledger accounting serve`. "
            "docs/cost-model.md explains every number.",
            team_variable(ctx),
            cost_namespace_variable(ctx),
            currency_variable(ctx),
        )
        .time("now-7d", "now")
        .refresh("5m")
    )

    d = section(
        d,
        "This month",
        stat_panel(
            "Cost this month ($currency)",
            "Cost of the month's hours in the ledger so far, allocation basis, for the "
            "selected teams and namespaces (all teams: the cluster's cost).",
            f"sum({allocation})",
            "short",
        ),
        stat_panel(
            "Held but idle ($currency)",
            "What the selected teams paid this month for GPU time their pods held but did not use.",
            f"sum({waste})",
            "short",
        ),
        stat_panel(
            "Idle capacity ($currency)",
            "Cost this month of GPU capacity that no pod held (the __idle__ row).",
            f"sum({idle_capacity})",
            "short",
        ),
        stat_panel(
            "GPU efficiency",
            "Busy GPU-hours over held GPU-hours of the selected teams' pods this month.",
            f"sum({work_busy}) / sum({work_held})",
            "percentunit",
        ),
        stat_panel(
            "Ledger behind by",
            "Time since the start of the latest hour in the ledger: about 1 h when the "
            "hourly ingestion keeps up.",
            f"time() - max({c.ACCOUNTING_LAST_HOUR.name}{service})",
            "s",
        ),
        stat_panel(
            "Hours missing",
            "Time of this month, up to the last complete hour, that the ledger lacks: "
            "its cost is not in these numbers until it is ingested.",
            f"max({c.ACCOUNTING_MONTH_MISSING.name}{service})",
            "s",
        ),
    )

    d = section(
        d,
        "By team",
        bargauge_panel(
            "Cost by team this month ($currency)",
            "Allocation basis: each team pays for the GPU time its pods held, busy or "
            "not; __idle__ is capacity nobody held.",
            f"sort_desc(sum by (team) ({allocation}))",
            "{{team}}",
            "short",
        ),
        bargauge_panel(
            "GPU efficiency by team this month",
            "Busy GPU-hours over held GPU-hours of each team's pods.",
            f"sort_desc(sum by (team) ({work_busy}) / sum by (team) ({work_held}))",
            "{{team}}",
            "percentunit",
            maximum=1,
        ),
        table_panel(
            "Chargeback by team and namespace this month",
            "Cost on both bases, the idle share of the allocation cost, and GPU-hours "
            "held and busy, per team and namespace.",
            [
                (
                    "cost (allocation)",
                    f"sum by (team, namespace) ({allocation})",
                ),
                ("cost (usage)", f"sum by (team, namespace) ({usage})"),
                ("held but idle", f"sum by (team, namespace) ({waste})"),
                ("GPU-hours held", f"sum by (team, namespace) ({held}) / 3600"),
                ("GPU-hours busy", f"sum by (team, namespace) ({busy}) / 3600"),
                (
                    "efficiency",
                    f"sum by (team, namespace) ({busy}) / sum by (team, namespace) ({held})",
                ),
            ],
            height=10,
            units={"efficiency": "percentunit"},
        ),
    )

    d = section(
        d,
        "Trend",
        timeseries_panel(
            "Cost per hour by team ($currency)",
            "Allocation cost of the latest hour in the ledger, per team; it steps once "
            "an hour as ingestion adds hours.",
            [target(f"sum by (team) ({hourly})", "{{team}}")],
            "short",
            stack=True,
        ),
        timeseries_panel(
            "Cost so far this month by team ($currency)",
            "Month-to-date allocation cost per team; it starts again from 0 each month.",
            [target(f"sum by (team) ({allocation})", "{{team}}")],
            "short",
        ),
    )

    runs = c.ACCOUNTING_INGEST_RUNS.name
    return section(
        d,
        "Accounting service",
        timeseries_panel(
            "Ingestion time by part",
            "How long the last hourly ingestion run took: waiting on Prometheus, the "
            "Kubernetes API and the ledger, and in gpuledger's own code.",
            [
                target(
                    f"max by (part) ({c.ACCOUNTING_INGEST_DURATION.name}{service})",
                    "{{part}}",
                )
            ],
            "s",
            width=8,
        ),
        timeseries_panel(
            "Ingestion runs",
            "Scheduled ingestion runs by result; an error is retried within minutes.",
            [
                target(
                    f"sum by (result) (increase({runs}{service}[$__range]))",
                    "{{result}}",
                )
            ],
            "short",
            width=8,
        ),
        timeseries_panel(
            "API requests",
            "Requests to the accounting API per second, by handler and status code "
            "(401: a client without the right token).",
            [
                target(
                    f"sum by (handler, code) (rate({c.ACCOUNTING_API_REQUESTS.name}"
                    f"{service}[$__rate_interval]))",
                    "{{handler}} {{code}}",
                )
            ],
            "reqps",
            width=8,
        ),
    )
