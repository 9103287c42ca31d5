"""Probe overhead: a training-like step with the probe on vs off, in the same run.

Two ranks on gloo (CPU). Each step: forward and backward of a small MLP, one
all_reduce per gradient (as a plain data-parallel loop does), an SGD step. Blocks of
steps alternate between probe off (torch.distributed untouched, the baseline) and
probe on (reporting once a second to a real CollectiveServer in the parent), so that
machine noise hits both alike; "paired" is the median over rounds of the ratio of the
two blocks' median step times. On a shared machine that ratio moves by a few percent
either way, so the probe's own cost per call is measured too, where nothing hides it:
the probe's wrapper around a function that returns at once (sizing the tensor, the
group's size, the clock, the accumulators), best of many repeats, against the bare
function; times the calls per step, over the step time.

    python benchmarks/probe_overhead.py [--rounds 10] [--steps 20] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch.multiprocessing as mp  # noqa: E402

from exporter.attribution import PodRef  # noqa: E402
from exporter.collective.server import CollectiveServer  # noqa: E402


def _rank(rank: int, args: argparse.Namespace, store: str, sock: str, out: str) -> None:
    import json
    import warnings

    import torch
    import torch.distributed as dist
    from torch import nn

    from gpuledger import probe

    warnings.simplefilter("ignore", FutureWarning)
    torch.set_num_threads(1)  # two ranks share the machine's cores
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model = nn.Sequential(
        nn.Linear(args.width, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.width)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, args.width)
    y = torch.randn(args.batch, args.width)

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        for p in model.parameters():
            dist.all_reduce(p.grad)
            p.grad /= 2
        optimizer.step()
        return time.perf_counter() - t0, time.process_time() - c0

    def all_reduce_noop(tensor, op=None, group=None, async_op=False):
        return None

    def per_call_cost(repeats: int = 15, n: int = 20000) -> tuple[float, float]:
        """(bare, wrapped) seconds per call of a no-op all_reduce, best of `repeats`."""
        p = probe.enable(socket_path=sock, interval_s=args.interval)
        wrapped = p._wrap(all_reduce_noop, "all_reduce", "tensor", False, False)
        t = torch.ones(1)
        best = {"bare": float("inf"), "wrapped": float("inf")}
        for _ in range(repeats):
            for name, fn in (("bare", all_reduce_noop), ("wrapped", wrapped)):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn(t)
                best[name] = min(best[name], (time.perf_counter() - t0) / n)
        probe.disable()
        return best["bare"], best["wrapped"]

    for _ in range(args.warmup):
        step()
    times: dict[str, list[list[tuple[float, float]]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for mode in order:
            if mode == "on":
                probe.enable(socket_path=sock, interval_s=args.interval)
            dist.barrier()
            times[mode].append([step() for _ in range(args.steps)])
            if mode == "on":
                probe.disable()
    dist.barrier()
    if rank == 0:
        bare, wrapped = per_call_cost()
        with open(out, "w") as f:
            params = len(list(model.parameters()))
            json.dump({"times": times, "per_call": [bare, wrapped], "params": params}, f)
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="steps per block")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--interval", type=float, default=1.0, help="probe report interval")
    args = parser.parse_args()

    import json

    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "probe.sock")
        out = os.path.join(tmp, "result.json")
        pod = PodRef("bench", "probe-overhead", "main", "uid")
        with CollectiveServer(sock, lambda pid: pod, "bench-node") as server:
            mp.spawn(_rank, args=(args, os.path.join(tmp, "store"), sock, out), nprocs=2)
            snapshot = server.aggregator.snapshot()
        with open(out) as f:
            result = json.load(f)

    blocks, per_call = result["times"], result["per_call"]
    print(
        f"probe overhead: MLP {args.width}-{args.hidden}-{args.width}, batch {args.batch}, "
        f"{result['params']} all_reduce calls per step, 2 ranks on gloo, "
        f"{args.rounds} rounds x {args.steps} steps per mode, interleaved"
    )
    print()
    print(
        f"{'mode':<10}{'clock':<6}{'steps':>7}{'median ms':>12}{'mean ms':>10}{'p90 ms':>9}"
        f"{'vs off':>10}{'paired':>10}"
    )
    base_wall = 0.0
    for clock, index in (("wall", 0), ("cpu", 1)):
        rounds = {m: [[t[index] for t in block] for block in blocks[m]] for m in blocks}
        ratios = [
            statistics.median(on) / statistics.median(off)
            for on, off in zip(rounds["on"], rounds["off"], strict=True)
        ]
        base = statistics.median([t for block in rounds["off"] for t in block])
        if clock == "wall":
            base_wall = base
        for mode in ("off", "on"):
            t = sorted(x for block in rounds[mode] for x in block)
            median = statistics.median(t)
            p90 = t[int(0.9 * (len(t) - 1))]
            label = "probe off" if mode == "off" else "probe on"
            delta = "baseline" if mode == "off" else f"{(median / base - 1) * 100:+.2f}%"
            paired = "" if mode == "off" else f"{(statistics.median(ratios) - 1) * 100:+.2f}%"
            print(
                f"{label:<10}{clock:<6}{len(t):>7}{median * 1e3:>12.3f}"
                f"{statistics.mean(t) * 1e3:>10.3f}{p90 * 1e3:>9.3f}{delta:>10}{paired:>10}"
            )
    print("(cpu: this rank's CPU time, all threads; paired: median over rounds of on/off)")
    bare, wrapped = per_call
    print()
    print(f"{'no-op all_reduce':<24}{'us per call':>12}")
    print(f"{'bare function':<24}{bare * 1e6:>12.2f}")
    print(f"{'through the probe':<24}{wrapped * 1e6:>12.2f}")
    print(f"{'probe cost per call':<24}{(wrapped - bare) * 1e6:>12.2f}")
    cost = (wrapped - bare) * result["params"]
    print()
    print(
        f"probe cost per step: {result['params']} calls x {(wrapped - bare) * 1e6:.2f} us = "
        f"{cost * 1e6:.1f} us = {cost / base_wall * 100:.3f}% of the median step "
        f"({base_wall * 1e3:.1f} ms)"
    )
    accepted = sum(p.reports for p in snapshot.pods)
    print(f"exporter accepted {accepted} reports, rejected {sum(snapshot.rejected.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
