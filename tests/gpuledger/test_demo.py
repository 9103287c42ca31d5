"""`gpuledger demo`: one quick run end to end (training, alerts on their routes, the
chargeback report), stopping on SIGTERM, and the errors a user can make."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from gpuledger import demo
from gpuledger.cli import main
from gpuledger.stack import REPO_ROOT, marked_processes, wait_until

TEST_MARK = "GPULEDGER_TEST_MARK"


def start_demo(out: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    """The demo as a person runs it, in a process of its own; every process it starts
    inherits a marker, so the test can look for any left behind."""
    mark = uuid.uuid4().hex
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env[TEST_MARK] = mark
    log = out.parent / "demo-output.txt"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gpuledger.cli",
                "--log-format",
                "text",
                "demo",
                "--out",
                str(out),
                *args,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=out.parent,
        )
    return process, mark, log


@pytest.mark.integration
@pytest.mark.timeout(330)
def test_quick_demo_runs_the_whole_stack_and_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    process, mark, log = start_demo(out, "--quick")
    try:
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    printed = log.read_text()
    assert code == 0, printed[-4000:]
    assert marked_processes(mark, env=TEST_MARK) == []

    assert "GPU source     simulated: 4 x NVIDIA H100 80GB HBM3" in printed
    summary = json.loads((out / demo.SUMMARY_FILE).read_text())
    assert summary["source"] == "simulated" and summary["loadgen_exit"] == 0
    # The held-idle phase and the straggler's throttled GPU, each on its team's route.
    routes = {(a["name"], a["route"]) for a in summary["alerts"]}
    assert ("GpuledgerGpuHeldIdle", "team-llm-chat") in routes
    assert ("GpuledgerGpuThermalThrottling", "gpu-infra-tickets") in routes
    idle_pods = {a["about"] for a in summary["alerts"] if a["name"] == "GpuledgerGpuHeldIdle"}
    assert idle_pods == {"team-llm/llm-train-0", "team-llm/llm-train-1"}

    accounting = summary["accounting"]
    assert accounting["hours"] >= 1
    # The hour the run ended in is not over: written provisional, and said so.
    assert accounting["provisional_hours"] >= 1
    assert "provisional: still in progress" in printed
    (report,) = accounting["reports"]
    assert report["hours_provisional"] >= 1
    assert f"{report['hours_provisional']} provisional hour(s) in the ledger" in printed
    for name in (report["html"], report["focus"], *report["files"]):
        assert Path(name).stat().st_size > 0, name
    assert "SIMULATED" in Path(report["html"]).read_text()
    with open(Path(report["html"]).with_name(f"gpuledger-{report['month']}-by-team.csv")) as f:
        teams = {row["team"]: row for row in csv.DictReader(f)}
    # Two training GPUs held for the ~80 s of the profile: about 160 GPU-seconds.
    held = float(teams["team-llm"]["gpu_hours_held"]) * 3600
    assert 120 < held < 240, held
    assert float(teams["team-vision"]["gpu_hours_held"]) > 0
    assert report["html"] in printed and report["focus"] in printed


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_sigterm_stops_the_demo_and_everything_it_started(tmp_path: Path) -> None:
    profile = tmp_path / "long.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "name": "long",
                "model": "tiny",
                "nproc": 2,
                "phases": [{"name": "train", "kind": "steady", "duration_s": "10m"}],
            }
        )
    )
    out = tmp_path / "demo-out"
    process, mark, log = start_demo(out, "--profile", str(profile))
    try:
        wait_until(
            lambda: "training started" in log.read_text() or process.poll() is not None,
            timeout=120,
            what="the demo's training to start",
        )
        assert process.poll() is None, log.read_text()[-3000:]
        assert len(marked_processes(mark, env=TEST_MARK)) >= 5  # services, launcher, ranks
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    printed = log.read_text()
    assert code == 130, printed[-3000:]
    assert "interrupted" in printed and "stopped" in printed
    assert marked_processes(mark, env=TEST_MARK) == []


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minutes", "0"], "--minutes must be a positive number"),
        (["--quick", "--profile", "demo"], "--quick runs the quick profile"),
        (["--profile", "no-such-profile"], "no profile 'no-such-profile'"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["demo", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "prometheus").exists()


def test_an_output_directory_that_cannot_be_made_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "out")]) == 2
    assert "choose another output directory" in capsys.readouterr().err


def test_minutes_scale_the_profile() -> None:
    planned = demo.plan_profile("quick").planned_seconds
    assert demo._time_scale("quick", 3) == pytest.approx(180 / planned)
    assert demo._time_scale("quick", None) == 1.0


# ---------------------------------------------------------------- what it prints


def _summary(**changes: object) -> demo.Summary:
    values: dict = dict(
        source="simulated",
        source_detail="4 x NVIDIA H100 80GB HBM3 on node sim-train-node-0",
        fallback_reason="NVML could not start",
        profile="quick",
        out="demo-out",
        exporter_metrics="http://127.0.0.1:1/metrics",
        prometheus=None,
        alertmanager=None,
        timeline="demo-out/loadgen-timeline.jsonl",
        loadgen_log="demo-out/loadgen.log",
        loadgen_exit=0,
        alerts=[],
        accounting=None,
        missing=["Prometheus is not installed: ... sudo apt-get install prometheus"],
        seconds=1.0,
    )
    values.update(changes)
    return demo.Summary(**values)


def test_summary_without_prometheus_says_what_was_skipped_and_how_to_fix_it() -> None:
    text = demo.format_summary(_summary(), keep_running=False)
    assert "GPU source     simulated: 4 x NVIDIA H100" in text
    assert "alerts:        not evaluated (no Prometheus)" in text
    assert "chargeback     not made: no Prometheus" in text
    assert "apt-get install prometheus" in text


def test_summary_lists_alerts_with_their_time_and_route() -> None:
    alert = {
        "name": "GpuledgerGpuHeldIdle",
        "route": "team-llm-chat",
        "severity": "warning",
        "about": "team-llm/llm-train-0",
        "starts_at": "",
        "received_at": 1_700_000_000.0,
    }
    unrouted = dict(alert, route="", name="GpuledgerGpuLost")
    text = demo.format_summary(
        _summary(prometheus="http://127.0.0.1:2", alerts=[alert, unrouted]), keep_running=True
    )
    assert "22:13:20Z  GpuledgerGpuHeldIdle" in text and "-> team-llm-chat" in text
    assert "-> (not routed: no Alertmanager)" in text
    assert "(up now)" in text


def test_timeline_tail_reads_rank_zero_and_waits_for_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    tail = demo.TimelineTail(path)
    assert tail.new_records() == []
    start = {"type": "phase_start", "rank": 0, "phase": "warm", "kind": "steady", "index": 0}
    path.write_text(
        json.dumps(dict(start, rank=1)) + "\n" + json.dumps(start) + "\n" + '{"type": "ph'
    )
    records = tail.new_records()
    assert records == [start]
    assert demo._describe_record(records[0], phases=4) == "phase 1/4 warm (steady) started"
    with path.open("a") as f:
        f.write('ase_end", "rank": 0, "phase": "warm", "steps": 3, "busy_ratio": 0.5}\n')
    (end,) = tail.new_records()
    assert demo._describe_record(end, phases=4) == "phase warm ended: 3 steps, busy 50%"
