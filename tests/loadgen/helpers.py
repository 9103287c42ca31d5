"""Small profiles and runs for the load generator's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loadgen import runner, timeline

# Hand-checkable model: vocab 256, context 64, depth 2, width 64, 4 heads, batch 8.
TINY = "tiny"
PEAK = 1e10  # a fixed peak, so that MFU is known without measuring the CPU


def write_profile(folder: Path, phases: list[dict[str, Any]], **top: Any) -> Path:
    path = folder / "profile.yaml"
    path.write_text(yaml.safe_dump({"name": "test", "model": TINY, "phases": phases, **top}))
    return path


def run(
    folder: Path, phases: list[dict[str, Any]], *, nproc: int = 1, **options: Any
) -> list[dict[str, Any]]:
    """Run a profile of `phases` to the end; return its timeline records."""
    path = write_profile(folder, phases)
    # One thread: the machine is shared, and OpenMP threads that outnumber free cores
    # slow a step down many times over.
    options = {"peak_flops": PEAK, "progress": "off", "probe": False, "threads": 1, **options}
    config = runner.prepare(
        str(path),
        nproc=nproc,
        device="cpu",
        timeline=str(folder / "timeline.jsonl"),
        env=None,
        **options,
    )
    runner.launch(config)
    return timeline.read(folder / "timeline.jsonl")
