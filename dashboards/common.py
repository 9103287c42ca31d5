"""Shared parts of gpuledger's dashboards: the data source, the variables and panel builders.

Every query filters on the same variables (`$cluster`, `$namespace`, `$node`) through
the matchers below, and takes its metric names from the catalogue or from the recording
rules (`alerts.rules.RecordingNames`), so that the dashboards and the rules cannot drift.
Selectors and the cluster label come from the rules configuration (alerts/config.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cog
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from alerts.config import RulesConfig
from alerts.promql import selector
from alerts.rules import RecordingNames
from exporter import catalogue as c

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["gpuledger", "gpu"]
ALL = ".*"  # the value of a variable's "All": a regex that matches everything


@dataclass(frozen=True)
class Context:
    """What every dashboard builder needs: the rules' configuration and names."""

    config: RulesConfig
    names: RecordingNames

    @classmethod
    def default(cls) -> Context:
        config = RulesConfig()
        return cls(config, RecordingNames(config))

    @property
    def cluster(self) -> str:
        return f'{self.config.cluster_label}="$cluster"'

    def raw(self, *matchers: str) -> str:
        """Selector for an exporter series: its job, the cluster and `matchers`."""
        return selector(self.config.exporter_selector, self.cluster, *matchers)

    def rec(self, *matchers: str) -> str:
        """Selector for a recording rule's series: the cluster and `matchers`."""
        return selector(self.cluster, *matchers)


NAMESPACE = 'namespace=~"$namespace"'
NODE = 'node=~"$node"'


# ---------------------------------------------------------------- variables


def datasource_variable() -> db.DatasourceVariable:
    return db.DatasourceVariable("datasource").label("Data source").type("prometheus")


def query_variable(
    name: str,
    label: str,
    query: str,
    *,
    multi: bool = True,
    include_all: bool = True,
    regex: str | None = None,
    hide: dm.VariableHide = dm.VariableHide.DONT_HIDE,
) -> db.QueryVariable:
    variable = (
        db.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DATASOURCE)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(include_all)
        .hide(hide)
    )
    if include_all:
        variable = variable.all_value(ALL)
    if regex:
        variable = variable.regex(regex)
    return variable


def cluster_variable(ctx: Context) -> db.QueryVariable:
    # Empty where series carry no cluster label: `cluster=""` then matches them all.
    return query_variable(
        "cluster",
        "Cluster",
        f"label_values({c.EXPORTER_BUILD_INFO.name}, {ctx.config.cluster_label})",
        multi=False,
        include_all=False,
    )


def namespace_variable(ctx: Context) -> db.QueryVariable:
    return query_variable(
        "namespace",
        "Namespace",
        f"label_values({c.POD_GPU_ALLOCATED.name}{ctx.raw()}, namespace)",
    )


def node_variable(ctx: Context, *, multi: bool = True) -> db.QueryVariable:
    return query_variable(
        "node",
        "Node",
        f"label_values({c.GPU_INFO.name}{ctx.raw()}, node)",
        multi=multi,
        include_all=multi,
    )


# ---------------------------------------------------------------- queries and panels


def target(
    expr: str, legend: str = "", *, instant: bool = False, table_format: bool = False
) -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).legend_format(legend or "__auto")
    if instant:
        query = query.instant()
    if table_format:
        query = query.format(pm.PromQueryFormat.TABLE)
    return query


def row(title: str) -> db.Row:
    return db.Row(title)


def ratio_by(labels: str, numerator: str, denominator: str) -> str:
    """`numerator` over `denominator`, each summed by `labels`."""
    return f"sum by ({labels}) ({numerator}) / sum by ({labels}) ({denominator})"


def timeseries_panel(
    title: str,
    description: str,
    targets: list[prom.Dataquery],
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    stack: bool = False,
    minimum: float | None = 0,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(60)
    return panel


def stat_panel(
    title: str, description: str, expr: str, unit: str, *, width: int = 4, height: int = 4
) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([target(expr, instant=True)])
        .unit(unit)
        .span(width)
        .height(height)
        .graph_mode(cm.BigValueGraphMode.NONE)
    )


def table_panel(
    title: str,
    description: str,
    columns: list[tuple[str, str]],
    *,
    width: int = 24,
    height: int = 8,
    units: dict[str, str] | None = None,
) -> table.Panel:
    """A table of instant queries, one column per (header, expr), joined on their labels."""
    targets = [target(expr, header, instant=True, table_format=True) for header, expr in columns]
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .span(width)
        .height(height)
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    # A merged table names each query's value column "Value #<refId>".
                    "renameByName": {
                        f"Value #{ref}": header
                        for ref, (header, _) in zip(ref_ids(len(columns)), columns, strict=True)
                    },
                },
            )
        )
    )
    for header, unit in (units or {}).items():
        panel = panel.override_by_name(header, [dm.DynamicConfigValue(id_val="unit", value=unit)])
    return panel


def bargauge_panel(
    title: str,
    description: str,
    expr: str,
    legend: str,
    unit: str,
    *,
    width: int = 12,
    height: int = 8,
    maximum: float | None = None,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([target(expr, legend, instant=True)])
        .unit(unit)
        .span(width)
        .height(height)
        .min(0)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
    )
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


# Value mappings of state timelines: what 0 and 1 mean, and their colours.
EVENT_STATES = {"0": ("off", "green"), "1": ("active", "red")}
UP_STATES = {"0": ("failing", "red"), "1": ("ok", "green")}


def state_panel(
    title: str,
    description: str,
    expr: str,
    legend: str,
    states: dict[str, tuple[str, str]],
    *,
    width: int = 24,
    height: int = 8,
) -> statetimeline.Panel:
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([target(expr, legend)])
        .span(width)
        .height(height)
        .mappings(
            [
                dm.ValueMap(
                    options={
                        value: dm.ValueMappingResult(text=text, color=color)
                        for value, (text, color) in states.items()
                    }
                )
            ]
        )
    )


def ref_ids(count: int) -> list[str]:
    """Grafana's refIds A, B, ... Z, AA, AB ..."""
    ids = []
    for i in range(count):
        name, n = "", i
        while True:
            name = chr(ord("A") + n % 26) + name
            n = n // 26 - 1
            if n < 0:
                break
        ids.append(name)
    return ids


def dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            db.DashboardLink("gpuledger dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["gpuledger"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def dashboard_with_variables(
    ctx: Context, uid: str, title: str, description: str, *variables: db.QueryVariable
) -> db.Dashboard:
    """A dashboard with the data source and cluster variables, then `variables` in order."""
    d = (
        dashboard(uid, title, description)
        .with_variable(datasource_variable())
        .with_variable(cluster_variable(ctx))
    )
    for variable in variables:
        d = d.with_variable(variable)
    return d


def section(d: db.Dashboard, title: str, *panels: cog.Builder[dm.Panel]) -> db.Dashboard:
    """`d` with a row titled `title`, then `panels` in order."""
    d = d.with_row(row(title))
    for panel in panels:
        d = d.with_panel(panel)
    return d
