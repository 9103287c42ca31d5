"""The cost dashboard: well formed, and every panel query answers from a real Prometheus
that scrapes a real `accounting serve` API (with its bearer token) over a month's ledger;
the headline numbers equal the chargeback's."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from accounting.chargeback import chargeback
from accounting.ingest import IngestResult
from accounting.service import AccountingService, ApiServer, BearerToken, RunRecord
from alerts import promql, rules
from dashboards import cost, generate
from dashboards.common import Context
from exporter import catalogue
from tests.accounting.sample_ledger import PRICE_BOOK, build_ledger, month_start
from tests.dashboards.test_panel_queries import resolve_variables, substitute
from tests.realservices import Prometheus, scrape_job, wait_until

TOKEN = "dashboard-test-token-0123456789"
MONTH, DAYS = "2026-11", 3


def model() -> dict:
    return json.loads(JSONEncoder(sort_keys=True).encode(cost.build(Context.default()).build()))


def test_dashboard_is_well_formed() -> None:
    built = model()
    assert built["uid"] == cost.UID and built["title"].startswith("gpuledger / ")
    names = {v["name"] for v in built["templating"]["list"]}
    assert names == {"datasource", "cluster", "team", "namespace", "currency"}
    known = catalogue.exposed_names() | rules.recording_names()
    panels = list(generate.panels(built))
    assert len(panels) >= 12
    for panel in panels:
        assert panel["description"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    for title, expr in generate.queries(built):
        assert promql.metric_names(expr) <= known, title
        assert promql.metric_names(expr), title


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[Prometheus, AccountingService]]:
    work = tmp_path_factory.mktemp("cost-dashboard")
    ledger = build_ledger(work / "ledger.sqlite", MONTH, DAYS)
    end = month_start(MONTH) + DAYS * 86400
    service = AccountingService(ledger, PRICE_BOOK, clock=lambda: end + 600)
    service.refresh_metrics()
    service.record_run(
        RunRecord(end, end + 5, end - 86400, end, IngestResult(hours_written=1, seconds_total=5))
    )
    server = ApiServer(("127.0.0.1", 0), service, BearerToken(value=TOKEN))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = server.url.removeprefix("http://")
    job = scrape_job("gpuledger-accounting", [target], authorization={"credentials": TOKEN})
    try:
        with Prometheus(work / "prometheus", scrape_configs=[job]) as prometheus:
            prometheus.wait_for_targets_up()
            yield prometheus, service
    finally:
        server.shutdown()
        server.server_close()
        ledger.dispose()


@pytest.mark.integration
def test_every_panel_query_returns_data(stack) -> None:
    prometheus, _ = stack
    built = model()
    values = resolve_variables(prometheus, built)
    assert values["currency"] == "USD"

    def empty() -> list[str]:
        missing = []
        for title, expr in generate.queries(built):
            query = substitute(expr, values)
            assert "$" not in query, f"{title}: unsubstituted {query}"
            if not prometheus.query(query):
                missing.append(f"{title}: {query}")
        return missing

    deadline = time.monotonic() + 30  # rate() over 10 s needs a few scrapes
    while (failures := empty()) and time.monotonic() < deadline:
        time.sleep(2)
    assert not failures, "panels without data:\n" + "\n".join(failures)


@pytest.mark.integration
def test_headline_panels_equal_the_chargeback(stack) -> None:
    prometheus, service = stack
    built = model()
    values = resolve_variables(prometheus, built)
    exprs = dict(generate.queries(built))
    start = month_start(MONTH)
    month = chargeback(service.ledger, start, start + 30 * 86400, price_book=PRICE_BOOK)
    wait_until(lambda: prometheus.query(substitute(exprs["Cost this month ($currency)"], values)))
    total = prometheus.value(substitute(exprs["Cost this month ($currency)"], values))
    assert total == pytest.approx(float(month.attrs["total_cost"]), abs=0.005)
    by_team = {
        r["metric"]["team"]: float(r["value"][1])
        for r in prometheus.query(substitute(exprs["Cost by team this month ($currency)"], values))
    }
    assert by_team == pytest.approx(
        {r["team"]: float(r["cost_allocation"]) for r in month.to_dict("records")}, abs=0.015
    )
    workloads = month[month["category"] == "workload"]
    efficiency = prometheus.value(substitute(exprs["GPU efficiency"], values))
    assert efficiency == pytest.approx(
        workloads["gpu_hours_busy"].sum() / workloads["gpu_hours_held"].sum(), rel=1e-9
    )
