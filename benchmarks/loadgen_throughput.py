"""Load generator throughput: tokens/s and MFU of the default CPU model, with the
measured matmul peak beside it in the same run.

Rounds alternate a float32 matmul peak measurement (the bare baseline: what this CPU
does at best with these threads) with a block of real training steps (forward,
backward, AdamW) of the model, so that noise from other work on the machine hits
both alike. MFU per round is the block's achieved model FLOP/s (PaLM's 6N + 12LHQT
per token, see loadgen/flops.py) over that round's peak. Target: MFU >= 50 %.

    python benchmarks/loadgen_throughput.py [--model cpu] [--rounds 5] [--steps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from loadgen.flops import flops_per_token, measure_cpu_matmul_peak  # noqa: E402
from loadgen.model import DEFAULT_CPU_PRESET, count_parameters, resolve  # noqa: E402
from loadgen.trainer import Trainer  # noqa: E402

TARGET_MFU = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_CPU_PRESET)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = resolve(args.model)
    trainer = Trainer(config, torch.device("cpu"))
    fpt = flops_per_token(config)
    tokens = trainer.tokens_per_step
    for _ in range(2):  # warm-up: allocator, kernels, optimizer state
        trainer.step()

    print(
        f"model {args.model}: {count_parameters(config)[0] / 1e6:.1f}M parameters, "
        f"{tokens} tokens/step, {fpt / 1e6:.1f} MFLOP/token; {args.threads} threads, "
        f"torch {torch.__version__}"
    )
    header = ("round", "peak GFLOP/s", "step ms", "tokens/s", "GFLOP/s", "MFU %", "loss")
    print("  ".join(f"{h:>12}" for h in header))
    rows = []
    for r in range(args.rounds):
        peak = measure_cpu_matmul_peak()
        times, loss = [], 0.0
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = trainer.step().loss or 0.0
            times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        achieved = fpt * tokens / step_s
        rows.append((peak, step_s, achieved))
        cells = (
            r + 1,
            peak / 1e9,
            step_s * 1e3,
            tokens / step_s,
            achieved / 1e9,
            100 * achieved / peak,
            loss,
        )
        print("  ".join(f"{c:>12.1f}" if isinstance(c, float) else f"{c:>12}" for c in cells))

    mfu = statistics.median(a / p for p, _, a in rows)
    best_peak = max(p for p, _, _ in rows)
    achieved = statistics.median(a for _, _, a in rows)
    print(
        f"\nmedian: {achieved / 1e9:.1f} GFLOP/s achieved, {tokens / statistics.median(s for _, s, _ in rows):,.0f} "
        f"tokens/s; MFU {mfu:.1%} of the same round's peak ({achieved / best_peak:.1%} of the best "
        f"peak, {best_peak / 1e9:.1f} GFLOP/s); target {TARGET_MFU:.0%}: "
        f"{'met' if mfu >= TARGET_MFU else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
