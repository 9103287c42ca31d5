"""What each phase kind does to a running rank, and what it adds up to.

Every phase starts after a barrier, so that all ranks enter it together, and ranks
that train end it on the same step (the last-step vote in the gradient all-reduce).
A phase's duration in the timeline runs from the end of its barrier to the end of
its last step.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loadgen.errors import InjectedCrash, RunFailed
from loadgen.memory import Ballast
from loadgen.profile import Phase
from loadgen.trainer import StepTiming

if TYPE_CHECKING:
    from loadgen.runner import Rank

CRASH_EXIT_CODE = 17  # mode exit: a code no Python error produces


class PhaseStats:
    """Adds up the step records of one phase of one rank into its phase_end record."""

    def __init__(self, phase: Phase, index: int, peak_flops: float | None, world_size: int):
        self.phase, self.index = phase, index
        self.peak, self.world_size = peak_flops, world_size
        self.start = time.time()
        self._mono_start = time.monotonic()
        self.steps: list[dict[str, Any]] = []
        self.memory_max = 0

    def elapsed(self) -> float:
        return time.monotonic() - self._mono_start

    def add(self, record: dict[str, Any]) -> None:
        self.steps.append(record)
        self.observe_memory(record["memory_bytes"])

    def observe_memory(self, memory_bytes: int) -> None:
        self.memory_max = max(self.memory_max, memory_bytes)

    def summary(self, status: str = "ok", probe: dict | None = None) -> dict[str, Any]:
        duration = self.elapsed()
        s = self.steps

        def total(key: str) -> float:
            return sum(r[key] for r in s)

        tokens, flops = int(total("tokens")), total("flops")
        busy = sum(r["busy_ratio"] * r["step_s"] for r in s)
        coll_bytes, coll_s = int(total("collective_bytes")), total("collective_s")
        factor = 2 * (self.world_size - 1) / self.world_size
        flops_per_s = flops / duration if duration > 0 else 0.0
        out = {
            "phase": self.phase.name,
            "kind": self.phase.kind,
            "index": self.index,
            "start": self.start,
            "end": self.start + duration,
            "duration_s": duration,
            "planned_s": self.phase.duration_s,
            "steps": len(s),
            "tokens": tokens,
            "tokens_per_s": tokens / duration if duration > 0 else 0.0,
            "flops_per_s": flops_per_s,
            "mfu": flops_per_s / self.peak if self.peak else None,
            "busy_ratio": busy / duration if duration > 0 else 0.0,
            "step_s_median": statistics.median(r["step_s"] for r in s) if s else None,
            "work_s": total("compute_s") + total("straggle_s"),
            "collective_bytes": coll_bytes,
            "collective_s": coll_s,
            "busbw_bytes_per_s": coll_bytes * factor / coll_s if coll_s > 0 else None,
            "memory_bytes_max": self.memory_max,
            "status": status,
        }
        if probe is not None:
            out["probe"] = probe
        return out


def _train(
    rank: Rank,
    stats: PhaseStats,
    *,
    stall_s: Callable[[int], float] = lambda n: 0.0,
    straggle_factor: float = 1.0,
    before_step: Callable[[float], None] | None = None,
) -> None:
    """Train until the phase's duration is up, ending on the same step on every rank."""
    duration = stats.phase.duration_s or 0.0
    typical: float | None = None  # smoothed step time
    n = 0
    while True:
        elapsed = stats.elapsed()
        if before_step:
            before_step(elapsed)
        # Vote "last" when the step about to run would end nearer the deadline than
        # the next one would: the phase then lasts its duration ± half a step.
        last = elapsed + 1.5 * typical >= duration if typical else elapsed >= duration
        rank.note_progress(stats.phase.name)
        timing = rank.trainer.step(last=last, stall_s=stall_s(n), straggle_factor=straggle_factor)
        rank.record_step(stats, timing)
        typical = timing.step_s if typical is None else 0.8 * typical + 0.2 * timing.step_s
        n += 1
        if timing.last:
            return


def steady(rank: Rank, stats: PhaseStats) -> None:
    _train(rank, stats)


def idle(rank: Rank, stats: PhaseStats) -> None:
    # Hold everything (model, optimizer state, caches) and run nothing.
    held = rank.memory_in_use()
    stats.observe_memory(held)
    rank.metrics.memory(stats.phase.name, held)
    rank.metrics.idle(stats.phase.name)
    time.sleep(max(0.0, (stats.phase.duration_s or 0.0) - stats.elapsed()))


def straggler(rank: Rank, stats: PhaseStats) -> None:
    slow = rank.env.rank == stats.phase["rank"]
    _train(rank, stats, straggle_factor=float(stats.phase["factor"]) if slow else 1.0)


def input_stall(rank: Rank, stats: PhaseStats) -> None:
    stall, every = stats.phase["stall_s"], stats.phase["every"]
    _train(rank, stats, stall_s=lambda n: stall if n % every == 0 else 0.0)


def memory_ramp(rank: Rank, stats: PhaseStats) -> None:
    phase = stats.phase
    target = rank.ballast_target(phase)
    ramp_s = phase["ramp_s"] if phase["ramp_s"] is not None else (phase.duration_s or 0) / 2
    ballast = Ballast(rank.device)

    def grow(elapsed: float) -> None:
        share = min(1.0, elapsed / ramp_s) if ramp_s > 0 else 1.0
        ballast.grow_to(int(target * share))

    try:
        _train(rank, stats, before_step=grow)
    finally:
        ballast.release()


# Calls of a slowdown phase that run undelayed, to measure the time the delay scales;
# the first WARMUP_CALLS of them (buffer first touched, connections warming) are not used.
BASELINE_CALLS = 10
WARMUP_CALLS = 2


def communication(rank: Rank, stats: PhaseStats) -> None:
    import torch

    phase = stats.phase
    size = phase["message_bytes"] or (64 if rank.device.type == "cuda" else 8) * 2**20
    buffer = torch.zeros(max(1, size // 4), dtype=torch.float32, device=rank.device)
    duration, typical, turn = phase.duration_s or 0.0, None, 0
    delay_s, baseline = phase["delay_s"], []
    n = rank.env.world_size
    while True:
        if phase["slowdown"] is not None:
            # A rank waits d before its turn's call; its peers wait d + t inside it, it t.
            # Mean time ((n-1)(d+t) + t)/n = f·t gives d = (f-1)·t·n/(n-1).
            if turn < BASELINE_CALLS:
                delay_s = 0.0
            else:
                t = statistics.median(baseline)
                delay_s = (phase["slowdown"] - 1) * t * n / (n - 1)
        elapsed = stats.elapsed()
        last = elapsed + 1.5 * typical >= duration if typical else elapsed >= duration
        rank.note_progress(phase.name)
        timing = rank.trainer.exchange(buffer, last=last, delay_s=delay_s, turn=turn)
        rank.record_step(stats, timing)
        if WARMUP_CALLS <= turn < BASELINE_CALLS:
            baseline.append(timing.collective_s)
        typical = timing.step_s if typical is None else 0.8 * typical + 0.2 * timing.step_s
        turn += 1
        if timing.last:
            return


def fault(rank: Rank, stats: PhaseStats) -> None:
    """hang and crash: train until at_s, then the named rank hangs or crashes; the
    others keep training until their next collective fails, which ends the run."""
    phase = stats.phase
    target = phase["rank"]
    while True:
        if rank.env.rank == target and stats.elapsed() >= phase["at_s"]:
            _inject(rank, phase)
        rank.note_progress(phase.name)
        timing: StepTiming = rank.trainer.step()
        rank.record_step(stats, timing)


def _inject(rank: Rank, phase: Phase) -> None:
    me = rank.env.rank
    if phase.kind == "crash":
        rank.timeline.write(
            "fault", phase=phase.name, kind="crash", target_rank=me, action=phase["mode"]
        )
        if phase["mode"] == "exit":
            os._exit(CRASH_EXIT_CODE)  # no clean-up, no message: as a segfault or OOM kill
        raise InjectedCrash(f"rank {me} crashed, as phase {phase.name!r} (crash) asked", rank=me)
    hang_s = (
        phase["hang_s"] if phase["hang_s"] is not None else 3 * rank.config.collective_timeout_s
    )
    rank.timeline.write(
        "fault", phase=phase.name, kind="hang", target_rank=me, action=f"sleep {hang_s:g} s"
    )
    time.sleep(hang_s)
    raise RunFailed(
        f"rank {me} hung for {hang_s:g} s, as phase {phase.name!r} (hang) asked; "
        "the other ranks should have given up after their collective timeout",
        rank=me,
    )


RUNNERS: dict[str, Callable[[Rank, PhaseStats], None]] = {
    "steady": steady,
    "idle": idle,
    "memory_ramp": memory_ramp,
    "communication": communication,
    "straggler": straggler,
    "input_stall": input_stall,
    "hang": fault,
    "crash": fault,
}
