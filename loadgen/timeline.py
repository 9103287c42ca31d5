"""The ground-truth timeline: one JSON object a line, written as things happen.

Every rank appends its own records to the timeline file (ranks on one machine share
it: each record is one `write` on a file opened with O_APPEND, so lines never
interleave), or to its own file when the path holds `{rank}`. Records are written
unbuffered, so a crash leaves every record up to the crash. Times are wall-clock unix
seconds (`time.time()`), comparable with Prometheus sample times; durations are
measured with a monotonic clock.

Schema (version 1). Every record has:
    type      run_start | phase_start | step | phase_end | fault | run_end
    ts        unix seconds when the record was written
    rank      global rank of the writer
    job       job name (the `job` label of the metrics)

run_start   world_size, local_rank, hostname, pid, profile, device ("cpu", "cuda:0"),
            device_name, backend (gloo, nccl or null), threads, model {depth, width,
            heads, context, vocab, batch_size}, params, matmul_params,
            flops_per_token, tokens_per_step, peak_flops (FLOP/s or null),
            peak_source (how the peak was found), memory_limit_bytes, probe (bool),
            phases [{name, kind, duration_s, params}], schema_version
phase_start phase, kind, index (0-based), start (unix s), planned_s (null for hang
            and crash), params
step        phase, kind, index, step (run-wide count), phase_step, start, end,
            step_s (wall), compute_s (forward + backward + optimizer), stall_s (waiting
            for data), straggle_s (injected slowness), collective_s (gradient or
            message all_reduce, including waiting for peers), collective_bytes,
            algbw_bytes_per_s, busbw_bytes_per_s (nccl-tests: algbw × 2(n-1)/n),
            tokens, tokens_per_s, flops (model FLOPs of the step), flops_per_s, mfu
            (null if the peak is unknown), busy_ratio (CUDA-event time over wall on
            GPUs; compute_s / step_s on the CPU), memory_bytes (reserved device memory
            on GPUs; resident set size on the CPU), loss (null in communication phases,
            where a step is one all_reduce)
phase_end   phase, kind, index, start, end, duration_s, planned_s, steps, tokens,
            tokens_per_s, flops_per_s, mfu, busy_ratio (busy time over the phase's
            wall time), step_s_median, collective_bytes, collective_s,
            busbw_bytes_per_s (over the phase: Σbytes × factor / Σseconds),
            memory_bytes_max, status (ok, or error when the run failed in it), and
            probe (the in-job probe's totals by operation) when the probe is on
fault       phase, kind (hang or crash), target_rank, action: written by the rank
            told to hang or crash, just before it does
run_end     status (ok or error), error (message or null), duration_s
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class TimelineWriter:
    """Appends records for one rank; safe to share one file between local ranks."""

    def __init__(self, path: str | Path, *, rank: int, job: str, truncate: bool = False) -> None:
        self.path = Path(str(path).format(rank=rank))
        self.rank, self.job = rank, job
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if truncate else 0)
        self._fd: int | None = os.open(self.path, flags, 0o644)

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        record = {"type": type_, "ts": time.time(), "rank": self.rank, "job": self.job, **fields}
        if self._fd is not None:
            os.write(self._fd, (json.dumps(record, default=_plain) + "\n").encode())
        return record

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _plain(value: Any) -> Any:
    """JSON for values json does not know (tensors' scalars, paths, tuples of them)."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def read(paths: str | Path | Iterable[str | Path]) -> list[dict[str, Any]]:
    """All records of one or more timeline files, in time order."""
    if isinstance(paths, str | Path):
        paths = [paths]
    records = []
    for path in paths:
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    records.sort(key=lambda r: r["ts"])
    return records


def phases(records: Iterable[dict[str, Any]], rank: int | None = None) -> list[dict[str, Any]]:
    """The phase_end records (start, end, duration and figures per phase), in order."""
    return [r for r in records if r["type"] == "phase_end" and (rank is None or r["rank"] == rank)]


def steps(
    records: Iterable[dict[str, Any]], phase: str | None = None, rank: int | None = None
) -> list[dict[str, Any]]:
    """The step records, optionally of one phase and one rank."""
    return [
        r
        for r in records
        if r["type"] == "step"
        and (phase is None or r["phase"] == phase)
        and (rank is None or r["rank"] == rank)
    ]
