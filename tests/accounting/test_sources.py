"""Simulated data is labelled wherever it appears: the exporter's `source` label is
recorded at ingestion, and every output of a report made from it says so."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pandas as pd
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from accounting.chargeback import coverage
from accounting.html_report import write_html_report
from accounting.ingest import Ingestor, IngestQueries
from accounting.ledger import (
    HOUR,
    SCHEMA_VERSION,
    Ledger,
    capacity,
    ingested_hours,
    meta,
    metadata,
)
from accounting.pricebook import load_price_book
from accounting.prometheus import PrometheusClient
from accounting.reports import GROUPINGS, build_report, write_report
from exporter import catalogue
from tests.accounting.conftest import history_start
from tests.accounting.openmetrics import generate
from tests.accounting.sample_ledger import H100, PRICE_BOOK, month_start
from tests.realservices import Prometheus, backfill_openmetrics

GPUS, HOURS = 2, 6


def month_of(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


@pytest.fixture(scope="module", params=["simulated", "nvml"])
def exporter_source(request, tmp_path_factory):
    """A real Prometheus holding six hours of one node whose exporter series all carry
    source=<param>."""
    history = generate(nodes=1, gpus=GPUS, pods=2, days=HOURS / 24, step=900, start=history_start())
    history.source = request.param
    work = tmp_path_factory.mktemp(f"prometheus-{request.param}")
    text = io.StringIO()
    history.write(text)
    assert f'source="{request.param}"' in text.getvalue()
    backfill_openmetrics(text.getvalue(), work / "data", work)
    with Prometheus(work, data_dir=work / "data") as prometheus:
        yield request.param, history, prometheus


def ingest(prometheus, history, path, queries: IngestQueries | None = None) -> Ledger:
    ledger = Ledger(str(path)).create()
    client = PrometheusClient(prometheus.url, retries=0)
    Ingestor(client, ledger, load_price_book(), queries=queries).run(history.start, history.end)
    return ledger


@pytest.mark.integration
def test_every_output_of_a_report_says_whether_its_gpus_were_simulated(exporter_source, tmp_path):
    source, history, prometheus = exporter_source
    simulated = source == "simulated"
    ledger = ingest(prometheus, history, tmp_path / "ledger.sqlite")
    assert ledger.gpu_hours_by_source(history.start, history.end) == {source: GPUS * HOURS}
    month = month_of(history.start)
    report = build_report(ledger, month, price_book=load_price_book())
    assert report.simulated is simulated
    assert report.gpu_hours_by_source == {source: GPUS * HOURS}
    out = tmp_path / "report"
    write_report(report, out)
    html = write_html_report(report, out).read_text()

    for grouping in GROUPINGS:
        stem = out / f"gpuledger-{month}-by-{grouping}"
        table = pd.read_csv(stem.with_suffix(".csv"))
        assert table["simulated"].tolist() == [simulated] * len(table), grouping
        parquet = pq.read_table(stem.with_suffix(".parquet")).to_pandas()
        assert parquet["simulated"].tolist() == [simulated] * len(parquet), grouping
    focus = pd.read_csv(out / f"gpuledger-{month}-focus.csv")
    assert len(focus) > 0 and focus["x_Simulated"].tolist() == [simulated] * len(focus)
    summary = json.loads((out / f"gpuledger-{month}-summary.json").read_text())
    assert summary["simulated"] is simulated
    assert summary["gpu_hours_by_source"] == {source: GPUS * HOURS}
    assert ('id="simulated-banner"' in html) is simulated
    assert html.startswith("<!DOCTYPE html>")
    assert ("<title>SIMULATED DATA" in html) is simulated
    assert f"GPU source: {source} ({GPUS * HOURS} GPU-hours)" in html


@pytest.mark.integration
def test_an_answer_without_the_source_label_is_recorded_as_unknown(exporter_source, tmp_path):
    source, history, prometheus = exporter_source
    sampled = catalogue.GPU_SAMPLED_SECONDS.name
    # A replaced query (e.g. a recording rule) that drops the label.
    queries = IngestQueries(
        gpus=f"count by (node, model) (group by (node, model, uuid) (increase({sampled}[{{window}}])))"
    )
    ledger = ingest(prometheus, history, tmp_path / "ledger.sqlite", queries)
    found = coverage(ledger, history.start, history.end)
    assert found["gpu_hours_by_source"] == {"unknown": GPUS * HOURS}
    assert found["simulated"] is False
    # The capacity itself does not depend on the label.
    assert ledger.hours_frame(history.start, history.end)["gpus"].tolist() == [GPUS] * HOURS


def test_a_version_1_ledger_is_upgraded_and_its_hours_have_an_unknown_source(tmp_path):
    path = tmp_path / "v1.sqlite"
    hour = month_start("2026-11")
    engine = sa.create_engine(f"sqlite:///{path}")
    new_tables = {"gpu_sources", "provisional_hours"}
    metadata.create_all(
        engine, tables=[t for t in metadata.sorted_tables if t.name not in new_tables]
    )
    with engine.begin() as conn:
        conn.execute(meta.insert().values(key="schema_version", value="1"))
        conn.execute(
            capacity.insert()
            .values(hour=hour, node="h1", model=H100, gpus=8, capacity_ms=8 * 3_600_000, busy_ms=0)
            .values(energy_mj=0)
        )
        conn.execute(
            ingested_hours.insert().values(
                hour=hour, ingested_at=0, source="v1", usage_rows=0, gpus=8
            )
        )
    engine.dispose()

    ledger = Ledger(str(path)).create()
    with ledger.engine.connect() as conn:
        assert new_tables <= set(sa.inspect(conn).get_table_names())
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        assert version.scalar() == SCHEMA_VERSION
    assert ledger.done_hours(hour, hour + HOUR) == {hour}  # what it held is kept
    report = build_report(ledger, "2026-11", price_book=PRICE_BOOK)
    assert report.gpu_hours_by_source == {"unknown": 8} and report.simulated is False

    # New hours record their source beside the old ones.
    row = {"node": "h1", "model": H100, "gpus": 8, "capacity_ms": 8 * 3_600_000}
    ledger.write_hour(
        hour + HOUR,
        [],
        [row | {"busy_ms": 0, "energy_mj": 0}],
        "v2",
        [{"source": "simulated", "gpus": 8, "nodes": 1}],
    )
    report = build_report(ledger, "2026-11", price_book=PRICE_BOOK)
    assert report.gpu_hours_by_source == {"simulated": 8, "unknown": 8}
    assert report.simulated is True
    # Opening it again changes nothing.
    assert Ledger(str(path)).create().gpu_hours_by_source(hour, hour + 2 * HOUR) == {
        "simulated": 8,
        "unknown": 8,
    }
