"""The conservation rule, as properties: every report sums to the cluster's cost."""

from __future__ import annotations

from decimal import Decimal

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings

from accounting import ledger as ledger_tables
from accounting.chargeback import DIMENSIONS, MONEY, chargeback, chargeback_from_frames
from accounting.costmodel import (
    IDLE,
    UNATTRIBUTED,
    WORKLOAD,
    largest_remainder,
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
