"""Ingestion from a real Prometheus (and VictoriaMetrics) into SQLite and PostgreSQL."""

from __future__ import annotations

import io

import pytest

from accounting.ingest import IngestError, Ingestor, IngestQueries, plan_range
from accounting.kube import OwnerResolver
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import PriceBook, UnknownGpuModel, load_price_book, parse_price_book
from accounting.prometheus import PartialDataError, PrometheusClient
from tests.accounting.conftest import SHARED_NODE, make_history
from tests.accounting.openmetrics import MODEL, generate
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_object, make_pod, owner_reference
from tests.realservices import Prometheus, VictoriaMetrics, backfill_openmetrics

pytestmark = pytest.mark.integration
TABLES = ("usage", "capacity", "pods", "namespaces", "nodes")


def run(url: str, ledger: Ledger, history, book: PriceBook | None = None, **options):
    client = PrometheusClient(url, retries=0)
    ingestor = Ingestor(
        client,
        ledger,
        book or load_price_book(),
        chunk_hours=options.pop("chunk_hours", 5),
        resolver=options.pop("resolver", None),
    )
    return ingestor.run(history.start, history.end, **options)


def assert_matches_truth(ledger: Ledger, history, tolerance_ms: float = 2.0) -> None:
    usage, capacity = history.truth()
    rows = ledger.usage_frame(history.start, history.end)
    expected = {k: v for k, v in usage.items() if v["held"] > 0}
    got = {tuple(r[:6]): r for r in rows.itertuples(index=False)}
    assert set(got) == set(expected)
    for key, truth in expected.items():
        row = got[key]
        assert abs(row.held_ms - truth["held"] * 1000) <= tolerance_ms, key
        assert abs(row.busy_ms - truth["busy"] * 1000) <= tolerance_ms, key
        assert abs(row.energy_mj - truth["energy"] * 1000) <= tolerance_ms * 700, key
        assert row.memory_byte_seconds == pytest.approx(truth["memory"], rel=1e-9)
    cap = ledger.capacity_frame(history.start, history.end)
    assert len(cap) == len(capacity)
    for row in cap.itertuples(index=False):
        truth = capacity[(row.hour, row.node, row.model)]
        assert row.gpus == truth["gpus"]
        assert abs(row.capacity_ms - truth["capacity"] * 1000) <= tolerance_ms
        assert abs(row.busy_ms - truth["busy"] * 1000) <= tolerance_ms
        assert abs(row.energy_mj - truth["energy"] * 1000) <= tolerance_ms * 700


def test_the_ledger_holds_what_the_counters_say_hour_by_hour(prometheus, history, ledger):
    result = run(prometheus.url, ledger, history)
    assert result.hours_written == 12 and result.seconds_prometheus > 0
    assert_matches_truth(ledger, history)
    # The exporter restart at 5h20m loses the one step that ended with it, nothing more;
    # the 20-minute scrape gap inside hour 8 loses nothing.
    cap = ledger.capacity_frame(history.start, history.end).set_index(["hour", "node"])
    assert cap.loc[(history.start + 5 * HOUR, "gpu-node-0000"), "capacity_ms"] == 4 * 3300 * 1000
    assert cap.loc[(history.start + 8 * HOUR, "gpu-node-0001"), "capacity_ms"] == 4 * 3600 * 1000
    usage = ledger.usage_frame(history.start, history.end)
    shared = usage[usage["node"] == SHARED_NODE]
    assert set(shared["sharing"]) == {"shared", "mig"}
    pods = ledger.pods_frame().set_index("pod")
    assert pods.loc["notebook-b", "first_seen"] == history.start + HOUR
    assert pods.loc["notebook-b", "last_seen"] == history.start + 9 * HOUR


def test_running_hours_again_replaces_them_and_resume_skips_them(prometheus, history, tmp_path):
    first = Ledger(str(tmp_path / "a.sqlite")).create()
    run(prometheus.url, first, history)
    before = {t: first.table_rows(t) for t in TABLES}
    again = run(prometheus.url, first, history, chunk_hours=3)
    assert again.hours_written == 12
    assert {t: first.table_rows(t) for t in TABLES} == before
    resumed = run(prometheus.url, first, history, resume=True)
    assert (resumed.hours_written, resumed.hours_skipped) == (0, 12)


def test_hours_that_prometheus_no_longer_has_are_kept(prometheus, history, tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    run(prometheus.url, ledger, history)
    before = {t: ledger.table_rows(t) for t in TABLES}
    with Prometheus(tmp_path / "empty") as empty:  # as if retention dropped everything
        result = run(empty.url, ledger, history)
    assert result.hours_written == 0 and len(result.hours_kept) == 12
    assert {t: ledger.table_rows(t) for t in TABLES} == before


def test_an_unknown_gpu_model_stops_ingestion_before_anything_is_written(
    prometheus, history, tmp_path
):
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    book = parse_price_book(
        {"gpu_models": {"NVIDIA A100-SXM4-80GB": {"price_per_gpu_hour": 1}}}, "team-prices.yaml"
    )
    with pytest.raises(UnknownGpuModel, match=rf"'{MODEL}' \(seen on node .*team-prices.yaml"):
        run(prometheus.url, ledger, history, book)
    assert ledger.done_hours(history.start, history.end) == set()
    assert ledger.pods_frame().empty


def test_partial_data_stops_ingestion_before_anything_is_written(tmp_path):
    history = make_history(prometheus_start := _recent())
    text = io.StringIO()
    history.write(text)
    # One node's GPU series are missing (a shard that did not answer); its pods' are not.
    lines = [
        line
        for line in text.getvalue().splitlines(keepends=True)
        if not (line.startswith("gpuledger_gpu_") and 'node="gpu-node-0001"' in line)
    ]
    backfill_openmetrics("".join(lines), tmp_path / "data", tmp_path)
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    with (
        Prometheus(tmp_path, data_dir=tmp_path / "data") as prom,
        pytest.raises(PartialDataError, match="gpu-node-0001.*nothing was written"),
    ):
        run(prom.url, ledger, history, chunk_hours=12)
    assert ledger.done_hours(prometheus_start, history.end) == set()


def test_an_hour_missing_between_hours_with_data_is_partial_data(tmp_path):
    start = _recent()
    outage = (start + 3 * HOUR - 1, start + 4 * HOUR + 1)  # no sample of hour 3 at all
    history = generate(nodes=1, gpus=2, pods=1, days=0.25, step=300, start=start, gaps=[outage])
    text = io.StringIO()
    history.write(text)
    backfill_openmetrics(text.getvalue(), tmp_path / "data", tmp_path)
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    with Prometheus(tmp_path, data_dir=tmp_path / "data") as prom:
        with pytest.raises(PartialDataError, match="no GPU data at all for .*--allow-gaps"):
            run(prom.url, ledger, history, chunk_hours=6)
        assert ledger.done_hours(history.start, history.end) == set()
        client = PrometheusClient(prom.url)
        Ingestor(client, ledger, load_price_book(), allow_gaps=True).run(history.start, history.end)
    assert ledger.hours_frame(history.start, history.end)["gpus"].tolist() == [2, 2, 2, 0, 2, 2]


def test_recorded_queries_without_the_recording_rules_are_partial_data(
    prometheus, history, tmp_path
):
    # This Prometheus has the exporter's counters but never ran the accounting rules
    # (installed later, say): the recorded queries must not read that as no usage.
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    client = PrometheusClient(prometheus.url, retries=0)
    ingestor = Ingestor(client, ledger, load_price_book(), queries=IngestQueries.recorded())
    with pytest.raises(PartialDataError, match="recording rules .* --queries raw"):
        ingestor.run(history.start, history.end)
    assert ledger.done_hours(history.start, history.end) == set()


def test_victoriametrics_gives_the_same_ledger(history, tmp_path):
    text = io.StringIO()
    history.write(text, flavour="prometheus")
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    with VictoriaMetrics(tmp_path) as vm:
        vm.import_prometheus_text(text.getvalue())
        result = run(vm.url, ledger, history)
    assert result.hours_written == 12
    assert_matches_truth(ledger, history)


def test_owner_chains_come_from_the_api_where_it_knows_more(prometheus, history, tmp_path):
    plans = {p.pod: p for p in history.pods}
    with FakeKubeApiServer() as api:
        # The PyTorchJob's pod is alive; the JobSet's pod is gone but its Job remains.
        pytorch = next(p for p in history.pods if p.owner and p.owner[0] == "PyTorchJob")
        job = api.add(
            make_object(
                "kubeflow.org/v1",
                "PyTorchJob",
                pytorch.owner[1],
                pytorch.namespace,
                labels={"team": "from-the-job"},
            )
        )
        api.add(
            make_object(
                "kueue.x-k8s.io/v1beta1",
                "Workload",
                "pytorchjob-wl",
                pytorch.namespace,
                owner=owner_reference(job),
                spec={"queueName": "gpu-queue"},
            )
        )
        api.add(make_pod(pytorch.pod, pytorch.namespace, owner=owner_reference(job)))
        jobset_pod = next(p for p in history.pods if p.owner and p.owner[0] == "Job")
        jobset = api.add(
            make_object(
                "jobset.x-k8s.io/v1alpha2", "JobSet", "renamed-jobset", jobset_pod.namespace
            )
        )
        api.add(
            make_object(
                "batch/v1",
                "Job",
                jobset_pod.owner[1],
                jobset_pod.namespace,
                owner=owner_reference(jobset),
            )
        )
        ledger = Ledger(str(tmp_path / "l.sqlite")).create()
        result = run(prometheus.url, ledger, history, resolver=OwnerResolver(api.api_client()))
    pods = ledger.pods_frame().set_index("pod")
    row = pods.loc[pytorch.pod]
    assert (row["job_kind"], row["queue"], row["resolved_by"]) == (
        "PyTorchJob",
        "gpu-queue",
        "kube-api",
    )
    assert row["job_labels"] == {"team": "from-the-job"}
    assert pods.loc[jobset_pod.pod, "chain"] == [
        f"Job/{jobset_pod.owner[1]}",
        "JobSet/renamed-jobset",
    ]
    # Pods the API has never heard of keep what kube-state-metrics said.
    deployment_pod = next(p for p in plans.values() if p.owner and p.owner[0] == "ReplicaSet")
    assert pods.loc[deployment_pod.pod, "job_kind"] == "Deployment"
    assert result.pods_resolved_by_api >= 2


def test_pods_between_hour_boundaries_are_counted_within_half_a_step(tmp_path):
    history = generate(nodes=2, gpus=2, pods=4, days=0.25, step=60, start=_recent(), align="step")
    text = io.StringIO()
    history.write(text)
    backfill_openmetrics(text.getvalue(), tmp_path / "data", tmp_path)
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    with Prometheus(tmp_path, data_dir=tmp_path / "data") as prom:
        run(prom.url, ledger, history)
    usage, _ = history.truth()
    rows = ledger.usage_frame(history.start, history.end)
    for plan in history.pods:
        truth = sum(v["held"] for k, v in usage.items() if k[2] == plan.pod)
        got = rows.loc[rows["pod"] == plan.pod, "held_ms"].sum() / 1000
        # increase() extrapolates at most half a step past a series' last sample.
        assert abs(got - truth) <= history.step / 2 * len(plan.gpus) + 1e-3, plan.pod


def test_plan_range_refuses_hours_that_are_not_complete(tmp_path):
    ledger = Ledger(str(tmp_path / "l.sqlite")).create()
    may = 1714521600  # 2024-05-01T00:00Z
    now = may + 10 * HOUR + 120  # two minutes into an hour: the one before is not settled
    with pytest.raises(IngestError, match="not a complete hour yet"):
        plan_range(ledger, may, now, now=now)
    # An empty ledger starts at the start of the month and ends at the last settled hour.
    assert plan_range(ledger, None, None, now=now) == (may, may + 9 * HOUR)
    assert plan_range(ledger, may + 1800, may + 5000, now=now) == (may, may + 2 * HOUR)
    with pytest.raises(IngestError, match="after --to"):
        plan_range(ledger, may + 5 * HOUR, may + 2 * HOUR, now=now)
    ledger.write_hour(may + 3 * HOUR, [], [], "test")
    assert plan_range(ledger, None, None, now=now) == (may + 4 * HOUR, may + 9 * HOUR)


def _recent() -> int:
    from tests.accounting.conftest import history_start

    return history_start()


def test_threads_write_the_ledger_one_at_a_time_would(prometheus, history, tmp_path):
    ledgers = {}
    for concurrency in (0, 2):
        ledger = Ledger(str(tmp_path / f"l{concurrency}.sqlite")).create()
        client = PrometheusClient(prometheus.url, retries=0)
        ingestor = Ingestor(
            client, ledger, load_price_book(), chunk_hours=2, concurrency=concurrency
        )
        result = ingestor.run(history.start, history.end)
        assert result.hours_written == 12 and result.seconds_prometheus > 0
        # Every request is counted, in whichever thread it ran: 13 for each of 6 chunks
        # (8 range queries, the per-pod metadata as one, 4 other metadata queries).
        assert client.stats.requests == 6 * 13 and result.seconds_requests > 0
        ledgers[concurrency] = {t: ledger.table_rows(t) for t in (*TABLES, "gpu_sources")}
    assert ledgers[0] == ledgers[2]
    assert_matches_truth(ledger, history)


def test_each_thread_has_a_session_of_its_own_with_the_clients_settings():
    from accounting.ingest import _own_client

    client = PrometheusClient(
        "http://prometheus.test:9090", headers={"Authorization": "Bearer s3cret"}, retries=5
    )
    client.session.verify = "/etc/ssl/cluster-ca.pem"
    client.stats.requests = 3
    own = _own_client(client)
    assert own.session is not client.session and own.stats is not client.stats
    assert own.session.headers["Authorization"] == "Bearer s3cret"
    assert own.session.verify == "/etc/ssl/cluster-ca.pem"
    assert (own.url, own.retries, own.stats.requests) == (client.url, 5, 0)
    own.session.headers["Authorization"] = "Bearer other"
    assert client.session.headers["Authorization"] == "Bearer s3cret"
    with pytest.raises(ValueError, match="concurrency must be 0"):
        Ingestor(client, Ledger("sqlite://"), load_price_book(), concurrency=-1)
