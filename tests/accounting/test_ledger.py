"""The ledger on SQLite and PostgreSQL: whole hours, replaceable, order-free metadata."""

from __future__ import annotations

import itertools
import json

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from accounting.ledger import (
    CAPACITY_COLUMNS,
    HOUR,
    USAGE_COLUMNS,
    Ledger,
    LedgerError,
    PodMetadata,
    merge_pod_rows,
    meta,
)

H0 = 1714521600


def usage_row(pod: str, held_ms: int, **extra) -> dict:
    return {
        "namespace": "ml",
        "pod": pod,
        "node": "n1",
        "model": "NVIDIA H100 80GB HBM3",
        "sharing": "exclusive",
        "held_ms": held_ms,
        "busy_ms": held_ms // 2,
        "memory_byte_seconds": 1e12,
        "energy_mj": 5,
        **extra,
    }


CAPACITY = [
    {
        "node": "n1",
        "model": "NVIDIA H100 80GB HBM3",
        "gpus": 8,
        "capacity_ms": 8 * 3_600_000,
        "busy_ms": 0,
        "energy_mj": 0,
    }
]


def test_an_hour_written_again_is_replaced_not_added(ledger):
    ledger.write_hour(H0, [usage_row("a", 100), usage_row("b", 200)], CAPACITY, "test")
    ledger.write_hour(H0, [usage_row("a", 300)], CAPACITY, "test")
    frame = ledger.usage_frame(H0, H0 + HOUR)
    assert list(frame["pod"]) == ["a"] and list(frame["held_ms"]) == [300]
    assert ledger.done_hours(H0, H0 + 2 * HOUR) == {H0}
    assert ledger.hours_frame(H0, H0 + HOUR)["usage_rows"].tolist() == [1]
    assert ledger.last_hour() == H0


def test_a_failed_write_leaves_the_hour_as_it_was(ledger):
    ledger.write_hour(H0, [usage_row("a", 100)], CAPACITY, "test")
    duplicate = [usage_row("b", 1), usage_row("b", 2)]  # same key twice: the insert fails
    with pytest.raises(sa.exc.IntegrityError):
        ledger.write_hour(H0, duplicate, CAPACITY, "test")
    frame = ledger.usage_frame(H0, H0 + HOUR)
    assert list(frame["pod"]) == ["a"] and list(frame["held_ms"]) == [100]
    with pytest.raises(sa.exc.IntegrityError):
        ledger.write_hour(H0 + HOUR, duplicate, CAPACITY, "test")
    assert ledger.done_hours(H0, H0 + 2 * HOUR) == {H0}  # no half hour, no mark


def test_hours_must_be_on_hour_boundaries(ledger):
    with pytest.raises(ValueError, match="not on an hour boundary"):
        ledger.write_hour(H0 + 60, [], CAPACITY, "test")


def pod(observed_at: int, **fields) -> PodMetadata:
    return PodMetadata(
        namespace="ml",
        pod="w-0",
        first_seen=fields.pop("first_seen", observed_at - HOUR),
        last_seen=fields.pop("last_seen", observed_at),
        observed_at=observed_at,
        **fields,
    )


def test_metadata_keeps_the_best_owner_chain_and_the_newest_labels(ledger):
    api = pod(
        H0 + HOUR,
        job_kind="PyTorchJob",
        job_name="llama",
        chain=("PyTorchJob/llama",),
        queue="q",
        labels={"team": "a"},
        resolved_by="kube-api",
    )
    later_ksm = pod(
        H0 + 5 * HOUR,
        owner_kind="PyTorchJob",
        owner_name="llama",
        job_kind="PyTorchJob",
        job_name="llama",
        labels={"team": "b"},
        resolved_by="kube-state-metrics",
    )
    earlier = pod(H0 - 3 * HOUR, first_seen=H0 - 4 * HOUR, labels={"team": "old"})
    ledger.merge_metadata([api])
    ledger.merge_metadata([later_ksm])
    ledger.merge_metadata([earlier])
    row = ledger.pods_frame().iloc[0]
    assert row["queue"] == "q" and row["resolved_by"] == "kube-api"
    assert row["chain"] == ["PyTorchJob/llama"]
    assert row["labels"] == {"team": "b"}
    assert (row["first_seen"], row["last_seen"]) == (H0 - 4 * HOUR, H0 + 5 * HOUR)
    ledger.merge_metadata(
        [], namespace_labels={"ml": ({"team": "new"}, H0 + HOUR)}, node_labels={"n1": ({}, H0)}
    )
    ledger.merge_metadata([], namespace_labels={"ml": ({"team": "stale"}, H0)})
    assert ledger.namespaces_frame()["labels"].tolist() == [{"team": "new"}]
    assert ledger.nodes_frame()["node"].tolist() == ["n1"]


def test_metadata_of_thousands_of_pods_merges_as_merge_pod_rows_does(ledger):
    # More pods than one lookup batch, seen twice (the second time with new labels and
    # some pods new), and a pod the first observation lacks labels for.
    def seen(at: int, names: range, team: str) -> list[PodMetadata]:
        return [
            PodMetadata(
                namespace="ml",
                pod=f"w-{i}",
                first_seen=at - HOUR,
                last_seen=at,
                observed_at=at,
                labels={"team": team} if i % 7 else {},
                uid=f"u{i}",
            )
            for i in names
        ]

    first, second = seen(H0, range(2500), "a"), seen(H0 + HOUR, range(2400, 2600), "b")
    ledger.merge_metadata(first)
    ledger.merge_metadata(second)
    expected: dict[tuple[str, str], dict] = {}
    for observation in (*first, *second):
        row = observation.row()
        key = (row["namespace"], row["pod"])
        expected[key] = merge_pod_rows(expected.get(key), row)
    got = ledger.table_rows("pods")
    columns = list(first[0].row())
    assert [dict(zip(columns, row, strict=True)) for row in got] == [
        expected[key] for key in sorted(expected)
    ]


observations = st.builds(
    lambda at, labels, rank, queue: pod(
        at,
        labels=labels,
        resolved_by=rank,
        queue=queue,
        job_kind="Job" if rank != "none" else "",
        job_name=queue,
    ).row(),
    st.integers(0, 5).map(lambda i: H0 + i * HOUR),
    st.sampled_from([{}, {"team": "a"}, {"team": "b"}]),
    st.sampled_from(["none", "kube-state-metrics", "kube-api"]),
    st.sampled_from(["", "q1", "q2"]),
)


@given(st.lists(observations, min_size=1, max_size=4, unique_by=lambda r: r["observed_at"]))
def test_merging_observations_gives_the_same_row_in_any_order(rows):
    results = set()
    for order in itertools.permutations(rows):
        merged = None
        for row in order:
            merged = merge_pod_rows(merged, row)
        results.add(json.dumps(merged, sort_keys=True))
    assert len(results) == 1


def test_a_ledger_of_another_schema_version_is_refused(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    with ledger.engine.begin() as conn:
        conn.execute(meta.update().values(value="99"))
    with pytest.raises(LedgerError, match="schema version 99"):
        Ledger(str(tmp_path / "l.sqlite")).create()


def test_a_bad_ledger_url_says_what_is_accepted(tmp_path):
    with pytest.raises(LedgerError, match="postgresql\\+psycopg2://"):
        Ledger("nosuchdb://x/y")
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(str(tmp_path / "missing-dir" / "l.sqlite")).create()


def test_hours_are_written_together_and_rows_must_belong_to_them(ledger):
    row = usage_row("a", 100)
    tuples = [
        (hour, *(row[c] for c in USAGE_COLUMNS[1:])) for hour in (H0, H0 + HOUR, H0 + 2 * HOUR)
    ]
    capacity = [(H0, *(CAPACITY[0][c] for c in CAPACITY_COLUMNS[1:]))]
    with pytest.raises(ValueError, match=rf"rows of hours \[{H0 + 2 * HOUR}\] are not among"):
        ledger.write_hours([H0, H0 + HOUR], tuples, capacity, "test")
    assert ledger.done_hours(H0, H0 + 3 * HOUR) == set()
    ledger.write_hours([H0, H0 + HOUR], tuples[:2], capacity, "test")
    hours = ledger.hours_frame(H0, H0 + 3 * HOUR)
    assert hours["usage_rows"].tolist() == [1, 1] and hours["gpus"].tolist() == [8, 0]


def test_a_provisional_hour_is_in_the_ledger_but_not_done(ledger):
    ledger.write_hours([H0], [], [], "test", provisional_through=H0 + 600)
    assert ledger.done_hours(H0, H0 + HOUR) == set() and ledger.last_hour() is None
    assert ledger.provisional(H0, H0 + HOUR) == {H0: H0 + 600}
    # Writing the hour again, done, replaces the provisional mark.
    ledger.write_hour(H0, [usage_row("a", 100)], CAPACITY, "test")
    assert ledger.provisional(H0, H0 + HOUR) == {} and ledger.done_hours(H0, H0 + HOUR) == {H0}
    for hours, through in (([H0, H0 + HOUR], H0 + 600), ([H0], H0), ([H0], H0 + HOUR + 1)):
        with pytest.raises(ValueError, match="a provisional write is of one hour"):
            ledger.write_hours(hours, [], [], "test", provisional_through=through)
