"""`gpuledger accounting ingest|report` end to end, and every bad input it can get."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd
import pyarrow.parquet as pq
import pytest

from accounting.ingest import iso
from accounting.ledger import HOUR, Ledger
from gpuledger.cli import main
from tests.accounting import worked_example
from tests.realservices import free_port

FOCUS_REQUIRED = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "ContractedUnitPrice",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "ListUnitPrice",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "RegionId",
    "RegionName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "SkuId",
    "SkuPriceId",
    "SubAccountId",
    "SubAccountName",
    "Tags",
)


def month_of(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def ingest_args(url: str, ledger: str, start: int, end: int, *extra: str) -> list[str]:
    return [
        "--log-format",
        "text",
        "accounting",
        "ingest",
        "--prometheus",
        url,
        "--from",
        iso(start),
        "--to",
        iso(end),
        "--ledger",
        ledger,
        "--no-kube",
        *extra,
    ]


@pytest.mark.integration
def test_ingest_then_report_a_month(prometheus, history, tmp_path, capsys):
    ledger = str(tmp_path / "ledger.sqlite")
    assert main(ingest_args(prometheus.url, ledger, history.start, history.end)) == 0
    out, err = capsys.readouterr()
    assert "ingested 12 hours" in out and "Prometheus" in out
    assert "ingest: 12/12 hours (100%)" in err  # progress
    month = month_of(history.start)
    assert (
        main(
            [
                "accounting",
                "report",
                "--month",
                month,
                "--out",
                str(tmp_path / "r"),
                "--ledger",
                ledger,
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "warning: the ledger has" in err  # twelve hours of a whole month
    summary = json.loads((tmp_path / "r" / f"gpuledger-{month}-summary.json").read_text())
    total = Decimal(summary["total_cost"])
    assert total > 0 and not summary["complete"]
    assert summary["reconciles"] == {"cost_allocation": str(total), "cost_usage": str(total)}
    for grouping in ("team", "namespace", "job", "pod", "model", "daily"):
        csv = pd.read_csv(tmp_path / "r" / f"gpuledger-{month}-by-{grouping}.csv", dtype=str)
        assert sum(map(Decimal, csv["cost_allocation"])) == total, grouping
        assert sum(map(Decimal, csv["cost_usage"])) == total, grouping
        table = pq.read_table(tmp_path / "r" / f"gpuledger-{month}-by-{grouping}.parquet")
        assert str(table.schema.field("cost_allocation").type).startswith("decimal128")
    team = pd.read_csv(tmp_path / "r" / f"gpuledger-{month}-by-team.csv", dtype=str)
    # Teams from pod labels and namespace labels; GPU work outside pods; idle capacity.
    assert {"__idle__", "__unattributed__", "vision", "language"} <= set(team["team"])
    focus = pd.read_csv(tmp_path / "r" / f"gpuledger-{month}-focus.csv", dtype=str)
    assert set(FOCUS_REQUIRED) <= set(focus.columns)
    assert all(c in FOCUS_REQUIRED or c.startswith("x_") for c in focus.columns)
    assert sum(map(Decimal, focus["BilledCost"])) == total
    assert set(focus["ChargeCategory"]) == {"Usage"} and set(focus["PricingUnit"]) == {"GPU-Hours"}
    assert set(focus["BillingPeriodStart"]) == {f"{month}-01T00:00:00Z"}
    assert all(json.loads(tags)["team"] for tags in focus["Tags"])
    assert set(focus["RegionId"].dropna()) == {"eu-west-1"}


def test_a_report_on_the_worked_example_reconciles_to_the_document(tmp_path, capsys):
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    worked_example.build(ledger)
    prices = tmp_path / "prices.yaml"
    text = worked_example.DOC.read_text()
    prices.write_text(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    args = ["accounting", "report", "--month", "2024-05", "--out", str(tmp_path / "r")]
    args += ["--ledger", str(tmp_path / "l.sqlite"), "--price-book", str(prices)]
    assert main(args) == 0
    assert "2024-05: 245.00 USD" in capsys.readouterr().out
    assert main(args + ["--idle", "share", "--out", str(tmp_path / "s")]) == 0
    team = pd.read_csv(tmp_path / "s" / "gpuledger-2024-05-by-team.csv", dtype=str)
    assert dict(zip(team["team"], team["cost_allocation"], strict=True))["team-a"] == "199.00"


@pytest.mark.parametrize("month", ["2024-13", "May 2024", "2024-5", ""])
def test_a_malformed_month_is_refused_and_nothing_is_written(month, tmp_path, capsys):
    out = tmp_path / "r"
    code = main(
        [
            "accounting",
            "report",
            "--month",
            month,
            "--out",
            str(out),
            "--ledger",
            str(tmp_path / "l.sqlite"),
        ]
    )
    assert code == 2
    assert "--month must be YYYY-MM, e.g. 2024-05" in capsys.readouterr().err
    assert not out.exists()


def test_a_month_the_ledger_does_not_have_says_how_to_ingest_it(tmp_path, capsys):
    code = main(
        [
            "accounting",
            "report",
            "--month",
            "2024-02",
            "--out",
            str(tmp_path / "r"),
            "--ledger",
            str(tmp_path / "l.sqlite"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "no hours of 2024-02" in err and "gpuledger accounting ingest" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.integration
def test_an_unknown_gpu_model_names_the_model_and_the_file(prometheus, history, tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text("gpu_models:\n  NVIDIA L4:\n    price_per_gpu_hour: 0.4\n")
    ledger = str(tmp_path / "l.sqlite")
    code = main(
        ingest_args(prometheus.url, ledger, history.start, history.end, "--price-book", str(prices))
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "'NVIDIA H100 80GB HBM3'" in err and str(prices) in err and "gpu_models" in err
    assert Ledger(ledger).done_hours(history.start, history.end) == set()


def test_an_unreachable_prometheus_is_a_clear_error_and_nothing_is_written(tmp_path, capsys):
    ledger = str(tmp_path / "l.sqlite")
    url = f"http://127.0.0.1:{free_port()}"
    start = (worked_example.START // HOUR) * HOUR
    args = ingest_args(url, ledger, start, start + 2 * HOUR, "--prometheus-retries", "1")
    assert main(args) == 1
    err = capsys.readouterr().err
    assert url in err and "connection refused" in err
    assert Ledger(ledger).last_hour() is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("gpu_models: {}", "gpu_models must map each GPU model"),
        ("gpu_models:\n  X:\n    price: 1\n", "unknown keys ['price']"),
        ("gpu_models:\n  X:\n    price_per_gpu_hour: -1\n", "must be a number >= 0"),
        ("currency: dollars\ngpu_models:\n  X:\n    price_per_gpu_hour: 1\n", "ISO 4217"),
        ("gpu_models: [", "not valid YAML"),
    ],
)
def test_a_bad_price_book_says_what_to_fix(content, message, tmp_path, capsys):
    prices = tmp_path / "prices.yaml"
    prices.write_text(content)
    args = ["accounting", "report", "--month", "2024-05", "--out", str(tmp_path / "r")]
    assert main(args + ["--price-book", str(prices), "--ledger", str(tmp_path / "l.sqlite")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(prices) in err


def test_a_bad_time_is_refused_with_the_forms_it_accepts(tmp_path, capsys):
    args = ingest_args("http://127.0.0.1:1", str(tmp_path / "l.sqlite"), 0, 0)
    args[args.index("--from") + 1] = "yesterday-ish"
    assert main(args) == 2
    assert "ISO 8601" in capsys.readouterr().err


def test_a_kubeconfig_that_cannot_be_loaded_says_how_to_go_on_without_it(tmp_path, capsys):
    start = worked_example.START
    args = ingest_args("http://127.0.0.1:1", str(tmp_path / "l.sqlite"), start, start + HOUR)
    args.remove("--no-kube")
    args += ["--kubeconfig", str(tmp_path / "missing-kubeconfig")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot load the Kubernetes configuration" in err and "--no-kube" in err
