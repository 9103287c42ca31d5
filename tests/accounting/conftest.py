"""Fixtures of the accounting tests: ledgers on SQLite and a real PostgreSQL, and a
real Prometheus backfilled with twelve hours of a small cluster."""

from __future__ import annotations

import io
import time

import pytest

from accounting.ledger import Ledger, metadata
from tests.accounting.openmetrics import Generated, OutsideBusy, PodPlan, generate
from tests.realservices import PostgreSQL, Prometheus, backfill_openmetrics


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    with PostgreSQL(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def ledger(request, tmp_path):
    """An empty ledger on each database the project supports."""
    if request.param == "sqlite":
        ledger = Ledger(str(tmp_path / "ledger.sqlite")).create()
        yield ledger
        ledger.dispose()
        return
    server = request.getfixturevalue("postgres")
    ledger = Ledger(server.url)
    metadata.drop_all(ledger.engine)
    ledger.create()
    yield ledger
    metadata.drop_all(ledger.engine)
    ledger.dispose()


# ---------------------------------------------------------------- a backfilled Prometheus
HOUR = 3600
SHARED_NODE = "gpu-node-shared"


def history_start() -> int:
    """Fourteen hours ago, on the hour: recent enough for any retention."""
    return (int(time.time()) // HOUR - 14) * HOUR


def make_history(start: int) -> Generated:
    """Twelve hours of a small cluster with every case ingestion must handle: whole,
    time-sliced and MIG shares, GPU work outside pods, an exporter restart in the middle
    of an hour and a scrape gap inside one."""
    h = lambda n: start + n * HOUR  # noqa: E731
    extra = [
        PodPlan("ns-vision", "notebook-a", SHARED_NODE, (0,), h(1), h(7), 0.3, 0.5, "shared"),
        PodPlan("ns-speech", "notebook-b", SHARED_NODE, (0,), h(1), h(9), 0.6, 0.5, "shared"),
        PodPlan(
            "ns-language", "infer-mig", SHARED_NODE, (1,), h(2), h(6), 0.5, 3 / 7, "mig", "3g.40gb"
        ),
    ]
    return generate(
        nodes=2,
        gpus=4,
        pods=6,
        days=0.5,
        step=300,
        start=start,
        extra_nodes=[SHARED_NODE],
        extra_pods=extra,
        outside=[OutsideBusy(SHARED_NODE, 2, h(3), h(5), 0.6)],
        restarts=[("gpu-node-0000", h(5) + 1200)],
        gaps=[(h(8) + 600, h(8) + 1800)],
    )


@pytest.fixture(scope="session")
def history() -> Generated:
    return make_history(history_start())


@pytest.fixture(scope="session")
def prometheus(history, tmp_path_factory):
    """A real Prometheus holding `history`, backfilled with promtool."""
    work = tmp_path_factory.mktemp("prometheus")
    text = io.StringIO()
    history.write(text)
    backfill_openmetrics(text.getvalue(), work / "data", work)
    with Prometheus(work, data_dir=work / "data") as server:
        yield server
