"""The conservation rule, as properties: every report sums to the cluster's cost."""

from __future__ import annotations

import decimal
import math
from decimal import Decimal

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from accounting import ledger as ledger_tables
from accounting.chargeback import (
    DIMENSIONS,
    MONEY,
    chargeback,
    chargeback_from_frames,
    prepare,
    summarise,
)
from accounting.chargeback import _report_order as report_order
from accounting.costmodel import (
    CATEGORIES,
    IDLE,
    IDLE_MODES,
    MJ_PER_KWH,
    MS_PER_HOUR,
    PRECISION,
    UNATTRIBUTED,
    WORKLOAD,
    largest_remainder,
    price_records,
    split_cells,
    split_cells_in_ledger,
)
from accounting.pricebook import ModelPrice, PriceBook

HOUR = 3600
MS = 3_600_000
MODELS = ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
NODES = ("n1", "n2", "n3")
PODS = (("a", "p1"), ("a", "p2"), ("b", "p3"), ("c", "p4"), ("", ""))
EMPTY_PODS = pd.DataFrame(
    columns=["namespace", "pod", "labels", "job_labels", "job_kind", "job_name", "queue", "cohort"]
)
EMPTY_NAMESPACES = pd.DataFrame(columns=["namespace", "labels"])
EMPTY_NODES = pd.DataFrame(columns=["node", "labels"])

money = st.decimals(min_value=0, max_value=50, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def price_books(draw) -> PriceBook:
    return PriceBook(
        models={
            m: ModelPrice(draw(money), draw(money), draw(money.map(lambda d: d / 10)))
            for m in MODELS
        }
    )


@st.composite
def clusters(draw) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random hours of capacity and usage, pods holding up to (and, as measured by
    extrapolating increase(), a little over) what exists."""
    capacity, usage = [], []
    for hour in range(draw(st.integers(1, 4))):
        for node in draw(st.sets(st.sampled_from(NODES), min_size=1)):
            model = MODELS[NODES.index(node) % 2]
            gpus = draw(st.integers(1, 8))
            cap = draw(st.integers(0, gpus * MS))
            capacity.append(
                {
                    "hour": hour * HOUR,
                    "node": node,
                    "model": model,
                    "gpus": gpus,
                    "capacity_ms": cap,
                    "busy_ms": draw(st.integers(0, cap)),
                    "energy_mj": draw(st.integers(0, 10**10)),
                }
            )
            for namespace, pod in draw(st.sets(st.sampled_from(PODS), max_size=4)):
                held = draw(st.integers(0, MS * 2))
                usage.append(
                    {
                        "hour": hour * HOUR,
                        "namespace": namespace,
                        "pod": pod,
                        "node": node,
                        "model": model,
                        "sharing": "exclusive",
                        "held_ms": held,
                        "busy_ms": draw(st.integers(0, held)),
                        "memory_byte_seconds": float(draw(st.integers(0, 10**12))),
                        "energy_mj": draw(st.integers(0, 10**9)),
                    }
                )
    columns = ["hour", "namespace", "pod", "node", "model", "sharing", "held_ms", "busy_ms"]
    usage_frame = pd.DataFrame(usage, columns=[*columns, "memory_byte_seconds", "energy_mj"])
    return usage_frame.drop_duplicates(subset=columns[:6]), pd.DataFrame(capacity)


def independent_total(usage: pd.DataFrame, capacity: pd.DataFrame, book: PriceBook) -> Decimal:
    """The cluster's cost straight from docs/cost-model.md section 3, cell by cell."""
    gpus = capacity.groupby(["hour", "node"])["gpus"].sum().groupby(level="node").max()
    total = Decimal(0)
    for row in capacity.itertuples(index=False):
        pods = usage[
            (usage.hour == row.hour) & (usage.node == row.node) & (usage.model == row.model)
        ]
        price = book.price(row.model)
        held = max(row.capacity_ms, int(pods.held_ms.sum()))
        energy = max(row.energy_mj, int(pods.energy_mj.sum()))
        total += Decimal(held) * price.rate(int(gpus[row.node])) / MS
        total += Decimal(energy) * price.price_per_kwh / 3_600_000_000
    return total


@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cluster=clusters(),
    book=price_books(),
    by=st.lists(st.sampled_from(DIMENSIONS), max_size=3, unique=True),
    idle=st.sampled_from(["row", "share"]),
)
def test_every_report_sums_to_the_clusters_cost_to_the_cent(cluster, book, by, idle):
    usage, capacity = cluster
    usage = usage[usage.node.isin(capacity.node)]  # a pod runs on a node that exists
    frame = chargeback_from_frames(
        usage,
        capacity,
        EMPTY_PODS,
        EMPTY_NAMESPACES,
        EMPTY_NODES,
        0,
        10 * HOUR,
        price_book=book,
        by=by,
        idle=idle,
    )
    expected = independent_total(usage, capacity, book).quantize(Decimal("0.01"))
    assert frame.attrs["total_cost"] == expected
    assert sum(frame["cost_allocation"], Decimal(0)) == expected
    assert sum(frame["cost_usage"], Decimal(0)) == expected
    assert all(v >= 0 for v in frame["cost_allocation"]) and all(
        v >= 0 for v in frame["cost_usage"]
    )
    # GPU-hours partition the effective capacity, and nothing is negative.
    assert (frame["gpu_hours_held"] >= 0).all()
    # Sharing idle moves exactly the unallocated share from __idle__ onto workloads.
    workloads = frame["category"] == WORKLOAD
    idle_cost = sum(frame.loc[frame["category"] == IDLE, "cost_allocation"], Decimal(0))
    shared = sum(frame.loc[workloads, "unallocated_share"], Decimal(0))
    slack = Decimal("0.01") * len(frame)  # each row rounds on its own
    if idle == "row":
        assert shared <= idle_cost + slack
    else:
        own = sum(frame.loc[workloads, "cost_allocation"], Decimal(0)) - shared
        assert own >= -slack


@settings(max_examples=25, deadline=None)
@given(cluster=clusters())
def test_records_partition_each_cells_effective_capacity_exactly(cluster):
    usage, capacity = cluster
    records = split_cells(usage, capacity)
    assert set(records["category"]) <= {WORKLOAD, UNATTRIBUTED, IDLE}
    cells = records.groupby(["hour", "node", "model"])["held_ms"].sum()
    for row in capacity.itertuples(index=False):
        pods = usage[(usage.hour == row.hour) & (usage.node == row.node)]
        assert cells.get((row.hour, row.node, row.model), 0) == max(
            row.capacity_ms, int(pods.held_ms.sum())
        )
    assert (records[["held_ms", "busy_ms", "energy_mj"]] >= 0).all().all()


@given(st.lists(st.decimals(min_value=0, max_value=1000, places=6), min_size=1, max_size=30))
def test_largest_remainder_keeps_the_sum_and_moves_no_row_by_a_cent_or_more(amounts):
    rounded = largest_remainder(amounts)
    assert sum(rounded) == sum(amounts).quantize(Decimal("0.01"))
    for exact, cents in zip(amounts, rounded, strict=True):
        assert abs(cents - exact) < Decimal("0.01")
        assert cents == cents.quantize(Decimal("0.01"))


def test_largest_remainder_gives_missing_cents_to_the_largest_remainders():
    # 1/3 each of 1.00: 0.33 + 0.33 + 0.33 misses a cent; ties go to the first name.
    third = Decimal(1) / 3
    assert largest_remainder([third] * 3, ["b", "a", "c"]) == [
        Decimal("0.33"),
        Decimal("0.34"),
        Decimal("0.33"),
    ]
    # Equal remainders (half a cent each): the earlier row gets the cent.
    assert largest_remainder([Decimal("0.125"), Decimal("0.875")]) == [
        Decimal("0.13"),
        Decimal("0.87"),
    ]
    assert largest_remainder([Decimal("0.121"), Decimal("0.879")]) == [
        Decimal("0.12"),
        Decimal("0.88"),
    ]


def test_an_unknown_gpu_model_in_usage_is_refused_with_its_name():
    usage = pd.DataFrame(
        [
            {
                "hour": 0,
                "namespace": "a",
                "pod": "p",
                "node": "n9",
                "model": "NVIDIA Z900",
                "sharing": "exclusive",
                "held_ms": MS,
                "busy_ms": 0,
                "memory_byte_seconds": 0.0,
                "energy_mj": 0,
            }
        ]
    )
    capacity = pd.DataFrame(
        columns=["hour", "node", "model", "gpus", "capacity_ms", "busy_ms", "energy_mj"]
    )
    book = PriceBook({MODELS[0]: ModelPrice(Decimal(1))}, path="prices.yaml")
    with pytest.raises(ValueError, match=r"'NVIDIA Z900' \(seen on node n9\).*prices.yaml"):
        chargeback_from_frames(
            usage, capacity, EMPTY_PODS, EMPTY_NAMESPACES, EMPTY_NODES, 0, HOUR, price_book=book
        )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    cluster=clusters(),
    book=price_books(),
    by=st.lists(st.sampled_from(DIMENSIONS), max_size=3, unique=True),
    idle=st.sampled_from(["row", "share"]),
)
def test_the_ledger_splits_cells_in_its_database_as_the_frames_do(ledger, cluster, book, by, idle):
    usage, capacity = cluster
    # Hours 9 h apart: cells of the same day are summed, cells of other days are not.
    usage = usage.assign(hour=usage["hour"] * 9)
    capacity = capacity.assign(hour=capacity["hour"] * 9)
    with ledger.engine.begin() as conn:
        for table in (ledger_tables.usage, ledger_tables.capacity, ledger_tables.ingested_hours):
            conn.execute(table.delete())
    hours = sorted({*usage["hour"].tolist(), *capacity["hour"].tolist()})
    ledger.write_hours(
        hours,
        list(usage[list(ledger_tables.USAGE_COLUMNS)].itertuples(index=False, name=None)),
        list(capacity[list(ledger_tables.CAPACITY_COLUMNS)].itertuples(index=False, name=None)),
        "test",
    )
    end = 2 * 86400
    records, _, _ = split_cells_in_ledger(ledger, 0, end)
    expected = split_cells(usage, capacity).assign(hour=lambda f: f["hour"] // 86400 * 86400)
    keys = ["hour", "category", "namespace", "pod", "node", "model"]
    sums = ["held_ms", "busy_ms", "energy_mj"]
    assert (
        records.groupby(keys)[sums].sum().to_dict() == expected.groupby(keys)[sums].sum().to_dict()
    )

    from_ledger = chargeback(ledger, 0, end, price_book=book, by=by, idle=idle)
    from_frames = chargeback_from_frames(
        usage,
        capacity,
        EMPTY_PODS,
        EMPTY_NAMESPACES,
        EMPTY_NODES,
        0,
        end,
        price_book=book,
        by=by,
        idle=idle,
    )
    money = ["category", *by, *MONEY]
    assert from_ledger[money].to_dict("records") == from_frames[money].to_dict("records")
    assert from_ledger["gpu_hours_held"].tolist() == from_frames["gpu_hours_held"].tolist()
    assert from_ledger["memory_gb_hours"].tolist() == pytest.approx(
        from_frames["memory_gb_hours"].tolist()
    )


# ---------------------------------------------------------------- the fast paths
# largest_remainder, price_records and summarise work a column at a time (numpy, float
# approximations sorted first); these references are the plain Decimal loops they
# replaced, and the results must be the same to the last digit of every Decimal.
def reference_largest_remainder(amounts, names=None, total=None):
    with decimal.localcontext(PRECISION):
        target = (sum(amounts, Decimal(0)) if total is None else total).quantize(
            Decimal("0.01"), rounding=decimal.ROUND_HALF_EVEN
        )
        floors = [a.quantize(Decimal("0.01"), rounding=decimal.ROUND_FLOOR) for a in amounts]
        missing = int(((target - sum(floors, Decimal(0))) / Decimal("0.01")).to_integral_value())
        if missing < 0 or missing > len(amounts):
            raise ArithmeticError("cannot round")
        names = names if names is not None else [str(i).zfill(12) for i in range(len(amounts))]
        gaps = [f - a for a, f in zip(amounts, floors, strict=True)]
        order = sorted(zip(gaps, names, range(len(amounts)), strict=True))
        for _, _, i in order[:missing]:
            floors[i] += Decimal("0.01")
    return floors


# Amounts that tie, sit a hair apart beyond a float's precision, are negative, zero
# (and -0), or carry 50 digits as the cost model's quotients do.
amounts_strategy = st.one_of(
    st.sampled_from([Decimal(v) for v in ("0", "-0", "0.005", "-0.005", "1.125", "0E-40")]),
    st.decimals(min_value=-100, max_value=100, places=3),
    st.integers(-(10**12), 10**12).map(lambda n: Decimal(n).scaleb(-10)),
    st.integers(1, 10**9).map(lambda n: Decimal(n) * Decimal("2.5") / Decimal(3_600_000)),
    st.integers(0, 10**6).map(lambda n: Decimal(1) / 3 + Decimal(n).scaleb(-45)),
)


@settings(max_examples=400, deadline=None)
@given(
    amounts=st.lists(amounts_strategy, min_size=1, max_size=12),
    offset=st.none() | st.integers(-3, 3),
    data=st.data(),
)
def test_largest_remainder_equals_the_decimal_sort_on_ties_negatives_and_zeros(
    amounts, offset, data
):
    size = len(amounts)
    names = data.draw(st.none() | st.lists(st.sampled_from("ab"), min_size=size, max_size=size))
    total = None if offset is None else sum(amounts, Decimal(0)) + Decimal(offset) / 100

    def outcome(function):
        try:
            return [repr(v) for v in function(amounts, names, total)]
        except (ArithmeticError, ValueError) as error:
            return type(error).__name__

    assert outcome(largest_remainder) == outcome(reference_largest_remainder)


def reference_price_records(grouped, rates, price_book, idle):
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
        rows = list(zip(frame["category"].tolist(), models, held, busy, energy, strict=True))
        zero = Decimal(0)
        pool, idle_cost, held_by_workloads, busy_total = {}, {}, {}, {}
        for c, m, h, b, e in rows:
            pool[m] = pool.get(m, zero) + h + e
            if c == IDLE:
                idle_cost[m] = idle_cost.get(m, zero) + h + e
            else:
                busy_total[m] = busy_total.get(m, zero) + b
                if c == WORKLOAD:
                    held_by_workloads[m] = held_by_workloads.get(m, zero) + h
        factor = {
            m: idle_cost.get(m, zero) / held_by_workloads[m]
            for m in pool
            if held_by_workloads.get(m, zero) > 0
        }
        columns = {"cost_allocation": [], "cost_usage": [], "idle_cost_in_allocation": []}
        columns["unallocated_share"] = []
        for c, m, h, b, e in rows:
            share = h * factor[m] if c == WORKLOAD and m in factor else zero
            own = h + e
            if c == IDLE:
                own = zero if (idle == "share" and m in factor) else own
            elif idle == "share":
                own += share
            columns["cost_allocation"].append(own)
            columns["unallocated_share"].append(share)
            if busy_total.get(m, zero) > 0:
                usage = zero if c == IDLE else pool[m] * b / busy_total[m]
            else:
                usage = h + e
            columns["cost_usage"].append(usage)
            columns["idle_cost_in_allocation"].append(max(zero, h - b) if c == WORKLOAD else zero)
    frame["held_cost"], frame["busy_cost"], frame["energy_cost"] = held, busy, energy
    for name, values in columns.items():
        frame[name] = values
    return frame


@st.composite
def priced_groups(draw) -> tuple[pd.DataFrame, list[Decimal]]:
    """Records summed per group, as summarise hands them to price_records; rates with
    overhead spread over 3 and 7 GPUs (quotients of 50 digits)."""
    book = draw(price_books())
    rates = [book.price(m).rate(g) for m in MODELS for g in (0, 3, 7, 8)]
    count = draw(st.integers(0, 12))
    ms = st.sampled_from([0, MS, 7 * MS]) | st.integers(0, 10 * MS)
    frame = pd.DataFrame(
        {
            "category": draw(st.lists(st.sampled_from(CATEGORIES), min_size=count, max_size=count)),
            "team": draw(st.lists(st.sampled_from("xy"), min_size=count, max_size=count)),
            "model": draw(st.lists(st.sampled_from(MODELS), min_size=count, max_size=count)),
            "rate_id": draw(
                st.lists(st.integers(0, len(rates) - 1), min_size=count, max_size=count)
            ),
            "held_ms": draw(st.lists(ms, min_size=count, max_size=count)),
            "busy_ms": draw(st.lists(ms, min_size=count, max_size=count)),
            "memory_byte_seconds": [0.0] * count,
            "energy_mj": draw(st.lists(st.integers(0, 10**10), min_size=count, max_size=count)),
        }
    ).astype({"rate_id": "int64", "held_ms": "int64", "busy_ms": "int64", "energy_mj": "int64"})
    return frame, rates, book


@settings(max_examples=150, deadline=None)
@given(groups=priced_groups(), idle=st.sampled_from(IDLE_MODES))
def test_price_records_equals_the_row_by_row_decimal_loop(groups, idle):
    frame, rates, book = groups
    got = price_records(frame, rates, book, idle)
    expected = reference_price_records(frame, rates, book, idle)
    assert list(got.columns) == list(expected.columns)
    for column in expected.columns:
        assert [repr(v) for v in got[column]] == [repr(v) for v in expected[column]], column


def reference_summarise(prepared, by, idle) -> pd.DataFrame:
    """summarise as a loop over the priced rows, sorted pair by pair."""
    keys = ["category", *by]
    price_keys = keys + [d for d in ("model", "rate_id") if d not in by]
    sums = ["held_ms", "busy_ms", "memory_byte_seconds", "energy_mj"]
    records = prepared.records.groupby(price_keys, sort=False, observed=True)[sums].sum()
    priced = reference_price_records(
        records.reset_index(), prepared.rates, prepared.price_book, idle
    )
    rows: dict[tuple, dict] = {}
    with decimal.localcontext(PRECISION):
        for record in priced.to_dict("records"):
            key = tuple(record[k] for k in keys)
            row = rows.setdefault(key, dict.fromkeys(sums, 0) | dict.fromkeys(MONEY, Decimal(0)))
            for column in (*sums, *MONEY):
                row[column] += record[column]
        total = sum(priced["held_cost"], Decimal(0)) + sum(priced["energy_cost"], Decimal(0))
    ordered = sorted(
        rows.items(),
        key=lambda kv: (
            CATEGORIES.index(kv[0][0]),
            -kv[1]["cost_allocation"],
            tuple(map(str, kv[0][1:])),
        ),
    )
    names = ["\x1f".join(map(str, key)) for key, _ in ordered]
    out = pd.DataFrame([key for key, _ in ordered], columns=keys, dtype=object)
    stats = [row for _, row in ordered]
    out["gpu_hours_held"] = [r["held_ms"] / 3.6e6 for r in stats]
    out["gpu_hours_busy"] = [r["busy_ms"] / 3.6e6 for r in stats]
    out["efficiency"] = [r["busy_ms"] / r["held_ms"] if r["held_ms"] else math.nan for r in stats]
    out["memory_gb_hours"] = [r["memory_byte_seconds"] / 1e9 / 3600 for r in stats]
    out["energy_kwh"] = [r["energy_mj"] / 3.6e9 for r in stats]
    for column in MONEY:
        target = total if column in ("cost_allocation", "cost_usage") else None
        out[column] = reference_largest_remainder([r[column] for r in stats], names, target)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cluster=clusters(),
    book=price_books(),
    by=st.lists(st.sampled_from(DIMENSIONS), max_size=3, unique=True),
    idle=st.sampled_from(IDLE_MODES),
)
def test_summarise_equals_the_row_by_row_decimal_loop(cluster, book, by, idle):
    usage, capacity = cluster
    prepared = prepare(
        usage, capacity, EMPTY_PODS, EMPTY_NAMESPACES, EMPTY_NODES, 0, 10 * HOUR, price_book=book
    )
    got, expected = summarise(prepared, by, idle), reference_summarise(prepared, by, idle)
    assert list(got.columns) == list(expected.columns)
    for column in expected.columns:
        assert [repr(v) for v in got[column]] == [repr(v) for v in expected[column]], column


def test_report_order_sorts_costs_exactly_where_their_floats_tie():
    third = Decimal(1) / 3
    # Costs equal as floats but not as Decimals (1e-20 apart), equal costs, and each
    # category; the texts alone would order the workloads 2, 4, 0, 1.
    costs = [third, third + Decimal("1e-20"), third, Decimal(2), third - Decimal("1e-20"), third]
    keys = [
        [WORKLOAD, WORKLOAD, WORKLOAD, IDLE, WORKLOAD, UNATTRIBUTED],
        ["b", "c", "a", "x", "a", "y"],
    ]
    expected = sorted(
        range(len(costs)),
        key=lambda i: (CATEGORIES.index(keys[0][i]), -costs[i], (str(keys[1][i]),)),
    )
    assert report_order(keys, costs) == expected == [1, 2, 0, 4, 5, 3]
