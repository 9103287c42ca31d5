"""Chargeback: who used which GPUs in a period, how well, and what they owe.

`chargeback(ledger, start, end, by=("team",), price_book=...)` returns one row per
group (team, namespace, job, pod, GPU model, node, region, queue, cohort, day, in any
combination) plus `__unattributed__` and `__idle__` rows, with GPU-hours held and
busy, efficiency, memory GB-hours, energy kWh, cost on the allocation and usage bases,
the cost of held-but-idle time, and each row's share of unallocated capacity. Money
columns are `Decimal` to the cent and each sums exactly to the cluster's cost
(docs/cost-model.md).

The frame's `attrs` carry the period, currency, total cost, idle mode and the hours the
ledger has of the period, so that every report made from it can state its coverage.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pandas as pd

from accounting.costmodel import (
    CATEGORIES,
    IDLE,
    IDLE_MODES,
    PRECISION,
    UNATTRIBUTED,
    WORKLOAD,
    largest_remainder,
    node_rates,
    price_records,
    split_cells,
)
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import PriceBook

UNLABELLED = "__unlabelled__"
DIMENSIONS = (
    "team",
    "namespace",
    "job",
    "job_kind",
    "job_name",
    "pod",
    "model",
    "node",
    "region",
    "queue",
    "cohort",
    "day",
)
# Dimensions that describe the hardware keep their values on idle and unattributed rows.
_HARDWARE = ("model", "node", "region", "day")
MONEY = ("cost_allocation", "cost_usage", "idle_cost_in_allocation", "unallocated_share")
QUANTITIES = (
    "gpu_hours_held",
    "gpu_hours_busy",
    "efficiency",
    "memory_gb_hours",
    "energy_kwh",
)
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")


class PeriodError(ValueError):
    """A period that cannot be read; the message shows the expected form."""


@dataclass(frozen=True)
class TeamRule:
    """Which labels name a team, and where work without one goes.

    The first of `labels` found on the pod, then its job, then its namespace wins.
    `fallback` is "unlabelled" (the `__unlabelled__` bucket) or "namespace" (the
    namespace's name).
    """

    labels: tuple[str, ...] = ("team", "cost-center")
    fallback: str = "unlabelled"

    def __post_init__(self) -> None:
        if self.fallback not in ("unlabelled", "namespace"):
            raise ValueError(
                f"team fallback must be 'unlabelled' or 'namespace', got {self.fallback!r}"
            )
        if not self.labels:
            raise ValueError("give at least one team label")

    def team(
        self,
        namespace: str,
        pod_labels: Mapping[str, str],
        job_labels: Mapping[str, str],
        namespace_labels: Mapping[str, str],
    ) -> str:
        for source in (pod_labels, job_labels, namespace_labels):
            normalised = {label_key(k): v for k, v in source.items() if v}
            for label in self.labels:
                value = normalised.get(label_key(label))
                if value:
                    return value
        return namespace if self.fallback == "namespace" else UNLABELLED


def label_key(key: str) -> str:
    """Compare label keys as kube-state-metrics spells them (`cost-center` ==
    `cost_center`; a `prefix.io/` is kept, sanitised)."""
    return re.sub(r"[^a-z0-9]", "_", key.lower())


def parse_month(text: str) -> tuple[int, int]:
    """[start, end) in unix seconds of a month given as YYYY-MM (UTC)."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise PeriodError(f"--month must be YYYY-MM, e.g. 2024-05; got {text!r}")
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def chargeback(
    ledger: Ledger,
    start: int,
    end: int,
    *,
    price_book: PriceBook,
    by: Sequence[str] = ("team",),
    idle: str = "row",
    teams: TeamRule | None = None,
) -> pd.DataFrame:
    """The chargeback of [start, end) (unix seconds on hour boundaries) from the ledger."""
    frame = chargeback_from_frames(
        ledger.usage_frame(start, end),
        ledger.capacity_frame(start, end),
        ledger.pods_frame(),
        ledger.namespaces_frame(),
        ledger.nodes_frame(),
        start,
        end,
        price_book=price_book,
        by=by,
        idle=idle,
        teams=teams,
    )
    ingested = set(ledger.hours_frame(start, end)["hour"].astype(int))
    expected = range(start, end, HOUR)
    frame.attrs["hours_ingested"] = len(ingested)
    frame.attrs["missing_hours"] = [h for h in expected if h not in ingested]
    return frame


def chargeback_from_frames(
    usage: pd.DataFrame,
    capacity: pd.DataFrame,
    pods: pd.DataFrame,
    namespaces: pd.DataFrame,
    nodes: pd.DataFrame,
    start: int,
    end: int,
    *,
    price_book: PriceBook,
    by: Sequence[str] = ("team",),
    idle: str = "row",
    teams: TeamRule | None = None,
) -> pd.DataFrame:
    """The chargeback from ledger-shaped frames (see `Ledger.*_frame`)."""
    by = tuple(by)
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown or len(set(by)) != len(by):
        raise ValueError(f"cannot group by {list(by)}: choose distinct dimensions of {DIMENSIONS}")
    if idle not in IDLE_MODES:
        raise ValueError(f"idle must be one of {IDLE_MODES}, got {idle!r}")
    teams = teams or TeamRule()
    usage = usage[(usage["hour"] >= start) & (usage["hour"] < end)]
    capacity = capacity[(capacity["hour"] >= start) & (capacity["hour"] < end)]
    for model, node in usage[["model", "node"]].drop_duplicates().itertuples(index=False):
        price_book.price(model, f"node {node}")
    rates = node_rates(capacity, price_book)
    records = split_cells(usage, capacity)
    records = _with_dimensions(records, by, pods, namespaces, nodes, teams)

    keys = ["category", *by]
    price_keys = keys + [d for d in ("node", "model") if d not in by]
    sums = ["held_ms", "busy_ms", "memory_byte_seconds", "energy_mj"]
    grouped = records.groupby(price_keys, sort=False, dropna=False)[sums].sum().reset_index()
    priced = price_records(grouped, rates, price_book, idle)

    with decimal.localcontext(PRECISION):
        rows: dict[tuple, dict[str, Any]] = {}
        money_columns = ("held_cost", "busy_cost", *MONEY)
        values = {c: list(priced[c]) for c in (*keys, *sums, *money_columns)}
        for i in range(len(priced)):
            key = tuple(values[k][i] for k in keys)
            row = rows.get(key)
            if row is None:
                row = rows[key] = {c: 0 for c in sums} | {c: Decimal(0) for c in money_columns}
            for c in sums:
                row[c] += values[c][i]
            for c in money_columns:
                row[c] += values[c][i]
        total = sum(priced["held_cost"], Decimal(0)) + sum(priced["energy_cost"], Decimal(0))

    ordered = sorted(rows.items(), key=lambda kv: _order(kv[0], kv[1]))
    names = ["\x1f".join(map(str, key)) for key, _ in ordered]
    out = pd.DataFrame([dict(zip(keys, key, strict=True)) for key, _ in ordered], columns=keys)
    stats = [row for _, row in ordered]
    out["gpu_hours_held"] = [r["held_ms"] / 3.6e6 for r in stats]
    out["gpu_hours_busy"] = [r["busy_ms"] / 3.6e6 for r in stats]
    out["efficiency"] = [
        r["busy_ms"] / r["held_ms"] if r["held_ms"] else float("nan") for r in stats
    ]
    out["memory_gb_hours"] = [r["memory_byte_seconds"] / 1e9 / 3600 for r in stats]
    out["energy_kwh"] = [r["energy_mj"] / 3.6e9 for r in stats]
    for column in MONEY:
        exact = [r[column] for r in stats]
        target = total if column in ("cost_allocation", "cost_usage") else None
        out[column] = pd.Series(largest_remainder(exact, names, target), dtype=object)
    out.attrs.update(
        start=start,
        end=end,
        by=list(by),
        idle=idle,
        currency=price_book.currency,
        provider=price_book.provider,
        price_book=price_book.path,
        total_cost=largest_remainder([total])[0] if stats else Decimal("0.00"),
        exact_total_cost=total,
        team_labels=list(teams.labels),
    )
    return out


def _order(key: tuple, row: Mapping[str, Any]) -> tuple:
    # Workloads first, most expensive first; then unattributed, then idle.
    return (CATEGORIES.index(key[0]), -row["cost_allocation"], tuple(map(str, key[1:])))


def _with_dimensions(
    records: pd.DataFrame,
    by: tuple[str, ...],
    pods: pd.DataFrame,
    namespaces: pd.DataFrame,
    nodes: pd.DataFrame,
    teams: TeamRule,
) -> pd.DataFrame:
    """Add the columns of `by` to the records."""
    records = records.copy()
    pod_dims = {"team", "job", "job_kind", "job_name", "queue", "cohort"} & set(by)
    if pod_dims:
        namespace_labels = dict(zip(namespaces["namespace"], namespaces["labels"], strict=True))
        known = {(r.namespace, r.pod): r for r in pods.itertuples(index=False)}
        workload_keys = (
            records.loc[records["category"] == WORKLOAD, ["namespace", "pod"]]
            .drop_duplicates()
            .itertuples(index=False)
        )
        table = []
        for namespace, pod in workload_keys:
            meta = known.get((namespace, pod))
            labels = meta.labels if meta is not None else {}
            job_labels = meta.job_labels if meta is not None else {}
            job_kind = meta.job_kind if meta is not None and meta.job_kind else "Pod"
            job_name = meta.job_name if meta is not None and meta.job_name else pod
            table.append(
                {
                    "namespace": namespace,
                    "pod": pod,
                    "team": teams.team(
                        namespace, labels, job_labels, namespace_labels.get(namespace, {})
                    ),
                    "job": f"{job_kind}/{job_name}",
                    "job_kind": job_kind,
                    "job_name": job_name,
                    "queue": meta.queue if meta is not None else "",
                    "cohort": meta.cohort if meta is not None else "",
                }
            )
        dims = pd.DataFrame(
            table,
            columns=["namespace", "pod", "team", "job", "job_kind", "job_name", "queue", "cohort"],
        )
        records = records.merge(
            dims[["namespace", "pod", *sorted(pod_dims)]], on=["namespace", "pod"], how="left"
        )
    if "region" in by:
        node_labels = dict(zip(nodes["node"], nodes["labels"], strict=True))
        records["region"] = [_region(node_labels.get(n, {})) for n in records["node"]]
    if "day" in by:
        records["day"] = pd.to_datetime(records["hour"], unit="s", utc=True).dt.strftime("%Y-%m-%d")
    for category in (UNATTRIBUTED, IDLE):
        mask = records["category"] == category
        for dim in by:
            if dim not in _HARDWARE:
                records.loc[mask, dim] = category
    for dim in by:
        records[dim] = records[dim].fillna("").astype(str)
    return records


def _region(labels: Mapping[str, str]) -> str:
    normalised = {label_key(k): v for k, v in labels.items()}
    for key in REGION_LABELS:
        if normalised.get(label_key(key)):
            return normalised[label_key(key)]
    return ""
