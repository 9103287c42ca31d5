"""Ingesting with the accounting recording rules (`IngestQueries.recorded()`, `gpuledger
accounting ingest --queries recorded`) gives the raw queries' ledger, when the rules ran
over the data at an interval that is a multiple of the scrape interval: every table the
same, but for each pod's first hour, which lacks the rule's evaluation lag (less than a
scrape interval) of the pod's usage.

The tests' history (tests/accounting/conftest.py) is backfilled into a real Prometheus
as the exporter's scrape job would store it (job="gpuledger-exporter", which the rules
select on); promtool evaluates the generated rule group gpuledger.accounting.rules over
it into blocks of their own (`promtool tsdb create-blocks-from rules`, as a Prometheus
running the rules would have recorded them), and the same hours are ingested twice, with
the raw and with the recorded queries.
"""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from accounting.ingest import Ingestor, IngestQueries
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import load_price_book
from accounting.prometheus import PrometheusClient
from alerts import rules
from alerts.config import RulesConfig
from exporter import catalogue
from tests.accounting.openmetrics import Generated
from tests.accounting.test_ingest import assert_matches_truth
from tests.realservices import Prometheus, backfill_openmetrics, require_binary

pytestmark = pytest.mark.integration

GROUP = "gpuledger.accounting.rules"
# The tables ingestion writes; ingested_hours, provisional_hours and ledger_meta hold
# when and from where, not what.
TABLES = ("usage", "capacity", "pods", "namespaces", "nodes", "gpu_sources")
KEY = 6  # usage: hour, namespace, pod, node, model, sharing
HELD, BUSY, MEMORY, ENERGY = 6, 7, 8, 9


def exporter_scrape(history: Generated) -> str:
    """The history's OpenMetrics text with the exporter's series labelled by their scrape
    job, as Prometheus stores them (kube-state-metrics' series are another job's)."""
    text = io.StringIO()
    history.write(text)
    return re.sub(
        r"^(gpuledger_\w+)\{", r'\1{job="gpuledger-exporter",', text.getvalue(), flags=re.M
    )


def accounting_group(path: Path, interval: str | None) -> None:
    """The generated gpuledger.accounting.rules group (alerts/rules), alone in a file;
    evaluated every `interval` instead of its own (the scrape interval of deploy/)."""
    groups = yaml.safe_load((rules.RULES_DIR / rules.RECORDING_FILE).read_text())["groups"]
    (group,) = [g for g in groups if g["name"] == GROUP]
    assert 'job="gpuledger-exporter"' in group["rules"][0]["expr"]
    assert group["interval"] == RulesConfig().exporter_scrape_interval == "15s"
    if interval is not None:
        group["interval"] = interval
    path.write_text(yaml.safe_dump({"groups": [group]}, sort_keys=False))


@dataclasses.dataclass
class Recorded:
    url: str
    history: Generated
    lags: set[float]  # seconds from a scrape to the first rule evaluation that sees it


@pytest.fixture(
    scope="module",
    params=[
        # The accounting tests' history (a 5-minute scrape interval), the rules evaluated
        # as often as it is scraped.
        pytest.param((300, "300s"), id="scrape-5m-eval-5m"),
        # The same cluster as deploy/ runs it: the exporter scraped every 15 s
        # (ServiceMonitor), the group evaluated at its own interval (the same 15 s).
        pytest.param((15, None), id="scrape-15s-eval-group-interval"),
    ],
)
def recorded(request, history: Generated, tmp_path_factory) -> Iterator[Recorded]:
    step, interval = request.param
    history = dataclasses.replace(history, step=step)  # same pods, restart and gap
    work = tmp_path_factory.mktemp("recorded")
    data = work / "data"
    backfill_openmetrics(exporter_scrape(history), data, work)
    accounting_group(work / "accounting.yaml", interval)
    with Prometheus(work / "raw", data_dir=data) as prometheus:
        # A relative file name: the group's evaluation offset (a hash of file and group
        # name, as in a running Prometheus) is then the same on every run.
        result = subprocess.run(
            [
                require_binary("promtool"),
                *("tsdb", "create-blocks-from", "rules"),
                f"--start={history.start}",
                f"--end={history.end}",
                f"--url={prometheus.url}",
                "--output-dir=blocks",
                "accounting.yaml",
            ],
            cwd=work,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    blocks = list((work / "blocks").iterdir())
    assert blocks, result.stderr
    for block in blocks:
        shutil.move(block, data / block.name)
    with Prometheus(work / "both", data_dir=data) as prometheus:
        held = rules.RecordingNames(RulesConfig()).pod_counter_sums[
            catalogue.POD_GPU_ALLOCATED_SECONDS.name
        ]
        samples = prometheus.api("query", query=f"{held}[2h]", time=history.start + 6 * HOUR)
        lags = {
            round((float(t) - history.start) % step, 3)
            for series in samples["result"]
            for t, _ in series["values"]
        }
        yield Recorded(prometheus.url, history, lags)


def ingest(url: str, ledger: Ledger, history: Generated, queries: IngestQueries) -> dict:
    client = PrometheusClient(url, retries=0)
    result = Ingestor(client, ledger, load_price_book(), queries=queries, chunk_hours=5).run(
        history.start, history.end
    )
    assert result.hours_written == 12
    return {t: ledger.table_rows(t) for t in TABLES}


def test_recorded_queries_give_the_raw_queries_ledger(recorded: Recorded, tmp_path):
    history = recorded.history
    raw_ledger = Ledger(str(tmp_path / "raw.sqlite")).create()
    raw = ingest(recorded.url, raw_ledger, history, IngestQueries())
    assert_matches_truth(raw_ledger, history)  # the reference is right to begin with
    recorded_ledger = Ledger(str(tmp_path / "recorded.sqlite")).create()
    got = ingest(recorded.url, recorded_ledger, history, IngestQueries.recorded())

    # Capacity, GPU counts and sources, pods (first and last hours, owners, labels),
    # namespaces and nodes: the same rows.
    for table in TABLES[1:]:
        assert got[table] == raw[table], table

    # Usage: the same rows, and every value the same except in each pod's first hour.
    raw_rows = {row[:KEY]: row for row in raw["usage"]}
    got_rows = {row[:KEY]: row for row in got["usage"]}
    assert set(got_rows) == set(raw_rows)
    first_hours = {}
    for hour, namespace, pod, *_ in sorted(raw_rows):
        first_hours.setdefault((namespace, pod), hour)
    plans = {(p.namespace, p.pod): p for p in history.pods}
    # Each evaluation comes the same time after the scrape it sees (the evaluation
    # interval is a multiple of the scrape interval, the offset fixed per group).
    (lag,) = recorded.lags
    assert 0 <= lag < history.step
    for key, row in raw_rows.items():
        mine = got_rows[key]
        hour, namespace, pod = key[:3]
        if hour != first_hours[(namespace, pod)]:
            # A sum of counters that reset together (the exporter restart inside hour 5)
            # and are scraped together (the gap inside hour 8): increase() of the sum is
            # the sum of the increases. Integer milli-units equal; byte-seconds are a
            # float, summed in another order.
            assert mine[HELD:MEMORY] == row[HELD:MEMORY], key
            assert mine[ENERGY] == row[ENERGY], key
            assert mine[MEMORY] == pytest.approx(row[MEMORY], rel=1e-12), key
            continue
        # A pod's first hour: not exactly equal. The raw counters start at 0 with the pod,
        # on the hour's first sample, so increase() extrapolates nothing. The recorded
        # sum's first point (0 too) is the rule's first evaluation after that scrape,
        # `lag` later, and increase() never extrapolates a counter back past zero: the
        # recorded row lacks the pod's first `lag` seconds of usage, and never more than
        # one scrape interval of it (in hour 5, whose restart lost a step, a little more
        # than `lag`). The pod's later hours are equal, so its total is short by as much.
        plan = plans[(namespace, pod)]
        share = plan.fraction * len(plan.gpus)
        seconds = row[HELD] / 1000 / share  # the raw row's seconds of this hour
        for column in (HELD, BUSY, MEMORY, ENERGY):
            per_second = row[column] / seconds
            lost = row[column] - mine[column]
            # One milli-unit of rounding, and held_ms's rounding in `seconds`.
            slack = 1 + per_second * history.step / row[HELD]
            assert per_second * lag - slack <= lost <= per_second * history.step + slack, (
                key,
                column,
            )
