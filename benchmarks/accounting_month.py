"""Accounting at scale: a month of 1,000 nodes x 8 GPUs and 50,000 pods.

1. Plan the month: every node's GPUs are split into lanes (one of 8 GPUs on most
   nodes, else 2 x 4, 4 x 2 or 8 x 1) and each lane runs pods back to back, 2 hours to
   5 days long with gaps between them, on whole hours; ~50,000 pods in all.
2. Write it as the exporter's counters (per GPU: sampled, busy, energy; per pod and GPU:
   allocated, busy, memory, energy) and kube-state-metrics series (pod owner, labels,
   GPU requests; job owners; namespace and node labels), and the series of the
   accounting recording rules (alerts/rules, gpuledger.accounting.rules: each pod's
   counters summed over its GPUs, GPUs per node) as Prometheus would record them at the
   same instants, with HOURLY samples (--step):
   increase() over each hour is then exact, and the text stays in the gigabytes, not
   hundreds. A real 30 s scrape stores 120x more samples per hour, which makes
   Prometheus slower than here; the table says so.
3. Backfill it with `promtool tsdb create-blocks-from openmetrics`, one file per 54 h
   block (promtool re-reads a file once per block it makes), while the next file is
   written; start Prometheus on the blocks (blocks kept at 54 h: no compaction runs
   during the measurement).
4. In a fresh process: ingest the month with gpuledger's Ingestor (--queries recorded
   or raw, --chunk-hours, --concurrency) into an SQLite ledger, then build and write the month's report (CSV,
   Parquet, FOCUS, HTML). Time waiting on Prometheus, in the ledger and in gpuledger's
   own code is printed apart, with the CPU seconds of gpuledger and of Prometheus (both
   share the machine's cores) and the peak RSS of the process.
5. Floors measured side by side: the same PromQL (every request of every chunk) sent
   bare over HTTP (uncompressed answers, as gpuledger's client asks for them), one at a
   time and --concurrency at once, the stdlib's json.loads of
   the answers, the same usage rows inserted with bare sqlite3, the month's usage rows
   read with bare sqlite3 and summed by namespace with bare pandas.

    python benchmarks/accounting_month.py [--nodes 1000] [--gpus 8] [--pods 50000]
        [--workdir DIR] [--keep]          # ~12 min and ~10 GB of scratch at full size
    python benchmarks/accounting_month.py --workdir DIR --keep --reuse   # measure again
    python benchmarks/accounting_month.py --nodes 20 --pods 1000   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alerts.config import RulesConfig  # noqa: E402
from alerts.rules import RecordingNames  # noqa: E402
from exporter import catalogue as c  # noqa: E402

HOUR = 3600
BLOCK = 54 * HOUR  # promtool's and Prometheus's block range (2 h x 3^3)
MODELS = (("NVIDIA H100 80GB HBM3", 0.7), ("NVIDIA A100-SXM4-80GB", 0.3))
IDLE_WATTS = {"NVIDIA H100 80GB HBM3": 70.0, "NVIDIA A100-SXM4-80GB": 55.0}
MAX_WATTS = {"NVIDIA H100 80GB HBM3": 700.0, "NVIDIA A100-SXM4-80GB": 400.0}
MEMORY = 60e9  # bytes a pod uses per GPU
TEAMS = tuple(f"team-{name}" for name in "abcdefghijkl")
NAMESPACES = 40
# lane layouts of a node (GPU widths) and how often each occurs
LAYOUTS = (((8,), 0.6), ((4, 4), 0.2), ((2, 2, 2, 2), 0.1), ((1,) * 8, 0.1))
OWNERS = ("PyTorchJob", "JobSet", "RayCluster", "Job")
EXPORTER = 'job="gpuledger-exporter"'
KSM = 'job="kube-state-metrics",instance="kube-state-metrics:8080"'


@dataclass
class Month:
    start: int
    end: int
    nodes: list[str]
    models: list[str]
    gpus: int
    # one entry per pod
    pod_node: np.ndarray
    pod_first_gpu: np.ndarray
    pod_width: np.ndarray
    pod_start: np.ndarray  # unix seconds, on the hour
    pod_end: np.ndarray
    pod_util: np.ndarray
    pod_namespace: np.ndarray
    pod_owner: np.ndarray

    @property
    def pods(self) -> int:
        return len(self.pod_node)


def month_of(text: str | None) -> tuple[str, int, int]:
    """The month to use: the one given, else the latest complete 30-day month."""
    if text:
        year, number = (int(p) for p in text.split("-"))
    else:
        now = datetime.now(UTC)
        year, number = now.year, now.month
        while True:
            year, number = (year, number - 1) if number > 1 else (year - 1, 12)
            if _days(year, number) == 30:
                break
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=UTC)
    return f"{year:04d}-{number:02d}", int(start.timestamp()), int(end.timestamp())


def _days(year: int, number: int) -> int:
    start = datetime(year, number, 1)
    end = datetime(year + (number == 12), number % 12 + 1, 1)
    return (end - start).days


def plan(nodes: int, gpus: int, pods: int, start: int, end: int, seed: int = 1) -> Month:
    """Lanes of pods on every node, with the mean pod length set to give `pods` pods."""
    rng = random.Random(seed)
    names = [f"gpu-node-{i:04d}" for i in range(nodes)]
    models = [rng.choices([m for m, _ in MODELS], [w for _, w in MODELS])[0] for _ in names]
    lanes: list[tuple[int, int, int]] = []  # (node, first gpu, width)
    for node in range(nodes):
        layout = rng.choices([lay for lay, _ in LAYOUTS], [w for _, w in LAYOUTS])[0]
        first = 0
        for width in layout:
            width = min(width, gpus - first)
            if width <= 0:
                break
            lanes.append((node, first, width))
            first += width
    hours = (end - start) // HOUR
    # Pod lengths: log-uniform from 2 h to 5 days; gaps of 0-6 h. Scale the lengths so
    # that the lanes hold about `pods` pods.
    per_lane = pods / len(lanes)
    mean_gap = 3.0
    target_length = max(2.0, hours / per_lane - mean_gap)
    # The mean of a log-uniform length on [2, 120] h is 118 / ln 60 = 28.8 h.
    scale = target_length / ((120 - 2) / (math.log(120) - math.log(2)))
    rows = []
    for node, first, width in lanes:
        t = rng.randrange(0, 12)
        while True:
            length = max(1, round(math.exp(rng.uniform(math.log(2), math.log(120))) * scale))
            if t + length > hours:
                break
            util = rng.uniform(0.15, 0.95)
            rows.append((node, first, width, t, t + length, util))
            t += length + rng.randrange(0, 7)
    array = np.array(rows, dtype=float)
    count = len(rows)
    return Month(
        start=start,
        end=end,
        nodes=names,
        models=models,
        gpus=gpus,
        pod_node=array[:, 0].astype(np.int32),
        pod_first_gpu=array[:, 1].astype(np.int32),
        pod_width=array[:, 2].astype(np.int32),
        pod_start=start + array[:, 3].astype(np.int64) * HOUR,
        pod_end=start + array[:, 4].astype(np.int64) * HOUR,
        pod_util=np.round(array[:, 5], 3),
        pod_namespace=np.array([rng.randrange(NAMESPACES) for _ in range(count)]),
        pod_owner=np.array([rng.randrange(len(OWNERS)) for _ in range(count)]),
    )


# ---------------------------------------------------------------- exposition
def pod_name(i: int) -> str:
    return f"job-{i:06d}-worker-0"


def namespace_name(n: int) -> str:
    return f"ns-{n:02d}"


def gpu_counters(month: Month) -> dict[str, np.ndarray]:
    """Cumulative per-GPU counters at every hour of the month: [node*gpus + gpu, hour]."""
    hours = (month.end - month.start) // HOUR
    total = len(month.nodes) * month.gpus
    util = np.zeros((total, hours))
    held = np.zeros((total, hours))
    for i in range(month.pods):
        a = (month.pod_start[i] - month.start) // HOUR
        b = (month.pod_end[i] - month.start) // HOUR
        row = month.pod_node[i] * month.gpus + month.pod_first_gpu[i]
        util[row : row + month.pod_width[i], a:b] = month.pod_util[i]
        held[row : row + month.pod_width[i], a:b] = 1.0
    idle = np.array([IDLE_WATTS[month.models[n // month.gpus]] for n in range(total)])[:, None]
    peak = np.array([MAX_WATTS[month.models[n // month.gpus]] for n in range(total)])[:, None]
    watts = idle + (peak - idle) * util
    zero = np.zeros((total, 1))
    return {
        c.GPU_SAMPLED_SECONDS.name: np.concatenate(
            [zero, np.cumsum(np.full_like(util, HOUR), 1)], 1
        ),
        c.GPU_BUSY_SECONDS.name: np.concatenate([zero, np.cumsum(util * HOUR, 1)], 1),
        c.GPU_ENERGY.name: np.concatenate([zero, np.cumsum(watts * HOUR, 1)], 1),
    }


def write_window(month: Month, counters: dict[str, np.ndarray], lo: int, hi: int, out) -> int:
    """OpenMetrics text of the samples with lo <= t < hi; returns the number of samples."""
    times = np.arange(month.start, month.end + 1, HOUR)
    keep = (times >= lo) & (times < hi)
    stamps = times[keep].tolist()
    first = int(np.argmax(keep))
    samples = 0
    # Per GPU.
    for metric, values in counters.items():
        out.write(f"# TYPE {metric.removesuffix('_total')} counter\n")
        for n, node in enumerate(month.nodes):
            model = month.models[n]
            for g in range(month.gpus):
                labels = (
                    f'{{{EXPORTER},instance="{node}:9400",node="{node}",gpu="{g}",'
                    f'uuid="GPU-{node}-{g}",model="{model}",source="simulated"}} '
                )
                row = values[n * month.gpus + g, first : first + len(stamps)].tolist()
                out.write(
                    "".join(
                        f"{metric}{labels}{v:.1f} {t}\n" for t, v in zip(stamps, row, strict=True)
                    )
                )
                samples += len(row)
    # Per pod and GPU: the pods alive at some hour of the window.
    alive = np.nonzero((month.pod_end >= lo) & (month.pod_start < hi))[0]
    rates = (
        (c.POD_GPU_ALLOCATED_SECONDS.name, lambda i: 1.0),
        (c.POD_GPU_BUSY_SECONDS.name, lambda i: float(month.pod_util[i])),
        (c.POD_GPU_MEMORY_BYTE_SECONDS.name, lambda i: MEMORY),
        (
            c.POD_GPU_ENERGY.name,
            lambda i: (
                IDLE_WATTS[month.models[month.pod_node[i]]]
                + (
                    MAX_WATTS[month.models[month.pod_node[i]]]
                    - IDLE_WATTS[month.models[month.pod_node[i]]]
                )
                * float(month.pod_util[i])
            ),
        ),
    )
    lives = {}
    for i in alive.tolist():
        a, b = int(month.pod_start[i]), int(month.pod_end[i])
        lives[i] = [t for t in range(max(a, lo), min(b, hi - 1) + 1, HOUR)]
    sharing = "exclusive"
    for metric, rate in rates:
        out.write(f"# TYPE {metric.removesuffix('_total')} counter\n")
        for i in alive.tolist():
            node = month.nodes[month.pod_node[i]]
            start, per_second = int(month.pod_start[i]), rate(i)
            ts = lives[i]
            if not ts:
                continue
            ns = namespace_name(int(month.pod_namespace[i]))
            for g in range(month.pod_first_gpu[i], month.pod_first_gpu[i] + month.pod_width[i]):
                labels = (
                    f'{{{EXPORTER},instance="{node}:9400",namespace="{ns}",pod="{pod_name(i)}",'
                    f'container="main",node="{node}",gpu="{g}",uuid="GPU-{node}-{g}",'
                    f'model="{month.models[month.pod_node[i]]}",sharing="{sharing}",'
                    'source="simulated"} '
                )
                out.write(
                    "".join(f"{metric}{labels}{(t - start) * per_second:.1f} {t}\n" for t in ts)
                )
                samples += len(ts)
    samples += _write_recorded(month, alive, lives, rates, stamps, out)
    samples += _write_ksm(month, alive, lives, lo, hi, stamps, out)
    return samples


def _write_recorded(month: Month, alive, lives, rates, stamps: list[int], out) -> int:
    """The series of gpuledger's accounting recording rules (gpuledger.accounting.rules),
    as they would have been recorded at the same instants as the counters: each pod's
    counters summed over its GPUs, and the GPUs per node, model and source."""
    names = RecordingNames(RulesConfig())
    samples = 0
    for metric, rate in rates:
        name = names.pod_counter_sums[metric]
        out.write(f"# TYPE {name} gauge\n")
        for i in alive.tolist():
            ts = lives[i]
            if not ts:
                continue
            node = month.nodes[month.pod_node[i]]
            start, per_second = int(month.pod_start[i]), rate(i) * int(month.pod_width[i])
            labels = (
                f'{{namespace="{namespace_name(int(month.pod_namespace[i]))}",'
                f'pod="{pod_name(i)}",node="{node}",model="{month.models[month.pod_node[i]]}",'
                'sharing="exclusive"} '
            )
            out.write("".join(f"{name}{labels}{(t - start) * per_second:.1f} {t}\n" for t in ts))
            samples += len(ts)
    name = names.node_model_gpus
    out.write(f"# TYPE {name} gauge\n")
    for n, node in enumerate(month.nodes):
        labels = f'{{node="{node}",model="{month.models[n]}",source="simulated"}} '
        out.write("".join(f"{name}{labels}{month.gpus} {t}\n" for t in stamps))
        samples += len(stamps)
    return samples


def _write_ksm(month: Month, alive, lives, lo: int, hi: int, stamps: list[int], out) -> int:
    samples = 0

    def series(metric: str, labels: str, ts: list[int], value: float = 1.0) -> None:
        nonlocal samples
        out.write("".join(f"{metric}{{{KSM},{labels}}} {value} {t}\n" for t in ts))
        samples += len(ts)

    out.write("# TYPE kube_pod_owner gauge\n")
    for i in alive.tolist():
        ns, pod = namespace_name(int(month.pod_namespace[i])), pod_name(i)
        kind = OWNERS[int(month.pod_owner[i])]
        owner = (kind if kind != "JobSet" else "Job", f"job-{i:06d}")
        series(
            "kube_pod_owner",
            f'namespace="{ns}",pod="{pod}",uid="uid-{i}",owner_kind="{owner[0]}",'
            f'owner_name="{owner[1]}",owner_is_controller="true"',
            lives[i],
        )
    out.write("# TYPE kube_pod_labels gauge\n")
    for i in alive.tolist():
        ns, pod = namespace_name(int(month.pod_namespace[i])), pod_name(i)
        # A third of the pods carry their team themselves (overriding the namespace's).
        team = f',label_team="{TEAMS[i % len(TEAMS)]}"' if i % 3 == 0 else ""
        series(
            "kube_pod_labels",
            f'namespace="{ns}",pod="{pod}",uid="uid-{i}",label_app="trainer"{team}',
            lives[i],
        )
    out.write("# TYPE kube_pod_container_resource_requests gauge\n")
    for i in alive.tolist():
        ns, pod = namespace_name(int(month.pod_namespace[i])), pod_name(i)
        series(
            "kube_pod_container_resource_requests",
            f'namespace="{ns}",pod="{pod}",container="main",node="{month.nodes[month.pod_node[i]]}",'
            'resource="nvidia_com_gpu",unit="integer"',
            lives[i],
            float(month.pod_width[i]),
        )
    out.write("# TYPE kube_job_owner gauge\n")
    for i in alive.tolist():
        if OWNERS[int(month.pod_owner[i])] == "JobSet":
            series(
                "kube_job_owner",
                f'namespace="{namespace_name(int(month.pod_namespace[i]))}",job_name="job-{i:06d}",'
                f'owner_kind="JobSet",owner_name="jobset-{i:06d}",owner_is_controller="true"',
                lives[i],
            )
    out.write("# TYPE kube_namespace_labels gauge\n")
    for n in range(NAMESPACES):
        team = f',label_team="{TEAMS[n % len(TEAMS)]}"' if n % 8 else ""  # some unlabelled
        series("kube_namespace_labels", f'namespace="{namespace_name(n)}"{team}', stamps)
    out.write("# TYPE kube_node_labels gauge\n")
    for n, node in enumerate(month.nodes):
        series(
            "kube_node_labels",
            f'node="{node}",label_topology_kubernetes_io_region="region-{n % 3}",'
            f'label_nvidia_com_gpu_product="{month.models[n].replace(" ", "-")}"',
            stamps,
        )
    return samples


def windows(month: Month) -> Iterator[tuple[int, int]]:
    """[lo, hi) of each block: the month's samples (end included) cut at 54 h marks."""
    lo = month.start
    last = month.end + 1
    while lo < last:
        hi = min(last, (lo // BLOCK + 1) * BLOCK)
        yield lo, hi
        lo = hi


def generate_and_backfill(month: Month, work: Path) -> dict[str, float]:
    """Write each block's file and backfill it while the next one is written."""
    data = work / "prometheus-data"
    data.mkdir(parents=True, exist_ok=True)
    stats = {"write_s": 0.0, "backfill_wait_s": 0.0, "samples": 0, "bytes": 0, "files": 0}
    started = time.monotonic()
    counters = gpu_counters(month)
    stats["plan_s"] = time.monotonic() - started
    running: tuple[subprocess.Popen, Path] | None = None

    def finish(job: tuple[subprocess.Popen, Path]) -> None:
        process, path = job
        waited = time.monotonic()
        _, err = process.communicate()
        stats["backfill_wait_s"] += time.monotonic() - waited
        if process.returncode != 0:
            raise RuntimeError(f"promtool failed on {path}: {err.decode()[-2000:]}")
        path.unlink()

    for lo, hi in windows(month):
        path = work / f"block-{lo}.om"
        t0 = time.monotonic()
        with open(path, "w", buffering=1 << 22) as out:
            stats["samples"] += write_window(month, counters, lo, hi, out)
            out.write("# EOF\n")
        stats["write_s"] += time.monotonic() - t0
        stats["bytes"] += path.stat().st_size
        stats["files"] += 1
        if running is not None:
            finish(running)
        running = (
            subprocess.Popen(
                [
                    "promtool",
                    "tsdb",
                    "create-blocks-from",
                    "openmetrics",
                    f"--max-block-duration={BLOCK // HOUR}h",
                    "--quiet",
                    str(path),
                    str(data),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ),
            path,
        )
        print(
            f"  wrote {datetime.fromtimestamp(lo, UTC):%m-%d %H:%M} .. "
            f"{datetime.fromtimestamp(hi, UTC):%m-%d %H:%M}: {stats['samples'] / 1e6:.1f} M "
            f"samples so far, {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )
    if running is not None:
        finish(running)
    stats["total_s"] = time.monotonic() - started
    return stats


# ---------------------------------------------------------------- the measured run
def measure(
    prometheus: str,
    ledger_path: str,
    month: str,
    out: str,
    *,
    chunk_hours: int,
    concurrency: int,
    queries: str,
    prometheus_pid: int | None,
) -> dict[str, float]:
    """Ingest and report the month in this (fresh) process; return the timings."""
    from accounting import chargeback
    from accounting.html_report import write_html_report
    from accounting.ingest import Ingestor
    from accounting.ledger import Ledger
    from accounting.pricebook import load_price_book
    from accounting.prometheus import PrometheusClient
    from accounting.reports import build_report, write_report

    result: dict[str, float] = {}
    price_book = load_price_book()
    ledger = Ledger(ledger_path).create()
    client = PrometheusClient(prometheus, timeout=600)
    start, end = _month_bounds(month)

    def progress(done: int, total: int, hour: int) -> None:
        print(f"  ingest: {done}/{total} hours", file=sys.stderr)

    ingestor = Ingestor(
        client,
        ledger,
        price_book,
        queries=_queries(queries),
        chunk_hours=chunk_hours,
        concurrency=concurrency,
        progress=progress,
    )
    cpu_before = _cpu_seconds("self"), _cpu_seconds(prometheus_pid)
    ingested = ingestor.run(start, end)
    result.update(
        ingest_s=ingested.seconds_total,
        ingest_prometheus_s=ingested.seconds_prometheus,
        ingest_requests_s=ingested.seconds_requests,
        ingest_ledger_s=ingested.seconds_ledger,
        ingest_own_s=ingested.seconds_own,
        ingest_cpu_s=_cpu_seconds("self") - cpu_before[0],
        ingest_prometheus_cpu_s=_cpu_seconds(prometheus_pid) - cpu_before[1],
        ingest_requests=client.stats.requests,
        ingest_mb_received=client.stats.bytes_received / 1e6,
        hours=ingested.hours_written,
        usage_rows=ingested.usage_rows,
        rss_after_ingest_mb=_peak_rss_mb(),
    )

    # The report reads the ledger through these (the cells are split and summed per day
    # in the database, in threads, while the metadata is read); time them apart from the
    # computing: the wall time during which any of them ran.
    reading: list[tuple[float, float]] = []

    def timed(method):
        def call(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return method(*args, **kwargs)
            finally:
                reading.append((t0, time.monotonic()))

        return call

    for name in (
        "pods_frame",
        "namespaces_frame",
        "nodes_frame",
        "hours_frame",
        "provisional",
        "gpu_hours_by_source",
    ):
        setattr(ledger, name, timed(getattr(ledger, name)))
    chargeback.split_cells_in_ledger = timed(chargeback.split_cells_in_ledger)
    t0 = time.monotonic()
    report = build_report(ledger, month, price_book=price_book)
    result["report_build_s"] = time.monotonic() - t0
    result["report_ledger_s"] = _union_seconds(reading)
    t0 = time.monotonic()
    files = write_report(report, out)
    result["report_files_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    html = write_html_report(report, out)
    result["report_html_s"] = time.monotonic() - t0
    # Generated data is simulated (source="simulated"): every output must say so.
    result["report_simulated"] = float(
        report.simulated and 'id="simulated-banner"' in html.read_text()
    )
    result["report_rows"] = sum(len(f) for f in report.frames.values()) + len(report.focus)
    result["focus_rows"] = len(report.focus)
    result["report_files"] = len(files) + 1
    result["total_cost"] = float(report.total_cost)
    result["rss_peak_mb"] = _peak_rss_mb()
    ledger.dispose()
    return result


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by any of the (start, end) intervals."""
    total, covered_to = 0.0, float("-inf")
    for start, end in sorted(intervals):
        total += max(0.0, end - max(start, covered_to))
        covered_to = max(covered_to, end)
    return total


def _queries(kind: str):
    from accounting.ingest import IngestQueries

    return IngestQueries.recorded() if kind == "recorded" else IngestQueries()


def floors(
    prometheus: str,
    ledger_path: str,
    month: str,
    *,
    chunk_hours: int,
    concurrency: int,
    queries: str,
) -> dict[str, float]:
    """The bare cost of the same work without gpuledger's code around it."""
    import json as stdlib_json
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import pandas as pd
    import requests

    from accounting.ingest import chunk_requests

    start, end = _month_bounds(month)
    # The same requests the Ingestor makes, chunk by chunk.
    calls = []
    for chunk in range(start, end, chunk_hours * HOUR):
        hours = list(range(chunk, min(end, chunk + chunk_hours * HOUR), HOUR))
        calls += chunk_requests(_queries(queries), hours)
    local = threading.local()

    def post(call: tuple[str, dict]) -> bytes:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            # Uncompressed, as gpuledger's client asks (PrometheusClient(compression=False)).
            local.session.headers["Accept-Encoding"] = "identity"
        response = local.session.post(f"{prometheus}/api/v1/{call[0]}", data=call[1], timeout=600)
        response.raise_for_status()
        return response.content

    result = {}
    parse = 0.0
    t0 = time.monotonic()
    for call in calls:
        body = post(call)
        parsing = time.monotonic()
        stdlib_json.loads(body)
        parse += time.monotonic() - parsing
    result["floor_prometheus_s"] = time.monotonic() - t0 - parse
    result["floor_json_s"] = parse
    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in pool.map(post, calls):
            pass
    result["floor_prometheus_concurrent_s"] = time.monotonic() - t0
    with sqlite3.connect(ledger_path) as conn:
        t0 = time.monotonic()
        rows = conn.execute(
            "SELECT hour, namespace, pod, node, model, sharing, held_ms, busy_ms, "
            "memory_byte_seconds, energy_mj FROM usage WHERE hour >= ? AND hour < ?",
            (start, end),
        ).fetchall()
        frame = pd.DataFrame(
            rows,
            columns=[
                "hour",
                "namespace",
                "pod",
                "node",
                "model",
                "sharing",
                "held_ms",
                "busy_ms",
                "memory",
                "energy_mj",
            ],
        )
        result["floor_read_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        frame.groupby("namespace")[["held_ms", "busy_ms", "energy_mj"]].sum()
        result["floor_groupby_s"] = time.monotonic() - t0
    scratch = Path(ledger_path).with_suffix(".floor.sqlite")
    scratch.unlink(missing_ok=True)
    with sqlite3.connect(scratch) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE usage (hour INTEGER, namespace TEXT, pod TEXT, node TEXT, model TEXT, "
            "sharing TEXT, held_ms INTEGER, busy_ms INTEGER, memory_byte_seconds REAL, "
            "energy_mj INTEGER, PRIMARY KEY (hour, namespace, pod, node, model, sharing))"
        )
        t0 = time.monotonic()
        conn.executemany("INSERT INTO usage VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        conn.commit()
        result["floor_insert_s"] = time.monotonic() - t0
    scratch.unlink(missing_ok=True)
    return result


def _month_bounds(month: str) -> tuple[int, int]:
    return month_of(month)[1:]


def _cpu_seconds(pid: int | str | None) -> float:
    """User + system CPU seconds of a process so far (0 when there is none)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=50_000)
    parser.add_argument("--month", default=None, help="YYYY-MM (default: the last 30-day month)")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse the workdir's backfilled data (with --keep: generate once, measure often)",
    )
    parser.add_argument("--chunk-hours", type=int, default=72, help="the Ingestor's chunk_hours")
    parser.add_argument(
        "--concurrency", type=int, default=2, help="the Ingestor's concurrency (0: no threads)"
    )
    parser.add_argument(
        "--queries",
        choices=("raw", "recorded"),
        default="recorded",
        help="the Ingestor's queries: the per-device counters, or the accounting recording "
        "rules' series (written into the data beside the counters)",
    )
    parser.add_argument(
        "--measure", nargs=4, metavar=("PROMETHEUS", "PID", "LEDGER", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    month, start, end = month_of(args.month)
    options = {
        "chunk_hours": args.chunk_hours,
        "concurrency": args.concurrency,
        "queries": args.queries,
    }
    if args.measure:
        prometheus, pid, ledger_path, out = args.measure
        result = measure(prometheus, ledger_path, month, out, prometheus_pid=int(pid), **options)
        result.update(floors(prometheus, ledger_path, month, **options))
        print(json.dumps(result))
        return 0

    from tests.realservices import Prometheus

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpuledger-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"month {month}: {args.nodes} nodes x {args.gpus} GPUs, ~{args.pods} pods; work in {work}",
        file=sys.stderr,
    )
    month_plan = plan(args.nodes, args.gpus, args.pods, start, end)
    built: dict[str, float] = {}
    if not (args.reuse and (work / "prometheus-data").exists()):
        shutil.rmtree(work / "prometheus-data", ignore_errors=True)
        built = generate_and_backfill(month_plan, work)
    try:
        with Prometheus(
            work / "prometheus",
            data_dir=work / "prometheus-data",
            extra_args=[
                f"--storage.tsdb.max-block-duration={BLOCK // HOUR}h",
                "--query.timeout=10m",
            ],
        ) as server:
            ledger_path = work / "ledger.sqlite"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{ledger_path}{suffix}").unlink(missing_ok=True)
            load_before = os.getloadavg()[0]
            t0 = time.monotonic()
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--month",
                    month,
                    "--chunk-hours",
                    str(args.chunk_hours),
                    "--concurrency",
                    str(args.concurrency),
                    "--queries",
                    args.queries,
                    "--measure",
                    server.url,
                    str(server.process.pid),
                    str(ledger_path),
                    str(work / "report"),
                ],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            wall = time.monotonic() - t0
            if child.returncode != 0:
                print(child.stderr[-5000:], file=sys.stderr)
                return 1
            result = json.loads(child.stdout.strip().splitlines()[-1])
            prometheus_rss = _vm_hwm_mb(server.process.pid)
            result["load"] = (load_before + os.getloadavg()[0]) / 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(month_plan, month, built, result, wall, prometheus_rss, options)
    return 0


def print_table(
    month: Month,
    name: str,
    built: dict,
    r: dict,
    wall: float,
    prometheus_rss: float,
    options: dict[str, int],
) -> None:
    gpu_hours = float(np.sum((month.pod_end - month.pod_start) / HOUR * month.pod_width))
    capacity = len(month.nodes) * month.gpus * (month.end - month.start) / HOUR
    report_s = r["report_build_s"] + r["report_files_s"] + r["report_html_s"]
    ingest_report = r["ingest_s"] + report_s
    chunk, concurrency, queries = options["chunk_hours"], options["concurrency"], options["queries"]
    lines = [
        f"accounting benchmark, {name}: {len(month.nodes)} nodes x {month.gpus} GPUs, "
        f"{month.pods} pods (mean {np.mean((month.pod_end - month.pod_start) / HOUR):.1f} h, "
        f"{gpu_hours / capacity:.0%} of {capacity:,.0f} GPU-hours held); counters sampled hourly",
        "",
        "| what | seconds | notes |",
        "| --- | ---: | --- |",
    ]
    if built:
        lines += [
            f"| generate OpenMetrics (Python) | {built['write_s']:.1f} | {built['samples'] / 1e6:.1f} M samples, {built['bytes'] / 1e9:.2f} GB in {built['files']} files |",
            f"| backfill (promtool, overlapped) | {built['backfill_wait_s']:.1f} | waited after writing; total data setup {built['total_s']:.1f} s |",
        ]
    lines += [
        f"| **ingest** (Ingestor, {queries} queries, {chunk} h chunks, {concurrency} at once) | **{r['ingest_s']:.1f}** | {r['hours']:.0f} hours, {r['usage_rows']:,.0f} usage rows |",
        f"|   waiting on Prometheus | {r['ingest_prometheus_s']:.1f} | the time ingestion waited for answers (with threads: not overlapped by its own work) |",
        f"|   Prometheus requests | {r['ingest_requests_s']:.1f} | {r['ingest_requests']:.0f} requests, {r['ingest_mb_received']:.0f} MB; summed over threads, overlapped |",
        f"|   in the ledger (SQLite) | {r['ingest_ledger_s']:.1f} | |",
        f"|   in gpuledger's own code | {r['ingest_own_s']:.1f} | joining, checking (JSON parsing is in the threads) |",
        f"|   CPU: gpuledger / Prometheus | {r['ingest_cpu_s']:.1f} / {r['ingest_prometheus_cpu_s']:.1f} | CPU seconds during ingest, on {os.cpu_count()} CPUs |",
        f"| **report** build (7 chargebacks + FOCUS) | **{r['report_build_s']:.1f}** | {r['report_rows']:,.0f} rows ({r['focus_rows']:,.0f} FOCUS) |",
        f"|   reading the ledger | {r['report_ledger_s']:.1f} | cells split and summed per day in SQLite (2 threads), metadata read meanwhile |",
        f"|   in gpuledger's own code | {r['report_build_s'] - r['report_ledger_s']:.1f} | |",
        f"| report files (CSV, Parquet, FOCUS) | {r['report_files_s']:.1f} | {r['report_files']:.0f} files incl. HTML |",
        f"| report HTML | {r['report_html_s']:.1f} | simulated banner: {'yes' if r['report_simulated'] else 'NO'} |",
        f"| **ingest + report** | **{ingest_report:.1f}** | target < 60 s; process wall {wall:.1f} s with floors |",
        f"| peak RSS of gpuledger | {r['rss_peak_mb']:.0f} MB | after ingest {r['rss_after_ingest_mb']:.0f} MB; target < 2048 MB |",
        f"| peak RSS of Prometheus | {prometheus_rss:.0f} MB | the server, for reference |",
        f"| floor: same PromQL, bare HTTP | {r['floor_prometheus_s']:.1f} | the same {chunk} h requests one at a time, requests.post (uncompressed, as the client asks), no parsing |",
        f"| floor: same PromQL, bare HTTP, {concurrency} at once | {r['floor_prometheus_concurrent_s']:.1f} | threads, one session each |",
        f"| floor: bare json.loads of the answers | {r['floor_json_s']:.1f} | stdlib json |",
        "| floor: same rows, bare sqlite3 insert | {:.1f} | executemany, one transaction |".format(
            r["floor_insert_s"]
        ),
        "| floor: month's rows, bare sqlite3 read | {:.1f} | fetchall into a DataFrame |".format(
            r["floor_read_s"]
        ),
        "| floor: bare pandas sum by namespace | {:.2f} | |".format(r["floor_groupby_s"]),
        "",
        f"total cost of the month: {r['total_cost']:,.2f} USD (default price book); "
        f"load average during the run ~{r['load']:.1f} on {os.cpu_count()} CPUs",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
