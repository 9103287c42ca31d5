"""Real 2-process gloo runs: lockstep phases, a straggler, all-reduces, and failures
that end the run with an error naming the rank at fault, never a hang."""

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loadgen import runner, timeline
from loadgen.distributed import free_port
from loadgen.errors import RunFailed
from loadgen.model import PRESETS, count_parameters

from .helpers import PEAK, run, write_profile

REPO = Path(__file__).resolve().parents[2]
MESSAGE = 2**20
# A large factor: other work on a shared machine can slow one rank's compute a few
# times over its peer's, and the straggler must still stand out.
FACTOR = 6
PHASES = [
    {"name": "warm", "kind": "steady", "duration_s": 2.5},
    {"name": "slow", "kind": "straggler", "duration_s": 3.0, "rank": 1, "factor": FACTOR},
    {"name": "allreduce", "kind": "communication", "duration_s": 1.5, "message_bytes": MESSAGE},
]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    # With the probe on, when this installation has it: its totals are checked too.
    return run(tmp_path_factory.mktemp("two"), PHASES, nproc=2, probe=True)


def test_both_ranks_record_every_phase_in_lockstep(records: list[dict]) -> None:
    for rank in (0, 1):
        ends = timeline.phases(records, rank)
        assert [e["phase"] for e in ends] == [p["name"] for p in PHASES]
        for end, asked in zip(ends, PHASES, strict=True):
            assert end["duration_s"] == pytest.approx(asked["duration_s"], rel=0.10)
    for phase in PHASES:  # the last-step vote ends a phase on the same step everywhere
        n0 = len(timeline.steps(records, phase["name"], 0))
        assert n0 == len(timeline.steps(records, phase["name"], 1)) > 3
    starts = [r for r in records if r["type"] == "run_start"]
    assert sorted(r["rank"] for r in starts) == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in starts)


def test_loss_falls_with_two_ranks(records: list[dict]) -> None:
    for rank in (0, 1):
        losses = [s["loss"] for s in timeline.steps(records, rank=rank) if s["loss"] is not None]
        assert statistics.fmean(losses[-5:]) < statistics.fmean(losses[:5]) - 1.0


def test_gradient_all_reduce_is_counted_exactly(records: list[dict]) -> None:
    n_params, _ = count_parameters(PRESETS["tiny"])
    for s in timeline.steps(records, "warm"):
        assert s["collective_bytes"] == (n_params + 1) * 4  # the flat float32 buffer + vote
        # nccl-tests: busbw = algbw × 2(n-1)/n, which is 1 for n = 2.
        assert s["busbw_bytes_per_s"] == pytest.approx(s["collective_bytes"] / s["collective_s"])


def test_straggler_factor_shows_in_its_rank_step_times(records: list[dict]) -> None:
    def median(key: str, phase: str, rank: int) -> float:
        return statistics.median(s[key] for s in timeline.steps(records, phase, rank))

    def work(s: dict) -> float:  # the rank's own time: compute + the slowness it slept
        return s["compute_s"] + s["straggle_s"]

    # The slow rank's own time per step is FACTOR × its compute; its peer is not slowed.
    slow = timeline.steps(records, "slow", 1)
    own = statistics.median(work(s) / s["compute_s"] for s in slow)
    assert FACTOR - 0.5 < own < FACTOR + 0.5, own
    assert median("straggle_s", "slow", 0) == median("straggle_s", "warm", 1) == 0
    # The peer waits for it inside the all-reduce ...
    assert median("collective_s", "slow", 0) > median("collective_s", "slow", 1)
    # ... so that the whole job steps at the straggler's pace: FACTOR × its compute.
    for rank in (0, 1):
        pace = median("step_s", "slow", rank) / median("compute_s", "slow", 1)
        assert 0.75 * FACTOR < pace < 1.5 * FACTOR, pace


def test_communication_phase_measures_bytes_and_bus_bandwidth(records: list[dict]) -> None:
    for rank in (0, 1):
        steps = timeline.steps(records, "allreduce", rank)
        assert all(s["collective_bytes"] == MESSAGE and s["tokens"] == 0 for s in steps)
        end = timeline.phases(records, rank)[2]
        total_bytes = sum(s["collective_bytes"] for s in steps)
        total_s = sum(s["collective_s"] for s in steps)
        assert end["collective_bytes"] == total_bytes
        assert end["busbw_bytes_per_s"] == pytest.approx(total_bytes * 1.0 / total_s)
        assert end["busbw_bytes_per_s"] > 1e6  # loopback moves well over 1 MB/s


def test_probe_totals_agree_with_the_timeline(records: list[dict]) -> None:
    last = timeline.phases(records, 0)[-1]
    if "probe" not in last:
        pytest.skip("gpuledger.probe is not in this installation")
    mine = sum(s["collective_bytes"] for s in timeline.steps(records, rank=0))
    assert last["probe"]["all_reduce"]["bytes"] == mine


def _fault_run(tmp_path: Path, fault: dict, **options) -> tuple[RunFailed, float, list[dict]]:
    phases = [{"name": "warm", "kind": "steady", "duration_s": 1.0}, fault]
    start = time.monotonic()
    with pytest.raises(RunFailed) as caught:
        run(tmp_path, phases, nproc=2, **options)
    return caught.value, time.monotonic() - start, timeline.read(tmp_path / "timeline.jsonl")


@pytest.mark.timeout(90)
def test_crashed_rank_ends_the_run_with_an_error_naming_it(tmp_path: Path) -> None:
    error, _, records = _fault_run(
        tmp_path, {"name": "boom", "kind": "crash", "rank": 1, "at_s": 0.5}
    )
    assert error.rank == 1
    assert "rank 1 crashed" in str(error) and "'boom'" in str(error)
    faults = [r for r in records if r["type"] == "fault"]
    assert [(f["rank"], f["kind"]) for f in faults] == [(1, "crash")]
    ends = {r["rank"]: r for r in records if r["type"] == "run_end"}
    assert ends[1]["status"] == "error"


@pytest.mark.timeout(90)
def test_rank_that_exits_without_a_word_is_named(tmp_path: Path) -> None:
    fault = {"name": "boom", "kind": "crash", "rank": 1, "at_s": 0.5, "mode": "exit"}
    error, _, _ = _fault_run(tmp_path, fault)
    assert error.rank == 1
    assert "rank 1 exited with code 17" in str(error)


@pytest.mark.timeout(90)
def test_hung_rank_is_found_by_the_collective_timeout(tmp_path: Path) -> None:
    fault = {"name": "stuck", "kind": "hang", "rank": 1, "at_s": 0.5}
    error, elapsed, records = _fault_run(tmp_path, fault, collective_timeout_s=3.0)
    assert error.rank == 1
    assert "rank 1 stopped responding" in str(error) and "'stuck'" in str(error)
    assert elapsed < 45  # start-up, 1.5 s of phases, the 3 s timeout: not the 9 s hang
    assert [r["rank"] for r in records if r["type"] == "fault"] == [1]
    ends = {r["rank"]: r for r in records if r["type"] == "run_end"}
    assert ends[0]["status"] == "error" and "stopped responding" in ends[0]["error"]


@pytest.mark.timeout(120)
def test_ranks_started_like_kubernetes_pods(tmp_path: Path) -> None:
    """Two separate processes with the variables a PyTorchJob (rank 0) or an indexed
    Job (rank 1, JOB_COMPLETION_INDEX) gives its pods."""
    path = write_profile(tmp_path, [{"name": "warm", "kind": "steady", "duration_s": 1.5}])
    port = free_port()
    common = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "2"}
    common.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    envs = [{**common, "RANK": "0"}, {**common, "JOB_COMPLETION_INDEX": "1"}]
    argv = [sys.executable, "-m", "gpuledger.cli", "loadgen", "--profile", str(path)]
    argv += ["--timeline", str(tmp_path / "rank-{rank}.jsonl"), "--peak-flops", str(PEAK)]
    argv += ["--threads", "1", "--progress", "off", "--no-probe", "--device", "cpu"]
    procs = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) for env in envs]
    outs = [p.communicate(timeout=100)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for rank in (0, 1):
        records = timeline.read(tmp_path / f"rank-{rank}.jsonl")
        assert {r["rank"] for r in records} == {rank}
        assert records[0]["launcher"] == "kubernetes" and records[-1]["status"] == "ok"


def test_prepare_takes_the_world_from_the_launcher(tmp_path: Path) -> None:
    from loadgen.distributed import DistEnv

    path = write_profile(
        tmp_path, [{"name": "s", "kind": "straggler", "duration_s": 1, "rank": 3, "factor": 2}]
    )
    env = DistEnv(rank=0, world_size=4, launcher="torchrun")
    assert runner.prepare(str(path), env=env, device="cpu").nproc == 4
    with pytest.raises(Exception, match="conflicts with WORLD_SIZE=4"):
        runner.prepare(str(path), env=env, device="cpu", nproc=2)
