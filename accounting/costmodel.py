"""The cost model's arithmetic (docs/cost-model.md, sections 2-4 and 6).

- `split_cells`: every GPU-hour of capacity into workload, `__unattributed__` and
  `__idle__` records, per hour and (node, GPU model), in exact integer milli-units.
- `rate_table`: the price of a GPU-hour on each (node, model), node overhead spread.
- `price_records`: exact `Decimal` costs on the allocation and usage bases.
- `largest_remainder`: rounding to cents that keeps a column's sum exact.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import pandas as pd

from accounting.pricebook import PriceBook

WORKLOAD, UNATTRIBUTED, IDLE = "workload", "__unattributed__", "__idle__"
CATEGORIES = (WORKLOAD, UNATTRIBUTED, IDLE)
IDLE_MODES = ("row", "share")

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


def rate_table(
    capacity: pd.DataFrame, usage: pd.DataFrame, price_book: PriceBook
) -> tuple[dict[tuple[str, str], int], list[Decimal]]:
    """The price of a GPU-hour per (node, model), as an id into a list of distinct rates.

    gpus(node) is the most GPUs the node reported in an hour of the period; a node with
    usage but no capacity row carries no overhead. Nodes of the same model and size
    share a rate, so costs can be summed per rate instead of per node.
    """
    gpus_on_node: dict[str, int] = {}
    if not capacity.empty:
        per_hour = capacity.groupby(["hour", "node"])["gpus"].sum()
        gpus_on_node = {k: int(v) for k, v in per_hour.groupby(level="node").max().items()}
    pairs = pd.concat([capacity[["node", "model"]], usage[["node", "model"]]]).drop_duplicates()
    ids: dict[tuple[str, str], int] = {}
    rates: list[Decimal] = []
    index: dict[Decimal, int] = {}
    with decimal.localcontext(PRECISION):
        for node, model in pairs.itertuples(index=False):
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
    with decimal.localcontext(PRECISION):
        kwh = {m: price_book.price(m).price_per_kwh for m in frame["model"].unique()}
        rate = [rates[i] for i in frame["rate_id"].tolist()]
        held = [
            Decimal(v) * r / MS_PER_HOUR
            for v, r in zip(frame["held_ms"].tolist(), rate, strict=True)
        ]
        busy = [
            Decimal(v) * r / MS_PER_HOUR
            for v, r in zip(frame["busy_ms"].tolist(), rate, strict=True)
        ]
        models = frame["model"].tolist()
        energy = [
            Decimal(v) * kwh[m] / MJ_PER_KWH
            for v, m in zip(frame["energy_mj"].tolist(), models, strict=True)
        ]
        categories = frame["category"].tolist()
        pool: dict[str, Decimal] = {}
        idle_cost: dict[str, Decimal] = {}
        held_by_workloads: dict[str, Decimal] = {}
        busy_total: dict[str, Decimal] = {}
        zero = Decimal(0)
        for c, m, h, b, e in zip(categories, models, held, busy, energy, strict=True):
            pool[m] = pool.get(m, zero) + h + e
            if c == IDLE:
                idle_cost[m] = idle_cost.get(m, zero) + h + e
            else:
                busy_total[m] = busy_total.get(m, zero) + b
                if c == WORKLOAD:
                    held_by_workloads[m] = held_by_workloads.get(m, zero) + h
        share_factor = {
            m: idle_cost.get(m, zero) / held_by_workloads[m]
            for m in pool
            if held_by_workloads.get(m, zero) > 0
        }
        allocation, usage_cost, waste, unallocated = [], [], [], []
        for c, m, h, b, e in zip(categories, models, held, busy, energy, strict=True):
            share = h * share_factor[m] if c == WORKLOAD and m in share_factor else zero
            own = h + e
            if c == IDLE:
                own = zero if (idle == "share" and m in share_factor) else own
            elif idle == "share":
                own += share
            allocation.append(own)
            unallocated.append(share)
            if busy_total.get(m, zero) > 0:
                usage_cost.append(zero if c == IDLE else pool[m] * b / busy_total[m])
            else:  # nothing busy on this model: charged as on the allocation basis
                usage_cost.append(h + e)
            waste.append(max(zero, h - b) if c == WORKLOAD else zero)
    frame["held_cost"] = held
    frame["busy_cost"] = busy
    frame["energy_cost"] = energy
    frame["cost_allocation"] = allocation
    frame["cost_usage"] = usage_cost
    frame["idle_cost_in_allocation"] = waste
    frame["unallocated_share"] = unallocated
    return frame


def round_half_even(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def largest_remainder(
    amounts: Sequence[Decimal], names: Sequence[str] | None = None, total: Decimal | None = None
) -> list[Decimal]:
    """Round each amount to the cent so that they sum to `total` (default: their exact
    sum rounded half to even): floor every amount, then give the missing cents one each
    to the largest remainders; ties go to the earlier name."""
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
        names = (
            list(names) if names is not None else [str(i).zfill(12) for i in range(len(amounts))]
        )
        order = sorted(range(len(amounts)), key=lambda i: (-(amounts[i] - floors[i]), names[i], i))
        for i in order[:missing]:
            floors[i] += CENT
    return floors
