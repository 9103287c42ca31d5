"""Exporter benchmark: scrape latency, collection CPU and memory on big nodes.

Two nodes: 8 GPUs x 7 MIG instances with 56 pods, and 8 time-sliced GPUs x 4 pods.
The device readings are replayed from memory so that the figures are the exporter's
own cost (attribution split, integration, rendering), not NVML's or a simulator's.

The floor: the very same series (names, labels, values) held in bare prometheus_client
Gauges and Counters and rendered by generate_latest, measured in the same run.

    python benchmarks/exporter_scrape.py [--collections 100000] [--scrapes 2000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from exporter.app import Exporter  # noqa: E402
from exporter.attribution import Attribution, DeviceAssignment, PodRef  # noqa: E402
from exporter.model import DeviceSnapshot, GpuReading, MigReading, ProcessReading  # noqa: E402
from tests.exporter.devices import GIB, h100  # noqa: E402

# The throttle reasons each benchmark GPU reports, so that it exports their series.
CLOCK_EVENTS = (
    "gpu_idle",
    "sw_power_cap",
    "hw_slowdown",
    "sw_thermal_slowdown",
    "hw_thermal_slowdown",
)


def gpu(index: int, **fields) -> GpuReading:
    """The tests' H100 (tests/exporter/devices.py), loaded, reporting every reason above."""
    return h100(
        index,
        **{
            "uuid": f"GPU-bench-{index:04d}",
            "utilization": 0.7,
            "memory_used_bytes": 60 * GIB,
            "power_watts": 500.0,
            "clock_events": dict.fromkeys(CLOCK_EVENTS, False),
            **fields,
        },
    )


def mig_node() -> tuple[list[GpuReading], Attribution]:
    gpus, devices, owners = [], {}, {}
    for g in range(8):
        migs = []
        for i in range(7):
            pid = 10_000 + g * 10 + i
            migs.append(
                MigReading(
                    uuid=f"MIG-bench-{g}-{i}",
                    profile="1g.10gb",
                    gpu_instance_id=7 + i,
                    compute_instance_id=0,
                    compute_fraction=1 / 7,
                    memory_total_bytes=10 * GIB,
                    memory_used_bytes=5 * GIB,
                    utilization=0.6,
                    processes=(ProcessReading(pid=pid, used_memory_bytes=5 * GIB),),
                )
            )
            ref = PodRef(f"team-{i % 3}", f"infer-{g}-{i}", "server", f"uid-{g}-{i}")
            devices[migs[-1].uuid] = (
                DeviceAssignment("nvidia.com/mig-1g.10gb", migs[-1].uuid, ref),
            )
            owners[pid] = ref
        gpus.append(gpu(g, mig_mode=True, mig=tuple(migs), utilization=None))
    return gpus, Attribution(devices=devices, processes=owners)


def timesliced_node() -> tuple[list[GpuReading], Attribution]:
    gpus, devices, owners = [], {}, {}
    for g in range(8):
        processes = []
        for r in range(4):
            pid = 20_000 + g * 10 + r
            ref = PodRef("notebooks", f"nb-{g}-{r}", "jupyter", f"uid-{g}-{r}")
            device_id = f"GPU-bench-{g:04d}::{r}"
            devices[device_id] = (DeviceAssignment("nvidia.com/gpu.shared", device_id, ref),)
            owners[pid] = ref
            processes.append(
                ProcessReading(pid=pid, used_memory_bytes=4 * GIB, sm_utilization=0.1 * (r + 1))
            )
        gpus.append(gpu(g, processes=tuple(processes)))
    return gpus, Attribution(devices=devices, processes=owners)


class ReplaySource:
    """Replays fixed readings; the clock advances one second per sample."""

    name = "replay"

    def __init__(self, gpus: list[GpuReading]) -> None:
        self.gpus, self.t = tuple(gpus), 0.0

    def sample(self) -> DeviceSnapshot:
        self.t += 1.0
        return DeviceSnapshot(
            timestamp=1.7e9 + self.t, monotonic=self.t, source="simulated", gpus=self.gpus
        )

    def close(self) -> None:
        pass


def floor_registry(text: str) -> CollectorRegistry:
    """The same series in bare prometheus_client metrics."""
    registry = CollectorRegistry(auto_describe=False)
    for family in text_string_to_metric_families(text):
        if family.type not in ("gauge", "counter") or not family.samples:
            continue
        labels = sorted(family.samples[0].labels)
        kind = Counter if family.type == "counter" else Gauge
        metric = kind(
            family.name, family.documentation or "x", labelnames=labels, registry=registry
        )
        for sample in family.samples:
            child = metric.labels(**sample.labels)
            if kind is Counter:
                child.inc(sample.value)
            else:
                child.set(sample.value)
    return registry


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_node(name: str, gpus, attribution, collections: int, scrapes: int) -> dict[str, float]:
    exporter = Exporter(ReplaySource(gpus), "bench-node", lambda snapshot: attribution)
    for _ in range(3):
        exporter.loop.collect_once()
    text = exporter.renderer.render().decode()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    floor = floor_registry(text)

    ours_ms, floor_ms = [], []
    for _ in range(scrapes):
        exporter.loop.collect_once()  # a new collection each time: no cached rendering
        t0 = time.perf_counter()
        exporter.renderer.render()
        t1 = time.perf_counter()
        generate_latest(floor)
        t2 = time.perf_counter()
        ours_ms.append((t1 - t0) * 1e3)
        floor_ms.append((t2 - t1) * 1e3)

    warmup = min(1000, collections // 10)
    for _ in range(warmup):
        exporter.loop.collect_once()
    gc.collect()
    rss_warm = rss_bytes()
    cpu0 = time.process_time()
    for _ in range(collections - warmup):
        exporter.loop.collect_once()
    cpu = time.process_time() - cpu0
    gc.collect()
    rss_end = rss_bytes()
    per_collection = cpu / (collections - warmup)
    return {
        "node": name,
        "series": series,
        "scrape_p50_ms": statistics.median(ours_ms),
        "scrape_p99_ms": percentile(ours_ms, 0.99),
        "floor_p50_ms": statistics.median(floor_ms),
        "floor_p99_ms": percentile(floor_ms, 0.99),
        "cpu_s_per_1000": per_collection * 1000,
        "core_pct_at_1hz": per_collection * 100,
        "rss_growth_mb": (rss_end - rss_warm) / 1e6,
        "rss_mb": rss_end / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collections", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=2000)
    args = parser.parse_args()
    rows = [
        bench_node("8 GPU x 7 MIG, 56 pods", *mig_node(), args.collections, args.scrapes),
        bench_node(
            "8 GPU time-sliced x 4 pods", *timesliced_node(), args.collections, args.scrapes
        ),
    ]
    header = (
        f"{'node':<28} {'series':>6} {'scrape p50':>10} {'p99':>7} {'floor p50':>9} {'p99':>7} "
        f"{'p99/floor':>9} {'CPU s/1k coll':>13} {'core@1Hz':>8} {'RSS MB':>7} {'RSS growth':>10}"
    )
    print(f"exporter benchmark: {args.collections} collections, {args.scrapes} scrapes per node")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['node']:<28} {r['series']:>6} {r['scrape_p50_ms']:>8.2f}ms {r['scrape_p99_ms']:>5.2f}ms "
            f"{r['floor_p50_ms']:>7.2f}ms {r['floor_p99_ms']:>5.2f}ms "
            f"{r['scrape_p99_ms'] / r['floor_p99_ms']:>9.2f} {r['cpu_s_per_1000']:>13.3f} "
            f"{r['core_pct_at_1hz']:>7.3f}% {r['rss_mb']:>7.1f} {r['rss_growth_mb']:>8.2f}MB"
        )
    print(
        "targets: scrape p99 <= 1.3x floor; RSS growth < 5 MB after warm-up; collection < 1% of a core at 1 Hz"
    )


if __name__ == "__main__":
    main()
