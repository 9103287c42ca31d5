"""`gpuledger loadgen` from the command line: bad input is refused before anything
starts, with exit code 2 and a message that says what to fix."""

import json
import re
from pathlib import Path

import pytest

from gpuledger.cli import main

from .helpers import write_profile

STEADY = [{"name": "a", "kind": "steady", "duration_s": 1}]


def loadgen(capsys: pytest.CaptureFixture, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    timeline = tmp_path / "out" / "timeline.jsonl"
    code = main(["loadgen", "--timeline", str(timeline), "--device", "cpu", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("args", "phases", "message"),
    [
        (["--nproc", "0"], STEADY, "--nproc must be 1 or more"),
        (
            ["--nproc", "2"],
            [{"name": "s", "kind": "straggler", "duration_s": 1, "rank": 2, "factor": 3}],
            "names rank 2, but the world has 2 rank",
        ),
        ([], [{"name": "h", "kind": "hang", "rank": 0}], "needs at least 2 ranks"),
        ([], [{"name": "x", "kind": "teleport", "duration_s": 1}], "unknown phase kind 'teleport'"),
        (
            ["--model", "gpt-1b", "--memory-limit", "8GiB"],
            STEADY,
            r"needs about .* more than --memory-limit \(8.00 GiB\)",
        ),
        (
            ["--model", "cpu", "--memory-limit", "64MiB"],
            STEADY,
            "choose a smaller --model or --batch-size",
        ),
        (["--model", "nano"], STEADY, "unknown model preset 'nano'"),
        (["--width", "100", "--heads", "3"], STEADY, "width 100 must be a multiple of heads 3"),
        (["--memory-limit", "lots"], STEADY, "expected a size"),
        (["--metrics-port", "70000"], STEADY, "--metrics-port must be 1-65535"),
        (["--time-scale", "0"], STEADY, "time scale must be positive"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture, tmp_path: Path, args: list[str], phases: list, message: str
) -> None:
    profile = write_profile(tmp_path, phases)
    code, _, err = loadgen(capsys, tmp_path, "--profile", str(profile), *args)
    assert code == 2
    assert err.startswith("gpuledger loadgen: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()  # nothing started, not even the timeline


def test_unknown_profile(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _, err = loadgen(capsys, tmp_path, "--profile", "no-such-profile")
    assert code == 2 and "no profile 'no-such-profile'" in err and "quick" in err


def test_cuda_asked_without_a_gpu(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(["loadgen", "--profile", "quick", "--device", "cuda", "--dry-run"])
    assert code == 2 and "torch sees no GPU" in capsys.readouterr().err


def test_dry_run_prints_the_plan(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, _ = loadgen(capsys, tmp_path, "--profile", "quick", "--dry-run")
    plan = json.loads(out)
    assert code == 0 and plan["ranks"] == 2 and plan["model"]["width"] == 128
    assert [p["kind"] for p in plan["phases"]] == ["steady", "idle", "straggler", "communication"]
    assert not (tmp_path / "out").exists()


def test_list_profiles(capsys: pytest.CaptureFixture) -> None:
    assert main(["loadgen", "--list-profiles"]) == 0
    out = capsys.readouterr().out
    assert "quick" in out and "straggler" in out and "GpuledgerGpuHeldIdle" in out


def test_run_from_the_command_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    profile = write_profile(tmp_path, [{"name": "warm", "kind": "steady", "duration_s": 1}])
    args = [
        "--profile",
        str(profile),
        "--peak-flops",
        "1e10",
        "--threads",
        "1",
        "--progress",
        "plain",
    ]
    code, out, _ = loadgen(capsys, tmp_path, *args)
    assert code == 0
    assert "warm" in out and "MFU %" in out and "tokens/s" in out  # the summary table
    assert (tmp_path / "out" / "timeline.jsonl").stat().st_size > 0
