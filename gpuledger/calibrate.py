"""`gpuledger calibrate`: run a load generator profile end to end and hold the alerts and
the figures against the load generator's ground truth.

The run is the local stack (gpuledger/stack.py): the exporter (NVML, or simulated GPUs
that follow the load generator's phases), a real Prometheus evaluating gpuledger's rules
on a time scale of seconds, a real Alertmanager routing to a receiver, and the load
generator running real training steps whose collectives the in-job probe reports.

The report (Markdown, with the numbers also in JSON) says, for each alert a phase of the
profile is for, when the timeline says its fault began and when the alert fired, against
a budget of its `for`, its detection window, the exporter's collection interval and two
scrape intervals; every alert that fired where no phase called for it; and, for busy
GPU-seconds, memory, collective bytes and bus bandwidth, the ground truth beside what
Prometheus shows, and the error. Collective bytes must match exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alerts import rules
from alerts.config import RulesConfig
from exporter import catalogue as c

if TYPE_CHECKING:
    from gpuledger.services import Prometheus
    from gpuledger.stack import LocalStack

log = logging.getLogger(__name__)

GIB = 1024**3
COLLECTION_INTERVAL_S = 1.0  # the stack's exporter collects every second
# Alerts a phase kind is for, from the load itself (any device).
LOAD_ALERTS: dict[str, tuple[str, ...]] = {
    "idle": ("GpuledgerGpuHeldIdle",),
    "memory_ramp": ("GpuledgerGpuMemoryNearFull",),
}
# A straggler is told from its peers only with enough ranks to take a median of.
STRAGGLER_ALERTS = ("GpuledgerStepTimeStraggler", "GpuledgerCollectiveStraggler")
SLOWDOWN_ALERTS = ("GpuledgerCollectiveBandwidthDrop",)
# The faults the calibration scenario plays in a phase of each kind, on simulated GPUs
# (exporter/sources/scenarios/calibration.yaml, whose header lists the same).
SIMULATED_FAULT_ALERTS: dict[str, tuple[str, ...]] = {
    "straggler": ("GpuledgerGpuThermalThrottling",),
    "hang": ("GpuledgerGpuXidFellOffBus", "GpuledgerGpuLost"),
    "crash": ("GpuledgerGpuXidUncorrectableMemory", "GpuledgerGpuUncorrectableEccErrors"),
}
# Phases that end the run on purpose: the load generator then exits with an error.
FAILING_KINDS = {"hang", "crash"}
# Alerts whose condition is a rate or average over `rate_window`: it takes that long to see.
WINDOWED_ALERTS = {
    "GpuledgerGpuHeldIdle",
    "GpuledgerCollectiveBandwidthDrop",
    "GpuledgerCollectiveStraggler",
    "GpuledgerStepTimeStraggler",
}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class CalibrationError(RuntimeError):
    """The calibration could not run; the message says what to change."""


def seconds(duration: str) -> float:
    """A Prometheus duration ("1h30m", "5s") in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


# ---------------------------------------------------------------- the timeline


@dataclass(frozen=True)
class PhaseRun:
    """One phase as rank 0 ran it (all ranks run phases in step)."""

    name: str
    kind: str
    start: float
    end: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timeline:
    runs: dict[int, dict[str, Any]]  # rank -> run_start record
    phases: list[PhaseRun]
    phase_ends: dict[int, list[dict[str, Any]]]  # rank -> phase_end records
    started: float
    ended: float

    @property
    def world_size(self) -> int:
        return len(self.runs)


def read_timeline(path: Path) -> Timeline:
    """The load generator's JSON Lines timeline (loadgen/timeline.py, schema 1)."""
    try:
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    except (OSError, ValueError) as error:
        raise CalibrationError(
            f"cannot read the load generator's timeline {path}: {error}"
        ) from None
    runs = {r["rank"]: r for r in records if r["type"] == "run_start"}
    if not runs:
        raise CalibrationError(f"{path} has no run_start record: the load generator never ran")
    starts = {r["index"]: r for r in records if r["type"] == "phase_start" and r["rank"] == 0}
    ends = {r["index"]: r for r in records if r["type"] == "phase_end" and r["rank"] == 0}
    last = max(r["ts"] for r in records)
    phases = [
        PhaseRun(
            name=s["phase"],
            kind=s["kind"],
            start=s["start"],
            end=ends[i]["end"] if i in ends else last,
            params=s.get("params") or {},
        )
        for i, s in sorted(starts.items())
    ]
    phase_ends: dict[int, list[dict[str, Any]]] = {rank: [] for rank in runs}
    for record in records:
        if record["type"] == "phase_end":
            phase_ends.setdefault(record["rank"], []).append(record)
    started = min(r["ts"] for r in runs.values())
    ended = max((r["ts"] for r in records if r["type"] == "run_end"), default=last)
    return Timeline(runs, phases, phase_ends, started, ended)


# ---------------------------------------------------------------- what should fire


def expected_alerts(
    phase: PhaseRun, source: str, world_size: int, config: RulesConfig
) -> tuple[str, ...]:
    """The alerts `phase` is for, on this source and world size."""
    expected = list(LOAD_ALERTS.get(phase.kind, ()))
    if phase.kind == "straggler" and world_size >= config.straggler_min_ranks:
        expected += STRAGGLER_ALERTS
    if phase.kind == "communication" and phase.params.get("slowdown"):
        expected += SLOWDOWN_ALERTS
    if source == "simulated":
        expected += SIMULATED_FAULT_ALERTS.get(phase.kind, ())
    return tuple(expected)


def latency_budget(alert: str, config: RulesConfig, scrape_s: float) -> float:
    """How long after its fault began an alert may take to fire: its `for`, the window
    its condition looks at, one collection of the exporter and two scrape intervals."""
    for_s = {a.name: seconds(a.for_) for a in rules.alerts(config)}[alert]
    window = seconds(config.rate_window) if alert in WINDOWED_ALERTS else 0.0
    return for_s + window + COLLECTION_INTERVAL_S + 2 * scrape_s


def fault_offsets(scenario_name: str | None) -> dict[str, float]:
    """Seconds into a phase of each kind at which the simulated scenario's faults begin."""
    if scenario_name is None:
        return {}
    from exporter.sources.scenario import load_scenario

    scenario = load_scenario(scenario_name)
    return {p.name: min(f.at_seconds for f in p.faults) for p in scenario.phases if p.faults}


# ---------------------------------------------------------------- what fired


@dataclass(frozen=True)
class Firing:
    alert: str
    labels: dict[str, str]
    at: float  # unix seconds of the first evaluation that found it firing


def firings(prometheus: Prometheus, start: float, end: float, step: float = 1.0) -> list[Firing]:
    """Every stretch of firing of every alert series, from the raw samples of Prometheus'
    ALERTS series (their timestamps are the rule evaluations', not a query step's)."""
    found = []
    window = f"{max(1, int(end - start) + 1)}s"
    result = prometheus.query(f'ALERTS{{alertstate="firing"}}[{window}]', time=end)
    for series in result:
        labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "alertstate")}
        previous = None
        for ts, _ in series["values"]:
            ts = float(ts)
            # A gap of more than an evaluation and a half: it stopped firing, then began again.
            if previous is None or ts - previous > 1.5 * step:
                found.append(Firing(labels["alertname"], labels, ts))
            previous = ts
    return sorted(found, key=lambda f: f.at)


# ---------------------------------------------------------------- judging


@dataclass
class AlertCheck:
    phase: str
    kind: str
    alert: str
    fault_start: float
    budget_s: float
    fired_at: float | None = None
    receiver: str = ""

    @property
    def latency_s(self) -> float | None:
        return None if self.fired_at is None else self.fired_at - self.fault_start

    @property
    def ok(self) -> bool:
        return self.latency_s is not None and self.latency_s <= self.budget_s


@dataclass
class Unexpected:
    alert: str
    labels: dict[str, str]
    fired_at: float
    during: str  # the phase (or "before the run" / "after the run")


def _phase_at(phases: list[PhaseRun], t: float) -> PhaseRun | None:
    return next((p for p in phases if p.start <= t < p.end), None)


def judge(
    timeline: Timeline,
    fired: list[Firing],
    source: str,
    config: RulesConfig,
    scrape_s: float,
    offsets: dict[str, float] | None = None,
) -> tuple[list[AlertCheck], list[Unexpected]]:
    """Each expected alert against its budget; each firing no phase explains."""
    offsets = offsets or {}
    checks: list[AlertCheck] = []
    for phase in timeline.phases:
        for alert in expected_alerts(phase, source, timeline.world_size, config):
            budget = latency_budget(alert, config, scrape_s)
            fault_start = phase.start + (
                offsets.get(phase.kind, 0.0) if source == "simulated" else 0.0
            )
            check = AlertCheck(phase.name, phase.kind, alert, fault_start, budget)
            first = next(
                (
                    f
                    for f in fired
                    if f.alert == alert and fault_start <= f.at <= phase.end + budget
                ),
                None,
            )
            if first is not None:
                check.fired_at = first.at
            checks.append(check)
    unexpected = []
    for firing in fired:
        phase = _phase_at(timeline.phases, firing.at)
        if phase is not None and firing.alert in expected_alerts(
            phase, source, timeline.world_size, config
        ):
            continue
        # Still the previous phase's fault, seen late but within its budget.
        budget = (
            latency_budget(firing.alert, config, scrape_s)
            if firing.alert in {a.name for a in rules.alerts(config)}
            else 0.0
        )
        earlier = [
            p
            for p in timeline.phases
            if p.end <= firing.at <= p.end + budget
            and firing.alert in expected_alerts(p, source, timeline.world_size, config)
        ]
        if earlier:
            continue
        if phase is not None:
            during = f"{phase.name} ({phase.kind})"
        else:
            during = "before the run" if firing.at < timeline.started else "after the run"
        unexpected.append(Unexpected(firing.alert, firing.labels, firing.at, during))
    return checks, unexpected


# ---------------------------------------------------------------- figures


@dataclass
class Figure:
    """One figure: the ground truth beside what Prometheus shows."""

    name: str
    truth: float
    shown: float | None
    unit: str
    exact: bool = False  # must match to the unit
    note: str = ""

    @property
    def error(self) -> float | None:
        if self.shown is None:
            return None
        return (self.shown - self.truth) / self.truth if self.truth else self.shown - self.truth

    @property
    def ok(self) -> bool:
        if not self.exact:
            return self.shown is not None
        return self.shown is not None and self.shown == self.truth


def _value_at(prometheus: Prometheus, query: str, t: float) -> float | None:
    result = prometheus.query(query, time=t)
    if not result:
        return None
    return sum(float(s["value"][1]) for s in result)


def _counter_delta(prometheus: Prometheus, selector: str, start: float, end: float) -> float | None:
    """A counter's growth between two instants (0 at `start` when it did not exist yet)."""
    at_end = _value_at(prometheus, selector, end)
    if at_end is None:
        return None
    return at_end - (_value_at(prometheus, selector, start) or 0.0)


def collective_figures(prometheus: Prometheus, timeline: Timeline) -> list[Figure]:
    """All-reduce bytes of each rank (exact) and bus bandwidth of each communication phase."""
    figures = []
    # The counters only grow: read them as late as Prometheus has them, so that the
    # probes' last reports (sent as the ranks exit) are in, however slow the machine.
    end = max(timeline.ended + 10, time.time())
    window = f"{int(end - timeline.started) + 60}s"
    for rank, run in sorted(timeline.runs.items()):
        pod = f'pod="pid-{run["pid"]}", operation="all_reduce"'
        truth = sum(r.get("collective_bytes") or 0 for r in timeline.phase_ends.get(rank, []))
        shown = _value_at(
            prometheus, f"max_over_time({c.COLLECTIVE_BYTES.name}{{{pod}}}[{window}])", end
        )
        figures.append(
            Figure(
                f"all-reduce bytes, rank {rank} (pod local/pid-{run['pid']})",
                truth,
                shown,
                "bytes",
                exact=True,
                note="the load generator's own count against the probe's, through the exporter",
            )
        )
    rank0 = timeline.runs.get(0)
    for record in timeline.phase_ends.get(0, []):
        if record["kind"] != "communication" or not record.get("busbw_bytes_per_s") or not rank0:
            continue
        pod = f'pod="pid-{rank0["pid"]}", operation="all_reduce"'
        bus = _counter_delta(
            prometheus, f"{c.COLLECTIVE_BUS_BYTES.name}{{{pod}}}", record["start"], record["end"]
        )
        secs = _counter_delta(
            prometheus, f"{c.COLLECTIVE_SECONDS.name}{{{pod}}}", record["start"], record["end"]
        )
        figures.append(
            Figure(
                f"bus bandwidth, phase {record['phase']}, rank 0",
                record["busbw_bytes_per_s"],
                bus / secs if bus is not None and secs else None,
                "bytes/s",
                note="Prometheus: bus bytes over collective seconds between the phase's "
                "first and last probe reports",
            )
        )
    return figures


def simulated_figures(
    prometheus: Prometheus, timeline: Timeline, scenario_name: str
) -> list[Figure]:
    """Busy GPU-seconds and memory of the scenario's pods: what the simulated GPUs were
    told to do in each phase the load generator ran, against what Prometheus shows."""
    from exporter.sources.scenario import load_scenario

    scenario = load_scenario(scenario_name)
    loads = {p.name: p.pods for p in scenario.phases}
    figures = []
    for spec in scenario.pods:
        key = f"{spec.namespace}/{spec.pod}"
        truth = sum(
            loads[p.kind][key].utilization * len(spec.devices) * (p.end - p.start)
            for p in timeline.phases
            if key in loads.get(p.kind, {})
        )
        selector = (
            f'{c.POD_GPU_BUSY_SECONDS.name}{{namespace="{spec.namespace}", pod="{spec.pod}"}}'
        )
        shown = _counter_delta(prometheus, f"sum({selector})", timeline.started, timeline.ended)
        figures.append(Figure(f"busy GPU-seconds, pod {key}", truth, shown, "GPU-seconds"))
    for phase in timeline.phases:
        present = loads.get(phase.kind, {})
        for spec in scenario.pods:
            key = f"{spec.namespace}/{spec.pod}"
            if key not in present or phase.end - phase.start < 4:
                continue
            # The middle of the phase: its edges belong partly to the phases beside it.
            inner = int(phase.end - phase.start - 2)
            selector = (
                f"sum(max_over_time({c.POD_GPU_MEMORY_USED.name}"
                f'{{namespace="{spec.namespace}", pod="{spec.pod}"}}[{inner}s]))'
            )
            figures.append(
                Figure(
                    f"memory, pod {key}, phase {phase.name}",
                    float(present[key].memory_bytes * len(spec.devices)),
                    _value_at(prometheus, selector, phase.end - 1),
                    "bytes",
                    note="maximum over the phase",
                )
            )
    return figures


def nvml_figures(prometheus: Prometheus, timeline: Timeline) -> list[Figure]:
    """Busy seconds and memory of each rank's GPU, from the load generator's own
    measures (CUDA events, reserved memory) against NVML's, through the exporter."""
    figures = []
    for rank, run in sorted(timeline.runs.items()):
        match = re.fullmatch(r"cuda:(\d+)", str(run.get("device", "")))
        if not match:
            continue
        gpu = f'gpu="{match.group(1)}"'
        ends = timeline.phase_ends.get(rank, [])
        truth = sum((r.get("busy_ratio") or 0) * (r.get("duration_s") or 0) for r in ends)
        shown = _counter_delta(
            prometheus, f"sum({c.GPU_BUSY_SECONDS.name}{{{gpu}}})", timeline.started, timeline.ended
        )
        figures.append(
            Figure(
                f"busy GPU-seconds, rank {rank} (GPU {match.group(1)})", truth, shown, "GPU-seconds"
            )
        )
        for record in ends:
            duration = int(record["end"] - record["start"])
            if not record.get("memory_bytes_max") or duration < 2:
                continue
            selector = f"max(max_over_time({c.GPU_MEMORY_USED.name}{{{gpu}}}[{duration}s]))"
            figures.append(
                Figure(
                    f"memory, rank {rank}, phase {record['phase']}",
                    float(record["memory_bytes_max"]),
                    _value_at(prometheus, selector, record["end"]),
                    "bytes",
                    note="torch's reserved memory against NVML's used memory (which adds the "
                    "CUDA context)",
                )
            )
    return figures


# ---------------------------------------------------------------- the result and report


@dataclass
class Calibration:
    profile: str
    source: str
    source_detail: str
    world_size: int
    started: float
    ended: float
    scrape_s: float
    phases: list[PhaseRun]
    checks: list[AlertCheck]
    unexpected: list[Unexpected]
    figures: list[Figure]
    loadgen_status: int | None
    missing: list[str] = field(default_factory=list)

    @property
    def loadgen_ok(self) -> bool:
        """Exit status 0, or an error the profile asked for (a hang or crash phase)."""
        meant_to_fail = any(p.kind in FAILING_KINDS for p in self.phases)
        return self.loadgen_status == 0 or (meant_to_fail and self.loadgen_status is not None)

    @property
    def ok(self) -> bool:
        return (
            self.loadgen_ok
            and not self.missing
            and all(c.ok for c in self.checks)
            and not self.unexpected
            and all(f.ok for f in self.figures)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "source": self.source,
            "source_detail": self.source_detail,
            "world_size": self.world_size,
            "started": self.started,
            "ended": self.ended,
            "ok": self.ok,
            "loadgen_status": self.loadgen_status,
            "missing": self.missing,
            "phases": [dataclasses.asdict(p) for p in self.phases],
            "alerts": [
                {**dataclasses.asdict(c), "latency_s": c.latency_s, "ok": c.ok} for c in self.checks
            ],
            "unexpected": [dataclasses.asdict(u) for u in self.unexpected],
            "figures": [
                {**dataclasses.asdict(f), "error": f.error, "ok": f.ok} for f in self.figures
            ],
        }


def _rel(t: float | None, origin: float) -> str:
    return "-" if t is None else f"{t - origin:+.1f} s"


def _amount(value: float | None, unit: str) -> str:
    if value is None:
        return "no data"
    if unit == "bytes" and abs(value) >= GIB:
        return f"{value / GIB:,.3f} GiB ({value:,.0f} B)"
    if unit == "bytes/s":
        return f"{value / 1e9:,.3f} GB/s"
    return f"{value:,.2f} {unit}"


def markdown(result: Calibration) -> str:
    t0 = result.started
    lines = [
        f"# Calibration: profile `{result.profile}`",
        "",
        f"- Result: **{'pass' if result.ok else 'FAIL'}**",
        f"- Run: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(t0))}, "
        f"{result.ended - t0:.0f} s, {result.world_size} ranks, load generator exit status "
        f"{result.loadgen_status}",
        f"- GPU figures: **{result.source}** ({result.source_detail})",
    ]
    if result.source == "simulated":
        lines.append(
            "- The GPUs are simulated: their utilisation, memory and faults follow the "
            "calibration scenario, phase by phase, as the load generator's timeline moves. "
            "The collective figures are real (gloo, through the in-job probe)."
        )
    lines += [
        f"- Prometheus scraped and evaluated every {result.scrape_s:g} s; times are from the "
        "run's start.",
        *(f"- Missing: {m}" for m in result.missing),
        "",
        "## Phases",
        "",
        "| phase | kind | start | end |",
        "| --- | --- | --- | --- |",
        *(
            f"| {p.name} | {p.kind} | {_rel(p.start, t0)} | {_rel(p.end, t0)} |"
            for p in result.phases
        ),
        "",
        "## Alerts the profile is for",
        "",
        "Budget: the alert's `for`, its rate window where it has one, one exporter "
        "collection and two scrape intervals.",
        "",
        "| phase | alert | fault began | fired | latency | budget | route | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for check in result.checks:
        latency = "-" if check.latency_s is None else f"{check.latency_s:.1f} s"
        verdict = "ok" if check.ok else ("late" if check.fired_at else "did not fire")
        lines.append(
            f"| {check.phase} | {check.alert} | {_rel(check.fault_start, t0)} | "
            f"{_rel(check.fired_at, t0)} | {latency} | {check.budget_s:.1f} s | "
            f"{check.receiver or '-'} | {verdict} |"
        )
    if not result.checks:
        lines.append("| - | (no phase of this profile calls for an alert) | | | | | | |")
    lines += ["", "## Alerts no phase called for", ""]
    if result.unexpected:
        lines += ["| alert | fired | during | labels |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {u.alert} | {_rel(u.fired_at, t0)} | {u.during} | "
            f"{', '.join(f'{k}={v}' for k, v in sorted(u.labels.items()) if k != 'alertname')} |"
            for u in result.unexpected
        ]
    else:
        lines.append("None: no alert fired in a healthy phase.")
    lines += [
        "",
        "## Figures",
        "",
        "| figure | ground truth | Prometheus | error | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for figure in result.figures:
        error = "-" if figure.error is None else f"{figure.error:+.2%}"
        if figure.exact:
            error += " (must be exact)"
        lines.append(
            f"| {figure.name} | {_amount(figure.truth, figure.unit)} | "
            f"{_amount(figure.shown, figure.unit)} | {error} | {figure.note} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- running it


def _route(stack: LocalStack, alert: str, after: float) -> str:
    if stack.receiver is None:
        return ""
    return next(
        (a.receiver for a in stack.receiver.firing() if a.name == alert and a.received_at >= after),
        "",
    )


def calibrate(
    workdir: Path,
    profile: str = "quick",
    device: str = "auto",
    nproc: int | None = None,
    time_scale: float = 1.0,
    timeout_s: float | None = None,
) -> Calibration:
    """Run `profile` on the local stack and measure it; raises CalibrationError when the
    run cannot be measured (Prometheus missing, the load generator never started)."""
    from gpuledger.stack import LocalStack, StackError, fast_rules_config

    try:
        stack = LocalStack(
            Path(workdir), profile=profile, device=device, nproc=nproc, time_scale=time_scale
        )
    except StackError as error:
        raise CalibrationError(str(error)) from None
    config = fast_rules_config()
    scrape_s = seconds(stack.scrape_interval)
    with stack:
        if stack.prometheus is None:
            raise CalibrationError("calibration needs Prometheus: " + "; ".join(stack.missing))
        loadgen = stack.start_loadgen()
        limit = timeout_s or stack.plan.planned_seconds * 3 + 300
        status = loadgen.wait(timeout=limit)
        if status is None:
            raise CalibrationError(
                f"the load generator ran past {limit:.0f} s; its log ends:\n{loadgen.tail()}"
            )
        timeline = read_timeline(stack.timeline_path)
        last_kind = timeline.phases[-1] if timeline.phases else None
        # Let the last phase's alerts and the last probe reports reach Prometheus.
        tail = 3 * scrape_s + COLLECTION_INTERVAL_S
        if last_kind is not None:
            budgets = [
                latency_budget(a, config, scrape_s)
                for a in expected_alerts(last_kind, stack.source_name, timeline.world_size, config)
            ]
            tail = max([tail, *budgets])
        time.sleep(tail)
        prometheus = stack.prometheus
        fired = firings(prometheus, timeline.started - 30, time.time())
        simulated = stack.source_name == "simulated"
        offsets = fault_offsets(stack.scenario) if simulated else {}
        checks, unexpected = judge(timeline, fired, stack.source_name, config, scrape_s, offsets)
        for check in checks:
            if check.fired_at is not None:
                check.receiver = _route(stack, check.alert, check.fault_start)
        figures = collective_figures(prometheus, timeline)
        figures += (
            simulated_figures(prometheus, timeline, stack.scenario)
            if simulated
            else nvml_figures(prometheus, timeline)
        )
        return Calibration(
            profile=stack.plan.profile_name,
            source=stack.source_name,
            source_detail=stack.source_detail,
            world_size=timeline.world_size,
            started=timeline.started,
            ended=timeline.ended,
            scrape_s=scrape_s,
            phases=timeline.phases,
            checks=checks,
            unexpected=unexpected,
            figures=figures,
            loadgen_status=status,
            missing=list(stack.missing),
        )


def write_report(result: Calibration, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    report, data = out / "calibration-report.md", out / "calibration.json"
    report.write_text(markdown(result))
    data.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return report, data


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="quick",
        help="load generator profile: a built-in name (gpuledger loadgen --list-profiles) or a "
        "YAML file; default quick (2 ranks, about 1.5 minutes)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "nvml", "simulated"],
        default="auto",
        help="GPU figures from NVML (auto: when a GPU driver answers) or simulated GPUs",
    )
    parser.add_argument("--nproc", type=int, help="ranks (default: the profile's)")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply the profile's phase durations"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("calibration-out"),
        help="directory for the report, its JSON and the run's files",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        result = calibrate(
            args.out / "run",
            profile=args.profile,
            device=args.device,
            nproc=args.nproc,
            time_scale=args.time_scale,
        )
    except CalibrationError as error:
        print(f"gpuledger calibrate: {error}", file=sys.stderr)
        return 2
    report, data = write_report(result, args.out)
    print(markdown(result))
    print(f"report: {report}\ndata: {data}")
    return 0 if result.ok else 1
