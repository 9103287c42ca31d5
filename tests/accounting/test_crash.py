"""SIGKILL ingestion at random points, resume, and find the ledger an uninterrupted run
would have written: nothing lost, nothing counted twice."""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounting.ingest import iso
from accounting.ledger import HOUR, Ledger
from gpuledger.cli import main
from tests.accounting.conftest import history_start
from tests.accounting.openmetrics import generate
from tests.realservices import Prometheus, backfill_openmetrics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TABLES = ("usage", "capacity", "pods", "namespaces", "nodes")


def command(url: str, ledger: Path, start: int, end: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gpuledger.cli",
        "accounting",
        "ingest",
        "--prometheus",
        url,
        "--from",
        iso(start),
        "--to",
        iso(end),
        "--ledger",
        str(ledger),
        "--no-kube",
        "--chunk-hours",
        "2",
        *extra,
    ]


def hours_done(path: Path) -> int:
    """Hours committed so far, read beside the writer (0 before the ledger exists)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("select count(*) from ingested_hours").fetchone()[0]
    except sqlite3.Error:
        return 0


def snapshot(path: Path) -> dict[str, list]:
    ledger = Ledger(str(path))
    tables = {t: ledger.table_rows(t) for t in TABLES}
    # When an hour was written differs between runs; what was written must not.
    tables["ingested_hours"] = [r[:1] + r[2:] for r in ledger.table_rows("ingested_hours")]
    ledger.dispose()
    return tables


@pytest.fixture(scope="module")
def long_history(tmp_path_factory):
    """Two days: enough hours that a kill can land anywhere in a run."""
    # Ends an hour before the current one: complete and settled whatever the minute.
    start = history_start() - 35 * HOUR
    history = generate(nodes=2, gpus=2, pods=8, days=2, step=900, start=start)
    work = tmp_path_factory.mktemp("crash-prometheus")
    text = io.StringIO()
    history.write(text)
    backfill_openmetrics(text.getvalue(), work / "data", work)
    with Prometheus(work, data_dir=work / "data") as prometheus:
        yield history, prometheus


def test_killed_ingestion_resumes_to_the_ledger_of_an_uninterrupted_run(long_history, tmp_path):
    history, prometheus = long_history
    hours = len(history.hours)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda ledger, *extra: command(  # noqa: E731
        prometheus.url, ledger, history.start, history.end, *extra
    )
    reference = tmp_path / "reference.sqlite"
    assert main(run(reference)[3:]) == 0  # the same command, uninterrupted, in-process
    expected = snapshot(reference)
    assert len(expected["ingested_hours"]) == hours

    crashed = tmp_path / "crashed.sqlite"
    rng = random.Random(int(os.environ.get("GPULEDGER_CRASH_SEED", "20240501")))
    kills, states = 0, []
    for _ in range(4):
        process = subprocess.Popen(
            run(crashed, "--resume"),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Past a random number of newly committed hours, then a random moment more: in
        # the middle of queries, a metadata merge or an hour's transaction.
        target = min(hours - 1, hours_done(crashed) + rng.randint(1, 10))
        deadline = time.monotonic() + 60
        while (
            process.poll() is None and hours_done(crashed) < target and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.1))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        states.append(hours_done(crashed))
    subprocess.run(run(crashed, "--resume"), check=True, env=env, capture_output=True, timeout=120)
    assert kills >= 3, f"the runs finished before they could be killed: {states}"
    assert len({s for s in states if 0 < s < hours}) >= 2, states
    assert snapshot(crashed) == expected
