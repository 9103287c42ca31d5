"""A real single-process run: phases, timing, MFU, memory and the metrics endpoint."""

import statistics
import threading
import urllib.request

import pytest

from exporter import catalogue as cat
from loadgen import timeline
from loadgen.distributed import free_port
from loadgen.flops import flops_per_token
from loadgen.model import PRESETS

from .helpers import PEAK, run

PHASES = [
    {"name": "warm", "kind": "steady", "duration_s": 2.5},
    {"name": "rest", "kind": "idle", "duration_s": 1.5},
    {"name": "slow-input", "kind": "input_stall", "duration_s": 2.0, "stall_s": 0.05},
    {
        "name": "fill",
        "kind": "memory_ramp",
        "duration_s": 2.0,
        "ramp_s": 1.0,
        "cpu_target_bytes": "96MiB",
    },
]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("single")
    port = free_port()
    scraped: list[str] = []
    done = threading.Event()

    def scrape() -> None:  # Prometheus' view of the run, as it goes
        while not done.wait(0.2):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                    scraped.append(r.read().decode())
            except OSError:
                pass

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        records = run(folder, PHASES, metrics_port=port, job="single")
    finally:
        done.set()
        scraper.join()
    return {"records": records, "scraped": scraped}


def test_every_phase_has_start_and_end_records_in_order(result: dict) -> None:
    records = result["records"]
    assert records[0]["type"] == "run_start" and records[-1]["type"] == "run_end"
    assert records[-1]["status"] == "ok"
    starts = [r for r in records if r["type"] == "phase_start"]
    ends = timeline.phases(records)
    assert [r["phase"] for r in starts] == [r["phase"] for r in ends] == [p["name"] for p in PHASES]
    assert [r["kind"] for r in ends] == [p["kind"] for p in PHASES]
    for start, end in zip(starts, ends, strict=True):
        assert start["rank"] == end["rank"] == 0
        assert start["start"] == pytest.approx(end["start"])
        assert end["start"] < end["end"] <= records[-1]["ts"]
    for before, after in zip(ends, ends[1:], strict=False):
        assert before["end"] <= after["start"] + 1e-3


def test_phase_durations_are_within_ten_percent_of_those_asked(result: dict) -> None:
    for end, asked in zip(timeline.phases(result["records"]), PHASES, strict=True):
        assert end["duration_s"] == pytest.approx(asked["duration_s"], rel=0.10), end["phase"]
        assert end["planned_s"] == asked["duration_s"]


def test_mfu_matches_the_hand_computed_formula(result: dict) -> None:
    steps = timeline.steps(result["records"], "warm")
    config = PRESETS["tiny"]
    tokens = config.batch_size * config.context  # 8 × 64
    per_token = 788_352  # 6N + 12LHQT of tiny, worked out in test_flops.py
    assert flops_per_token(config) == per_token
    assert result["records"][0]["peak_flops"] == PEAK
    assert len(steps) > 10
    for s in steps:
        assert s["tokens"] == tokens
        assert s["flops"] == per_token * tokens
        assert s["mfu"] == pytest.approx(per_token * tokens / s["step_s"] / PEAK, rel=1e-9)
        assert s["tokens_per_s"] == pytest.approx(tokens / s["step_s"], rel=1e-9)
    warm = timeline.phases(result["records"])[0]
    assert warm["mfu"] == pytest.approx(warm["flops_per_s"] / PEAK)
    assert warm["tokens"] == tokens * len(steps)


def test_loss_falls_in_a_real_run(result: dict) -> None:
    losses = [s["loss"] for s in timeline.steps(result["records"])]
    assert statistics.fmean(losses[-10:]) < statistics.fmean(losses[:10]) - 1.0


def test_idle_holds_memory_and_runs_nothing(result: dict) -> None:
    warm, rest = timeline.phases(result["records"])[:2]
    assert rest["steps"] == 0 and rest["busy_ratio"] == 0 and rest["tokens"] == 0
    assert rest["memory_bytes_max"] >= 0.5 * warm["memory_bytes_max"]  # still held
    assert warm["busy_ratio"] > 0.3


def test_input_stall_steps_wait_for_data(result: dict) -> None:
    stalled = timeline.steps(result["records"], "slow-input")
    warm = timeline.steps(result["records"], "warm")
    assert all(s["stall_s"] >= 0.05 for s in stalled)
    assert statistics.median(s["busy_ratio"] for s in stalled) < statistics.median(
        s["busy_ratio"] for s in warm
    )
    for s in stalled:  # the parts of a step add up to its wall time
        parts = s["stall_s"] + s["compute_s"] + s["straggle_s"] + s["collective_s"]
        assert parts == pytest.approx(s["step_s"], rel=0.05, abs=2e-3)


def test_memory_ramp_grows_by_its_target(result: dict) -> None:
    fill = timeline.steps(result["records"], "fill")
    grown = fill[-1]["memory_bytes"] - fill[0]["memory_bytes"]
    assert 0.8 * 96 * 2**20 <= grown <= 1.3 * 96 * 2**20


def test_metrics_endpoint_served_the_run(result: dict) -> None:
    texts = result["scraped"]
    assert texts, "nothing was scraped"
    steps = f'{cat.LOADGEN_STEPS.name}{{job="single",phase="warm",rank="0"}}'
    assert any(steps in t for t in texts)
    idle_now = f'{cat.LOADGEN_PHASE.name}{{job="single",kind="idle",phase="rest",rank="0"}} 1.0'
    assert any(idle_now in t for t in texts)
    assert any(f'{cat.LOADGEN_PEAK_FLOPS.name}{{job="single",rank="0"}} 1e+10' in t for t in texts)
