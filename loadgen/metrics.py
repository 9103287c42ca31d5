"""The load generator's own view as Prometheus metrics (names from the catalogue).

A calibration run scrapes these beside the exporter's GPU metrics and compares the
two: the job knows exactly when it was busy, idle, stalled or communicating.
"""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from exporter import catalogue as cat


def _bare(spec: cat.MetricSpec) -> str:
    # prometheus_client appends _total to counters itself.
    return spec.name.removesuffix("_total") if spec.type is cat.MetricType.COUNTER else spec.name


# Gauges that describe the present (the last step) rather than the phase's history.
_PRESENT = (
    cat.LOADGEN_STEP_SECONDS,
    cat.LOADGEN_STEP_WORK_SECONDS,
    cat.LOADGEN_FLOPS,
    cat.LOADGEN_MFU,
    cat.LOADGEN_BUSY,
    cat.LOADGEN_MEMORY,
    cat.LOADGEN_LOSS,
    cat.LOADGEN_BUSBW,
)


class LoadgenMetrics:
    """The LOADGEN_* metrics of one rank, in their own registry."""

    def __init__(self, job: str, rank: int, registry: CollectorRegistry | None = None) -> None:
        self.job, self.rank = job, str(rank)
        self.registry = registry if registry is not None else CollectorRegistry()
        self._metrics: dict[str, Any] = {}
        specs = [s for name, s in cat.CATALOGUE.items() if name.startswith(cat.PREFIX + "loadgen_")]
        for spec in specs:
            kind = Counter if spec.type is cat.MetricType.COUNTER else Gauge
            self._metrics[spec.name] = kind(
                _bare(spec), spec.help, labelnames=spec.labels, registry=self.registry
            )

    def _labels(self, spec: cat.MetricSpec, phase: str, **extra: str) -> Any:
        return self._metrics[spec.name].labels(job=self.job, rank=self.rank, phase=phase, **extra)

    def set_peak(self, peak_flops: float | None) -> None:
        if peak_flops:
            self._metrics[cat.LOADGEN_PEAK_FLOPS.name].labels(job=self.job, rank=self.rank).set(
                peak_flops
            )

    def phase(self, phase: str, kind: str, active: bool) -> None:
        """Mark a phase as running (1) or over (0). When it is over, its gauges of the
        present go, so that a query of the rank's present sees only the running phase."""
        self._labels(cat.LOADGEN_PHASE, phase, kind=kind).set(1 if active else 0)
        if active:
            return
        for spec in _PRESENT:
            with contextlib.suppress(KeyError):  # a phase without steps never set it
                self._metrics[spec.name].remove(self.job, self.rank, phase)

    def idle(self, phase: str) -> None:
        """Nothing runs in this phase: the device is not busy."""
        self._labels(cat.LOADGEN_BUSY, phase).set(0)

    def memory(self, phase: str, memory_bytes: int) -> None:
        self._labels(cat.LOADGEN_MEMORY, phase).set(memory_bytes)

    def step(self, record: dict[str, Any]) -> None:
        """Take the figures of one timeline step record."""
        phase = record["phase"]
        self._labels(cat.LOADGEN_STEPS, phase).inc()
        self._labels(cat.LOADGEN_STEP_SECONDS, phase).set(record["step_s"])
        work = record["compute_s"] + record["stall_s"] + record["straggle_s"]
        self._labels(cat.LOADGEN_STEP_WORK_SECONDS, phase).set(work)
        self._labels(cat.LOADGEN_BUSY, phase).set(record["busy_ratio"])
        self._labels(cat.LOADGEN_BUSY_SECONDS, phase).inc(record["busy_ratio"] * record["step_s"])
        self._labels(cat.LOADGEN_MEMORY, phase).set(record["memory_bytes"])
        if record["stall_s"]:
            self._labels(cat.LOADGEN_STALL_SECONDS, phase).inc(record["stall_s"])
        if record["tokens"]:
            self._labels(cat.LOADGEN_TOKENS, phase).inc(record["tokens"])
            self._labels(cat.LOADGEN_FLOPS, phase).set(record["flops_per_s"])
            if record["mfu"] is not None:
                self._labels(cat.LOADGEN_MFU, phase).set(record["mfu"])
        if record["loss"] is not None:
            self._labels(cat.LOADGEN_LOSS, phase).set(record["loss"])
        if record["collective_bytes"]:
            self._labels(cat.LOADGEN_COLLECTIVE_BYTES, phase).inc(record["collective_bytes"])
            self._labels(cat.LOADGEN_COLLECTIVE_SECONDS, phase).inc(record["collective_s"])
            self._labels(cat.LOADGEN_BUSBW, phase).set(record["busbw_bytes_per_s"])

    def serve(self, port: int, addr: str = "0.0.0.0") -> Any:
        """Serve /metrics on a background thread; returns the server (call shutdown())."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server
