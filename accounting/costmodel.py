"""The cost model's arithmetic (docs/cost-model.md, sections 2-4 and 6).

- `split_cells`: every GPU-hour of capacity into workload, `__unattributed__` and
  `__idle__` records, per hour and (node, GPU model), in exact integer milli-units.
  `split_cells_in_ledger` does the same in the ledger's database and sums the records
  per day (what every report needs), so that a month is not read row by row.
- `rate_table` (`rates_for`): the price of a GPU-hour on each (node, model), node
  overhead spread.
- `price_records`: exact `Decimal` costs on the allocation and usage bases.
- `largest_remainder`: rounding to cents that keeps a column's sum exact.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from accounting import ledger as schema
from accounting.ledger import Ledger
from accounting.pricebook import PriceBook

WORKLOAD, UNATTRIBUTED, IDLE = "workload", "__unattributed__", "__idle__"
CATEGORIES = (WORKLOAD, UNATTRIBUTED, IDLE)
IDLE_MODES = ("row", "share")

DAY = 86400
MS_PER_HOUR = Decimal(3_600_000)
MJ_PER_KWH = Decimal(3_600_000_000)
CENT = Decimal("0.01")
# Enough digits that no product or quotient of the model loses a cent.
PRECISION = decimal.Context(prec=50)

RECORD_COLUMNS = (
    "hour",
    "category",
    "namespace",
    "pod",
    "node",
    "model",
    "held_ms",
    "busy_ms",
    "memory_byte_seconds",
    "energy_mj",
)


def split_cells(usage: pd.DataFrame, capacity: pd.DataFrame) -> pd.DataFrame:
    """Records that partition each (hour, node, model) cell's capacity and energy.

    Workload records are the usage rows (pods without a name are `__unattributed__`).
    Per cell, effective capacity is max(capacity, held by pods) and effective energy
    max(GPU energy, pods' energy); busy GPU time no pod held becomes an
    `__unattributed__` record and the rest of the cell an `__idle__` record.
    """
    cell = ["hour", "node", "model"]
    usage = usage.copy()
    usage["category"] = WORKLOAD
    unnamed = (usage["namespace"] == "") | (usage["pod"] == "")
    usage.loc[unnamed, "category"] = UNATTRIBUTED
    pods_in_cell = (
        usage.groupby(cell, sort=False)[["held_ms", "busy_ms", "energy_mj"]].sum().reset_index()
    )
    cells = pd.merge(
        capacity[cell + ["capacity_ms", "busy_ms", "energy_mj"]].rename(
            columns={"busy_ms": "gpu_busy_ms", "energy_mj": "gpu_energy_mj"}
        ),
        pods_in_cell,
        on=cell,
        how="outer",
    )
    for column in (
        "capacity_ms",
        "gpu_busy_ms",
        "gpu_energy_mj",
        "held_ms",
        "busy_ms",
        "energy_mj",
    ):
        cells[column] = cells[column].fillna(0).astype("int64")
    effective = cells[["capacity_ms", "held_ms"]].max(axis=1)
    effective_energy = cells[["gpu_energy_mj", "energy_mj"]].max(axis=1)
    free = effective - cells["held_ms"]
    unattributed = (cells["gpu_busy_ms"] - cells["busy_ms"]).clip(lower=0)
    unattributed = unattributed.where(unattributed < free, free)
    idle = free - unattributed
    base = cells[cell].copy()
    base["namespace"] = ""
    base["pod"] = ""
    base["memory_byte_seconds"] = 0.0
    outside = base.assign(
        category=UNATTRIBUTED, held_ms=unattributed, busy_ms=unattributed, energy_mj=0
    )
    idle_records = base.assign(
        category=IDLE,
        held_ms=idle,
        busy_ms=0,
        energy_mj=effective_energy - cells["energy_mj"],
    )
    records = pd.concat(
        [
            usage[list(RECORD_COLUMNS)],
            outside[outside["held_ms"] > 0][list(RECORD_COLUMNS)],
            idle_records[(idle_records["held_ms"] > 0) | (idle_records["energy_mj"] > 0)][
                list(RECORD_COLUMNS)
            ],
        ],
        ignore_index=True,
    )
    for column in ("held_ms", "busy_ms", "energy_mj", "hour"):
        records[column] = records[column].astype("int64")
    return records


def split_cells_in_ledger(
    ledger: Ledger, start: int, end: int
) -> tuple[pd.DataFrame, dict[str, int], list[tuple[str, str]]]:
    """`split_cells` of the ledger's [start, end), computed in its database.

    Returns the records summed per day (RECORD_COLUMNS; `hour` is the day's start: the
    finest time any report groups by), the most GPUs each node reported in an hour, and
    every (node, model) pair of the period (for `rates_for`). Sums of integer
    milli-units are exact, so every cost is the one `split_cells` gives; a month's
    millions of usage rows stay in the database.
    """
    u, c = schema.usage, schema.capacity
    days = [(lo, min(end, (lo // DAY + 1) * DAY)) for lo in _day_starts(start, end)]
    per_hour = (
        sa.select(c.c.hour, c.c.node, sa.func.sum(c.c.gpus).label("gpus"))
        .where(c.c.hour >= start, c.c.hour < end)
        .group_by(c.c.hour, c.c.node)
        .subquery()
    )
    gpus_by_node = sa.select(per_hour.c.node, sa.func.max(per_hour.c.gpus)).group_by(
        per_hour.c.node
    )
    answers = _read_all(
        ledger,
        [
            gpus_by_node,
            *(_usage_by_day(u, lo, hi) for lo, hi in days),
            *(_cells_by_day(u, c, lo, hi) for lo, hi in days),
        ],
    )
    gpus_on_node = {node: int(gpus) for node, gpus in answers[0]}
    # Day after day, as one query for the period would answer (its groups in key
    # order, the day first): the records' order decides the order of later sums.
    workload = _frame(_usage_by_day(u, start, end), answers[1 : 1 + len(days)])
    cells = _frame(_cells_by_day(u, c, start, end), answers[1 + len(days) :])
    pairs = list(
        dict.fromkeys(
            zip(
                [*cells["node"].tolist(), *workload["node"].tolist()],
                [*cells["model"].tolist(), *workload["model"].tolist()],
                strict=True,
            )
        )
    )
    workload["category"] = WORKLOAD
    unnamed = (workload["namespace"] == "") | (workload["pod"] == "")
    workload.loc[unnamed, "category"] = UNATTRIBUTED
    base = cells[["hour", "node", "model"]].assign(namespace="", pod="", memory_byte_seconds=0.0)
    outside = base.assign(
        category=UNATTRIBUTED,
        held_ms=cells["unattributed_ms"],
        busy_ms=cells["unattributed_ms"],
        energy_mj=0,
    )
    idle = base.assign(
        category=IDLE, held_ms=cells["idle_ms"], busy_ms=0, energy_mj=cells["idle_energy_mj"]
    )
    # Every part is >= 0 in every hour, so a day's sum is > 0 when an hour's was: the
    # same records as split_cells keeps.
    records = pd.concat(
        [
            workload[list(RECORD_COLUMNS)],
            outside[outside["held_ms"] > 0][list(RECORD_COLUMNS)],
            idle[(idle["held_ms"] > 0) | (idle["energy_mj"] > 0)][list(RECORD_COLUMNS)],
        ],
        ignore_index=True,
    )
    for column in ("held_ms", "busy_ms", "energy_mj", "hour"):
        records[column] = records[column].astype("int64")
    records["memory_byte_seconds"] = records["memory_byte_seconds"].astype("float64")
    return records, gpus_on_node, pairs


def _sum(column: sa.ColumnElement, name: str) -> sa.ColumnElement:
    # PostgreSQL sums BIGINT as NUMERIC; the sums here fit in 64 bits.
    return sa.cast(sa.func.sum(column), sa.BigInteger).label(name)


def _usage_by_day(u: sa.Table, start: int, end: int) -> sa.Select:
    rows = (
        sa.select(
            ((u.c.hour // DAY) * DAY).label("hour"),
            u.c.namespace,
            u.c.pod,
            u.c.node,
            u.c.model,
            u.c.held_ms,
            u.c.busy_ms,
            u.c.memory_byte_seconds,
            u.c.energy_mj,
        )
        .where(u.c.hour >= start, u.c.hour < end)
        .subquery()
    )
    keys = (rows.c.hour, rows.c.namespace, rows.c.pod, rows.c.node, rows.c.model)
    return sa.select(
        *keys,
        _sum(rows.c.held_ms, "held_ms"),
        _sum(rows.c.busy_ms, "busy_ms"),
        sa.func.sum(rows.c.memory_byte_seconds).label("memory_byte_seconds"),
        _sum(rows.c.energy_mj, "energy_mj"),
    ).group_by(*keys)


def _cells_by_day(u: sa.Table, c: sa.Table, start: int, end: int) -> sa.Select:
    """Per (hour, node, model) cell, split_cells's arithmetic; summed per day."""
    pods = (
        sa.select(
            u.c.hour,
            u.c.node,
            u.c.model,
            _sum(u.c.held_ms, "held"),
            _sum(u.c.busy_ms, "busy"),
            _sum(u.c.energy_mj, "energy"),
        )
        .where(u.c.hour >= start, u.c.hour < end)
        .group_by(u.c.hour, u.c.node, u.c.model)
        .subquery("pods")
    )
    # Usage in a cell without capacity makes no unattributed or idle record
    # (no capacity: nothing is free), so capacity's cells are all there are.
    joined = c.outerjoin(
        pods, sa.and_(pods.c.hour == c.c.hour, pods.c.node == c.c.node, pods.c.model == c.c.model)
    )
    held = sa.func.coalesce(pods.c.held, 0)
    busy = sa.func.coalesce(pods.c.busy, 0)
    energy = sa.func.coalesce(pods.c.energy, 0)
    cells = (
        sa.select(
            ((c.c.hour // DAY) * DAY).label("hour"),
            c.c.node,
            c.c.model,
            # free = max(capacity, held) - held
            (sa.case((c.c.capacity_ms >= held, c.c.capacity_ms), else_=held) - held).label("free"),
            # busy GPU time no pod held: max(gpu busy - pods' busy, 0), at most free
            sa.case((c.c.busy_ms > busy, c.c.busy_ms - busy), else_=0).label("outside"),
            # energy no pod was charged: max(GPU energy, pods' energy) - pods' energy
            (sa.case((c.c.energy_mj >= energy, c.c.energy_mj), else_=energy) - energy).label(
                "idle_energy"
            ),
        )
        .select_from(joined)
        .where(c.c.hour >= start, c.c.hour < end)
        .subquery("cells")
    )
    unattributed = sa.case((cells.c.outside < cells.c.free, cells.c.outside), else_=cells.c.free)
    keys = (cells.c.hour, cells.c.node, cells.c.model)
    return sa.select(
        *keys,
        _sum(unattributed, "unattributed_ms"),
        _sum(cells.c.free - unattributed, "idle_ms"),
        _sum(cells.c.idle_energy, "idle_energy_mj"),
    ).group_by(*keys)


def _day_starts(start: int, end: int) -> list[int]:
    """The start of each day's part of [start, end): start, then each midnight after it."""
    return [start, *range((start // DAY + 1) * DAY, end, DAY)] if start < end else []


def _read_all(ledger: Ledger, statements: list[sa.Select]) -> list[list[tuple]]:
    """Each statement's rows, two statements at once, each on a connection of its own:
    the database sorts without holding Python's lock, so two days use both of a small
    machine's cores."""

    def read(statement: sa.Select) -> list[tuple]:
        with ledger.engine.connect() as conn:
            return conn.execute(statement).cursor.fetchall()

    if not ledger.threads_may_read:
        return [read(statement) for statement in statements]
    with ThreadPoolExecutor(2, thread_name_prefix="ledger-read") as pool:
        return list(pool.map(read, statements))


def _frame(statement: sa.Select, answers: list[list[tuple]]) -> pd.DataFrame:
    """One frame of the answers' rows, in order, with the statement's columns."""
    return pd.DataFrame(
        [row for rows in answers for row in rows], columns=list(statement.selected_columns.keys())
    )


def rate_table(
    capacity: pd.DataFrame, usage: pd.DataFrame, price_book: PriceBook
) -> tuple[dict[tuple[str, str], int], list[Decimal]]:
    """The price of a GPU-hour per (node, model) of these frames (see `rates_for`)."""
    gpus_on_node: dict[str, int] = {}
    if not capacity.empty:
        per_hour = capacity.groupby(["hour", "node"])["gpus"].sum()
        gpus_on_node = {k: int(v) for k, v in per_hour.groupby(level="node").max().items()}
    pairs = pd.concat([capacity[["node", "model"]], usage[["node", "model"]]]).drop_duplicates()
    return rates_for(pairs.itertuples(index=False), gpus_on_node, price_book)


def rates_for(
    pairs: Iterable[tuple[str, str]], gpus_on_node: Mapping[str, int], price_book: PriceBook
) -> tuple[dict[tuple[str, str], int], list[Decimal]]:
    """The price of a GPU-hour per (node, model), as an id into a list of distinct rates.

    gpus(node) is the most GPUs the node reported in an hour of the period; a node with
    usage but no capacity row carries no overhead. Nodes of the same model and size
    share a rate, so costs can be summed per rate instead of per node.
    """
    ids: dict[tuple[str, str], int] = {}
    rates: list[Decimal] = []
    index: dict[Decimal, int] = {}
    with decimal.localcontext(PRECISION):
        for node, model in pairs:
            rate = price_book.price(model, f"node {node}").rate(gpus_on_node.get(node, 0))
            if rate not in index:
                index[rate] = len(rates)
                rates.append(rate)
            ids[(node, model)] = index[rate]
    return ids, rates


def price_records(
    grouped: pd.DataFrame,
    rates: Sequence[Decimal],
    price_book: PriceBook,
    idle: str = "row",
) -> pd.DataFrame:
    """Exact costs of records already summed per (category, dimensions..., model, rate_id).

    Adds Decimal columns: held_cost, busy_cost, energy_cost, cost_allocation, cost_usage,
    idle_cost_in_allocation and unallocated_share (docs/cost-model.md, section 4).
    """
    if idle not in IDLE_MODES:
        raise ValueError(f"idle must be one of {IDLE_MODES}, got {idle!r}")
    frame = grouped.copy()
    # Column at a time: numpy object arrays apply each Decimal operation to every row
    # without a Python loop (the same operations, in the same order, as a row loop).
    model_of, models = pd.factorize(frame["model"].to_numpy(dtype=object))
    category = frame["category"].to_numpy(dtype=object)
    is_idle, is_workload = category == IDLE, category == WORKLOAD
    zero = Decimal(0)
    with decimal.localcontext(PRECISION):
        kwh = _objects([price_book.price(m).price_per_kwh for m in models])[model_of]
        rate = _objects(rates)[frame["rate_id"].to_numpy(dtype=np.int64)]
        held = _decimals(frame["held_ms"]) * rate / MS_PER_HOUR
        busy = _decimals(frame["busy_ms"]) * rate / MS_PER_HOUR
        energy = _decimals(frame["energy_mj"]) * kwh / MJ_PER_KWH
        # Per model, summed row after row: pool = held + energy of every record, idle
        # cost of the idle records, busy of the others, held of the workloads.
        pool = _sums_by(model_of, len(models), _interleaved(held, energy))
        idle_cost = _sums_by(model_of[is_idle], len(models), _interleaved(held, energy)[is_idle])
        busy_total = _sums_by(model_of[~is_idle], len(models), busy[~is_idle])
        held_by_workloads = _sums_by(model_of[is_workload], len(models), held[is_workload])
        shared = held_by_workloads > zero  # models whose idle cost can be shared out
        share_factor = np.full(len(models), zero, dtype=object)
        share_factor[shared] = idle_cost[shared] / held_by_workloads[shared]
        gets_share = is_workload & shared[model_of]
        share = np.full(len(frame), zero, dtype=object)
        share[gets_share] = held[gets_share] * share_factor[model_of[gets_share]]
        own = held + energy
        allocation = own.copy()
        if idle == "share":
            allocation[is_idle & shared[model_of]] = zero
            allocation[~is_idle] = own[~is_idle] + share[~is_idle]
        # Usage basis: each model's pool in proportion to busy time; a model with
        # nothing busy is charged as on the allocation basis (held + energy).
        usage_cost = own.copy()
        by_busy = (busy_total > zero)[model_of]
        usage_cost[by_busy & is_idle] = zero
        counted = by_busy & ~is_idle
        usage_cost[counted] = (
            pool[model_of[counted]] * busy[counted] / busy_total[model_of[counted]]
        )
        waste = np.full(len(frame), zero, dtype=object)
        idle_time = held[is_workload] - busy[is_workload]
        waste[is_workload] = np.where(idle_time > zero, idle_time, zero)
    frame["held_cost"] = held.tolist()
    frame["busy_cost"] = busy.tolist()
    frame["energy_cost"] = energy.tolist()
    frame["cost_allocation"] = allocation.tolist()
    frame["cost_usage"] = usage_cost.tolist()
    frame["idle_cost_in_allocation"] = waste.tolist()
    frame["unallocated_share"] = share.tolist()
    return frame


def _objects(values: Sequence) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _decimals(column: pd.Series) -> np.ndarray:
    return _objects(list(map(Decimal, column.tolist())))


def _interleaved(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per row, a pair (first, second): summed in that order, as `total + a + b`."""
    pairs = np.empty((len(first), 2), dtype=object)
    pairs[:, 0], pairs[:, 1] = first, second
    return pairs


def _sums_by(group: np.ndarray, count: int, values: np.ndarray) -> np.ndarray:
    """Decimal(0) plus each group's values (rows, or rows of pairs), in row order."""
    sums = np.full(count, Decimal(0), dtype=object)
    per_row = values.shape[1] if values.ndim > 1 else 1
    np.add.at(sums, np.repeat(group, per_row), values.ravel())
    return sums


def round_half_even(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def largest_remainder(
    amounts: Sequence[Decimal], names: Sequence[str] | None = None, total: Decimal | None = None
) -> list[Decimal]:
    """Round each amount to the cent so that they sum to `total` (default: their exact
    sum rounded half to even): floor every amount, then give the missing cents one each
    to the largest remainders; ties go to the earlier name, then the earlier amount."""
    if not amounts:
        return []
    with decimal.localcontext(PRECISION):
        exact_total = sum(amounts, Decimal(0))
        target = round_half_even(exact_total if total is None else total)
        floors = [a.quantize(CENT, rounding=ROUND_FLOOR) for a in amounts]
        missing = int(((target - sum(floors, Decimal(0))) / CENT).to_integral_value())
        if missing < 0 or missing > len(amounts):
            raise ArithmeticError(
                f"cannot round {len(amounts)} amounts summing to {exact_total} to {target}"
            )
        if missing:
            # Each floor's distance below its amount (<= 0): the most negative first.
            gaps = [f - a for a, f in zip(amounts, floors, strict=True)]
            for i in _smallest(gaps, names, missing):
                floors[i] += CENT
    return floors


def _smallest(gaps: list[Decimal], names: Sequence[str] | None, count: int) -> list[int]:
    """The indexes of the `count` smallest (gap, name, index), in exact Decimal order.

    Sorting a month's 100,000 Decimals pair by pair in Python costs seconds. Their floats
    sort the same wherever the floats differ (float() of a Decimal is correctly
    rounded, so it never reverses an order); only the gaps whose float equals the one
    at the cut are compared exactly, with the names.
    """
    approx = np.fromiter(map(float, gaps), dtype=np.float64, count=len(gaps))
    order = np.argsort(approx, kind="stable")
    if count == len(gaps) or approx[order[count]] != approx[order[count - 1]]:
        return order[:count].tolist()
    edge = approx[order[count - 1]]
    below = np.flatnonzero(approx < edge).tolist()
    tied = np.flatnonzero(approx == edge).tolist()
    tied.sort(key=lambda i: (gaps[i], names[i] if names is not None else str(i).zfill(12), i))
    return below + tied[: count - len(below)]
