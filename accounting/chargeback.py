"""Chargeback: who used which GPUs in a period, how well, and what they owe.

`chargeback(ledger, start, end, by=("team",), price_book=...)` returns one row per
group (team, namespace, job, pod, GPU model, node, region, queue, cohort, day, in any
combination) plus `__unattributed__` and `__idle__` rows, with GPU-hours held and
busy, efficiency, memory GB-hours, energy kWh, cost on the allocation and usage bases,
the cost of held-but-idle time, and each row's share of unallocated capacity. Money
columns are `Decimal` to the cent and each sums exactly to the cluster's cost
(docs/cost-model.md).

The frame's `attrs` carry the period, currency, total cost, idle mode, the hours the
ledger has of the period (done and provisional) and the GPUs' device sources (whether
any was simulated), so that every report made from it can state its coverage.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from accounting.costmodel import (
    CATEGORIES,
    IDLE_MODES,
    PRECISION,
    WORKLOAD,
    largest_remainder,
    price_records,
    rate_table,
    rates_for,
    split_cells,
    split_cells_in_ledger,
)
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import PriceBook

UNLABELLED = "__unlabelled__"
SIMULATED = "simulated"  # the exporter's source label of simulated GPUs
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
# What the dimensions read of each pod's metadata (Ledger.pods_frame's columns).
_POD_FIELDS = ("job_kind", "job_name", "labels", "job_labels", "queue", "cohort")
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
        wanted = [label_key(label) for label in self.labels]
        for source in (pod_labels, job_labels, namespace_labels):
            if not source:
                continue
            normalised = {label_key(k): v for k, v in source.items() if v}
            for key in wanted:
                value = normalised.get(key)
                if value:
                    return value
        return namespace if self.fallback == "namespace" else UNLABELLED


# Label keys hold letters, digits and - _ . / (Kubernetes); kube-state-metrics turns
# every one of - . / into _.
_LABEL_KEY = str.maketrans({"-": "_", ".": "_", "/": "_"})


def label_key(key: str) -> str:
    """Compare label keys as kube-state-metrics spells them (`cost-center` ==
    `cost_center`; a `prefix.io/` is kept, sanitised)."""
    return key.lower().translate(_LABEL_KEY)


def parse_month(text: str) -> tuple[int, int]:
    """[start, end) in unix seconds of a month given as YYYY-MM (UTC)."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise PeriodError(f"--month must be YYYY-MM, e.g. 2024-05; got {text!r}")
    year, month = int(match.group(1)), int(match.group(2))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


@dataclass
class Prepared:
    """A period's records with every dimension resolved and a rate id, ready to be
    summarised by any grouping (`summarise`) without reading the ledger again."""

    records: pd.DataFrame
    rates: list[Decimal]
    start: int
    end: int
    price_book: PriceBook
    teams: TeamRule
    coverage: dict[str, Any]


def load_period(
    ledger: Ledger, start: int, end: int, *, price_book: PriceBook, teams: TeamRule | None = None
) -> Prepared:
    """Read [start, end) from the ledger once and prepare it for any number of groupings.

    The cells are split and summed per day in the database (`split_cells_in_ledger`):
    the same records, to the milli-unit, as `prepare` makes from the ledger's frames.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="ledger-cells") as pool:
        # The cells are read in other threads (the database sorts without the GIL)
        # while this one reads and decodes the metadata.
        cells = (
            pool.submit(split_cells_in_ledger, ledger, start, end)
            if ledger.threads_may_read
            else None
        )
        pods, namespaces, nodes = (
            ledger.pods_frame(),
            ledger.namespaces_frame(),
            ledger.nodes_frame(),
        )
        covered = coverage(ledger, start, end)
        records, gpus_on_node, pairs = (
            cells.result() if cells else split_cells_in_ledger(ledger, start, end)
        )
    rate_ids, rates = rates_for(pairs, gpus_on_node, price_book)
    prepared = _prepared(
        records,
        rate_ids,
        rates,
        pods,
        namespaces,
        nodes,
        start,
        end,
        price_book=price_book,
        teams=teams or TeamRule(),
    )
    prepared.coverage = covered
    return prepared


def coverage(ledger: Ledger, start: int, end: int) -> dict[str, Any]:
    """What the ledger has of [start, end), for every report to state.

    `missing_hours`: neither done nor provisional. `provisional_hours`: in the numbers but
    not final (`provisional_through`: the latest time they hold). `gpu_hours_by_source`:
    GPU-hours by the exporter's device source (nvml, simulated, unknown); `simulated` is
    true when any GPU of the period was simulated.
    """
    ingested = set(ledger.hours_frame(start, end)["hour"].astype(int))
    provisional = ledger.provisional(start, end)
    sources = ledger.gpu_hours_by_source(start, end)
    return {
        "hours_ingested": len(ingested),
        "missing_hours": [
            h for h in range(start, end, HOUR) if h not in ingested and h not in provisional
        ],
        "provisional_hours": sorted(provisional),
        "provisional_through": max(provisional.values()) if provisional else None,
        "gpu_hours_by_source": sources,
        "simulated": sources.get(SIMULATED, 0) > 0,
    }


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
    return summarise(load_period(ledger, start, end, price_book=price_book, teams=teams), by, idle)


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
    prepared = prepare(
        usage, capacity, pods, namespaces, nodes, start, end, price_book=price_book, teams=teams
    )
    return summarise(prepared, by, idle)


def prepare(
    usage: pd.DataFrame,
    capacity: pd.DataFrame,
    pods: pd.DataFrame,
    namespaces: pd.DataFrame,
    nodes: pd.DataFrame,
    start: int,
    end: int,
    *,
    price_book: PriceBook,
    teams: TeamRule | None = None,
) -> Prepared:
    """Split the period's capacity into records and give each its dimensions and rate."""
    usage = usage[(usage["hour"] >= start) & (usage["hour"] < end)]
    capacity = capacity[(capacity["hour"] >= start) & (capacity["hour"] < end)]
    rate_ids, rates = rate_table(capacity, usage, price_book)
    records = split_cells(usage, capacity)
    return _prepared(
        records,
        rate_ids,
        rates,
        pods,
        namespaces,
        nodes,
        start,
        end,
        price_book=price_book,
        teams=teams or TeamRule(),
    )


def _prepared(
    records: pd.DataFrame,
    rate_ids: Mapping[tuple[str, str], int],
    rates: list[Decimal],
    pods: pd.DataFrame,
    namespaces: pd.DataFrame,
    nodes: pd.DataFrame,
    start: int,
    end: int,
    *,
    price_book: PriceBook,
    teams: TeamRule,
) -> Prepared:
    records = _with_dimensions(records, pods, namespaces, nodes, teams)
    node_codes = records["node"].cat.codes.to_numpy(np.int64)
    model_codes = records["model"].cat.codes.to_numpy(np.int64)
    nodes_known, models_known = records["node"].cat.categories, records["model"].cat.categories
    pair, pairs = pd.factorize(node_codes * len(models_known) + model_codes)
    ids = [
        rate_ids[(nodes_known[p // len(models_known)], models_known[p % len(models_known)])]
        for p in pairs.tolist()
    ]
    records["rate_id"] = np.asarray(ids, dtype=np.int64)[pair]
    return Prepared(records, rates, start, end, price_book, teams, coverage={})


def summarise(prepared: Prepared, by: Sequence[str] = ("team",), idle: str = "row") -> pd.DataFrame:
    """One row per group of `by` (plus `__unattributed__` and `__idle__` rows), with
    quantities and exact costs rounded to cents by largest remainder."""
    by = tuple(by)
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown or len(set(by)) != len(by):
        raise ValueError(f"cannot group by {list(by)}: choose distinct dimensions of {DIMENSIONS}")
    if idle not in IDLE_MODES:
        raise ValueError(f"idle must be one of {IDLE_MODES}, got {idle!r}")
    price_book, records = prepared.price_book, prepared.records
    keys = ["category", *by]
    price_keys = keys + [d for d in ("model", "rate_id") if d not in by]
    sums = ["held_ms", "busy_ms", "memory_byte_seconds", "energy_mj"]
    grouped = records.groupby(price_keys, sort=False, observed=True)[sums].sum().reset_index()
    priced = price_records(grouped, prepared.rates, price_book, idle)

    # Each key's priced rows, summed in the order they come (as a loop over the rows
    # would: float and Decimal sums depend on the order).
    group = priced.groupby(keys, sort=False, observed=True).ngroup().to_numpy(np.int64)
    count = int(group.max()) + 1 if len(group) else 0
    first = np.unique(group, return_index=True)[1]
    key_values = [_values(priced[k].iloc[first]) for k in keys]
    totals = {}
    for c in sums:
        column = priced[c].to_numpy()
        totals[c] = np.zeros(count, dtype=column.dtype)
        np.add.at(totals[c], group, column)
    with decimal.localcontext(PRECISION):
        for c in MONEY:
            totals[c] = np.full(count, Decimal(0), dtype=object)
            np.add.at(totals[c], group, priced[c].to_numpy(dtype=object))
        total = sum(priced["held_cost"], Decimal(0)) + sum(priced["energy_cost"], Decimal(0))

    order = _report_order(key_values, totals["cost_allocation"].tolist())
    columns = [[values[i] for i in order] for values in key_values]
    out = pd.DataFrame(
        {
            column: pd.Series(values, dtype=object)
            for column, values in zip(keys, columns, strict=True)
        },
        columns=keys,
    )
    held, busy = totals["held_ms"][order], totals["busy_ms"][order]
    out["gpu_hours_held"] = held / 3.6e6
    out["gpu_hours_busy"] = busy / 3.6e6
    # Python's int / int: exact for sums beyond 2**53 too.
    out["efficiency"] = [
        b / h if h else float("nan") for b, h in zip(busy.tolist(), held.tolist(), strict=True)
    ]
    out["memory_gb_hours"] = totals["memory_byte_seconds"][order] / 1e9 / 3600
    out["energy_kwh"] = totals["energy_mj"][order] / 3.6e9
    names = _KeyNames(list(zip(*columns, strict=True)))
    for column in MONEY:
        exact = totals[column][order].tolist()
        target = total if column in ("cost_allocation", "cost_usage") else None
        out[column] = pd.Series(largest_remainder(exact, names, target), dtype=object)
    out.attrs.update(
        start=prepared.start,
        end=prepared.end,
        by=list(by),
        idle=idle,
        currency=price_book.currency,
        provider=price_book.provider,
        price_book=price_book.path,
        total_cost=largest_remainder([total])[0] if count else Decimal("0.00"),
        exact_total_cost=total,
        team_labels=list(prepared.teams.labels),
        **prepared.coverage,
    )
    return out


def _values(column: pd.Series) -> list:
    """A column as a list of Python values; a categorical one through its codes (much
    faster than iterating its categories' Arrow strings one by one)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories.to_numpy(dtype=object)
        return categories[column.cat.codes.to_numpy()].tolist()
    return column.tolist()


def _report_order(key_values: list[list], costs: list[Decimal]) -> list[int]:
    """The groups' indexes in report order: workloads first, most expensive first; then
    unattributed, then idle; equal costs by their dimensions' text.

    That is sorted() on (category, -cost, dimensions as text) tuples, without comparing
    100,000 Decimals pair by pair in Python: the costs' floats (correctly rounded, so
    never in reverse order) and the texts' ranks sort in numpy; only the rare groups
    whose floats are equal but whose costs are not are sorted again exactly. (-cost is
    taken in the caller's decimal context, as that sort key was.)
    """
    negated = [-cost for cost in costs]
    category = np.asarray([CATEGORIES.index(c) for c in key_values[0]], dtype=np.int64)
    approx = np.fromiter(map(float, negated), dtype=np.float64, count=len(negated))
    texts = [[str(v) for v in values] for values in key_values[1:]]
    order = np.lexsort((*reversed([_text_ranks(t) for t in texts]), approx, category))
    ordered_category, ordered_approx = category[order], approx[order]
    same = (ordered_category[1:] == ordered_category[:-1]) & (
        ordered_approx[1:] == ordered_approx[:-1]
    )
    result = order.tolist()
    # Runs of equal (category, float) holding costs that differ: sort them exactly.
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.append(starts[1:], len(result))
    run = np.cumsum(np.concatenate([[True], ~same])) - 1
    unequal = [
        k for k in np.flatnonzero(same).tolist() if negated[result[k]] != negated[result[k + 1]]
    ]
    for r in sorted(set(run[unequal].tolist())):
        start, end = int(starts[r]), int(ends[r])
        result[start:end] = sorted(
            result[start:end], key=lambda i: (negated[i], tuple(t[i] for t in texts))
        )
    return result


def _text_ranks(texts: list[str]) -> np.ndarray:
    """Each text's rank among the distinct texts, in Python's str order."""
    codes, uniques = pd.factorize(np.asarray(texts, dtype=object))
    rank = np.empty(len(uniques), dtype=np.int64)
    rank[sorted(range(len(uniques)), key=uniques.__getitem__)] = np.arange(len(uniques))
    return rank[codes]


class _KeyNames(Sequence[str]):
    """Each group's name for largest_remainder's ties ("category\x1fdim\x1f..."), made
    only for the few groups that tie."""

    def __init__(self, keys: list[tuple]) -> None:
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):  # type: ignore[override]
        return "\x1f".join(map(str, self.keys[i]))


def _with_dimensions(
    records: pd.DataFrame,
    pods: pd.DataFrame,
    namespaces: pd.DataFrame,
    nodes: pd.DataFrame,
    teams: TeamRule,
) -> pd.DataFrame:
    """Add every dimension column to the records (as categoricals: fast to group).

    Idle and unattributed records take their category's name in every dimension but
    the hardware ones (model, node, region, day)."""
    namespace_labels = dict(zip(namespaces["namespace"], namespaces["labels"], strict=True))
    # (namespace, pod) -> (job_kind, job_name, labels, job_labels, queue, cohort), from
    # whole columns (itertuples reads Arrow strings one at a time).
    known = dict(
        zip(
            zip(pods["namespace"].tolist(), pods["pod"].tolist(), strict=True),
            zip(*(pods[f].tolist() for f in _POD_FIELDS), strict=True),
            strict=True,
        )
    )
    category_codes, category_names = pd.factorize(records["category"].to_numpy(dtype=object))
    names = list(category_names)
    workload = category_codes == (names.index(WORKLOAD) if WORKLOAD in names else -1)
    # One code per (namespace, pod), from the two columns' codes: no tuples built.
    ns_codes, ns_names = pd.factorize(records["namespace"].to_numpy(dtype=object))
    pod_codes, pod_names = pd.factorize(records["pod"].to_numpy(dtype=object))
    pair_codes, pairs = pd.factorize(ns_codes.astype(np.int64) * len(pod_names) + pod_codes)
    columns: dict[str, list[str]] = {
        d: []
        for d in ("namespace", "pod", "team", "job", "job_kind", "job_name", "queue", "cohort")
    }
    unknown = ("", "", {}, {}, "", "")
    team_of: dict[tuple, str] = {}
    for pair in pairs.tolist():
        namespace, pod = ns_names[pair // len(pod_names)], pod_names[pair % len(pod_names)]
        job_kind, job_name, labels, job_labels, queue, cohort = known.get((namespace, pod), unknown)
        job_kind = job_kind or "Pod"
        job_name = job_name or pod
        columns["namespace"].append(namespace)
        columns["pod"].append(pod)
        # Most pods share their labels with many others: each team is found once.
        seen = (
            namespace,
            tuple(labels.items()) if labels else (),
            tuple(job_labels.items()) if job_labels else (),
        )
        team = team_of.get(seen)
        if team is None:
            team = team_of[seen] = teams.team(
                namespace, labels, job_labels, namespace_labels.get(namespace, {})
            )
        columns["team"].append(team)
        columns["job"].append(f"{job_kind}/{job_name}")
        columns["job_kind"].append(job_kind)
        columns["job_name"].append(job_name)
        columns["queue"].append(queue)
        columns["cohort"].append(cohort)
    records = records.copy()
    for dim, values in columns.items():
        records[dim] = _per_record(
            values, pair_codes, workload, category_codes, list(category_names)
        )
    node_labels = dict(zip(nodes["node"], nodes["labels"], strict=True))
    records["node"] = records["node"].astype("category")
    records["region"] = (
        records["node"]
        .map({n: _region(node_labels.get(n, {})) for n in records["node"].cat.categories})
        .astype("category")
    )
    days = records["hour"] // 86400 * 86400
    names = {d: datetime.fromtimestamp(d, UTC).strftime("%Y-%m-%d") for d in days.unique()}
    records["day"] = days.map(names).astype("category")
    records["model"] = records["model"].astype("category")
    records["category"] = pd.Categorical.from_codes(category_codes, list(category_names))
    return records


def _per_record(
    per_pair: list[str],
    pair_codes: np.ndarray,
    workload: np.ndarray,
    category_codes: np.ndarray,
    category_names: list[str],
) -> pd.Categorical:
    """A categorical column: each workload record's value from its pod, every other
    record its category's name. Built from codes: fast on millions of records."""
    value_codes, values = pd.factorize(np.asarray(per_pair, dtype=object))
    names = list(values)
    position = {name: i for i, name in enumerate(names)}
    for name in category_names:
        if name != WORKLOAD and name not in position:
            position[name] = len(names)
            names.append(name)
    # Workload records never take their category's name: any position will do.
    category_positions = np.asarray([position.get(n, 0) for n in category_names], dtype=np.int64)
    codes = np.where(workload, value_codes[pair_codes], category_positions[category_codes])
    return pd.Categorical.from_codes(codes, names)


def _region(labels: Mapping[str, str]) -> str:
    normalised = {label_key(k): v for k, v in labels.items()}
    for key in REGION_LABELS:
        if normalised.get(label_key(key)):
            return normalised[label_key(key)]
    return ""
