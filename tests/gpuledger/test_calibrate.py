"""`gpuledger calibrate`: the judging of alerts and figures (from made-up timelines and
firings), and one real short calibration run on the local stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuledger import calibrate as cal
from gpuledger.stack import fast_rules_config

CONFIG = fast_rules_config()
T0 = 1_800_000_000.0


def _timeline(tmp_path: Path, phases: list[tuple[str, str, float, dict]], ranks: int = 2) -> Path:
    """A schema-1 timeline: run_start per rank, then each phase of `duration` seconds."""
    records = [
        {"type": "run_start", "ts": T0, "rank": r, "job": "t", "pid": 1000 + r, "device": "cpu"}
        for r in range(ranks)
    ]
    t = T0
    for index, (name, kind, duration, params) in enumerate(phases):
        for rank in range(ranks):
            common = {"rank": rank, "job": "t", "phase": name, "kind": kind, "index": index}
            records.append({"type": "phase_start", "ts": t, "start": t, "params": params, **common})
            records.append(
                {
                    "type": "phase_end",
                    "ts": t + duration,
                    "start": t,
                    "end": t + duration,
                    "duration_s": duration,
                    "collective_bytes": 1000 * (index + 1),
                    **common,
                }
            )
        t += duration
    records += [{"type": "run_end", "ts": t, "rank": r, "job": "t"} for r in range(ranks)]
    path = tmp_path / "timeline.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_seconds_parses_prometheus_durations() -> None:
    assert cal.seconds("5s") == 5
    assert cal.seconds("1h30m") == 5400
    assert cal.seconds("250ms") == 0.25
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        cal.seconds("5 minutes")


def test_read_timeline(tmp_path: Path) -> None:
    timeline = cal.read_timeline(
        _timeline(tmp_path, [("warm", "steady", 20, {}), ("held", "idle", 10, {})], ranks=3)
    )
    assert timeline.world_size == 3
    assert [(p.name, p.kind, p.start - T0, p.end - T0) for p in timeline.phases] == [
        ("warm", "steady", 0, 20),
        ("held", "idle", 20, 30),
    ]
    assert (timeline.started, timeline.ended) == (T0, T0 + 30)
    assert sum(r["collective_bytes"] for r in timeline.phase_ends[2]) == 3000


def test_read_timeline_says_what_is_wrong(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(cal.CalibrationError, match="no run_start record"):
        cal.read_timeline(empty)
    with pytest.raises(cal.CalibrationError, match="cannot read the load generator's timeline"):
        cal.read_timeline(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("kind", "params", "source", "ranks", "expected"),
    [
        ("steady", {}, "simulated", 2, ()),
        ("idle", {}, "nvml", 2, ("GpuledgerGpuHeldIdle",)),
        ("straggler", {}, "nvml", 2, ()),
        ("straggler", {}, "nvml", 4, cal.STRAGGLER_ALERTS),
        ("straggler", {}, "simulated", 2, ("GpuledgerGpuThermalThrottling",)),
        ("communication", {"slowdown": 2}, "nvml", 2, ("GpuledgerCollectiveBandwidthDrop",)),
        ("communication", {"slowdown": None}, "nvml", 2, ()),
        ("hang", {}, "nvml", 2, ()),
        ("hang", {}, "simulated", 2, ("GpuledgerGpuXidFellOffBus", "GpuledgerGpuLost")),
    ],
)
def test_expected_alerts(kind: str, params: dict, source: str, ranks: int, expected: tuple) -> None:
    phase = cal.PhaseRun("p", kind, T0, T0 + 10, params)
    assert set(cal.expected_alerts(phase, source, ranks, CONFIG)) == set(expected)


def test_every_expected_alert_exists_in_the_rules() -> None:
    from alerts import rules

    names = {a.name for a in rules.alerts(CONFIG)}
    mentioned = set(cal.STRAGGLER_ALERTS) | set(cal.SLOWDOWN_ALERTS) | cal.WINDOWED_ALERTS
    for alerts in (*cal.LOAD_ALERTS.values(), *cal.SIMULATED_FAULT_ALERTS.values()):
        mentioned |= set(alerts)
    assert mentioned <= names


def test_simulated_fault_alerts_match_the_calibration_scenario() -> None:
    """Every phase kind that has faults in the scenario has alerts listed, and back."""
    offsets = cal.fault_offsets("calibration")
    assert set(offsets) == set(cal.SIMULATED_FAULT_ALERTS)


def test_latency_budget_is_for_plus_window_plus_collection_and_two_scrapes() -> None:
    # idle: for 3s, rate window 5s; thermal: for 3s, no window.
    assert cal.latency_budget("GpuledgerGpuHeldIdle", CONFIG, 1.0) == 3 + 5 + 1 + 2
    assert cal.latency_budget("GpuledgerGpuThermalThrottling", CONFIG, 1.0) == 3 + 1 + 2


def test_judge_on_time_late_missing_and_unexpected(tmp_path: Path) -> None:
    timeline = cal.read_timeline(
        _timeline(
            tmp_path,
            [("warm", "steady", 30, {}), ("held", "idle", 30, {}), ("slow", "straggler", 30, {})],
        )
    )
    fired = [
        # idle began at +30: fires after 8 s (budget 11 s)
        cal.Firing("GpuledgerGpuHeldIdle", {"alertname": "GpuledgerGpuHeldIdle"}, T0 + 38),
        # thermal began at +60: fires after 9 s (budget 6 s): late
        cal.Firing("GpuledgerGpuThermalThrottling", {}, T0 + 69),
        # a memory alert in the warm phase: no phase calls for it
        cal.Firing("GpuledgerGpuMemoryNearFull", {"pod": "x"}, T0 + 10),
        # the idle alert again, 3 s into the next phase: still the idle phase's
        cal.Firing("GpuledgerGpuHeldIdle", {"pod": "y"}, T0 + 63),
    ]
    checks, unexpected = cal.judge(timeline, fired, "simulated", CONFIG, 1.0)
    by_alert = {c.alert: c for c in checks}
    assert by_alert["GpuledgerGpuHeldIdle"].ok and by_alert["GpuledgerGpuHeldIdle"].latency_s == 8
    assert by_alert["GpuledgerGpuThermalThrottling"].latency_s == 9
    assert not by_alert["GpuledgerGpuThermalThrottling"].ok
    assert [(u.alert, u.during) for u in unexpected] == [
        ("GpuledgerGpuMemoryNearFull", "warm (steady)")
    ]
    checks, _ = cal.judge(timeline, [], "simulated", CONFIG, 1.0)
    assert all(c.fired_at is None and not c.ok for c in checks)


def test_figures_error_and_exactness() -> None:
    assert cal.Figure("b", 100, 100, "bytes", exact=True).ok
    assert not cal.Figure("b", 100, 99, "bytes", exact=True).ok
    assert cal.Figure("busy", 40, 39, "s").error == pytest.approx(-0.025)
    assert not cal.Figure("busy", 40, None, "s").ok


def test_markdown_report_says_the_gpus_are_simulated(tmp_path: Path) -> None:
    timeline = cal.read_timeline(_timeline(tmp_path, [("held", "idle", 30, {})]))
    checks, unexpected = cal.judge(
        timeline, [cal.Firing("GpuledgerGpuHeldIdle", {}, T0 + 9)], "simulated", CONFIG, 1.0
    )
    result = cal.Calibration(
        profile="t",
        source="simulated",
        source_detail="4 x H100",
        world_size=2,
        started=T0,
        ended=T0 + 30,
        scrape_s=1.0,
        phases=timeline.phases,
        checks=checks,
        unexpected=unexpected,
        figures=[cal.Figure("all-reduce bytes, rank 0", 10, 10, "bytes", exact=True)],
        loadgen_status=0,
    )
    assert result.ok
    report = cal.markdown(result)
    assert "**pass**" in report and "The GPUs are simulated" in report
    assert "| held | GpuledgerGpuHeldIdle | +0.0 s | +9.0 s | 9.0 s | 11.0 s | - | ok |" in report
    report_path, data_path = cal.write_report(result, tmp_path / "out")
    assert json.loads(data_path.read_text())["ok"] is True
    assert report_path.read_text() == report


def test_a_crash_profile_may_end_with_an_error_status(tmp_path: Path) -> None:
    timeline = cal.read_timeline(_timeline(tmp_path, [("boom", "crash", 10, {})]))
    kwargs = dict(
        profile="t",
        source="nvml",
        source_detail="",
        world_size=2,
        started=T0,
        ended=T0 + 10,
        scrape_s=1.0,
        checks=[],
        unexpected=[],
        figures=[],
    )
    assert cal.Calibration(phases=timeline.phases, loadgen_status=1, **kwargs).ok
    steady = cal.read_timeline(_timeline(tmp_path, [("warm", "steady", 10, {})]))
    assert not cal.Calibration(phases=steady.phases, loadgen_status=1, **kwargs).ok


def test_an_unknown_profile_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from gpuledger.cli import main

    assert main(["calibrate", "--profile", "no-such-profile", "--out", str(tmp_path)]) == 2
    assert "no-such-profile" in capsys.readouterr().err


@pytest.mark.integration
def test_a_short_calibration_run(tmp_path: Path) -> None:
    """The quick profile (2 ranks, about 80 s) on simulated GPUs: every alert it is for
    fires within its budget, none fires where no phase calls for it, and the exporter's
    all-reduce bytes are the load generator's, exactly."""
    result = cal.calibrate(tmp_path / "run", profile="quick", device="simulated")
    report = cal.markdown(result)
    assert result.loadgen_status == 0, report
    assert {c.alert for c in result.checks} == {
        "GpuledgerGpuHeldIdle",
        "GpuledgerGpuThermalThrottling",
    }, report
    for check in result.checks:
        assert check.ok, f"{check.alert}: {check.latency_s} s > {check.budget_s} s\n{report}"
    assert result.unexpected == [], report
    exact = [f for f in result.figures if f.exact]
    assert len(exact) == 2 and all(f.shown == f.truth > 0 for f in exact), report
    busy = [f for f in result.figures if f.name.startswith("busy GPU-seconds")]
    assert busy and all(abs(f.error) < 0.05 for f in busy), report
    assert result.ok, report
