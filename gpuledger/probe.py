"""The in-job collective probe: bytes, time and bandwidth of every torch.distributed call.

Turn it on with one line in any training script (or set GPULEDGER_PROBE=1 and call
`enable_from_env()`, as the load generator does):

    import gpuledger.probe; gpuledger.probe.enable()

It wraps torch.distributed's collectives (all_reduce, all_gather, all_gather_into_tensor,
all_gather_single, reduce_scatter, reduce_scatter_tensor, reduce_scatter_single,
broadcast, reduce, all_to_all, all_to_all_single, send, recv, isend, irecv, barrier),
synchronous and `async_op=True`, and counts per operation:

- bytes as nccl-tests counts them: all_reduce, broadcast, reduce, send, recv: the
  tensor; all_gather: the output; reduce_scatter and all_to_all: the input; barrier: 0;
- time: wall clock around the call on the CPU (gloo); CUDA events recorded on the
  current stream on GPUs, read later by the reporter thread without synchronising the
  host; for async calls, until the Work completes (its future's callback);
- bus bytes: bytes x 2(n-1)/n for all_reduce, x (n-1)/n for all_gather, reduce_scatter
  and all_to_all, x 1 for broadcast, reduce, send and recv (n: the group's size), so
  busbw = bus bytes / time exactly as nccl-tests defines it.

A background thread sends cumulative totals once per interval to the node exporter
over a unix socket (GPULEDGER_PROBE_SOCKET, default /var/run/gpuledger/probe.sock).
The socket is non-blocking: when the exporter is missing, slow or restarting, the
report is dropped and counted, never waited for. The probe never fails the job: its
own errors are logged once and the original call goes on.

Not seen: collectives issued from C++ without Python (DDP's built-in reducer, functional
collectives of DTensor). `instrument_ddp(model)` routes DDP's gradient all-reduce
through Python so that the probe sees it.

This module imports only the standard library; torch is imported by `enable()`.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuledger import probe_wire as wire

DEFAULT_SOCKET_PATH = "/var/run/gpuledger/probe.sock"
SOCKET_ENV = "GPULEDGER_PROBE_SOCKET"
ENABLE_ENV = "GPULEDGER_PROBE"
INTERVAL_ENV = "GPULEDGER_PROBE_INTERVAL_S"
# Bounded so that a GPU job that never lets the reporter drain cannot grow memory.
_MAX_PENDING_CUDA = 65536
_FINAL_FLUSH_TIMEOUT_S = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpTotals:
    """Cumulative totals of one operation in this process since `enable()`."""

    bytes: int
    seconds: float
    calls: int
    busbw_bytes_per_s: float
    algbw_bytes_per_s: float
    world_size: int


def bus_factor(operation: str, world_size: int) -> float:
    """nccl-tests' factor from algorithm to bus bandwidth for a group of `world_size`."""
    n = world_size
    if n < 1:
        return 0.0
    if operation == "all_reduce":
        return 2 * (n - 1) / n
    if operation in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if operation in ("broadcast", "reduce", "send", "recv"):
        return 1.0
    return 0.0


# torch.distributed function -> (operation, parameter that holds the counted tensor(s),
# whether it is a list of tensors, whether the call is always asynchronous)
_TARGETS: dict[str, tuple[str, str | None, bool, bool]] = {
    "all_reduce": ("all_reduce", "tensor", False, False),
    "all_gather": ("all_gather", "tensor_list", True, False),
    "all_gather_into_tensor": ("all_gather", "output_tensor", False, False),
    "all_gather_single": ("all_gather", "output_tensor", False, False),
    "reduce_scatter": ("reduce_scatter", "input_list", True, False),
    "reduce_scatter_tensor": ("reduce_scatter", "input", False, False),
    "reduce_scatter_single": ("reduce_scatter", "input", False, False),
    "broadcast": ("broadcast", "tensor", False, False),
    "reduce": ("reduce", "tensor", False, False),
    "all_to_all": ("all_to_all", "input_tensor_list", True, False),
    "all_to_all_single": ("all_to_all", "input", False, False),
    "send": ("send", "tensor", False, False),
    "recv": ("recv", "tensor", False, False),
    "isend": ("send", "tensor", False, True),
    "irecv": ("recv", "tensor", False, True),
    "barrier": ("barrier", None, False, False),
}


def _tensor_bytes(tensor: Any) -> int:
    return tensor.numel() * tensor.element_size()


class _Totals:
    """Per-operation accumulators; written by the job's threads, read by the reporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # operation -> [bytes, bus_bytes, seconds, calls, world_size]
        self._ops: dict[str, list] = {}

    def add(self, operation: str, nbytes: int, world_size: int, seconds: float) -> None:
        bus = nbytes * bus_factor(operation, world_size)
        with self._lock:
            acc = self._ops.get(operation)
            if acc is None:
                acc = self._ops[operation] = [0, 0.0, 0.0, 0, 0]
            acc[0] += nbytes
            acc[1] += bus
            acc[2] += seconds
            acc[3] += 1
            acc[4] = max(acc[4], world_size)

    def snapshot(self) -> dict[str, wire.OpReport]:
        with self._lock:
            return {
                op: wire.OpReport(
                    bytes=a[0], bus_bytes=a[1], seconds=a[2], calls=a[3], world_size=max(a[4], 1)
                )
                for op, a in self._ops.items()
            }


class _CudaTimer:
    """Times GPU collectives with CUDA events and reads them later, never blocking the host.

    `event_factory` makes a timing event (torch.cuda.Event(enable_timing=True)); tests
    pass fakes. Events are reused through a small pool.
    """

    def __init__(self, event_factory: Callable[[], Any], record: Callable[..., None]) -> None:
        self._new_event = event_factory
        self._record = record
        self._pool: list[Any] = []
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, int, int, Any, Any]] = deque()
        self.overflowed = 0

    def start(self, stream: Any = None) -> Any:
        """A started event, recorded on `stream` (default: the current stream)."""
        with self._lock:
            event = self._pool.pop() if self._pool else self._new_event()
        if stream is None:
            event.record()
        else:
            event.record(stream)
        return event

    def finish(
        self, operation: str, nbytes: int, world_size: int, start: Any, stream: Any = None
    ) -> None:
        """End of a synchronous call: the current stream now waits for the collective."""
        end = self.start(stream)
        self._push(operation, nbytes, world_size, start, end)

    def finish_async(
        self, operation: str, nbytes: int, world_size: int, start: Any, work: Any
    ) -> None:
        """End of an async call: record the end event once the Work's stream is done."""

        def on_done(fut: Any) -> None:
            # NCCL runs `then` callbacks with the current stream synchronised to the
            # work, so an event recorded here completes when the collective does.
            try:
                self.finish(operation, nbytes, world_size, start)
            except Exception:
                log.debug("probe: could not record the end of an async collective", exc_info=True)

        work.get_future().then(on_done)

    def release(self, event: Any) -> None:
        """An event that will not be read: back to the pool."""
        with self._lock:
            self._pool.append(event)

    def _push(self, operation: str, nbytes: int, world_size: int, start: Any, end: Any) -> None:
        with self._lock:
            if len(self._pending) >= _MAX_PENDING_CUDA:
                self.overflowed += 1
                self._pending.popleft()
            self._pending.append((operation, nbytes, world_size, start, end))

    def drain(self) -> None:
        """Account every finished collective; leave the rest for the next call."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        waiting = []
        for item in pending:
            operation, nbytes, world_size, start, end = item
            try:
                done = end.query()
            except Exception:
                log.debug("probe: CUDA event query failed", exc_info=True)
                continue
            if not done:
                waiting.append(item)
                continue
            seconds = start.elapsed_time(end) / 1000.0
            self._record(operation, nbytes, world_size, seconds)
            with self._lock:
                self._pool.extend((start, end))
        if waiting:
            with self._lock:
                self._pending.extendleft(reversed(waiting))


class _Reporter:
    """Sends cumulative totals to the exporter; drops (and counts) rather than waits."""

    def __init__(self, socket_path: str, totals: _Totals, instance: str) -> None:
        self.socket_path = socket_path
        self._totals = totals
        self._instance = instance
        self._started = time.monotonic()
        self._sock: socket.socket | None = None
        self._unsent = b""  # rest of a frame the socket buffer could not take
        self._seq = 0
        self._lock = threading.Lock()  # the reporter thread and report_now() may race
        self.sent = 0
        self.dropped = 0

    def send(self) -> bool:
        """One report, now. True if it was handed to the kernel whole."""
        with self._lock:
            return self._send()

    def _send(self) -> bool:
        report = wire.Report(
            instance=self._instance,
            seq=self._seq,
            uptime_s=time.monotonic() - self._started,
            dropped_reports=self.dropped,
            ops=self._totals.snapshot(),
        )
        self._seq += 1
        try:
            frame = wire.encode(report)
            if self._sock is None:
                self._sock = self._connect()
            if self._unsent:
                self._unsent = self._unsent[self._write(self._unsent) :]
            if self._unsent:
                # The exporter has not read the last report yet: skip this one (the
                # next carries its totals) rather than queue without bound.
                self.dropped += 1
                return False
            written = self._write(frame)
            self._unsent = frame[written:]
            self.sent += 1
            return not self._unsent
        except (OSError, wire.WireError) as e:
            log.debug("probe: report to %s not sent: %s", self.socket_path, e)
            self.dropped += 1
            self.close()
            return False

    def send_final(self, timeout_s: float) -> None:
        """Last report before the process ends: wait at most `timeout_s` for the socket."""
        with self._lock:
            try:
                self._send()
                if self._sock is not None and self._unsent:
                    self._sock.settimeout(timeout_s)
                    self._sock.sendall(self._unsent)
                    self._unsent = b""
            except OSError as e:
                log.debug("probe: final report not sent: %s", e)
            finally:
                self.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self._unsent = b""
        return sock

    def _write(self, data: bytes) -> int:
        assert self._sock is not None
        try:
            return self._sock.send(data, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._unsent = b""


class Probe:
    """The probe of this process. Use `enable()` to get it; it is a singleton."""

    def __init__(self, socket_path: str, interval_s: float) -> None:
        self.socket_path = socket_path
        self.interval_s = interval_s
        self._totals = _Totals()
        self._local = threading.local()
        self._originals: list[tuple[Any, str, Any]] = []
        self._cuda: _CudaTimer | None = None
        self._torch: Any = None
        self._reporter = _Reporter(socket_path, self._totals, os.urandom(8).hex())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._errors_logged: set[str] = set()
        self.active = False

    # ------------------------------------------------------------ public
    def totals(self) -> dict[str, OpTotals]:
        """Cumulative totals per operation (all_reduce, all_gather, ...), this process."""
        if self._cuda is not None:
            self._cuda.drain()
        out = {}
        for op, r in self._totals.snapshot().items():
            out[op] = OpTotals(
                bytes=r.bytes,
                seconds=r.seconds,
                calls=r.calls,
                busbw_bytes_per_s=r.bus_bytes / r.seconds if r.seconds > 0 else 0.0,
                algbw_bytes_per_s=r.bytes / r.seconds if r.seconds > 0 else 0.0,
                world_size=r.world_size,
            )
        return out

    @property
    def reports_sent(self) -> int:
        return self._reporter.sent

    @property
    def reports_dropped(self) -> int:
        return self._reporter.dropped

    def report_now(self) -> bool:
        """Send a report now (non-blocking). True if the kernel took it whole."""
        if self._cuda is not None:
            self._cuda.drain()
        return self._reporter.send()

    # ------------------------------------------------------------ lifecycle
    def _install(self) -> None:
        import torch
        import torch.distributed as dist

        self._torch = torch
        if not dist.is_available():
            log.warning("probe: torch.distributed is not available; nothing to measure")
            return
        c10d = dist.distributed_c10d
        for name, (operation, param, many, always_async) in _TARGETS.items():
            original = getattr(c10d, name, None)
            if original is None:
                continue  # not in this torch version
            wrapper = self._wrap(original, operation, param, many, always_async)
            if wrapper is None:
                continue
            for module in (dist, c10d):
                if getattr(module, name, None) is original:
                    self._originals.append((module, name, original))
                    setattr(module, name, wrapper)
        self.active = True
        self._start_thread()

    def _uninstall(self) -> None:
        for module, name, original in reversed(self._originals):
            setattr(module, name, original)
        self._originals.clear()
        self.active = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)  # woken by _stop; a send never blocks
        self._thread = None
        if self._cuda is not None:
            self._cuda.drain()
        self._reporter.send_final(_FINAL_FLUSH_TIMEOUT_S)

    def _cuda_timer(self) -> _CudaTimer:
        # Made at the first GPU collective, so that enable() never initialises CUDA.
        if self._cuda is None:
            cuda = self._torch.cuda
            self._cuda = _CudaTimer(lambda: cuda.Event(enable_timing=True), self._totals.add)
        return self._cuda

    def _start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="gpuledger-probe-reporter", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.report_now()
            except Exception:
                self._log_once("reporter", "probe: reporter failed; will retry")

    def _after_fork_in_child(self) -> None:
        # A forked child must not re-send its parent's totals under its own pid.
        self._totals = _Totals()
        if self._cuda is not None:
            self._cuda = _CudaTimer(self._cuda._new_event, self._totals.add)
        self._reporter = _Reporter(self.socket_path, self._totals, os.urandom(8).hex())
        self._local = threading.local()
        self._thread = None
        self._stop = threading.Event()
        if self.active:
            self._start_thread()

    def _log_once(self, key: str, message: str) -> None:
        if key not in self._errors_logged:
            self._errors_logged.add(key)
            log.warning(message, exc_info=True)

    # ------------------------------------------------------------ measuring
    def _wrap(
        self, original: Callable, operation: str, param: str | None, many: bool, always_async: bool
    ) -> Callable | None:
        try:
            names = list(inspect.signature(original).parameters)
        except (TypeError, ValueError):
            return None
        if (param is not None and param not in names) or "group" not in names:
            log.debug("probe: %s has an unexpected signature; not measured", original.__name__)
            return None
        tensor_at = names.index(param) if param is not None else -1
        group_at = names.index("group")
        async_at = names.index("async_op") if "async_op" in names else -1
        dist = self._torch.distributed
        probe = self

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            local = probe._local
            if getattr(local, "inside", False) or not probe.active:
                return original(*args, **kwargs)
            try:
                if param is None:
                    nbytes, first = 0, None
                else:
                    value = args[tensor_at] if len(args) > tensor_at else kwargs[param]
                    if many:
                        nbytes = sum(_tensor_bytes(t) for t in value)
                        first = value[0] if value else None
                    else:
                        nbytes, first = _tensor_bytes(value), value
                group = args[group_at] if len(args) > group_at else kwargs.get("group")
                world_size = dist.get_world_size(group)
                if always_async:
                    is_async = True
                elif async_at >= 0:
                    is_async = bool(
                        args[async_at] if len(args) > async_at else kwargs.get("async_op")
                    )
                else:
                    is_async = False
                if world_size < 1:  # this rank is not in the group: nothing moves here
                    return original(*args, **kwargs)
                cuda = stream = start = None
                if first is not None and first.is_cuda:
                    cuda_api = probe._torch.cuda
                    if cuda_api.is_current_stream_capturing():
                        # Captured into a CUDA graph: it runs at replay, out of our sight.
                        return original(*args, **kwargs)
                    cuda = probe._cuda_timer()
                    stream = cuda_api.current_stream(first.device)
                    start = cuda.start(stream)
            except Exception:
                probe._log_once(operation, f"probe: could not measure a {operation} call")
                return original(*args, **kwargs)
            t0 = time.perf_counter()
            local.inside = True  # nested calls (all_gather_into_tensor -> ..._single) count once
            try:
                result = original(*args, **kwargs)
            finally:
                local.inside = False
            try:
                probe._finish(
                    operation, nbytes, world_size, is_async, result, t0, cuda, start, stream
                )
            except Exception:
                probe._log_once(f"{operation}-finish", f"probe: could not time a {operation}")
            return result

        return wrapper

    def _finish(
        self,
        operation: str,
        nbytes: int,
        world_size: int,
        is_async: bool,
        result: Any,
        t0: float,
        cuda: _CudaTimer | None,
        start: Any,
        stream: Any,
    ) -> None:
        if is_async and result is None:
            # Inside a coalescing batch (batch_isend_irecv): the batch's Work covers the
            # transfer, this call has none. Its bytes count; its time cannot be told apart.
            if cuda is not None:
                cuda.release(start)
            self._totals.add(operation, nbytes, world_size, 0.0)
            return
        if not is_async:
            if cuda is not None:
                cuda.finish(operation, nbytes, world_size, start, stream)
            else:
                self._totals.add(operation, nbytes, world_size, time.perf_counter() - t0)
            return
        if cuda is not None:
            cuda.finish_async(operation, nbytes, world_size, start, result)
            return
        totals = self._totals

        def on_done(_fut: Any) -> None:
            totals.add(operation, nbytes, world_size, time.perf_counter() - t0)

        try:
            future = result.get_future()
        except RuntimeError:
            # A backend without futures: the time until the call returned is what we have.
            self._log_once(f"{operation}-future", f"probe: {operation} Work has no future")
            totals.add(operation, nbytes, world_size, time.perf_counter() - t0)
            return
        future.add_done_callback(on_done)


_probe: Probe | None = None
_probe_lock = threading.Lock()


def enable(socket_path: str | None = None, interval_s: float = 1.0) -> Probe:
    """Measure every torch.distributed collective of this process and report it.

    Idempotent: a second call returns the probe already running. `socket_path`
    defaults to $GPULEDGER_PROBE_SOCKET or /var/run/gpuledger/probe.sock.
    """
    global _probe
    if isinstance(interval_s, bool) or not isinstance(interval_s, int | float):
        raise ValueError(f"interval_s must be a number of seconds, got {interval_s!r}")
    if not 0.05 <= interval_s <= 3600:
        raise ValueError(f"interval_s must be between 0.05 and 3600 seconds, got {interval_s}")
    with _probe_lock:
        if _probe is not None and _probe.active:
            return _probe
        path = socket_path or os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET_PATH
        probe = Probe(path, float(interval_s))
        probe._install()
        _probe = probe
        return probe


def enable_from_env() -> Probe | None:
    """`enable()` when GPULEDGER_PROBE is 1/true/yes/on; interval from GPULEDGER_PROBE_INTERVAL_S."""
    flag = os.environ.get(ENABLE_ENV, "").strip().lower()
    if flag in ("", "0", "false", "no", "off"):
        return None
    if flag not in ("1", "true", "yes", "on"):
        raise ValueError(f"{ENABLE_ENV} must be 1/true/yes/on or 0/false/no/off, got {flag!r}")
    raw = os.environ.get(INTERVAL_ENV, "1")
    try:
        interval = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds, got {raw!r}") from None
    return enable(interval_s=interval)


def disable() -> None:
    """Restore torch.distributed and send a last report (waits at most 0.5 s)."""
    global _probe
    with _probe_lock:
        probe, _probe = _probe, None
    if probe is not None and probe.active:
        probe._uninstall()


def get() -> Probe | None:
    """The running probe, if any."""
    return _probe


def instrument_ddp(model: Any) -> None:
    """Route a DistributedDataParallel model's gradient all-reduce through torch.distributed.

    DDP's built-in reducer calls the process group from C++, out of the probe's sight.
    This registers PyTorch's own `allreduce_hook` (same arithmetic: all-reduce, then
    divide by the world size), which calls `dist.all_reduce(async_op=True)`. Call it
    right after wrapping the model, before training. A model that has a comm hook
    already keeps it (DDP allows one); the probe sees what that hook calls in Python.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    try:
        model.register_comm_hook(model.process_group, default_hooks.allreduce_hook)
    except RuntimeError as e:
        log.warning("probe: DDP model keeps its own comm hook: %s", e)


def _after_fork_in_child() -> None:
    if _probe is not None:
        _probe._after_fork_in_child()


def _at_exit() -> None:
    if _probe is not None and _probe.active:
        disable()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
