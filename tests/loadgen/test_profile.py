from typing import Any

import pytest

from alerts.config import RulesConfig
from alerts.rules import alerts
from loadgen import profile
from loadgen.profile import ProfileError, check_world, parse


def phases(*items: dict[str, Any]) -> dict[str, Any]:
    return {"name": "t", "phases": list(items)}


STEADY = {"name": "a", "kind": "steady", "duration_s": 1}


def test_every_builtin_profile_loads() -> None:
    names = profile.builtin_names()
    assert {"quick", "demo", "idle", "memory-near-full", "straggler", "collective-slowdown"} <= set(
        names
    )
    for name in names:
        p = profile.load(name)
        assert p.phases and p.description


def test_alert_profiles_name_alerts_the_project_ships() -> None:
    shipped = {a.name for a in alerts(RulesConfig())}
    named = {profile.load(n).alert for n in profile.builtin_names()} - {None}
    assert named == {
        "GpuledgerGpuHeldIdle",
        "GpuledgerGpuMemoryNearFull",
        "GpuledgerStepTimeStraggler",
        "GpuledgerCollectiveBandwidthDrop",
    }
    assert named <= shipped


def test_alert_profiles_outlast_the_alerts_for_durations() -> None:
    config = RulesConfig()
    minutes = {"m": 60, "h": 3600}

    def seconds(d: str) -> float:
        return float(d[:-1]) * minutes[d[-1]]

    idle = profile.load("idle").phases[1]
    assert idle.duration_s > seconds(config.idle_for) + seconds(config.rate_window)
    full = profile.load("memory-near-full").phases[1]
    assert full.duration_s - full["ramp_s"] > seconds(config.memory_full_for)
    assert full["target_fraction"] > config.memory_full_ratio
    slow = profile.load("straggler")
    assert slow.nproc >= config.straggler_min_ranks
    assert slow.phases[1].duration_s > seconds(config.straggler_for) + seconds(config.rate_window)
    drop = profile.load("collective-slowdown").phases
    baseline = seconds(config.bandwidth_baseline_window) + seconds(config.bandwidth_baseline_offset)
    assert drop[0].duration_s >= baseline
    assert drop[1].duration_s > seconds(config.bandwidth_drop_for) + seconds(config.rate_window)
    assert 1 / drop[1]["slowdown"] < 1 - config.bandwidth_drop_ratio


def test_quick_fits_in_two_minutes_with_the_kinds_asked() -> None:
    quick = profile.load("quick")
    assert quick.planned_seconds <= 90  # + start-up, under two minutes
    assert {p.kind for p in quick.phases} == {"steady", "idle", "straggler", "communication"}


def test_units_and_defaults() -> None:
    p = parse(
        phases(
            {"name": "m", "kind": "memory_ramp", "duration_s": "2m", "cpu_target_bytes": "64MiB"},
            {"name": "c", "kind": "communication", "duration_s": "500ms", "message_bytes": "1MB"},
            {"name": "s", "kind": "input_stall", "duration_s": 3, "stall_s": "50ms"},
        )
    )
    ramp, comm, stall = p.phases
    assert ramp.duration_s == 120 and ramp["cpu_target_bytes"] == 64 * 2**20
    assert ramp["target_fraction"] == 0.95 and ramp["ramp_s"] is None
    assert comm.duration_s == 0.5 and comm["message_bytes"] == 10**6 and comm["delay_s"] == 0
    assert stall["stall_s"] == pytest.approx(0.05) and stall["every"] == 1
    assert p.planned_seconds == pytest.approx(123.5)


def test_time_scale_stretches_phases_not_waits() -> None:
    p = parse(
        phases(
            {"name": "s", "kind": "input_stall", "duration_s": 100, "stall_s": 0.5},
            {"name": "h", "kind": "hang", "rank": 1, "at_s": 10},
        )
    )
    q = profile.scaled(p, 0.1)
    assert q.phases[0].duration_s == pytest.approx(10) and q.phases[0]["stall_s"] == 0.5
    assert q.phases[1]["at_s"] == pytest.approx(1) and q.phases[1].duration_s is None
    with pytest.raises(ProfileError, match="time scale must be positive"):
        profile.scaled(p, 0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (phases({"name": "x", "kind": "warp", "duration_s": 1}), "unknown phase kind 'warp'"),
        (phases({"name": "x", "kind": "steady"}), "duration_s must be a positive duration"),
        (phases({"name": "x", "kind": "steady", "duration_s": "soon"}), "expected a duration"),
        (phases({"name": "x", "kind": "straggler", "duration_s": 1, "rank": 1}), "needs factor"),
        (
            phases({"name": "x", "kind": "straggler", "duration_s": 1, "rank": 1, "factor": 0.5}),
            "factor must be a number above 1",
        ),
        (
            phases({"name": "x", "kind": "straggler", "duration_s": 1, "rank": -1, "factor": 2}),
            "rank must be a rank number",
        ),
        (phases({"name": "x", "kind": "input_stall", "duration_s": 1}), "needs stall_s"),
        (
            phases({"name": "x", "kind": "memory_ramp", "duration_s": 1, "target_fraction": 1.5}),
            "target_fraction must be between 0 and 1",
        ),
        (
            phases(
                {"name": "x", "kind": "communication", "duration_s": 1, "message_bytes": "lots"}
            ),
            "expected a size",
        ),
        (
            phases(
                {"name": "x", "kind": "communication", "duration_s": 1, "slowdown": 2, "delay_s": 1}
            ),
            "delay_s or slowdown, not both",
        ),
        (
            phases({"name": "x", "kind": "steady", "duration_s": 1, "rank": 0}),
            "unknown field 'rank'",
        ),
        (phases({"name": "x", "kind": "crash", "rank": 1}, STEADY), "must be last"),
        (
            phases({"name": "x", "kind": "crash", "rank": 1, "duration_s": 5}),
            "give at_s, not duration_s",
        ),
        (
            phases({"name": "x", "kind": "crash", "rank": 1, "mode": "explode"}),
            "mode must be raise or exit",
        ),
        (phases(STEADY, STEADY), "phase name 'a' is used twice"),
        ({"name": "t", "phases": []}, "give a list of at least one phase"),
        ({"name": "t", "phases": [STEADY], "nproc": 0}, "nproc must be a positive whole number"),
        ({"name": "t", "phases": [STEADY], "colour": "red"}, "unknown field 'colour'"),
        (["not", "a", "mapping"], "a profile is a mapping"),
    ],
)
def test_bad_profiles_are_refused_with_the_reason(data: Any, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse(data, "p.yaml")


def test_all_problems_are_listed_at_once() -> None:
    with pytest.raises(ProfileError) as caught:
        parse(phases({"name": "x", "kind": "warp"}, {"name": "y", "kind": "steady"}))
    assert "unknown phase kind 'warp'" in str(caught.value)
    assert "phase 2 ('y'): duration_s" in str(caught.value)


@pytest.mark.parametrize(
    ("phase", "world", "gpu", "message"),
    [
        (
            {"name": "x", "kind": "straggler", "duration_s": 1, "rank": 2, "factor": 2},
            2,
            False,
            "names rank 2, but the world has 2",
        ),
        ({"name": "x", "kind": "hang", "rank": 0}, 1, False, "needs at least 2 ranks"),
        (
            {"name": "x", "kind": "communication", "duration_s": 1},
            1,
            False,
            "needs at least 2 ranks to move",
        ),
        ({"name": "x", "kind": "memory_ramp", "duration_s": 1}, 1, False, "needs cpu_target_bytes"),
    ],
)
def test_profile_against_world_and_device(phase: dict, world: int, gpu: bool, message: str) -> None:
    p = parse(phases(phase))
    with pytest.raises(ProfileError, match=message):
        check_world(p, world, gpu=gpu)


def test_memory_ramp_on_a_gpu_needs_no_byte_target() -> None:
    check_world(parse(phases({"name": "x", "kind": "memory_ramp", "duration_s": 1})), 1, gpu=True)


def test_unknown_profile_names_the_builtins() -> None:
    with pytest.raises(ProfileError, match="no profile 'nope'.*quick"):
        profile.load("nope")


def test_invalid_yaml_file(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        profile.load(str(bad))
