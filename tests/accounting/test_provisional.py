"""The hour in progress: ingested up to now as a provisional hour, in reports and marked
so, and completed by the next run that covers it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from accounting.chargeback import coverage
from accounting.html_report import render_html
from accounting.ingest import IngestError, Ingestor, plan_range
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import load_price_book
from accounting.prometheus import PrometheusClient
from accounting.reports import build_report

pytestmark = pytest.mark.integration
TABLES = ("usage", "capacity", "gpu_sources", "pods", "namespaces", "nodes")
STEP = 300  # the history's scrape interval


def ingestor(prometheus, ledger: Ledger) -> Ingestor:
    return Ingestor(
        PrometheusClient(prometheus.url, retries=0), ledger, load_price_book(), chunk_hours=5
    )


def snapshot(ledger: Ledger) -> dict[str, list]:
    tables = {t: ledger.table_rows(t) for t in TABLES}
    tables["ingested_hours"] = [r[:1] + r[2:] for r in ledger.table_rows("ingested_hours")]
    return tables


def test_the_hour_in_progress_is_provisional_until_a_later_run_completes_it(
    prometheus, history, tmp_path
):
    h = lambda n: history.start + n * HOUR  # noqa: E731
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    now = h(5) + 1800  # a clock half-way through hour 5
    result = ingestor(prometheus, ledger).run_until(h(0), now, now=now)
    assert result.hours_written == 5 and result.hours_provisional == [h(5)]
    assert ledger.done_hours(h(0), h(12)) == {h(n) for n in range(5)}
    assert ledger.provisional(h(0), h(12)) == {h(5): now}
    # The provisional hour holds its first half hour: 4 GPUs x 1800 s on a node that
    # ran all along (within a scrape step of extrapolation).
    capacity = ledger.capacity_frame(h(5), h(6)).set_index("node")
    assert abs(capacity.loc["gpu-node-0001", "capacity_ms"] - 4 * 1800 * 1000) <= 4 * STEP * 500
    assert not ledger.usage_frame(h(5), h(6)).empty
    found = coverage(ledger, h(0), h(12))
    assert found["provisional_hours"] == [h(5)] and found["provisional_through"] == now
    assert found["missing_hours"] == [h(n) for n in range(6, 12)]

    # The next run starts at the provisional hour, replaces it and marks it done: the
    # ledger is then the one a run of whole hours writes.
    later = h(7) + 600
    assert plan_range(ledger, None, None, now=later) == (h(5), h(7))
    ingestor(prometheus, ledger).run(h(5), h(7))
    assert ledger.provisional(h(0), h(12)) == {}
    reference = Ledger(str(tmp_path / "reference.sqlite")).create()
    ingestor(prometheus, reference).run(h(0), h(7))
    assert snapshot(ledger) == snapshot(reference)


def test_resume_ingests_a_provisional_hour_again(prometheus, history, tmp_path):
    h = lambda n: history.start + n * HOUR  # noqa: E731
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    ingestor(prometheus, ledger).run_until(h(0), h(3) + 900, now=h(3) + 900)
    result = ingestor(prometheus, ledger).run(h(0), h(4), resume=True)
    assert (result.hours_skipped, result.hours_written) == (3, 1)
    assert ledger.done_hours(h(0), h(4)) == {h(n) for n in range(4)}
    assert ledger.provisional(h(0), h(4)) == {}


def test_an_hour_that_has_not_settled_is_provisional_too(prometheus, history, tmp_path):
    h = lambda n: history.start + n * HOUR  # noqa: E731
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    now = h(5) + 120  # hour 4 ended two minutes ago: late scrapes may still come
    result = ingestor(prometheus, ledger).run_until(h(2), now, now=now)
    assert result.hours_written == 2 and result.hours_provisional == [h(4), h(5)]
    assert ledger.provisional(h(0), h(12)) == {h(4): h(5), h(5): now}
    with pytest.raises(IngestError, match="in the future"):
        ingestor(prometheus, ledger).run_until(h(2), now + 60, now=now)
    with pytest.raises(ValueError, match="on an hour boundary"):
        ingestor(prometheus, ledger).run_until(h(2) + 60, now, now=now)


def test_a_report_of_only_a_provisional_hour_says_so(prometheus, history, tmp_path):
    hour = history.start + 5 * HOUR
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    ingestor(prometheus, ledger).run_until(hour, hour + 600, now=hour + 600)
    month = datetime.fromtimestamp(hour, UTC).strftime("%Y-%m")
    report = build_report(ledger, month, price_book=load_price_book())
    assert report.hours_ingested == 0 and report.provisional_hours == [hour]
    assert report.total_cost > 0 and not report.complete
    summary = report.summary()
    assert summary["complete"] is False and summary["provisional_hours"] == [
        datetime.fromtimestamp(hour, UTC).strftime("%Y-%m-%dT%H:%MZ")
    ]
    page = render_html(report)
    assert 'id="provisional-note"' in page and "1 hour(s) from" in page
