"""The month's report as one self-contained HTML page with charts.

`render_html(report)` makes the page from a `reports.Report`; `write_html_report`
writes it next to the CSV, Parquet and FOCUS files. Four charts (inline SVG, see
`accounting/charts.py`): cost by team, the daily trend, efficiency by team and the jobs
that wasted most; each with its table, and the month's totals and coverage on top.
Nothing is fetched when the page opens (no scripts, fonts or styles from elsewhere).

Reports made from simulated GPUs (the exporter's series labelled source="simulated",
recorded in the ledger at ingestion: `Report.simulated`) carry a banner that says so on
every view and in the page title. Provisional hours (the hour in progress) are named.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from pathlib import Path

import pandas as pd

from accounting.charts import Bar, Segment, horizontal_bars, stacked_columns
from accounting.costmodel import IDLE, UNATTRIBUTED, WORKLOAD
from accounting.reports import Report

# Colours: one per meaning, the same in every chart and legend.
USED_COLOUR = "#2563eb"  # the part of a team's cost its GPUs were busy
WASTE_COLOUR = "#93c5fd"  # held but idle (idle_cost_in_allocation)
UNATTRIBUTED_COLOUR = "#a855f7"
IDLE_COLOUR = "#9ca3af"
EFFICIENCY_COLOUR = "#059669"
JOB_WASTE_COLOUR = "#ea580c"
OTHER_TEAMS_COLOUR = "#64748b"
TEAM_PALETTE = (
    "#0ea5e9",
    "#f59e0b",
    "#10b981",
    "#ef4444",
    "#ec4899",
    "#84cc16",
    "#6366f1",
    "#a16207",
)

MAX_TEAM_BARS = 14
CURRENCY_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥"}


def html_report_path(out_dir: str | Path, month: str) -> Path:
    return Path(out_dir) / f"gpuledger-{month}-report.html"


def write_html_report(
    report: Report,
    out_dir: str | Path,
    *,
    simulated: bool | None = None,
    top_jobs: int = 10,
) -> Path:
    """Write the HTML report of `report` into out_dir (atomically) and return its path.

    `simulated`: whether the data came from simulated GPUs; None takes the report's
    own `simulated` attribute when it has one.
    """
    if simulated is None:
        simulated = bool(getattr(report, "simulated", False))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = html_report_path(out, report.month)
    text = render_html(report, simulated=simulated, top_jobs=top_jobs)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=out)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def render_html(report: Report, *, simulated: bool = False, top_jobs: int = 10) -> str:
    """The whole page as a string."""
    if top_jobs < 1:
        raise ValueError(f"top_jobs must be at least 1, got {top_jobs}")
    money = _money_formatter(report.currency)
    team = report.frames["team"]
    daily = report.frames["daily"]
    jobs = report.frames["job"]
    models = report.frames["model"]
    wasters = _top_wasters(jobs, top_jobs)
    title = f"GPU chargeback {report.month}"
    if simulated:
        title = f"SIMULATED DATA - {title}"
    body = [
        _banner(simulated),
        f"<h1>GPU chargeback, {escape(report.month)}</h1>",
        _period_line(report),
        _coverage(report),
        _cards(report, money),
        '<div class="grid">',
        _figure(_team_cost_chart(team, money), "cost-by-team"),
        _figure(_efficiency_chart(team), "efficiency-by-team"),
        _figure(_daily_chart(daily, money), "daily-trend"),
        _figure(_waste_chart(wasters, money), "top-waste"),
        "</div>",
        "<h2>Cost by team</h2>",
        _team_table(team, money),
        f"<h2>The {len(wasters)} jobs that wasted most</h2>",
        "<p class=note>Waste: what a job paid for GPU time it held but did not use "
        "(held minus busy GPU-hours, at the GPU's rate).</p>",
        _jobs_table(wasters, money),
        "<h2>Cost by day</h2>",
        _daily_table(daily, money),
        "<h2>Cost by GPU model</h2>",
        _model_table(models, money),
        _method(report),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------- charts
def _team_cost_chart(team: pd.DataFrame, money) -> str:
    bars = []
    for row in _capped_team_rows(team):
        cost = float(row["cost_allocation"])
        if row["category"] == WORKLOAD:
            waste = min(cost, float(row["idle_cost_in_allocation"]))
            segments = (
                Segment(cost - waste, USED_COLOUR, "busy"),
                Segment(waste, WASTE_COLOUR, "held, idle"),
            )
        else:
            colour = IDLE_COLOUR if row["category"] == IDLE else UNATTRIBUTED_COLOUR
            segments = (Segment(cost, colour, row["team"]),)
        bars.append(Bar(row["team"], segments, money(row["cost_allocation"])))
    legend = (
        f"<p class=legend>{_swatch(USED_COLOUR)} busy {_swatch(WASTE_COLOUR)} held but idle "
        f"{_swatch(UNATTRIBUTED_COLOUR)} {UNATTRIBUTED} {_swatch(IDLE_COLOUR)} {IDLE}</p>"
    )
    return (
        horizontal_bars(
            bars,
            title="Cost by team (allocation basis)",
            axis_format=lambda v: money(v, compact=True),
            chart_id="chart-cost-by-team",
        )
        + legend
    )


def _efficiency_chart(team: pd.DataFrame) -> str:
    workloads = team[team["category"] == WORKLOAD].head(MAX_TEAM_BARS)
    bars = [
        Bar(
            r.team,
            (Segment(_ratio(r.efficiency), EFFICIENCY_COLOUR, "efficiency"),),
            f"{_ratio(r.efficiency):.0%}",
        )
        for r in workloads.itertuples(index=False)
    ]
    held = float(workloads["gpu_hours_held"].sum())
    busy = float(workloads["gpu_hours_busy"].sum())
    marker = (busy / held, f"all teams {busy / held:.0%}") if held > 0 else None
    return horizontal_bars(
        bars,
        title="GPU efficiency by team (busy / held GPU-hours)",
        axis_format=lambda v: f"{v:.0%}",
        axis_max=1.0,
        marker=marker,
        chart_id="chart-efficiency-by-team",
    )


def _daily_chart(daily: pd.DataFrame, money) -> str:
    workloads = daily[daily["category"] == WORKLOAD]
    ranked = (
        workloads.groupby("team")["cost_allocation"]
        .apply(lambda c: sum(c, Decimal(0)))
        .sort_values(ascending=False)
    )
    shown = list(ranked.index[: len(TEAM_PALETTE)])
    colours = dict(zip(shown, TEAM_PALETTE, strict=False))
    series = [*shown]
    if len(ranked) > len(shown):
        series.append("other teams")
        colours["other teams"] = OTHER_TEAMS_COLOUR
    series += [UNATTRIBUTED, IDLE]
    colours[UNATTRIBUTED], colours[IDLE] = UNATTRIBUTED_COLOUR, IDLE_COLOUR

    def series_of(row: pd.Series) -> str:
        if row["category"] != WORKLOAD:
            return row["category"]
        return row["team"] if row["team"] in colours else "other teams"

    per_day: dict[str, dict[str, float]] = {}
    for _, row in daily.iterrows():
        cell = per_day.setdefault(row["day"], {})
        name = series_of(row)
        cell[name] = cell.get(name, 0.0) + float(row["cost_allocation"])
    columns = [
        (day[5:], [Segment(per_day[day].get(s, 0.0), colours[s], s) for s in series])
        for day in sorted(per_day)
    ]
    present = {s for cells in per_day.values() for s, v in cells.items() if v > 0}
    return stacked_columns(
        columns,
        title="Cost by day (allocation basis)",
        axis_format=lambda v: money(v, compact=True),
        legend=[(s, colours[s]) for s in series if s in present],
        chart_id="chart-daily-trend",
    )


def _waste_chart(wasters: pd.DataFrame, money) -> str:
    bars = [
        Bar(
            # "Kind/name" -> name: the table beside the chart has the kind and namespace.
            r.job.split("/", 1)[-1],
            (Segment(float(r.idle_cost_in_allocation), JOB_WASTE_COLOUR, "waste"),),
            money(r.idle_cost_in_allocation),
        )
        for r in wasters.itertuples(index=False)
    ]
    return horizontal_bars(
        bars,
        title="Jobs that wasted most (held but idle GPU cost)",
        axis_format=lambda v: money(v, compact=True),
        label_width=190,
        chart_id="chart-top-waste",
    )


# ---------------------------------------------------------------- tables
def _team_table(team: pd.DataFrame, money) -> str:
    header = (
        "team",
        "GPU-h held",
        "GPU-h busy",
        "efficiency",
        "memory GB-h",
        "energy kWh",
        "cost (allocation)",
        "cost (usage)",
        "held but idle",
        "share of idle capacity",
    )
    rows = [
        (
            r.team,
            _hours(r.gpu_hours_held),
            _hours(r.gpu_hours_busy),
            _percent(r.efficiency),
            _hours(r.memory_gb_hours),
            _hours(r.energy_kwh),
            money(r.cost_allocation),
            money(r.cost_usage),
            money(r.idle_cost_in_allocation),
            money(r.unallocated_share),
        )
        for r in team.itertuples(index=False)
    ]
    held, busy = float(team["gpu_hours_held"].sum()), float(team["gpu_hours_busy"].sum())
    total = (
        "total",
        _hours(held),
        _hours(busy),
        "",
        _hours(float(team["memory_gb_hours"].sum())),
        _hours(float(team["energy_kwh"].sum())),
        money(_sum(team["cost_allocation"])),
        money(_sum(team["cost_usage"])),
        money(_sum(team["idle_cost_in_allocation"])),
        money(_sum(team["unallocated_share"])),
    )
    return _table(header, rows, total, "table-team")


def _jobs_table(wasters: pd.DataFrame, money) -> str:
    header = (
        "job",
        "namespace",
        "team",
        "queue",
        "GPU-h held",
        "GPU-h busy",
        "efficiency",
        "cost (allocation)",
        "held but idle",
    )
    rows = [
        (
            r.job,
            r.namespace,
            r.team,
            r.queue,
            _hours(r.gpu_hours_held),
            _hours(r.gpu_hours_busy),
            _percent(r.efficiency),
            money(r.cost_allocation),
            money(r.idle_cost_in_allocation),
        )
        for r in wasters.itertuples(index=False)
    ]
    return _table(header, rows, None, "table-jobs")


def _daily_table(daily: pd.DataFrame, money) -> str:
    header = (
        "day",
        "GPU-h held by pods",
        "GPU-h busy",
        "efficiency",
        "workloads",
        UNATTRIBUTED,
        IDLE,
        "total",
    )
    rows = []
    for day, cells in daily.groupby("day", sort=True):
        work = cells[cells["category"] == WORKLOAD]
        held, busy = float(work["gpu_hours_held"].sum()), float(work["gpu_hours_busy"].sum())
        rows.append(
            (
                day,
                _hours(held),
                _hours(busy),
                _percent(busy / held if held else math.nan),
                money(_sum(work["cost_allocation"])),
                money(_sum(cells.loc[cells["category"] == UNATTRIBUTED, "cost_allocation"])),
                money(_sum(cells.loc[cells["category"] == IDLE, "cost_allocation"])),
                money(_sum(cells["cost_allocation"])),
            )
        )
    return _table(header, rows, None, "table-daily")


def _model_table(models: pd.DataFrame, money) -> str:
    header = (
        "GPU model",
        "row",
        "GPU-h",
        "GPU-h busy",
        "energy kWh",
        "cost (allocation)",
        "cost (usage)",
    )
    rows = [
        (
            r.model,
            "pods" if r.category == WORKLOAD else r.category,
            _hours(r.gpu_hours_held),
            _hours(r.gpu_hours_busy),
            _hours(r.energy_kwh),
            money(r.cost_allocation),
            money(r.cost_usage),
        )
        for r in models.itertuples(index=False)
    ]
    return _table(header, rows, None, "table-model")


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], total: Sequence[str] | None, ident: str
) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    foot = (
        "<tfoot><tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in total) + "</tr></tfoot>"
        if total
        else ""
    )
    if not rows:
        body = f'<tr><td colspan="{len(header)}">nothing in this period</td></tr>'
    return f'<table id="{ident}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>{foot}</table>'


# ---------------------------------------------------------------- page parts
def _banner(simulated: bool) -> str:
    if not simulated:
        return ""
    return (
        '<div class="simulated" id="simulated-banner"><strong>SIMULATED DATA.</strong> '
        'These GPUs are simulated (exporter series labelled source="simulated"): the report '
        "shows how gpuledger works and is not a record of real usage or a bill.</div>"
    )


def _period_line(report: Report) -> str:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<p class=meta>{_stamp(report.start)} to {_stamp(report.end)} (UTC) · prices from "
        f"{escape(report.price_book or 'the price book')} · idle shown as "
        f"{'its own row' if report.idle == 'row' else 'shared out to the teams'} · "
        f"{escape(_sources(report))} · made {made}</p>"
    )


def _sources(report: Report) -> str:
    """Where the GPU readings came from: the exporter's device sources, by GPU-hours."""
    sources = report.gpu_hours_by_source
    if not sources:
        return "GPU source: none recorded"
    return "GPU source: " + ", ".join(
        f"{name} ({gpu_hours:,} GPU-hours)" for name, gpu_hours in sources.items()
    )


def _coverage(report: Report) -> str:
    parts = []
    if report.complete:
        parts.append(
            f'<p class="coverage ok">Complete: all {report.hours_expected} hours of the month '
            "are in the ledger.</p>"
        )
    elif report.missing_hours:
        first = _stamp(report.missing_hours[0])
        parts.append(
            f'<p class="coverage partial" id="coverage-warning">Partial: the ledger has '
            f"{report.hours_ingested} of {report.hours_expected} hours of the month; "
            f"{len(report.missing_hours)} hours are missing (the first at {first}). Costs cover "
            "only the hours present; run `gpuledger accounting ingest` for the rest.</p>"
        )
    if report.provisional_hours:
        through = report.provisional_through
        parts.append(
            f'<p class="coverage partial" id="provisional-note">Provisional: '
            f"{len(report.provisional_hours)} hour(s) from {_stamp(report.provisional_hours[0])} "
            f"are not final; their data runs to {_stamp(through) if through else 'now'}. The "
            "next ingestion of those hours replaces them.</p>"
        )
    return "\n".join(parts)


def _cards(report: Report, money) -> str:
    summary = report.summary()
    hours = summary["gpu_hours"]
    capacity, held, busy = hours["capacity"], hours["held"], hours["busy"]
    team = report.frames["team"]
    waste = _sum(team["idle_cost_in_allocation"])
    idle = _sum(team.loc[team["category"] == IDLE, "cost_allocation"])
    cards = [
        ("total cost", money(report.total_cost)),
        ("GPU-hours of capacity", _hours(capacity)),
        ("held by pods", f"{_hours(held)} ({held / capacity:.0%})" if capacity else _hours(held)),
        ("busy", f"{_hours(busy)} ({busy / held:.0%} of held)" if held else _hours(busy)),
        ("paid for idle GPUs", money(waste)),
        ("idle capacity", money(idle)),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value">{escape(value)}</div></div>'
            for label, value in cards
        )
        + "</div>"
    )


def _method(report: Report) -> str:
    return (
        "<h2>How these numbers are made</h2><p class=note>GPU-hours held and busy come from "
        "the exporter's usage counters, hour by hour; a GPU-hour costs its model's price in "
        "the price book plus the node's overhead spread over its GPUs, and energy its kWh "
        "price. <em>Allocation basis</em>: a team pays for what its pods held, busy or not. "
        "<em>Usage basis</em>: each GPU model's whole cost is split by busy GPU-hours. "
        f"<code>{IDLE}</code> is capacity no pod held; <code>{UNATTRIBUTED}</code> is busy "
        "GPU time no pod held. Every column of money sums to the cluster's cost "
        f"({escape(str(report.total_cost))} {escape(report.currency)}) to the cent. The "
        "method is written down with worked numbers in docs/cost-model.md.</p>"
    )


def _figure(svg: str, name: str) -> str:
    return f'<figure class="chart" id="figure-{name}">{svg}</figure>'


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


# ---------------------------------------------------------------- values
def _capped_team_rows(team: pd.DataFrame) -> list[dict]:
    """At most MAX_TEAM_BARS bars: the dearest teams, the rest as one, then the
    unattributed and idle rows."""
    workloads = team[team["category"] == WORKLOAD]
    others = team[team["category"] != WORKLOAD]
    rows = [r._asdict() for r in workloads.head(MAX_TEAM_BARS - 1).itertuples(index=False)]
    rest = workloads.iloc[MAX_TEAM_BARS - 1 :]
    if len(rest) == 1:
        rows.append(rest.iloc[0].to_dict())
    elif len(rest) > 1:
        rows.append(
            {
                "category": WORKLOAD,
                "team": f"{len(rest)} other teams",
                "cost_allocation": _sum(rest["cost_allocation"]),
                "idle_cost_in_allocation": _sum(rest["idle_cost_in_allocation"]),
            }
        )
    rows += [r._asdict() for r in others.itertuples(index=False)]
    return rows


def _top_wasters(jobs: pd.DataFrame, count: int) -> pd.DataFrame:
    workloads = jobs[jobs["category"] == WORKLOAD].copy()
    workloads["_waste"] = [float(v) for v in workloads["idle_cost_in_allocation"]]
    workloads = workloads[workloads["_waste"] > 0]
    ranked = workloads.sort_values(["_waste", "namespace", "job"], ascending=[False, True, True])
    return ranked.head(count).drop(columns="_waste")


def _sum(values) -> Decimal:
    return sum((Decimal(v) for v in values), Decimal(0))


def _ratio(value: float) -> float:
    return 0.0 if value is None or not math.isfinite(value) else max(0.0, min(1.0, float(value)))


def _percent(value: float) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _hours(value: float) -> str:
    return f"{value:,.1f}"


def _money_formatter(currency: str):
    symbol = CURRENCY_SYMBOLS.get(currency)

    def money(value, compact: bool = False) -> str:
        amount = float(value)
        if compact:
            for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
                if abs(amount) >= size:
                    text = f"{amount / size:,.1f}".rstrip("0").rstrip(".") + suffix
                    break
            else:
                text = f"{amount:,.0f}" if amount == int(amount) else f"{amount:,.2f}"
        else:
            text = f"{Decimal(value):,.2f}" if isinstance(value, Decimal) else f"{amount:,.2f}"
        return f"{symbol}{text}" if symbol else f"{text} {currency}"

    return money


def _stamp(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;color:#111827;margin:24px;
max-width:1340px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:28px 0 8px}
.meta,.note{color:#4b5563;font-size:13px}
.simulated{background:#fef3c7;border:3px solid #b91c1c;color:#7f1d1d;padding:12px 16px;
font-size:16px;margin-bottom:12px}
.coverage{font-size:14px;padding:6px 10px;border-radius:4px}
.coverage.ok{background:#ecfdf5;color:#065f46}.coverage.partial{background:#fff7ed;color:#9a3412}
.cards{display:flex;gap:12px;margin:12px 0 18px;flex-wrap:wrap}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px;min-width:140px}
.card .label{font-size:12px;color:#6b7280}.card .value{font-size:18px;font-weight:600}
.grid{display:grid;grid-template-columns:660px 660px;gap:16px}
figure.chart{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:10px}
.legend{font-size:12px;margin:4px 0 0}
.swatch{display:inline-block;width:11px;height:11px;margin:0 3px 0 10px;vertical-align:-1px}
table{border-collapse:collapse;font-size:13px;margin-bottom:8px}
th,td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
thead th{background:#f9fafb}tfoot td{font-weight:600;border-top:2px solid #9ca3af}
"""
