"""The in-job probe in one process: byte accounting, timing, lifecycle, never blocking.

Multi-process runs with real collectives are in test_probe_collectives.py.
"""

import os
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest
import torch
import torch.distributed as dist

from exporter.attribution import PodRef
from exporter.collective.server import CollectiveServer
from gpuledger import probe
from gpuledger import probe_wire as wire

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's renamed collectives

ORIGINALS = {name: getattr(dist, name) for name in probe._TARGETS if hasattr(dist, name)}


@pytest.fixture
def gloo(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


@pytest.fixture
def probe_on(tmp_path):
    p = probe.enable(socket_path=str(tmp_path / "no-exporter.sock"), interval_s=60)
    yield p
    probe.disable()


def _wait_until(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not fn():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_bus_factors_follow_nccl_tests():
    assert probe.bus_factor("all_reduce", 4) == pytest.approx(1.5)
    assert probe.bus_factor("all_reduce", 2) == pytest.approx(1.0)
    assert probe.bus_factor("all_gather", 4) == pytest.approx(0.75)
    assert probe.bus_factor("reduce_scatter", 8) == pytest.approx(0.875)
    assert probe.bus_factor("all_to_all", 2) == pytest.approx(0.5)
    for op in ("broadcast", "reduce", "send", "recv"):
        assert probe.bus_factor(op, 16) == 1.0
    assert probe.bus_factor("barrier", 4) == 0.0
    assert probe.bus_factor("all_reduce", 1) == 0.0
    assert probe.bus_factor("all_reduce", 0) == 0.0


def test_importing_the_probe_pulls_in_nothing_heavy():
    code = (
        "import sys, gpuledger.probe\n"
        "heavy = ('torch', 'pandas', 'kubernetes', 'prometheus_client', 'exporter', 'grpc')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert out.stdout.strip() == "[]"


def test_every_collective_counts_bytes_as_nccl_tests_defines_them(gloo, probe_on):
    f32 = torch.ones(1000)  # 4000 bytes
    f64 = torch.ones(250, dtype=torch.float64)  # 2000 bytes
    i8 = torch.ones(300, dtype=torch.int8)  # 300 bytes
    dist.all_reduce(f32)
    dist.all_reduce(tensor=f64)  # keyword argument
    dist.all_gather([torch.empty(1000)], f32)  # output: 4000
    dist.all_gather_into_tensor(torch.empty(250, dtype=torch.float64), f64)  # output: 2000
    dist.reduce_scatter(torch.empty(300, dtype=torch.int8), [i8])  # input: 300
    dist.reduce_scatter_tensor(output=torch.empty(1000), input=f32)  # input: 4000
    dist.broadcast(f64, 0)
    dist.reduce(i8, 0)
    dist.all_to_all([torch.empty(1000)], [f32])  # input: 4000
    dist.all_to_all_single(torch.empty(300, dtype=torch.int8), i8)  # input: 300
    dist.barrier()

    totals = probe_on.totals()
    assert {op: (t.bytes, t.calls) for op, t in totals.items()} == {
        "all_reduce": (6000, 2),
        "all_gather": (6000, 2),
        "reduce_scatter": (4300, 2),
        "broadcast": (2000, 1),
        "reduce": (300, 1),
        "all_to_all": (4300, 2),
        "barrier": (0, 1),
    }
    assert all(t.world_size == 1 and t.seconds > 0 for t in totals.values())
    # One rank: nothing crosses a bus, so bus bandwidth is 0 except for broadcast/reduce.
    assert totals["all_reduce"].busbw_bytes_per_s == 0.0
    assert totals["broadcast"].busbw_bytes_per_s == pytest.approx(
        totals["broadcast"].algbw_bytes_per_s
    )
    assert totals["reduce"].algbw_bytes_per_s == pytest.approx(300 / totals["reduce"].seconds)


def test_a_variant_that_calls_another_collective_counts_once(gloo, probe_on):
    # all_gather_into_tensor calls all_gather_single inside torch: one call, not two.
    dist.all_gather_into_tensor(torch.empty(8), torch.ones(8))
    assert probe_on.totals()["all_gather"].calls == 1


def test_async_calls_are_timed_until_their_work_completes(gloo, probe_on):
    work = dist.all_reduce(torch.ones(4096), async_op=True)
    work.wait()
    _wait_until(lambda: "all_reduce" in probe_on.totals())
    totals = probe_on.totals()["all_reduce"]
    assert (totals.bytes, totals.calls) == (4 * 4096, 1)
    assert totals.seconds > 0
    assert isinstance(work, dist.Work)  # the caller gets torch's own Work back


def test_a_failing_collective_raises_as_before_and_is_not_counted(gloo, probe_on):
    with pytest.raises(RuntimeError, match="invalid root rank"):
        dist.broadcast(torch.ones(4), src=5)  # no rank 5
    assert probe_on.totals() == {}


def test_a_probe_error_never_fails_the_call(gloo, probe_on, monkeypatch):
    def broken(_tensor):
        raise RuntimeError("probe bug")

    monkeypatch.setattr(probe, "_tensor_bytes", broken)
    t = torch.ones(4)
    dist.all_reduce(t)  # the collective still runs
    assert torch.equal(t, torch.ones(4))
    assert probe_on.totals() == {}


def test_enable_is_idempotent_and_disable_restores_torch(tmp_path):
    p1 = probe.enable(socket_path=str(tmp_path / "a.sock"), interval_s=60)
    p2 = probe.enable(socket_path=str(tmp_path / "b.sock"), interval_s=5)
    try:
        assert p1 is p2 and probe.get() is p1
        assert dist.all_reduce is not ORIGINALS["all_reduce"]
        assert dist.distributed_c10d.all_reduce is dist.all_reduce
        assert dist.isend.__name__ == "isend"  # P2POp checks the function's name
    finally:
        probe.disable()
    assert probe.get() is None
    assert {name: getattr(dist, name) for name in ORIGINALS} == ORIGINALS
    assert dist.distributed_c10d.all_gather_into_tensor is ORIGINALS["all_gather_into_tensor"]


@pytest.mark.parametrize("interval", [0, -1, 0.01, 7200, "1", True])
def test_enable_rejects_a_bad_interval(interval):
    with pytest.raises(ValueError, match="interval_s"):
        probe.enable(interval_s=interval)
    assert probe.get() is None


def test_enable_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv(probe.SOCKET_ENV, str(tmp_path / "env.sock"))
    monkeypatch.delenv(probe.ENABLE_ENV, raising=False)
    assert probe.enable_from_env() is None
    monkeypatch.setenv(probe.ENABLE_ENV, "off")
    assert probe.enable_from_env() is None
    monkeypatch.setenv(probe.ENABLE_ENV, "maybe")
    with pytest.raises(ValueError, match="GPULEDGER_PROBE must be"):
        probe.enable_from_env()
    monkeypatch.setenv(probe.ENABLE_ENV, "1")
    monkeypatch.setenv(probe.INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match="GPULEDGER_PROBE_INTERVAL_S"):
        probe.enable_from_env()
    monkeypatch.setenv(probe.INTERVAL_ENV, "2.5")
    p = probe.enable_from_env()
    try:
        assert p is not None and p.active
        assert (p.socket_path, p.interval_s) == (str(tmp_path / "env.sock"), 2.5)
    finally:
        probe.disable()


def test_a_missing_exporter_costs_a_dropped_report_not_an_error(gloo, probe_on):
    dist.all_reduce(torch.ones(4))
    assert probe_on.report_now() is False
    assert probe_on.report_now() is False
    assert probe_on.reports_dropped == 2
    assert probe_on.totals()["all_reduce"].calls == 1


def test_a_stalled_exporter_never_blocks_the_job(tmp_path, gloo):
    path = str(tmp_path / "stalled.sock")
    stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stalled.bind(path)
    stalled.listen(1)  # accepts in the kernel, never reads
    p = probe.enable(socket_path=path, interval_s=60)
    try:
        p.report_now()
        p._reporter._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        done = threading.Event()

        def job():
            for _ in range(2000):
                dist.all_reduce(torch.ones(16))
                p.report_now()
            done.set()

        thread = threading.Thread(target=job, daemon=True)
        thread.start()
        thread.join(timeout=60)
        assert done.is_set(), "the job blocked on a stalled exporter"
        assert p.reports_dropped > 0
        assert p.totals()["all_reduce"].calls == 2000
    finally:
        probe.disable()
        stalled.close()


def test_reports_reach_an_exporter_that_restarts(tmp_path, gloo):
    path = str(tmp_path / "probe.sock")
    pod = PodRef("ns", "train-0", "main", "uid-1")
    p = probe.enable(socket_path=path, interval_s=60)
    try:
        dist.all_reduce(torch.ones(100))
        assert p.report_now() is False  # no exporter yet
        with CollectiveServer(path, lambda pid: pod if pid == os.getpid() else None, "n1") as s:
            assert p.report_now() is True
            _wait_until(lambda: s.aggregator.snapshot().operations)
            assert s.aggregator.snapshot().operations[0].bytes == 400
        dist.all_reduce(torch.ones(100))
        p.report_now()  # the old connection is gone: dropped, reconnect next time
        with CollectiveServer(path, lambda pid: pod, "n1") as s:
            _wait_until(lambda: p.report_now() and s.aggregator.snapshot().operations)
            (op,) = s.aggregator.snapshot().operations
            # A fresh exporter starts from the probe's full totals.
            assert (op.pod, op.bytes, op.calls) == (pod, 800, 2)
    finally:
        probe.disable()


def test_a_forked_child_does_not_resend_its_parents_totals(gloo, probe_on):
    dist.all_reduce(torch.ones(8))
    parent_instance = probe_on._reporter._instance
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what the probe holds, then leave without cleanup
        p = probe.get()
        ok = p is not None and p.totals() == {} and p._reporter._instance != parent_instance
        os.write(write_end, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"1"
    os.close(read_end)
    os.waitpid(pid, 0)
    assert probe_on.totals()["all_reduce"].bytes == 32


class FakeEvent:
    """A CUDA event: complete when `done` is set; times in milliseconds."""

    def __init__(self, clock):
        self._clock = clock
        self.recorded_at = None
        self.stream = None
        self.done = False

    def record(self, stream=None):
        self.stream = stream
        self.recorded_at = self._clock[0]
        self.done = False

    def query(self):
        return self.done

    def elapsed_time(self, end):
        return end.recorded_at - self.recorded_at


def test_cuda_timing_reads_events_later_without_waiting():
    clock = [0.0]
    made = []
    totals = probe._Totals()

    def new_event():
        made.append(FakeEvent(clock))
        return made[-1]

    timer = probe._CudaTimer(new_event, totals.add)
    start = timer.start(stream="s0")
    clock[0] = 25.0  # ms
    timer.finish("all_reduce", 1 << 20, 4, start, "s0")
    timer.drain()
    assert totals.snapshot() == {}  # the GPU has not finished: nothing is waited for
    made[1].done = True
    timer.drain()
    (report,) = totals.snapshot().values()
    assert report.seconds == pytest.approx(0.025)
    assert report.bus_bytes == pytest.approx((1 << 20) * 1.5)
    assert made[1].stream == "s0"  # recorded on the stream the collective was issued on

    # Events go back to a pool: the next call makes none.
    clock[0] = 100.0
    timer.start()
    assert len(made) == 2


def test_cuda_async_end_is_recorded_in_the_works_callback():
    clock = [10.0]
    totals = probe._Totals()
    timer = probe._CudaTimer(lambda: FakeEvent(clock), totals.add)

    class Future:
        def then(self, callback):
            clock[0] = 13.0  # the collective's stream reaches the callback later
            callback(self)

    class Work:
        def get_future(self):
            return Future()

    start = timer.start()
    timer.finish_async("all_gather", 4000, 2, start, Work())
    timer._pending[0][4].done = True
    timer.drain()
    assert totals.snapshot()["all_gather"].seconds == pytest.approx(0.003)


def test_the_probe_reports_cumulative_totals_on_the_wire(tmp_path, gloo):
    path = str(tmp_path / "probe.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    p = probe.enable(socket_path=path, interval_s=60)
    try:
        dist.all_reduce(torch.ones(10))
        p.report_now()
        dist.all_reduce(torch.ones(10))
        p.report_now()
        conn, _ = listener.accept()
        conn.settimeout(5)
        reports = []
        buffer = b""
        while len(reports) < 2:
            buffer += conn.recv(4096)
            while len(buffer) >= wire.HEADER.size:
                _, length = wire.decode_header(buffer[: wire.HEADER.size])
                if len(buffer) < wire.HEADER.size + length:
                    break
                reports.append(wire.decode_payload(buffer[wire.HEADER.size :][:length]))
                buffer = buffer[wire.HEADER.size + length :]
        assert [r.ops["all_reduce"].bytes for r in reports] == [40, 80]
        assert reports[1].seq > reports[0].seq and reports[0].instance == reports[1].instance
        conn.close()
    finally:
        probe.disable()
        listener.close()


def test_disable_sends_a_last_report(tmp_path, gloo):
    path = str(tmp_path / "probe.sock")
    pod = PodRef("ns", "train-0", "main", "uid-1")
    with CollectiveServer(path, lambda pid: pod, "n1") as server:
        probe.enable(socket_path=path, interval_s=60)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dist.all_reduce(torch.ones(25))
        probe.disable()  # no periodic report was due yet
        _wait_until(lambda: server.aggregator.snapshot().operations)
        assert server.aggregator.snapshot().operations[0].bytes == 100


def test_instrument_ddp_makes_ddps_gradient_all_reduce_visible(gloo, probe_on):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(100, 10))
    model(torch.randn(4, 100)).sum().backward()
    assert probe_on.totals() == {}  # DDP's C++ reducer bypasses torch.distributed
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(100, 10))
    probe.instrument_ddp(model)
    model(torch.randn(4, 100)).sum().backward()
    _wait_until(lambda: "all_reduce" in probe_on.totals())
    totals = probe_on.totals()["all_reduce"]
    assert (totals.bytes, totals.calls) == ((100 * 10 + 10) * 4, 1)  # one gradient bucket


def test_instrument_ddp_leaves_a_models_own_hook_alone(gloo, probe_on, caplog):
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    model.register_comm_hook(None, lambda state, bucket: torch.futures.Future())
    probe.instrument_ddp(model)  # no error: the job's own hook wins
    assert "keeps its own comm hook" in caplog.text


class FakeCuda:
    """torch.cuda as the probe uses it: events, current stream, capture state."""

    def __init__(self):
        self.clock = [0.0]
        self.capturing = False
        self.events = []

    def Event(self, enable_timing=False):  # noqa: N802 (torch's name)
        assert enable_timing
        self.events.append(FakeEvent(self.clock))
        return self.events[-1]

    def current_stream(self, device=None):
        return f"stream-of-{device}"

    def is_current_stream_capturing(self):
        return self.capturing


class FakeCudaTensor:
    is_cuda = True
    device = "cuda:3"

    def numel(self):
        return 1 << 20

    def element_size(self):
        return 2  # bf16


def test_gpu_collectives_are_timed_with_events_on_the_tensors_stream(gloo, probe_on, monkeypatch):
    fake = FakeCuda()
    monkeypatch.setattr(probe_on, "_torch", type("T", (), {"cuda": fake, "distributed": dist}))

    class Work:
        def get_future(self):
            class Future:
                def then(self, callback):
                    fake.clock[0] += 7.0  # the NCCL stream finishes 7 ms after the call
                    callback(self)

            return Future()

    coalescing = False

    def all_reduce(tensor, op=None, group=None, async_op=False):
        fake.clock[0] += 3.0
        return Work() if async_op and not coalescing else None

    wrapped = probe_on._wrap(all_reduce, "all_reduce", "tensor", False, False)
    wrapped(FakeCudaTensor())
    wrapped(FakeCudaTensor(), async_op=True)
    coalescing = True  # inside a batch: no Work of its own, bytes counted, no time
    wrapped(FakeCudaTensor(), async_op=True)
    fake.capturing = True
    wrapped(FakeCudaTensor())  # inside a CUDA graph capture: not counted
    # Events not complete yet: nothing is waited for; only the batched call counts.
    pending = probe_on.totals()["all_reduce"]
    assert (pending.calls, pending.seconds) == (1, 0.0)
    assert {e.stream for e in fake.events[:2]} == {"stream-of-cuda:3"}
    for event in fake.events:
        event.done = True
    totals = probe_on.totals()["all_reduce"]
    assert (totals.bytes, totals.calls) == (3 * 2 * (1 << 20), 3)
    assert totals.seconds == pytest.approx((3.0 + 3.0 + 7.0) / 1000)
    # Read events and the batched call's unused start event are reused.
    fake.capturing = False
    made = len(fake.events)
    wrapped(FakeCudaTensor())
    wrapped(FakeCudaTensor())
    assert len(fake.events) == made
