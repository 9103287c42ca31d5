"""Chargeback groupings, teams, periods and coverage, on the worked example's ledger."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounting.chargeback import (
    UNLABELLED,
    PeriodError,
    TeamRule,
    chargeback,
    parse_month,
)
from accounting.ledger import HOUR, Ledger, PodMetadata
from tests.accounting import worked_example

START = worked_example.START
END = START + 10 * HOUR


@pytest.fixture
def example(tmp_path) -> Ledger:
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    worked_example.build(ledger)
    return ledger


def report(ledger: Ledger, **options):
    return chargeback(ledger, START, END, price_book=worked_example.doc_price_book(), **options)


def test_months_are_whole_utc_months():
    assert parse_month("2024-05") == (1714521600, 1717200000)
    start, end = parse_month("2024-12")
    assert (end - start) // HOUR == 31 * 24 and end == 1735689600  # 2025-01-01
    for bad in ("2024-00", "2024-13", "24-05", "2024/05", "2024-5"):
        with pytest.raises(PeriodError, match="YYYY-MM, e.g. 2024-05"):
            parse_month(bad)


def test_team_comes_from_pod_then_job_then_namespace_labels():
    rule = TeamRule()
    assert rule.team("ns", {"team": "pod"}, {"team": "job"}, {"team": "ns"}) == "pod"
    assert rule.team("ns", {}, {"cost-center": "job"}, {"team": "ns"}) == "job"
    assert rule.team("ns", {"app": "x"}, {}, {"cost_center": "cc-1"}) == "cc-1"
    assert rule.team("ns", {}, {}, {}) == UNLABELLED
    assert TeamRule(fallback="namespace").team("ns", {}, {}, {}) == "ns"
    assert TeamRule(labels=("owner",)).team("ns", {"team": "a"}, {}, {"owner": "b"}) == "b"
    with pytest.raises(ValueError, match="unlabelled' or 'namespace'"):
        TeamRule(fallback="nobody")


def test_groupings_by_job_day_region_and_queue(example):
    example.merge_metadata(
        [
            PodMetadata(
                namespace="ml-a",
                pod="llama-worker-0",
                first_seen=START,
                last_seen=END,
                observed_at=END,
                job_kind="PyTorchJob",
                job_name="llama",
                queue="lq-a",
                cohort="research",
                resolved_by="kube-api",
            )
        ],
        node_labels={
            "h1": ({"topology.kubernetes.io/region": "eu-west-1"}, END),
            "a1": ({"topology_kubernetes_io_region": "us-east-2"}, END),
        },
    )
    jobs = report(example, by=("namespace", "job", "queue", "cohort"))
    llama = jobs[jobs["job"] == "PyTorchJob/llama"].iloc[0]
    assert (llama["namespace"], llama["queue"], llama["cohort"]) == ("ml-a", "lq-a", "research")
    assert set(jobs["job"]) >= {"RayJob/tune", "Pod/notebook-b", "Deployment/infer", "__idle__"}
    regions = report(example, by=("region",))
    assert set(regions["region"]) == {"eu-west-1", "us-east-2"}
    by_region = regions[regions["category"] == "workload"].set_index("region")
    assert by_region.loc["eu-west-1", "gpu_hours_held"] == pytest.approx(48)
    daily = report(example, by=("day", "team"))
    assert set(daily["day"]) == {"2024-05-01"}
    models = report(example, by=("model",))
    idle = models[models["category"] == "__idle__"].set_index("model")
    assert idle.loc[worked_example.H100, "cost_allocation"] == Decimal("76.00")


def test_every_grouping_of_the_same_period_reconciles_to_the_same_total(example):
    for by in [("team",), ("pod",), ("node", "model"), ("day", "team", "job"), ()]:
        for idle in ("row", "share"):
            frame = report(example, by=by, idle=idle)
            assert sum(frame["cost_allocation"]) == Decimal("245.00"), (by, idle)
            assert sum(frame["cost_usage"]) == Decimal("245.00"), (by, idle)


def test_the_team_fallback_and_labels_apply_to_past_months(example):
    by_namespace = report(example, teams=TeamRule(labels=("department",), fallback="namespace"))
    assert set(by_namespace["team"]) == {"ml-a", "ml-b", "ml-c", "__idle__", "__unattributed__"}


def test_coverage_of_the_period_is_reported(example):
    start, end = parse_month("2024-05")
    frame = chargeback(example, start, end, price_book=worked_example.doc_price_book())
    assert frame.attrs["hours_ingested"] == 10
    assert len(frame.attrs["missing_hours"]) == 31 * 24 - 10
    assert frame.attrs["missing_hours"][0] == START + 10 * HOUR
    assert frame.attrs["total_cost"] == Decimal("245.00")


def test_unknown_groupings_are_refused(example):
    with pytest.raises(ValueError, match="cannot group by \\['colour'\\]"):
        report(example, by=("colour",))
