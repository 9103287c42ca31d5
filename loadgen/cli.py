"""`gpuledger loadgen`: real training steps shaped into phases, with a timeline.

Examples:
    gpuledger loadgen --profile quick                 # 2 ranks on this machine, ~1.5 min
    gpuledger loadgen --profile straggler --nproc 4 --metrics-port 9402
    torchrun --nproc-per-node 8 -m gpuledger loadgen --profile demo --model gpt2-124m
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from loadgen import model, profile
from loadgen.errors import ConfigError, RunFailed

if TYPE_CHECKING:
    from loadgen.runner import RunConfig

log = logging.getLogger("gpuledger.loadgen")


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 2)[2]
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--profile",
        default="demo",
        help=f"built-in profile ({', '.join(profile.builtin_names())}) or a YAML file; default demo",
    )
    what.add_argument("--list-profiles", action="store_true", help="list the built-in profiles")
    what.add_argument(
        "--dry-run", action="store_true", help="check everything, print the plan, run nothing"
    )
    what.add_argument(
        "--model",
        help=f"model preset: {', '.join(model.PRESETS)} (default: the profile's, else cpu or gpt2-124m)",
    )
    for name in ("depth", "width", "heads", "context", "vocab"):
        what.add_argument(f"--{name}", type=int, help=f"override the preset's {name}")
    what.add_argument("--batch-size", type=int, help="sequences per step per rank")
    what.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply the profile's phase durations (e.g. 0.1 with alert rules shortened alike)",
    )
    what.add_argument("--seed", type=int, default=0)
    what.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")

    where = parser.add_argument_group("where to run")
    where.add_argument(
        "--nproc",
        type=int,
        help="ranks to start on this machine (default: the profile's, else 1); not with torchrun",
    )
    where.add_argument("--device", default="auto", help="auto, cpu or cuda")
    where.add_argument(
        "--threads",
        type=int,
        help="CPU threads per rank (default: the CPUs given, shared by local ranks)",
    )
    where.add_argument("--compile", action="store_true", help="torch.compile the model")
    where.add_argument(
        "--memory-limit",
        help="memory per rank the model must fit in, e.g. 8GiB (default: the device's)",
    )
    where.add_argument(
        "--collective-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="a peer silent this long is declared hung (default 120)",
    )
    where.add_argument(
        "--init-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long ranks wait for each other at start (default 300)",
    )

    out = parser.add_argument_group("what it reports")
    out.add_argument(
        "--timeline",
        default="loadgen-timeline.jsonl",
        help="JSON Lines ground truth; {rank} in the path gives one file per rank",
    )
    out.add_argument(
        "--job", help="job label of the metrics and timeline (default: the profile's name)"
    )
    out.add_argument(
        "--metrics-port", type=int, help="serve the loadgen metrics on this port (+ local rank)"
    )
    out.add_argument(
        "--metrics-rank0-only", action="store_true", help="serve metrics from rank 0 only"
    )
    out.add_argument(
        "--peak-flops",
        type=float,
        help="peak FLOP/s for MFU (default: datasheet on GPUs, measured on the CPU)",
    )
    out.add_argument(
        "--no-probe", action="store_true", help="do not turn on the in-job collective probe"
    )
    out.add_argument("--progress", default="auto", help="auto, rich, plain or off")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.list_profiles:
        for name in profile.builtin_names():
            p = profile.load(name)
            print(f"{name:22} {p.planned_seconds:6.0f} s  {p.description}")
        return 0
    from loadgen import distributed, runner

    try:
        config = runner.prepare(
            args.profile,
            model=args.model,
            model_overrides={
                "depth": args.depth,
                "width": args.width,
                "heads": args.heads,
                "context": args.context,
                "vocab": args.vocab,
                "batch_size": args.batch_size,
            },
            nproc=args.nproc,
            device=args.device,
            memory_limit_bytes=(
                profile.parse_size(args.memory_limit, "--memory-limit")
                if args.memory_limit
                else None
            ),
            threads=args.threads,
            timeline=args.timeline,
            job=args.job,
            time_scale=args.time_scale,
            metrics_port=args.metrics_port,
            metrics_all_ranks=not args.metrics_rank0_only,
            collective_timeout_s=args.collective_timeout,
            init_timeout_s=args.init_timeout,
            seed=args.seed,
            lr=args.lr,
            peak_flops=args.peak_flops,
            compile=args.compile,
            probe=not args.no_probe,
            progress=args.progress,
            log_level=args.log_level,
            log_json=args.log_format == "json",
        )
    except ConfigError as e:
        print(f"gpuledger loadgen: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(plan(config), indent=2))
        return 0
    try:
        runner.launch(config)
    except RunFailed as e:
        print(f"gpuledger loadgen: the run failed: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("gpuledger loadgen: interrupted", file=sys.stderr)
        code = 130
    else:
        code = 0
    env = distributed.from_env()
    if env is not None and env.world_size > 1:
        _leave_as_a_rank(code)
    return code


def _leave_as_a_rank(code: int) -> None:
    """End this process (a rank started by torchrun or as a pod) without interpreter
    finalization. Everything is written and the process group destroyed by now, but
    gloo's C++ threads can still hold Python objects, and destroying those while the
    interpreter is torn down aborts the process (SIGABRT, "terminate called without an
    active exception": pytorch/pytorch#190489, #179291), turning a finished run into a
    failed pod. Seen here about once in four runs of two CPU ranks."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def plan(config: RunConfig) -> dict:
    """What a run would do, for --dry-run."""
    from loadgen import flops, memory
    from loadgen.model import count_parameters

    total, _ = count_parameters(config.model)
    gpu = config.device == "cuda"
    need = memory.estimate(config.model, world_size=config.nproc, gpu=gpu)
    return {
        "profile": config.profile.name,
        "ranks": config.nproc,
        "device": config.device,
        "model": config.model.as_dict(),
        "params": total,
        "flops_per_token": flops.flops_per_token(config.model),
        "memory_per_rank_bytes": need.total,
        "planned_s": config.profile.planned_seconds,
        "phases": [
            {"name": p.name, "kind": p.kind, "duration_s": p.duration_s, **p.params}
            for p in config.profile.phases
        ],
        "timeline": config.timeline,
    }
