"""Per pod and operation totals of collectives, from the probes' cumulative reports.

Each probe process is one stream, keyed by (pid from the kernel, instance from the
report). A report carries totals since the probe started; the aggregator adds the
difference from the stream's last report to the pod's counters, so ranks of one job on
one node sum, a lost report loses nothing, and an exporter restart starts every
counter from the probes' full totals (Prometheus sees a counter reset and `increase()`
stays exact).

Reports that cannot be true are rejected whole, not clipped: totals that go backwards
within one stream, more bytes or calls than any link could carry in the time since the
stream's last report, bus bytes above twice the bytes (the largest nccl-tests factor).

Memory is bounded: at most `max_series` (pod, operation) pairs, `max_streams` streams
(`max_streams_per_pid` per process). Streams of closed connections are kept
`stream_ttl_s` so that a probe that reconnects continues where it was.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from exporter.attribution import PodRef
from gpuledger.probe_wire import OpReport, Report

# Reasons a probe message is dropped; the label values of probe_rejected_total.
REJECT_REASONS: tuple[str, ...] = (
    "malformed",
    "oversized",
    "unsupported_version",
    "rate_limited",
    "too_many_connections",
    "unattributed",
    "implausible",
    "too_many_series",
)

# Bus bandwidth histogram buckets, bytes/second: 1 MB/s to 5 TB/s.
BUSBW_BUCKETS: tuple[float, ...] = (
    1e6,
    1e7,
    1e8,
    2.5e8,
    5e8,
    1e9,
    2.5e9,
    5e9,
    1e10,
    2.5e10,
    5e10,
    1e11,
    2.5e11,
    5e11,
    1e12,
    5e12,
)


@dataclass(frozen=True)
class AggregatorLimits:
    max_series: int = 4096  # (pod, operation) pairs
    max_streams: int = 4096
    max_streams_per_pid: int = 16
    stream_ttl_s: float = 600.0
    # A pod that is gone keeps its series this long, so that Prometheus scrapes the
    # last report (sent as its processes exit) before the series goes.
    departed_grace_s: float = 300.0
    # A bandwidth gauge shows the last report period with traffic, if this recent.
    bandwidth_window_s: float = 60.0
    # Plausibility, per process: above any link today (NVLink 5: 1.8 TB/s per GPU).
    max_bytes_per_s: float = 1e13
    max_calls_per_s: float = 1e6
    # Async collectives overlap, so collective seconds may exceed wall seconds.
    max_concurrency: float = 1024.0
    max_first_report_uptime_s: float = 30 * 86400.0
    clock_slack_s: float = 2.0


@dataclass(frozen=True)
class PodOperation:
    """One pod's totals of one operation, as the collector exports them."""

    pod: PodRef
    operation: str
    bytes: int
    bus_bytes: float
    seconds: float
    calls: int
    world_size: int
    algbw_bytes_per_s: float | None  # None: no traffic within the bandwidth window
    busbw_bytes_per_s: float | None
    busbw_bucket_counts: tuple[int, ...]  # cumulative, one per BUSBW_BUCKETS, then +Inf
    busbw_sum: float
    busbw_count: int


@dataclass(frozen=True)
class PodProbeStats:
    pod: PodRef
    reports: int
    dropped_reports: int  # reports the pod's probes could not deliver, as they count them


@dataclass(frozen=True)
class CollectiveSnapshot:
    operations: tuple[PodOperation, ...]
    pods: tuple[PodProbeStats, ...]
    rejected: dict[str, int]
    connections: int


@dataclass
class _Series:
    bytes: int = 0
    bus_bytes: float = 0.0
    seconds: float = 0.0
    calls: int = 0
    world_size: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUSBW_BUCKETS) + 1))
    busbw_sum: float = 0.0
    busbw_count: int = 0


@dataclass
class _PodStats:
    reports: int = 0
    dropped_reports: int = 0


@dataclass
class _Stream:
    pod: PodRef
    first_seen: float
    first_uptime_s: float
    last_seen: float
    last: Report | None = None
    connected: bool = True
    closed_at: float = 0.0
    # operation -> (time, bytes, bus bytes, seconds) of the last report period with traffic
    periods: dict[str, tuple[float, int, float, float]] = field(default_factory=dict)


def _pod_key(pod: PodRef) -> tuple[str, str, str]:
    return (pod.namespace, pod.pod, pod.uid)


class CollectiveAggregator:
    """Thread-safe: the socket server ingests, the collector snapshots."""

    def __init__(
        self,
        limits: AggregatorLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits or AggregatorLimits()
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[tuple[PodRef, str], _Series] = {}
        self._pods: dict[PodRef, _PodStats] = {}
        self._streams: dict[tuple[int, str], _Stream] = {}
        self._rejected = dict.fromkeys(REJECT_REASONS, 0)
        self._connections = 0
        self._gone_since: dict[tuple[str, str, str], float] = {}

    # ------------------------------------------------------------ input
    def ingest(self, pid: int, pod: PodRef, report: Report) -> str | None:
        """Add one report. Returns the reject reason, or None if it was accepted."""
        now = self._clock()
        with self._lock:
            key = (pid, report.instance)
            stream = self._streams.get(key)
            if stream is None:
                reason = self._check_new_stream(pid, report)
                if reason:
                    return self._reject_locked(reason)
                stream = _Stream(pod, now, report.uptime_s, now)
            elif stream.pod != pod:
                # The pid now belongs to another pod (reused): a new stream.
                stream = _Stream(pod, now, report.uptime_s, now)
            reason = self._check(stream, report, now)
            if reason is None:
                reason = self._check_series_room(pod, report)
            if reason:
                return self._reject_locked(reason)
            self._apply(stream, report, now)
            self._streams[key] = stream
            return None

    def reject(self, reason: str) -> None:
        """Count a message the server dropped before it reached `ingest`."""
        with self._lock:
            self._reject_locked(reason)

    def connection_closed(self, pid: int, instances: Iterable[str]) -> None:
        """The probe's connection ended: keep its streams `stream_ttl_s` for a reconnect."""
        now = self._clock()
        with self._lock:
            for instance in instances:
                stream = self._streams.get((pid, instance))
                if stream is not None:
                    stream.connected = False
                    stream.closed_at = now
            self._expire_streams(now)

    def set_connections(self, count: int) -> None:
        with self._lock:
            self._connections = count

    def retain_pods(self, pods: Iterable[PodRef]) -> None:
        """Forget every pod not in `pods` (matched on namespace, name and UID; not
        container) once it has been missing for `departed_grace_s`."""
        alive = {_pod_key(p) for p in pods}
        now = self._clock()
        grace = self.limits.departed_grace_s
        with self._lock:
            known = {_pod_key(p) for p in self._pods}
            known |= {_pod_key(k[0]) for k in self._series}
            known |= {_pod_key(s.pod) for s in self._streams.values()}
            for key in known - alive:
                self._gone_since.setdefault(key, now)
            for key in [k for k in self._gone_since if k in alive or k not in known]:
                del self._gone_since[key]
            gone = {k for k, since in self._gone_since.items() if now - since >= grace}
            if not gone:
                return
            for key in [k for k in self._series if _pod_key(k[0]) in gone]:
                del self._series[key]
            for pod in [p for p in self._pods if _pod_key(p) in gone]:
                del self._pods[pod]
            for key in [k for k, s in self._streams.items() if _pod_key(s.pod) in gone]:
                del self._streams[key]
            for key in gone:
                del self._gone_since[key]

    # ------------------------------------------------------------ output
    def snapshot(self) -> CollectiveSnapshot:
        now = self._clock()
        window = self.limits.bandwidth_window_s
        with self._lock:
            self._expire_streams(now)
            recent: dict[tuple[PodRef, str], list[float]] = {}
            for stream in self._streams.values():
                for op, (t, nbytes, bus, seconds) in stream.periods.items():
                    if now - t <= window:
                        acc = recent.setdefault((stream.pod, op), [0.0, 0.0, 0.0])
                        acc[0] += nbytes
                        acc[1] += bus
                        acc[2] += seconds
            operations = []
            for (pod, op), s in self._series.items():
                acc = recent.get((pod, op))
                has_bw = acc is not None and acc[2] > 0
                cumulative, running = [], 0
                for count in s.buckets:
                    running += count
                    cumulative.append(running)
                operations.append(
                    PodOperation(
                        pod=pod,
                        operation=op,
                        bytes=s.bytes,
                        bus_bytes=s.bus_bytes,
                        seconds=s.seconds,
                        calls=s.calls,
                        world_size=s.world_size,
                        algbw_bytes_per_s=acc[0] / acc[2] if has_bw else None,
                        busbw_bytes_per_s=acc[1] / acc[2] if has_bw else None,
                        busbw_bucket_counts=tuple(cumulative),
                        busbw_sum=s.busbw_sum,
                        busbw_count=s.busbw_count,
                    )
                )
            pods = tuple(
                PodProbeStats(pod, st.reports, st.dropped_reports) for pod, st in self._pods.items()
            )
            return CollectiveSnapshot(
                operations=tuple(operations),
                pods=pods,
                rejected=dict(self._rejected),
                connections=self._connections,
            )

    # ------------------------------------------------------------ internals
    def _reject_locked(self, reason: str) -> str:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        return reason

    def _check_new_stream(self, pid: int, report: Report) -> str | None:
        limits = self.limits
        if report.uptime_s > limits.max_first_report_uptime_s:
            return "implausible"
        if len(self._streams) >= limits.max_streams:
            self._expire_streams(self._clock(), force=True)
            if len(self._streams) >= limits.max_streams:
                return "too_many_series"
        if sum(1 for p, _ in self._streams if p == pid) >= limits.max_streams_per_pid:
            return "too_many_series"
        return None

    def _check(self, stream: _Stream, report: Report, now: float) -> str | None:
        limits = self.limits
        last = stream.last
        # The sender's clock may not run ahead of ours since we first heard of it.
        if (
            report.uptime_s
            > stream.first_uptime_s + (now - stream.first_seen) + limits.clock_slack_s
        ):
            return "implausible"
        if last is None:
            span = report.uptime_s + limits.clock_slack_s
        else:
            if report.seq <= last.seq or report.uptime_s < last.uptime_s:
                return "implausible"
            if report.dropped_reports < last.dropped_reports:
                return "implausible"
            span = max(now - stream.last_seen, report.uptime_s - last.uptime_s)
            span += limits.clock_slack_s
        for op, new in report.ops.items():
            old = last.ops.get(op) if last else None
            d_bytes = new.bytes - (old.bytes if old else 0)
            d_bus = new.bus_bytes - (old.bus_bytes if old else 0.0)
            d_seconds = new.seconds - (old.seconds if old else 0.0)
            d_calls = new.calls - (old.calls if old else 0)
            if d_bytes < 0 or d_calls < 0 or d_seconds < -1e-9 or d_bus < -1e-3:
                return "implausible"
            if new.bus_bytes > 2 * new.bytes + 1:
                return "implausible"
            if d_bytes > limits.max_bytes_per_s * span or d_calls > limits.max_calls_per_s * span:
                return "implausible"
            if d_seconds > limits.max_concurrency * span:
                return "implausible"
        if last is not None and any(op not in report.ops for op in last.ops):
            return "implausible"  # an operation's totals vanished: not cumulative
        return None

    def _check_series_room(self, pod: PodRef, report: Report) -> str | None:
        new = sum(1 for op in report.ops if (pod, op) not in self._series)
        if new and len(self._series) + new > self.limits.max_series:
            return "too_many_series"
        return None

    def _apply(self, stream: _Stream, report: Report, now: float) -> None:
        last = stream.last
        for op, new in report.ops.items():
            old: OpReport | None = last.ops.get(op) if last else None
            d_bytes = new.bytes - (old.bytes if old else 0)
            d_bus = max(new.bus_bytes - (old.bus_bytes if old else 0.0), 0.0)
            d_seconds = max(new.seconds - (old.seconds if old else 0.0), 0.0)
            d_calls = new.calls - (old.calls if old else 0)
            series = self._series.get((stream.pod, op))
            if series is None:
                series = self._series[(stream.pod, op)] = _Series()
            series.bytes += d_bytes
            series.bus_bytes += d_bus
            series.seconds += d_seconds
            series.calls += d_calls
            series.world_size = new.world_size
            if d_seconds > 0 and d_bytes > 0:  # barriers move no bytes: no bandwidth
                busbw = d_bus / d_seconds
                series.buckets[bisect.bisect_left(BUSBW_BUCKETS, busbw)] += 1
                series.busbw_sum += busbw
                series.busbw_count += 1
                stream.periods[op] = (now, d_bytes, d_bus, d_seconds)
        stats = self._pods.get(stream.pod)
        if stats is None:
            stats = self._pods[stream.pod] = _PodStats()
        stats.reports += 1
        stats.dropped_reports += report.dropped_reports - (last.dropped_reports if last else 0)
        stream.last = report
        stream.last_seen = now
        stream.connected = True

    def _expire_streams(self, now: float, force: bool = False) -> None:
        ttl = self.limits.stream_ttl_s
        closed = [(s.closed_at, k) for k, s in self._streams.items() if not s.connected]
        for closed_at, key in closed:
            if now - closed_at > ttl:
                del self._streams[key]
        if force and closed and len(self._streams) >= self.limits.max_streams:
            # Out of room: the stream closed longest ago goes first.
            oldest = min((c for c in closed if c[1] in self._streams), default=None)
            if oldest is not None:
                del self._streams[oldest[1]]
