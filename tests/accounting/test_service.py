"""`gpuledger accounting serve`: scheduled ingestion from a real Prometheus, the
OpenCost-shaped allocation API over real HTTP with bearer tokens, and cost metrics."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from accounting import service as svc
from accounting.allocation import QueryError, parse_aggregate, parse_window
from accounting.chargeback import TeamRule, chargeback
from accounting.costmetrics import month_bounds
from accounting.ingest import Ingestor
from accounting.ledger import HOUR, Ledger, capacity, ingested_hours, usage
from accounting.pricebook import load_price_book
from accounting.prometheus import PrometheusClient
from exporter import catalogue as cat
from tests.realservices import free_port, wait_until

TOKEN = "s3cret-token-for-tests-0123456789"
ROOT = Path(__file__).resolve().parents[2]
PRICE_BOOK = load_price_book()


def iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def http(url: str, token: str | None = TOKEN, method: str = "GET") -> tuple[int, dict, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.fixture(scope="module")
def served(prometheus, history, tmp_path_factory):
    """A ledger filled by the schedule from the backfilled Prometheus, and the API on it."""
    ledger = Ledger(str(tmp_path_factory.mktemp("serve") / "ledger.sqlite")).create()
    client = PrometheusClient(prometheus.url)
    api = svc.AccountingService(ledger, PRICE_BOOK, cluster="test")
    schedule = svc.IngestSchedule(
        lambda: Ingestor(client, ledger, PRICE_BOOK),
        catch_up=24 * HOUR,
        on_run=api.record_run,
    )
    first = schedule.run_once()
    server = svc.ApiServer(("127.0.0.1", 0), api, svc.BearerToken(value=TOKEN))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield argparse.Namespace(
        ledger=ledger, api=api, schedule=schedule, first=first, url=server.url, history=history
    )
    server.shutdown()
    server.server_close()
    ledger.dispose()


# ---------------------------------------------------------------- the schedule
def test_schedule_ingests_the_catch_up_window(served):
    first = served.first
    assert not first.error
    assert first.end - first.start == 24 * HOUR
    assert first.result.hours_written + first.result.hours_skipped == 24
    history = served.history
    done = served.ledger.done_hours(history.start, history.end)
    assert done == set(history.hours)


def test_schedule_fills_a_missing_hour_and_nothing_else(served):
    ledger = served.ledger
    before = {name: ledger.table_rows(name) for name in ("usage", "capacity")}
    hole = served.history.start + 5 * HOUR
    with ledger.engine.begin() as conn:
        for table in (usage, capacity, ingested_hours):
            conn.execute(table.delete().where(table.c.hour == hole))
    record = served.schedule.run_once()
    assert not record.error
    assert record.result.hours_written == 1 and record.result.hours_skipped == 23
    assert {name: ledger.table_rows(name) for name in ("usage", "capacity")} == before


def test_failed_run_is_counted_and_retried_soon():
    def broken() -> Ingestor:
        raise ConnectionError("Prometheus is down")

    now = 1_790_000_000.0
    api_runs: list[svc.RunRecord] = []
    schedule = svc.IngestSchedule(
        broken, catch_up=2 * HOUR, retry_seconds=120, on_run=api_runs.append, clock=lambda: now
    )
    record = schedule.run_once()
    assert record.error == "ConnectionError: Prometheus is down"
    assert api_runs == [record]
    assert schedule.next_due(now, failed=True) == now + 120
    # A good run waits for the next hour to settle.
    assert schedule.next_due(now, failed=False) == (int(now) // HOUR + 1) * HOUR + 300


def test_schedule_thread_stops_promptly():
    runs = threading.Event()

    class Once:
        def run(self, start, end, resume):
            runs.set()
            from accounting.ingest import IngestResult

            return IngestResult()

    schedule = svc.IngestSchedule(lambda: Once(), catch_up=HOUR)
    schedule.start()
    assert runs.wait(10) and schedule.alive()
    started = time.monotonic()
    schedule.stop()
    assert not schedule.alive() and time.monotonic() - started < 5


# ---------------------------------------------------------------- the allocation API
@pytest.mark.parametrize(
    "aggregate,dims",
    [
        ("namespace", ("namespace",)),
        ("team", ("team",)),
        ("job", ("namespace", "job")),
        ("pod", ("namespace", "pod")),
        ("gpu_model", ("model",)),
    ],
)
def test_allocation_equals_the_chargeback(served, aggregate, dims):
    history = served.history
    window = f"{iso(history.start)},{iso(history.end)}"
    status, headers, body = http(f"{served.url}/allocation?window={window}&aggregate={aggregate}")
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["code"] == 200 and len(answer["data"]) == 1 and "warning" not in answer
    allocations = answer["data"][0]
    expected = chargeback(served.ledger, history.start, history.end, price_book=PRICE_BOOK, by=dims)
    assert len(allocations) == len(expected)
    workloads = expected[expected["category"] == "workload"]
    for row in workloads.to_dict("records"):
        name = "/".join(row[d] for d in dims)
        got = allocations[name]
        assert got["name"] == name
        assert got["totalCost"] == got["gpuCost"] == float(row["cost_allocation"])
        assert got["gpuHours"] == pytest.approx(row["gpu_hours_held"], abs=1e-6)
        assert got["gpuEfficiency"] == pytest.approx(row["efficiency"], abs=1e-6)
        assert got["gpuledger"]["costUsageBasis"] == float(row["cost_usage"])
        assert got["window"] == {"start": iso(history.start), "end": iso(history.end)}
        assert got["properties"]["cluster"] == "test"
    idle_names = [n for n in allocations if n.endswith("__idle__")]
    assert idle_names, "the idle capacity is a row of its own"
    # Every set reconciles to the cluster's cost.
    total = sum(a["totalCost"] for a in allocations.values())
    assert total == pytest.approx(float(expected.attrs["total_cost"]), abs=1e-6)


def test_allocation_job_properties_name_the_controller(served):
    history = served.history
    window = f"{iso(history.start)},{iso(history.end)}"
    _, _, body = http(f"{served.url}/allocation?window={window}&aggregate=controller")
    jobs = json.loads(body)["data"][0]
    pytorch = [a for a in jobs.values() if a["properties"].get("controllerKind") == "PyTorchJob"]
    assert pytorch
    for allocation in pytorch:
        props = allocation["properties"]
        assert allocation["name"] == f"{props['namespace']}/PyTorchJob/{props['controller']}"


def test_allocation_steps_and_idle_options(served):
    history = served.history
    window = f"{iso(history.start)},{iso(history.end)}"
    _, _, body = http(f"{served.url}/allocation?window={window}&aggregate=team&step=6h")
    sets = json.loads(body)["data"]
    assert len(sets) == 2
    assert [s[next(iter(s))]["window"]["start"] for s in sets] == [
        iso(history.start),
        iso(history.start + 6 * HOUR),
    ]
    _, _, body = http(f"{served.url}/allocation?window={window}&aggregate=team&shareIdle=true")
    shared = json.loads(body)["data"][0]
    assert shared["__idle__"]["totalCost"] == 0.0
    assert any(a["gpuledger"]["unallocatedShare"] > 0 for a in shared.values())
    _, _, body = http(f"{served.url}/allocation?window={window}&aggregate=team&includeIdle=false")
    assert "__idle__" not in json.loads(body)["data"][0]


def test_allocation_warns_about_hours_the_ledger_lacks(served):
    start = served.history.start - 48 * HOUR
    window = f"{iso(start)},{iso(served.history.end)}"
    status, _, body = http(f"{served.url}/allocation?window={window}&aggregate=namespace")
    answer = json.loads(body)
    assert status == 200
    hours = set(range(start, served.history.end, HOUR))
    missing = hours - served.ledger.done_hours(start, served.history.end)
    assert 0 < len(missing) < len(hours)
    first = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(start))
    assert answer["warning"] == (
        f"the ledger lacks {len(missing)} hours of the window (first {first}): "
        "their cost is not included"
    )


@pytest.mark.parametrize(
    "query,message",
    [
        ("", "window is required"),
        ("window=yesterdayish", "is not a duration"),
        ("window=30m", "not a whole number of hours"),
        (
            "window=2026-11-01T00:30:00Z,2026-12-01T00:00:00Z",
            "window start 2026-11-01T00:30:00Z is not on an hour",
        ),
        ("window=2026-12-01T00:00:00Z,2026-11-01T00:00:00Z", "is empty"),
        ("window=2026-11-01,2026-11-02,2026-11-03", "two times separated by one comma"),
        ("window=2026-13-01T00:00:00Z,2026-12-01T00:00:00Z", "cannot read '2026-13-01T00:00:00Z'"),
        ("window=3000d", "ask for at most 400 days"),
        ("window=7d&aggregate=bogus", "cannot aggregate by 'bogus'"),
        ("window=7d&shareIdle=maybe", "shareIdle must be true or false"),
        ("window=7d&step=90m", "step '90m' is not a whole number of hours"),
        ("window=7d&colour=blue", "unknown parameters ['colour']"),
    ],
)
def test_bad_queries_get_400_with_a_clear_message(served, query, message):
    status, _, body = http(f"{served.url}/allocation?{query}")
    assert status == 400
    answer = json.loads(body)
    assert answer["code"] == 400 and answer["data"] is None
    assert message in answer["message"]


# ---------------------------------------------------------------- auth
@pytest.mark.parametrize(
    "path", ["/allocation?window=7d", "/allocation/compute?window=7d", "/metrics"]
)
def test_every_path_but_healthz_needs_the_token(served, path):
    for token in (None, "wrong-token-but-long-enough", TOKEN[:-1]):
        status, headers, body = http(served.url + path, token=token)
        assert status == 401, (path, token)
        assert headers["WWW-Authenticate"] == 'Bearer realm="gpuledger"'
        assert json.loads(body)["code"] == 401
    request = urllib.request.Request(served.url + path, headers={"Authorization": f"Basic {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    assert http(served.url + path)[0] == 200
    status, _, body = http(served.url + "/healthz", token=None)
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_the_api_is_read_only(served):
    status, headers, _ = http(f"{served.url}/allocation?window=7d", method="POST")
    assert status == 405 and headers["Allow"] == "GET"
    assert http(f"{served.url}/nowhere")[0] == 404


def test_token_sources_and_rotation(tmp_path):
    with pytest.raises(svc.ServeError, match="--api-token-file FILE, or set GPULEDGER_API_TOKEN"):
        svc.BearerToken.from_sources(None, environ={})
    assert svc.BearerToken.from_sources(None, {"GPULEDGER_API_TOKEN": TOKEN}).accepts(
        f"Bearer {TOKEN}"
    )
    path = tmp_path / "token"
    path.write_text("\n")
    with pytest.raises(svc.ServeError, match="is empty"):
        svc.BearerToken(path=path)
    path.write_text("short")
    with pytest.raises(svc.ServeError, match="at least 16 characters"):
        svc.BearerToken(path=path)
    with pytest.raises(svc.ServeError, match="cannot read the API token file"):
        svc.BearerToken(path=tmp_path / "missing")
    path.write_text(TOKEN + "\n")
    token = svc.BearerToken(path=path)
    assert token.accepts(f"Bearer {TOKEN}") and not token.accepts(None)
    rotated = "another-token-0123456789abcdef"
    path.write_text(rotated)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert token.accepts(f"Bearer {rotated}") and not token.accepts(f"Bearer {TOKEN}")
    path.write_text("")  # a half-written file keeps the last good token
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert token.accepts(f"Bearer {rotated}")


# ---------------------------------------------------------------- metrics
def test_metrics_equal_the_month_chargeback(served):
    status, _, body = http(f"{served.url}/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    last = served.ledger.last_hour()
    start, end = month_bounds(last)
    month = chargeback(served.ledger, start, end, price_book=PRICE_BOOK, by=("team", "namespace"))
    cost = {
        (s.labels["team"], s.labels["namespace"]): s.value
        for s in families[cat.ACCOUNTING_MONTH_COST.name].samples
        if s.labels["basis"] == "allocation"
    }
    assert cost == {
        (r["team"], r["namespace"]): float(r["cost_allocation"]) for r in month.to_dict("records")
    }
    held = {
        (s.labels["team"], s.labels["namespace"]): s.value
        for s in families[cat.ACCOUNTING_MONTH_GPU_SECONDS.name].samples
        if s.labels["state"] == "held"
    }
    assert sum(held.values()) == pytest.approx(month["gpu_hours_held"].sum() * HOUR)
    assert families[cat.ACCOUNTING_LAST_HOUR.name].samples[0].value == last
    runs = {
        s.labels["result"]: s.value
        for s in families[cat.ACCOUNTING_INGEST_RUNS.name.removesuffix("_total")].samples
        if s.name.endswith("_total")
    }
    assert runs.get("success", 0) >= 1
    parts = {s.labels["part"] for s in families[cat.ACCOUNTING_INGEST_DURATION.name].samples}
    assert parts == {"total", "prometheus", "kube", "ledger", "gpuledger"}
    # Every name served is in the catalogue.
    served_names = {s.name for f in families.values() for s in f.samples}
    assert served_names <= cat.exposed_names()


# ---------------------------------------------------------------- parsing (no server)
NOW = 1_794_602_400.5  # 2026-11-13T20:40:00Z, a Friday
MIDNIGHT, MONDAY = 1_794_528_000, 1_794_182_400  # 2026-11-13, 2026-11-09
NOVEMBER, DECEMBER, OCTOBER = 1_793_491_200, 1_796_083_200, 1_790_812_800


def test_window_forms():
    hour = MIDNIGHT + 20 * HOUR
    assert parse_window("2026-11-01T00:00:00Z,2026-12-01T00:00:00Z", NOW) == (NOVEMBER, DECEMBER)
    assert parse_window(f"{NOVEMBER},{DECEMBER}", NOW) == (NOVEMBER, DECEMBER)
    assert parse_window("2026-11-01T01:00:00+01:00,2026-11-02T00:00:00Z", NOW)[0] == NOVEMBER
    assert parse_window("2026-11-01T00:00:00,2026-11-02T00:00:00", NOW)[0] == NOVEMBER  # UTC
    assert parse_window("24h", NOW) == (hour - 86400, hour)
    assert parse_window("2w", NOW) == (hour - 14 * 86400, hour)
    assert parse_window("today", NOW) == (MIDNIGHT, hour)
    assert parse_window("yesterday", NOW) == (MIDNIGHT - 86400, MIDNIGHT)
    assert parse_window("week", NOW) == (MONDAY, hour)
    assert parse_window("lastweek", NOW) == (MONDAY - 7 * 86400, MONDAY)
    assert parse_window("month", NOW) == (NOVEMBER, hour)
    assert parse_window("lastmonth", NOW) == (OCTOBER, NOVEMBER)
    with pytest.raises(QueryError, match="'today' is empty"):
        parse_window("today", MIDNIGHT + 600)  # no whole hour of today yet


def test_aggregate_forms():
    teams = TeamRule(labels=("team", "cost-center"))
    assert parse_aggregate(None, teams) == ("namespace",)
    assert parse_aggregate("namespace,pod", teams) == ("namespace", "pod")
    assert parse_aggregate("label:cost_center", teams) == ("team",)
    assert parse_aggregate("cluster", teams) == ()
    with pytest.raises(QueryError, match="label:team, label:cost-center"):
        parse_aggregate("label:app", teams)


# ---------------------------------------------------------------- the command
def _serve_args(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    svc.add_serve(parser)
    return parser.parse_args(["--prometheus", "http://127.0.0.1:9", *extra])


def test_serve_refuses_to_start_without_a_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(svc.TOKEN_ENV, raising=False)
    args = _serve_args("--ledger", str(tmp_path / "l.sqlite"))
    assert svc.run_serve(args) == 2
    assert "the API needs a bearer token" in capsys.readouterr().err
    args = _serve_args("--ledger", str(tmp_path / "l.sqlite"), "--catch-up", "90m")
    monkeypatch.setenv(svc.TOKEN_ENV, TOKEN)
    assert svc.run_serve(args) == 2
    assert "--catch-up '90m' is not a whole number of hours" in capsys.readouterr().err


def test_serve_command_end_to_end(prometheus, history, tmp_path):
    """The real command in its own process: it ingests, answers, and stops on SIGTERM."""
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    ledger_path = tmp_path / "ledger.sqlite"
    script = (
        "import argparse, logging, sys\n"
        "from accounting import service\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "parser = argparse.ArgumentParser()\n"
        "service.add_serve(parser)\n"
        "sys.exit(service.run_serve(parser.parse_args(sys.argv[1:])))\n"
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            script,
            "--prometheus",
            prometheus.url,
            "--ledger",
            str(ledger_path),
            "--api-token-file",
            str(token_file),
            "--listen",
            f"127.0.0.1:{port}",
            "--catch-up",
            "16h",
            "--no-kube",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def ingested() -> bool:
            status, _, body = http(f"{url}/metrics")
            success = f'{cat.ACCOUNTING_INGEST_RUNS.name}{{result="success"}} 1.0'
            return status == 200 and success in body.decode()

        wait_until(ingested, timeout=60, what="the first scheduled ingestion")
        window = f"{iso(history.start)},{iso(history.end)}"
        status, _, body = http(f"{url}/allocation?window={window}&aggregate=namespace")
        assert status == 200
        allocations = json.loads(body)["data"][0]
        ledger = Ledger(str(ledger_path))
        expected = chargeback(
            ledger, history.start, history.end, price_book=PRICE_BOOK, by=("namespace",)
        )
        ledger.dispose()
        assert sum(a["totalCost"] for a in allocations.values()) == pytest.approx(
            float(expected.attrs["total_cost"])
        )
        assert {n for n in allocations if not n.startswith("__")} == {
            f"ns-{t}" for t in ("vision", "language", "speech", "research")
        }
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    with sa.create_engine(f"sqlite:///{ledger_path}").connect() as conn:
        hours = conn.execute(sa.select(sa.func.count()).select_from(ingested_hours)).scalar()
    assert hours == 16
