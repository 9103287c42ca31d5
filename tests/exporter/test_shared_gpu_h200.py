"""Two pods time-slicing a real H200, replayed through the whole NVML exporter.

fixtures/nvml_trace_h200_shared.json.gz holds every NVML call the exporter made in
`scripts/gpu_check.py --scenario shared` on 2026-11-28. Pods tenant-a and tenant-b
each held one time-sliced replica of the GPU (nvidia.com/gpu.shared). Both trained
gpt2-124m in bf16. A trained for 55 s; B trained 20 s, idled 20 s, then trained 10 s.
fixtures/shared_h200_truth.json holds what the two tenants did: A's step end times,
and B's throughput by phase. fixtures/metrics_h200_shared.txt is the exporter's last
scrape on the H200.

Here the trace is replayed into the real wiring: a gRPC kubelet on a unix socket, the
API server over HTTP, a /proc tree mapping the two recorded PIDs to the pods, and the
recorded collection times. The split of the GPU between the pods is then checked
against the rule and against the work the tenants did.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.wiring import nvml_exporter
from tests.fakes import nvml_trace
from tests.fakes.fake_kubelet import FakeKubelet, pod_resources
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod
from tests.fakes.nvml_trace import ReplayedNvml
from tests.fakes.proc_tree import pod_process

FIXTURES = Path(__file__).parent / "sources" / "fixtures"
TRACE = nvml_trace.load(FIXTURES / "nvml_trace_h200_shared.json.gz")
TRUTH = json.loads((FIXTURES / "shared_h200_truth.json").read_text())
RECORDED = TRACE["snapshots"]
NODE, NAMESPACE = "gpu-check-node", "gpu-check"
PODS = {
    "tenant-a": ("aaaaaaaa-1234-4567-89ab-0123456789ab", "a" * 64),
    "tenant-b": ("bbbbbbbb-1234-4567-89ab-0123456789ab", "b" * 64),
}


def gauges(text: str) -> dict[str, dict[str, float]]:
    wanted = {
        "gpuledger_gpu_utilization_ratio",
        "gpuledger_pod_gpu_utilization_ratio",
        "gpuledger_pod_gpu_busy_seconds",
        "gpuledger_gpu_busy_seconds",
    }
    out: dict[str, dict[str, float]] = {name: {} for name in wanted}
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            for sample in family.samples:
                out[family.name][sample.labels.get("pod", "gpu")] = sample.value
    return out


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    """Each recorded collection replayed in turn: (snapshot, parsed /metrics) pairs."""
    folder = tmp_path_factory.mktemp("shared-h200")
    proc = folder / "proc"
    pids = {name: int(pid) for pid, name in TRACE["pods"].items()}
    for name, (uid, container) in PODS.items():
        pod_process(proc, pids[name], uid, container)
    uuid = TRACE["gpu_uuid"]
    with FakeKubelet(folder) as kubelet, FakeKubeApiServer() as api:
        kubelet.set_pods(
            [
                pod_resources(
                    name, NAMESPACE, {"trainer": {"nvidia.com/gpu.shared": [f"{uuid}::{i}"]}}
                )
                for i, name in enumerate(PODS)
            ]
        )
        for name, (uid, container) in PODS.items():
            api.add(
                make_pod(name, NAMESPACE, node=NODE, uid=uid, containers={"trainer": container})
            )
        exporter = nvml_exporter(
            NODE,
            kubelet_socket=kubelet.socket_path,
            proc_root=str(proc),
            nvml=ReplayedNvml(TRACE),
            api_client=api.api_client(),
            sys_root=None,
        )
        try:
            assert exporter._on_stop[0].__self__.wait_synced(10)  # the pod watch
            source, sample = exporter.source, exporter.source.sample
            recorded = iter(RECORDED)

            def at_recorded_time():
                # The recorded collection times: the counters integrate over real seconds.
                taken, when = sample(), next(recorded)
                return dataclasses.replace(
                    taken, timestamp=when["timestamp"], monotonic=when["monotonic"]
                )

            source.sample = at_recorded_time
            seen = []
            for snapshot in RECORDED:
                exporter.loop.collect_once()
                seen.append((snapshot, gauges(exporter.renderer.render().decode())))
        finally:
            exporter.stop()
    return pids, seen


def test_each_collection_splits_the_gpu_by_the_processes_sm_samples(collections):
    pids, seen = collections
    split = 0
    for snapshot, metrics in seen:
        gpu = snapshot["gpus"][0]
        sm = {p["pid"]: p["sm_utilization"] or 0 for p in gpu["processes"]}
        pods = metrics["gpuledger_pod_gpu_utilization_ratio"]
        if sum(sm.values()) == 0 or gpu["utilization"] == 0:
            continue
        split += 1
        assert sum(pods.values()) == pytest.approx(gpu["utilization"], abs=1e-9)
        for name, pid in pids.items():
            share = sm.get(pid, 0) / sum(sm.values())
            assert pods[name] == pytest.approx(gpu["utilization"] * share, abs=1e-9)
    assert split >= 45


def test_the_idle_tenant_gets_nothing_while_the_other_trains_alone(collections):
    pids, seen = collections
    alone = [
        metrics["gpuledger_pod_gpu_utilization_ratio"]
        for snapshot, metrics in seen
        if snapshot["gpus"][0]["utilization"] >= 0.7
        and [p["pid"] for p in snapshot["gpus"][0]["processes"] if p["sm_utilization"]]
        == [pids["tenant-a"]]
    ]
    assert len(alone) >= 15
    for pods in alone:
        assert pods["tenant-b"] == 0 and pods["tenant-a"] >= 0.7


def tokens_a(start: float, end: float) -> int:
    ends = TRUTH["tenant-a"]["step_ends"]
    steps = bisect.bisect_right(ends, end) - bisect.bisect_right(ends, start)
    return steps * TRUTH["tenant-a"]["tokens_per_step"]


def test_busy_seconds_split_like_the_work_the_tenants_did(collections):
    """Same model, same batch: GPU time per token is the same for both tenants, so
    their busy GPU-seconds should stand in the ratio of their tokens. Measured: 2.83
    against 2.70 (5 %)."""
    _, seen = collections
    busy = seen[-1][1]["gpuledger_pod_gpu_busy_seconds"]
    gpu_busy = seen[-1][1]["gpuledger_gpu_busy_seconds"]["gpu"]
    assert sum(busy.values()) == pytest.approx(gpu_busy, rel=1e-6)
    # The replay reproduces the live exporter: its last scrape on the H200 had the same.
    live = gauges((FIXTURES / "metrics_h200_shared.txt").read_text())
    assert busy == pytest.approx(live["gpuledger_pod_gpu_busy_seconds"], rel=1e-12)
    a_tokens = len(TRUTH["tenant-a"]["step_ends"]) * TRUTH["tenant-a"]["tokens_per_step"]
    b_tokens = sum(p["planned_s"] * p["tokens_per_s"] for p in TRUTH["tenant-b"]["phases"])
    assert busy["tenant-a"] / busy["tenant-b"] == pytest.approx(a_tokens / b_tokens, rel=0.10)


def test_while_both_train_each_share_follows_its_throughput(collections):
    """A's share of GPU time while B also trains, against its tokens/s then over its
    tokens/s alone. Time-slicing makes the GPU busier than the work needs: context
    switches. The exporter shares that overhead out in proportion to the SM samples, so
    A's share is above its work's. Measured: 0.49 against 0.42, and 0.45 against 0.43."""
    _, seen = collections
    times = [snapshot["timestamp"] for snapshot, _ in seen]
    a_busy = [metrics["gpuledger_pod_gpu_busy_seconds"].get("tenant-a", 0) for _, metrics in seen]
    gpu_busy = [metrics["gpuledger_gpu_busy_seconds"]["gpu"] for _, metrics in seen]

    def window(lo: int, hi: int) -> tuple[float, float, float]:
        seconds = times[hi] - times[lo]
        return (
            (a_busy[hi] - a_busy[lo]) / seconds,
            (gpu_busy[hi] - gpu_busy[lo]) / seconds,
            tokens_a(times[lo], times[hi]) / seconds,
        )

    # Windows from the recording: both train in collections 18-36 and 56-66; A alone
    # in 36-56 (B's idle phase).
    _, alone_busy, alone_rate = window(36, 56)
    assert alone_busy > 0.8
    for lo, hi in ((18, 36), (56, 66)):
        share, gpu_share, rate = window(lo, hi)
        work = alone_busy * rate / alone_rate  # A's GPU time at that throughput
        assert gpu_share > 0.85  # the GPU stays busy throughout
        assert share == pytest.approx(work, rel=0.20)
        assert share >= work  # the switching overhead is shared out, never lost
