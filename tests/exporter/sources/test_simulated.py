"""The simulated device source and attribution, driven by an injected clock."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from exporter.attribution import Attribution
from exporter.model import DeviceSnapshot
from exporter.sources import DeviceSource
from exporter.sources.scenario import GIB, parse_scenario
from exporter.sources.simulated import (
    LOST_ERROR,
    SimulatedAttribution,
    SimulatedSource,
    TimelineFollower,
)

H100 = "NVIDIA H100 80GB HBM3"
WALL_OFFSET = 1_700_000_000.0


class Clock:
    """A monotonic clock that tests move by hand, and the wall clock that goes with it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL_OFFSET + self.t


def make(scenario="default", seed: int = 0, start: float = 1000.0):
    clock = Clock(start)
    source = SimulatedSource(scenario, seed=seed, clock=clock, wall_clock=clock.wall)
    return source, clock


def run(source: SimulatedSource, clock: Clock, steps: list[float]) -> list[DeviceSnapshot]:
    snapshots = []
    for step in steps:
        clock.t += step
        snapshots.append(source.sample())
    return snapshots


def two_phase(noise: float = 0.0, at_end: str = "loop"):
    """One whole GPU: 10 s at fixed 500 W and utilisation 0.8, then 10 s at 100 W idle."""
    return parse_scenario(
        {
            "noise": noise,
            "at_end": at_end,
            "gpus": [{"model": H100}],
            "pods": [{"namespace": "ns", "pod": "p", "devices": [{"gpu": 0}], "pids": [10]}],
            "phases": [
                {
                    "name": "hot",
                    "duration_seconds": 10,
                    "pods": {"ns/p": {"utilization": 0.8, "memory_gib": 20}},
                    "gpus": {0: {"power_watts": 500}},
                },
                {
                    "name": "cold",
                    "duration_seconds": 10,
                    "pods": {"ns/p": {"utilization": 0.0, "memory_gib": 20}},
                    "gpus": {0: {"power_watts": 100}},
                },
            ],
        }
    )


# ---------------------------------------------------------------- identity and determinism


def test_implements_the_device_source_protocol() -> None:
    source, _ = make()
    assert isinstance(source, DeviceSource)
    assert source.name == "simulated"


def test_identity_is_plainly_simulated() -> None:
    source, _ = make(seed=7)
    snapshot = source.sample()
    assert snapshot.source == "simulated"
    for gpu in snapshot.gpus:
        assert re.fullmatch(
            r"GPU-5a1e0000-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", gpu.uuid
        )
        assert gpu.pci_bus_id == f"SIM:00:{gpu.index:02x}.0"
        assert gpu.driver_version == "simulated"
        assert gpu.model == H100  # the real name: the price book keys on it
        for mig in gpu.mig:
            assert mig.uuid.startswith("MIG-5a1e0000-")
    assert len({g.uuid for g in snapshot.gpus}) == 8


def test_node_name_override_gives_another_fleet() -> None:
    clock = Clock()
    a = SimulatedSource("default", clock=clock, wall_clock=clock.wall)
    b = SimulatedSource("default", clock=clock, wall_clock=clock.wall, node="sim-gpu-node-1")
    assert (a.scenario.node, b.scenario.node) == ("sim-gpu-node-0", "sim-gpu-node-1")
    assert a.uuid(0) != b.uuid(0)


def test_same_seed_and_times_give_the_same_snapshots() -> None:
    steps = [0, 1, 1, 2.5, 300, 0.5, 700]
    first = run(*make(seed=3), steps)
    second = run(*make(seed=3), steps)
    assert first == second


def test_another_seed_gives_other_ids_and_noise() -> None:
    steps = [0, 1, 1]
    a = run(*make(seed=1), steps)[-1]
    b = run(*make(seed=2), steps)[-1]
    assert {g.uuid for g in a.gpus}.isdisjoint({g.uuid for g in b.gpus})
    assert a.gpus[0].utilization != b.gpus[0].utilization
    # Noise is small: both stay near the scenario's 0.95.
    assert abs(a.gpus[0].utilization - 0.95) < 0.05 and abs(b.gpus[0].utilization - 0.95) < 0.05


def test_noise_zero_gives_the_scenario_values() -> None:
    source, clock = make(two_phase())
    gpu = run(source, clock, [0, 2])[-1].gpus[0]
    assert gpu.utilization == pytest.approx(0.8)
    assert gpu.memory_used_bytes == 20 * GIB
    assert gpu.processes[0].pid == 10 and gpu.processes[0].used_memory_bytes == 20 * GIB


# ---------------------------------------------------------------- phases and time


def test_phases_follow_the_clock_and_loop() -> None:
    source, clock = make()
    for elapsed, phase in [(0, "steady"), (599.9, "steady"), (600, "quiet"), (899, "quiet"),
                           (900, "faults"), (1199, "faults"), (1200, "steady"), (1200 * 5 + 650, "quiet")]:  # fmt: skip
        clock.t = 1000 + elapsed
        assert source.current_phase == phase, elapsed


def test_hold_at_end_stays_in_the_last_phase() -> None:
    source, clock = make(two_phase(at_end="hold"))
    clock.t += 15
    assert source.current_phase == "cold"
    clock.t += 1000
    assert source.current_phase == "cold"


def test_set_phase_jumps_and_the_schedule_goes_on() -> None:
    source, clock = make()
    clock.t += 10
    source.set_phase("faults")
    assert source.current_phase == "faults"
    clock.t += 299
    assert source.current_phase == "faults"
    clock.t += 1
    assert source.current_phase == "steady"  # after the last phase, the loop


def test_set_phase_with_hold_stays() -> None:
    source, clock = make()
    source.set_phase("quiet", hold=True)
    clock.t += 10_000
    assert source.current_phase == "quiet"


def test_set_phase_unknown_name_says_which_exist() -> None:
    source, _ = make()
    with pytest.raises(ValueError, match="no phase 'nope'.*steady, quiet, faults"):
        source.set_phase("nope")


def test_utilisation_is_the_average_since_the_last_sample() -> None:
    source, clock = make(two_phase())
    source.sample()
    clock.t += 5
    source.sample()
    clock.t += 10  # 5 s hot at 0.8, 5 s cold at 0
    gpu = source.sample().gpus[0]
    assert gpu.utilization == pytest.approx(0.4)
    assert gpu.processes[0].sm_utilization == pytest.approx(0.4)


# ---------------------------------------------------------------- energy


def test_energy_grows_by_power_times_interval() -> None:
    source, clock = make(seed=5)
    snapshots = run(source, clock, [0] + [0.7, 1.3, 250, 400, 1.0, 2000])
    for before, after in zip(snapshots, snapshots[1:], strict=False):
        dt = after.monotonic - before.monotonic
        for b, a in zip(before.gpus, after.gpus, strict=True):
            if a.up and b.energy_joules is not None:
                assert a.energy_joules - b.energy_joules == pytest.approx(a.power_watts * dt)


def test_energy_is_the_integral_of_the_phases_power() -> None:
    source, clock = make(two_phase())
    start = source.sample().gpus[0].energy_joules
    clock.t += 25  # 10 s at 500 W, 10 s at 100 W, 5 s at 500 W again (loop)
    gpu = source.sample().gpus[0]
    assert gpu.energy_joules - start == pytest.approx(500 * 10 + 100 * 10 + 500 * 5)
    assert gpu.power_watts == pytest.approx((500 * 15 + 100 * 10) / 25)


def test_a_month_long_gap_counts_every_loop() -> None:
    source, clock = make()
    first = source.sample()
    clock.t += 30 * 86400  # 2160 loops of 1200 s
    last = source.sample()
    assert last.gpus[0].xid_counts == {13: 2160}
    assert last.gpus[2].ecc_uncorrected_total == 2 * 2160
    assert last.gpus[0].energy_joules > first.gpus[0].energy_joules + 30 * 86400 * 100


# ---------------------------------------------------------------- MIG, time-slicing, attribution


def test_mig_instances_have_their_fractions_and_pods() -> None:
    source, clock = make()
    attribution = SimulatedAttribution(source)
    snapshot = run(source, clock, [0, 1])[-1]
    gpu = snapshot.gpus[6]
    assert gpu.mig_mode and len(gpu.mig) == 7
    assert [m.compute_fraction for m in gpu.mig] == [pytest.approx(1 / 7)] * 7
    assert [m.profile for m in gpu.mig] == ["1g.10gb"] * 7
    assert [m.gpu_instance_id for m in gpu.mig] == list(range(1, 8))
    assert gpu.utilization == pytest.approx(sum(m.utilization / 7 for m in gpu.mig))
    assert gpu.mig[0].utilization == pytest.approx(0.90, abs=0.03)
    assert gpu.mig[0].memory_used_bytes <= gpu.mig[0].memory_total_bytes
    # As NVML: the parent GPU lists every instance's processes, without utilisation.
    assert sorted(p.pid for p in gpu.processes) == list(range(7101, 7108))
    assert all(p.sm_utilization is None for p in gpu.processes)
    result = attribution.resolve(snapshot)
    for i, mig in enumerate(gpu.mig):
        (assignment,) = result.devices[mig.uuid]
        assert assignment.resource == "nvidia.com/mig-1g.10gb"
        assert assignment.device_id == mig.uuid
        assert assignment.pod.pod == f"sweep-{i}" and assignment.pod.namespace == "team-research"
        assert mig.processes[0].pid == 7101 + i
        assert result.processes[7101 + i] == assignment.pod
    assert gpu.uuid not in result.devices  # nobody holds the MIG GPU whole


def test_mixed_mig_layout_fractions() -> None:
    scenario = parse_scenario(
        {
            "noise": 0,
            "gpus": [{"model": "NVIDIA A100-SXM4-80GB", "mig": [{"profile": "2g.20gb", "count": 3}, "1g.10gb"]}],
            "pods": [{"namespace": "n", "pod": f"p{i}", "devices": [{"gpu": 0, "mig": i}], "pids": [100 + i]} for i in range(4)],
            "phases": [{"name": "x", "duration_seconds": 10, "pod_defaults": {"utilization": 0.5, "memory_gib": 1}}],
        }
    )  # fmt: skip
    source, clock = make(scenario)
    gpu = run(source, clock, [0, 1])[-1].gpus[0]
    assert [m.compute_fraction for m in gpu.mig] == pytest.approx([2 / 7, 2 / 7, 2 / 7, 1 / 7])
    assert gpu.utilization == pytest.approx(0.5)  # every slice of 7 busy half the time
    result = SimulatedAttribution(source).resolve(source.sample())
    assert {a.resource for m in gpu.mig for a in result.devices[m.uuid]} == {
        "nvidia.com/mig-2g.20gb",
        "nvidia.com/mig-1g.10gb",
    }


def test_time_sliced_processes_add_up_to_the_gpu() -> None:
    source, clock = make(seed=11)
    attribution = SimulatedAttribution(source)
    for snapshot in run(source, clock, [0, 1, 1, 3, 10]):
        gpu = snapshot.gpus[5]
        assert len(gpu.processes) == 4
        assert sum(p.sm_utilization for p in gpu.processes) == pytest.approx(gpu.utilization)
        assert sum(p.used_memory_bytes for p in gpu.processes) == gpu.memory_used_bytes
        assignments = attribution.resolve(snapshot).devices[gpu.uuid]
        assert len(assignments) == 4
        assert {a.resource for a in assignments} == {"nvidia.com/gpu.shared"}
        assert {a.pod.pod for a in assignments} == {f"embed-infer-{i}" for i in range(4)}


def test_a_fully_busy_time_sliced_gpu_stays_at_most_one_with_noise() -> None:
    scenario = parse_scenario(
        {
            "noise": 0.5,
            "gpus": [{"model": H100, "time_slicing": {"replicas": 2}}],
            "pods": [{"namespace": "n", "pod": f"p{i}", "devices": [{"gpu": 0}], "pids": [50 + i]} for i in range(2)],
            "phases": [{"name": "full", "duration_seconds": 60, "pod_defaults": {"utilization": 0.5}}],
        }
    )  # fmt: skip
    source, clock = make(scenario, seed=4)
    utilizations = []
    for snapshot in run(source, clock, [0] + [1] * 20):
        gpu = snapshot.gpus[0]
        utilizations.append(gpu.utilization)
        assert sum(p.sm_utilization for p in gpu.processes) == pytest.approx(gpu.utilization)
    assert max(utilizations) == pytest.approx(1.0)  # noise pushed it over; it was scaled back
    assert min(utilizations) < 0.95


def test_whole_gpu_attribution_and_processes() -> None:
    source, clock = make()
    snapshot = run(source, clock, [0, 1])[-1]
    result = SimulatedAttribution(source).resolve(snapshot)
    assert isinstance(result, Attribution)
    (train,) = result.devices[snapshot.gpus[2].uuid]
    assert train.resource == "nvidia.com/gpu"
    assert (train.pod.namespace, train.pod.pod, train.pod.container) == (
        "team-vision",
        "vit-train-0",
        "trainer",
    )
    assert len(train.pod.uid) == 36
    # Two processes share the pod's busy time and memory.
    assert {p.pid for p in snapshot.gpus[2].processes} == {4201, 4202}
    assert result.processes[4201] == result.processes[4202] == train.pod
    assert snapshot.gpus[7].uuid not in result.devices  # the free GPU
    assert snapshot.gpus[7].processes == ()
    assert result.stale == {"simulated": False}


def test_idle_allocated_pod_holds_memory_and_computes_nothing() -> None:
    source, clock = make()
    gpu = run(source, clock, [0, 1])[-1].gpus[4]
    assert gpu.utilization == 0.0
    assert gpu.memory_used_bytes == pytest.approx(11 * GIB, rel=0.01)
    assert gpu.clock_events["gpu_idle"] is True


def test_pods_come_and_go_with_the_phases() -> None:
    source, clock = make()
    attribution = SimulatedAttribution(source)
    steady = run(source, clock, [0, 1])[-1]
    assert "vit-train-0" in {
        a.pod.pod for a in attribution.resolve(steady).devices[steady.gpus[2].uuid]
    }
    clock.t += 700  # quiet: the vision job has ended
    quiet = source.sample()
    result = attribution.resolve(quiet)
    assert quiet.gpus[2].uuid not in result.devices
    assert 4201 not in result.processes
    assert quiet.gpus[2].processes == ()
    assert quiet.gpus[2].memory_used_bytes == 0
    # The earlier snapshot still resolves to the pods of its own time.
    assert steady.gpus[2].uuid in attribution.resolve(steady).devices


def test_process_outside_any_pod_is_not_attributed() -> None:
    source, clock = make()
    source.set_phase("faults")
    snapshot = run(source, clock, [1, 1])[-1]
    assert [p.pid for p in snapshot.gpus[7].processes] == [9001]
    assert snapshot.gpus[7].utilization == pytest.approx(0.3, abs=0.02)
    assert 9001 not in SimulatedAttribution(source).resolve(snapshot).processes


# ---------------------------------------------------------------- faults


def test_faults_appear_at_their_time() -> None:
    source, clock = make()
    source.set_phase("faults")
    before = run(source, clock, [0, 29])[-1]
    assert before.gpus[0].xid_counts == {}
    assert before.gpus[1].clock_events["sw_thermal_slowdown"] is True
    assert before.gpus[1].clock_events["hw_thermal_slowdown"] is True
    assert before.gpus[1].sm_clock_hertz < 1980e6 * 0.6
    assert before.gpus[1].temperature_celsius >= 88
    assert before.gpus[0].clock_events["sw_thermal_slowdown"] is False

    at_31 = run(source, clock, [2])[-1]
    assert at_31.gpus[0].xid_counts == {13: 1}
    assert at_31.gpus[0].last_xid_timestamp == pytest.approx(WALL_OFFSET + 1030)
    assert at_31.gpus[3].up

    lost = run(source, clock, [30])[-1]  # 61 s into the phase
    gpu3 = lost.gpus[3]
    assert gpu3.up is False and "lost" in gpu3.error
    assert gpu3.xid_counts == {79: 1} and gpu3.utilization is None
    assert lost.errors[LOST_ERROR] == 1

    later = run(source, clock, [100])[-1]  # 161 s: ECC, XID 48, row remap on GPU 2
    gpu2 = later.gpus[2]
    assert gpu2.ecc_uncorrected_total == 2 and gpu2.xid_counts == {48: 1}
    assert gpu2.row_remap_pending is True and gpu2.remapped_rows_uncorrectable == 1
    assert later.gpus[0].xid_counts == {13: 1}  # an event counts once
    assert later.errors[LOST_ERROR] == 2

    back = run(source, clock, [200])[-1]  # steady again: the GPU is back, counters stay
    assert back.gpus[3].up and back.gpus[3].xid_counts == {79: 1}
    assert back.gpus[1].clock_events["sw_thermal_slowdown"] is False
    assert back.gpus[2].row_remap_pending is True  # the simulator never resets a GPU


def test_lost_gpu_uses_no_energy_while_lost() -> None:
    scenario = parse_scenario(
        {
            "noise": 0,
            "gpus": [{"model": H100}],
            "phases": [
                {
                    "name": "down",
                    "duration_seconds": 10,
                    "gpus": {0: {"power_watts": 200}},
                    "faults": [{"gpu": 0, "at_seconds": 4, "lost": True}],
                },
                {"name": "up", "duration_seconds": 10, "gpus": {0: {"power_watts": 200}}},
            ],
        }
    )
    source, clock = make(scenario)
    start = source.sample().gpus[0].energy_joules
    clock.t += 5
    assert source.sample().gpus[0].up is False
    clock.t += 10
    gpu = source.sample().gpus[0]
    assert gpu.up and gpu.energy_joules - start == pytest.approx(200 * (4 + 5))


def test_row_remap_failure() -> None:
    scenario = parse_scenario(
        {
            "gpus": [{"model": H100}],
            "phases": [
                {
                    "name": "p",
                    "duration_seconds": 10,
                    "faults": [{"gpu": 0, "at_seconds": 1, "row_remap_failure": True}],
                }
            ],
        }
    )
    source, clock = make(scenario)
    assert source.sample().gpus[0].row_remap_failure is False
    clock.t += 2
    assert source.sample().gpus[0].row_remap_failure is True


# ---------------------------------------------------------------- outside drivers


def test_follow_a_callable() -> None:
    source, clock = make()
    answers = iter(["quiet", "quiet", None, "not-in-scenario", "faults"])
    source.follow(lambda: next(answers))
    phases = []
    for _ in range(5):
        clock.t += 1
        source.sample()
        phases.append(source.current_phase)
    # None and unknown names keep the phase; a driven phase is held past its duration.
    assert phases == ["quiet", "quiet", "quiet", "quiet", "faults"]
    clock.t += 10_000
    source.sample()
    assert source.current_phase == "faults"


def test_between_phases_applies_when_no_phase_runs() -> None:
    source, clock = make()
    answers = iter(["faults", None])
    source.follow(lambda: next(answers), between_phases="quiet")
    run(source, clock, [1])
    assert source.current_phase == "faults"
    run(source, clock, [1])
    assert source.current_phase == "quiet"


def test_a_failing_driver_does_not_stop_sampling() -> None:
    source, clock = make()

    def broken() -> str:
        raise RuntimeError("boom")

    source.follow(broken)
    snapshot = run(source, clock, [1])[-1]
    assert len(snapshot.gpus) == 8 and source.current_phase == "steady"


def test_follow_file_applies_phases_from_their_start_time(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.jsonl"
    source, clock = make(two_phase())
    source.follow_file(timeline)  # the file does not exist yet: nothing changes
    start = source.sample().gpus[0].energy_joules
    clock.t += 5
    assert source.current_phase == "hot"
    # The timeline says "cold" started 2 s ago; a half-written line waits.
    with timeline.open("w") as f:
        record = {"type": "phase_start", "phase": "cold", "start": clock.wall() - 2, "rank": 0}
        f.write(json.dumps(record) + "\n")
        f.write('{"type": "phase_end", "rank": 0, "pha')
    gpu = source.sample().gpus[0]
    assert source.current_phase == "cold"
    # 3 s hot at 500 W, then 2 s cold at 100 W: applied from when it started.
    assert gpu.energy_joules - start == pytest.approx(500 * 3 + 100 * 2)
    with timeline.open("a") as f:
        f.write('se": "cold"}\n')
    clock.t += 100
    source.sample()
    assert source.current_phase == "cold"  # ended and nothing else runs: kept


def test_a_start_before_the_last_sample_applies_from_that_sample(tmp_path: Path) -> None:
    timeline = tmp_path / "timeline.jsonl"
    source, clock = make(two_phase())
    source.follow_file(timeline)
    start = source.sample().gpus[0].energy_joules
    clock.t += 4
    source.sample()
    record = {"type": "phase_start", "phase": "cold", "start": 0, "rank": 0}
    timeline.write_text(json.dumps(record) + "\n")
    clock.t += 1
    gpu = source.sample().gpus[0]
    # Time already reported is not rewritten: 4 s hot, then 1 s cold.
    assert gpu.energy_joules - start == pytest.approx(500 * 4 + 100 * 1)


def test_timeline_follower_reads_starts_and_ends(tmp_path: Path) -> None:
    timeline = tmp_path / "t.jsonl"
    follower = TimelineFollower(timeline)
    assert follower() is None
    records = [
        {"type": "run_start", "rank": 0},
        "not json",
        {"type": "phase_start", "phase": "warmup", "start": 5.0, "rank": 0},
        {"type": "step", "phase": "warmup", "rank": 0},
        {"type": "phase_end", "phase": "warmup", "rank": 0},
        {"type": "phase_start", "phase": "train", "start": 9.5, "rank": 0},
    ]
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    timeline.write_text("\n".join(lines) + "\n")
    assert follower() == ("train", 9.5)
    with timeline.open("a") as f:
        f.write(json.dumps({"type": "phase_end", "phase": "train", "rank": 0}) + "\n")
    assert follower() is None
    timeline.write_text(json.dumps({"type": "phase_start", "phase": "idle"}) + "\n")
    assert follower() == ("idle", None)  # a replaced file is read from its start


def test_timeline_follower_can_follow_one_rank(tmp_path: Path) -> None:
    timeline = tmp_path / "t.jsonl"
    records = [
        {"type": "phase_start", "phase": "train", "start": 1.0, "rank": 0},
        {"type": "phase_start", "phase": "train", "start": 1.1, "rank": 1},
        {"type": "phase_end", "phase": "train", "rank": 1},
    ]
    timeline.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert TimelineFollower(timeline, rank=0)() == ("train", 1.0)
    assert TimelineFollower(timeline)() is None  # any rank's end ends it


def test_loadgen_timeline_writer_drives_the_source(tmp_path: Path) -> None:
    from loadgen.timeline import TimelineWriter

    timeline = tmp_path / "timeline.jsonl"
    source, clock = make()
    source.follow_file(timeline)
    writer = TimelineWriter(timeline, rank=0, job="calib")
    writer.write("phase_start", phase="faults", kind="compute", index=0, start=clock.wall())
    writer.close()
    run(source, clock, [1])
    assert source.current_phase == "faults"


def test_close_stops_following() -> None:
    source, clock = make()
    source.follow(lambda: "faults")
    source.close()
    run(source, clock, [1])
    assert source.current_phase == "steady"
