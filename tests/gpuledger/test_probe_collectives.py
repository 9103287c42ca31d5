"""Proof with real collectives: ranks on gloo, the probe in each, a running exporter.

Each rank does real all_reduce (sync and async), all_gather(_into_tensor),
reduce_scatter(_tensor), broadcast, send/recv and barrier calls of known sizes, and
times every call itself: around the call, and for an async call until its Work
completes (its future's callback).
The exporter's per-pod bytes must equal the bytes the ranks moved, exactly, and its bus
bandwidth must be within 10% of what the ranks timed.
"""

import json
import os
import time

import pytest
import torch.multiprocessing as mp
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue as cat
from exporter.attribution import PodRef
from exporter.collective.collector import CollectiveCollector
from exporter.collective.server import CollectiveServer

# Calls long enough, and enough of them, that each operation's total time dwarfs a
# scheduling hiccup of a few ms between the test's clock and the probe's.
SHARD_ELEMENTS = 2 * 1024 * 1024  # all_gather, reduce_scatter: n x 8 MiB per call
TENSOR_ELEMENTS = 8 * 1024 * 1024  # all_reduce, broadcast, send, recv: 32 MiB per call
ITERATIONS_LONG = 3
ITERATIONS_SHORT = 12


def _rank_main(rank: int, world_size: int, store: str, socket_path: str, outdir: str) -> None:
    """One rank: real collectives through the probe; writes what it moved and timed."""
    import warnings

    warnings.simplefilter("ignore", FutureWarning)
    from time import perf_counter

    import torch
    import torch.distributed as dist

    from gpuledger import probe

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    p = probe.enable(socket_path=socket_path, interval_s=0.25)
    n = world_size
    moved: dict[str, list[float]] = {}  # op -> [bytes, bus bytes, seconds, calls]

    def timed(op: str, nbytes: int, call) -> None:
        t0 = perf_counter()
        call()
        add(op, nbytes, perf_counter() - t0)

    def timed_async(op: str, nbytes: int, call) -> None:
        # An async call's time runs until its Work completes (not until this thread
        # wakes from wait(), which a loaded machine may delay by milliseconds).
        t0 = perf_counter()
        work = call()
        done: list[float] = []
        work.get_future().add_done_callback(lambda _: done.append(perf_counter()))
        work.wait()
        while not done:
            time.sleep(0.0001)
        add(op, nbytes, done[0] - t0)

    def add(op: str, nbytes: int, elapsed: float) -> None:
        acc = moved.setdefault(op, [0, 0.0, 0.0, 0])
        acc[0] += nbytes
        acc[1] += nbytes * probe.bus_factor(op, n)
        acc[2] += elapsed
        acc[3] += 1

    piece = torch.ones(SHARD_ELEMENTS)
    shard_size = SHARD_ELEMENTS * 4
    gathered = [torch.empty(SHARD_ELEMENTS) for _ in range(n)]
    gathered_flat = torch.empty(n * SHARD_ELEMENTS)
    shards = [torch.ones(SHARD_ELEMENTS) for _ in range(n)]
    shards_flat = torch.ones(n * SHARD_ELEMENTS)
    for _ in range(ITERATIONS_LONG):
        timed("all_gather", n * shard_size, lambda: dist.all_gather(gathered, piece))
        timed(
            "all_gather", n * shard_size, lambda: dist.all_gather_into_tensor(gathered_flat, piece)
        )
        timed("reduce_scatter", n * shard_size, lambda: dist.reduce_scatter(piece, shards))
        timed(
            "reduce_scatter", n * shard_size, lambda: dist.reduce_scatter_tensor(piece, shards_flat)
        )
    size = TENSOR_ELEMENTS * 4
    t = torch.ones(TENSOR_ELEMENTS)
    shard = torch.empty(TENSOR_ELEMENTS)
    for _ in range(ITERATIONS_SHORT):
        timed("all_reduce", size, lambda: dist.all_reduce(t))
        timed_async("all_reduce", size, lambda: dist.all_reduce(t, async_op=True))
        timed("broadcast", size, lambda: dist.broadcast(t, src=0))
    # A ring of point-to-point transfers: send to the next rank, receive from the previous.
    for _ in range(ITERATIONS_SHORT):
        if rank % 2 == 0:
            timed("send", size, lambda: dist.send(t, dst=(rank + 1) % n))
            timed("recv", size, lambda: dist.recv(shard, src=(rank - 1) % n))
        else:
            timed("recv", size, lambda: dist.recv(shard, src=(rank - 1) % n))
            timed("send", size, lambda: dist.send(t, dst=(rank + 1) % n))
    timed("barrier", 0, dist.barrier)
    probe.disable()  # sends the last report
    with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
        json.dump({"moved": moved, "probe": {k: v.bytes for k, v in p.totals().items()}}, f)
    dist.destroy_process_group()


def _scrape(collector: CollectiveCollector) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples, spec, pod: PodRef, operation: str) -> float:
    labels = {
        "namespace": pod.namespace,
        "pod": pod.pod,
        "container": pod.container,
        "node": "node-a",
        "operation": operation,
    }
    return samples.get((spec.name, tuple(sorted(labels.items()))), float("nan"))


@pytest.mark.parametrize(
    ("world_size", "ranks_per_pod"),
    [(2, 1), (4, 2)],
    ids=["2-ranks-a-pod-each", "4-ranks-2-pods"],
)
def test_exporter_sees_exactly_the_bytes_the_ranks_moved(tmp_path, world_size, ranks_per_pod):
    socket_path = str(tmp_path / "probe.sock")
    pod_of_rank = [
        PodRef(
            "training", f"job-worker-{r // ranks_per_pod}", "pytorch", f"uid-{r // ranks_per_pod}"
        )
        for r in range(world_size)
    ]
    pods_by_pid: dict[int, PodRef] = {}
    server = CollectiveServer(socket_path, pods_by_pid.get, "node-a")
    server.start()
    try:
        context = mp.start_processes(
            _rank_main,
            args=(world_size, str(tmp_path / "store"), socket_path, str(tmp_path)),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        pods_by_pid.update(zip(context.pids(), pod_of_rank, strict=True))
        while not context.join(timeout=30):
            pass

        ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world_size)]
        expected: dict[tuple[PodRef, str], list[float]] = {}
        for rank, result in enumerate(ranks):
            for op, (nbytes, bus, seconds, calls) in result["moved"].items():
                acc = expected.setdefault((pod_of_rank[rank], op), [0, 0.0, 0.0, 0])
                for i, v in enumerate((nbytes, bus, seconds, calls)):
                    acc[i] += v
            assert result["probe"] == {op: v[0] for op, v in result["moved"].items()}

        collector = CollectiveCollector(server.aggregator, "node-a", infiniband_sys_root=None)
        deadline = time.monotonic() + 15
        want = {key: float(v[0]) for key, v in expected.items()}
        while True:  # the last reports may still be in the socket
            samples = _scrape(collector)
            got = {key: _value(samples, cat.COLLECTIVE_BYTES, *key) for key in expected}
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        server.stop()

    assert got == want
    for (pod, op), (nbytes, bus, seconds, calls) in expected.items():
        assert _value(samples, cat.COLLECTIVE_CALLS, pod, op) == calls
        assert _value(samples, cat.COLLECTIVE_WORLD_SIZE, pod, op) == world_size
        exported_seconds = _value(samples, cat.COLLECTIVE_SECONDS, pod, op)
        assert 0 < exported_seconds <= seconds * 1.001  # the probe times inside the test's timer
        if nbytes == 0:
            continue
        exported_bus = _value(samples, cat.COLLECTIVE_BUS_BYTES, pod, op)
        assert exported_bus == pytest.approx(bus, rel=1e-9)
        # rate(bus_bytes_total) / rate(seconds_total): what a dashboard shows.
        assert exported_bus / exported_seconds == pytest.approx(bus / seconds, rel=0.10), (
            pod.pod,
            op,
        )
        assert _value(samples, cat.COLLECTIVE_BUSBW, pod, op) > 0
    rejected = {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == cat.PROBE_REJECTED.name
    }
    assert set(rejected.values()) == {0.0}, rejected
    for pod in set(pod_of_rank):
        labels = (("container", pod.container), ("namespace", pod.namespace), ("node", "node-a"))
        labels = tuple(sorted((*labels, ("pod", pod.pod))))
        assert samples[(cat.PROBE_REPORTS.name, labels)] >= ranks_per_pod
