"""Running a profile: check everything, start the ranks, run the phases, sum up.

`prepare` turns the user's choices into a `RunConfig` and raises ConfigError for
anything that cannot work, before any process starts. `launch` runs it: in this
process, in `--nproc` spawned ranks, or as one rank of a job that torchrun or
Kubernetes started. `run_rank` is one rank from start to end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadgen import distributed, flops, memory, profile
from loadgen.distributed import DistEnv
from loadgen.errors import ConfigError, PeerFailed, RunFailed
from loadgen.model import ModelConfig, count_parameters, resolve
from loadgen.phases import RUNNERS, PhaseStats
from loadgen.profile import Phase, Profile
from loadgen.timeline import SCHEMA_VERSION, TimelineWriter
from loadgen.trainer import StepTiming, busbw_factor

log = logging.getLogger("gpuledger.loadgen")


@dataclass(frozen=True)
class RunConfig:
    """Everything a rank needs; picklable, so that spawned ranks get it whole."""

    profile: Profile
    model: ModelConfig
    device: str = "cpu"  # cpu or cuda
    nproc: int = 1  # ranks to spawn when no launcher started this process
    threads: int | None = None
    timeline: str = "loadgen-timeline.jsonl"
    job: str = "loadgen"
    metrics_port: int | None = None
    metrics_all_ranks: bool = True
    collective_timeout_s: float = 120.0
    init_timeout_s: float = 300.0
    seed: int = 0
    lr: float = 1e-3
    peak_flops: float | None = None
    compile: bool = False
    probe: bool = True
    memory_limit_bytes: int | None = None
    progress: str = "auto"
    log_level: str = "info"
    log_json: bool = True


def prepare(
    profile_name: str,
    *,
    model: str | None = None,
    model_overrides: dict[str, int | None] | None = None,
    nproc: int | None = None,
    device: str = "auto",
    memory_limit_bytes: int | None = None,
    env: DistEnv | None = None,
    job: str | None = None,
    time_scale: float = 1.0,
    **options: Any,
) -> RunConfig:
    """Check the choices; raise ConfigError naming what to fix. Starts nothing."""
    prof = profile.load(profile_name)
    if time_scale != 1.0:
        prof = profile.scaled(prof, time_scale)
    gpu = _gpu_wanted(device)
    if env is None:
        env = distributed.from_env()
    if nproc is not None and nproc < 1:
        raise ConfigError(f"--nproc must be 1 or more, got {nproc}")
    world = env.world_size if env else (nproc or prof.nproc or 1)
    if env and nproc not in (None, env.world_size):
        raise ConfigError(
            f"--nproc {nproc} conflicts with WORLD_SIZE={env.world_size} from the launcher: "
            "leave --nproc out when torchrun or Kubernetes starts the ranks"
        )
    if gpu and not env:
        import torch

        if world > torch.cuda.device_count():
            raise ConfigError(
                f"--nproc {world} needs {world} GPUs, this machine has {torch.cuda.device_count()}"
            )
    try:
        model_config = resolve(model or prof.model, model_overrides, gpu=gpu)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    profile.check_world(prof, world, gpu=gpu)
    local = env.local_world_size if env else world
    config = RunConfig(
        profile=prof,
        model=model_config,
        device="cuda" if gpu else "cpu",
        nproc=world,
        memory_limit_bytes=memory_limit_bytes,
        job=job or prof.name,
        **options,
    )
    _check_options(config)
    _check_fit(config, world, local, env.local_rank if env else 0)
    return config


def _gpu_wanted(device: str) -> bool:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return False
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no GPU here: use --device cpu")
    return torch.cuda.is_available()


def _check_options(config: RunConfig) -> None:
    if config.metrics_port is not None and not 0 < config.metrics_port < 65536:
        raise ConfigError(f"--metrics-port must be 1-65535, got {config.metrics_port}")
    if config.collective_timeout_s <= 0 or config.init_timeout_s <= 0:
        raise ConfigError("timeouts must be positive")
    if config.threads is not None and config.threads < 1:
        raise ConfigError(f"--threads must be 1 or more, got {config.threads}")
    if config.peak_flops is not None and config.peak_flops <= 0:
        raise ConfigError(f"--peak-flops must be positive, got {config.peak_flops}")
    if config.progress not in ("auto", "rich", "plain", "off"):
        raise ConfigError(f"--progress must be auto, rich, plain or off, got {config.progress!r}")
    folder = Path(config.timeline.format(rank=0)).absolute().parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise ConfigError(
            f"cannot write the timeline {config.timeline}: {existing} is not writable"
        )


def _check_fit(config: RunConfig, world: int, local_world: int, local_rank: int) -> None:
    """ConfigError if the model, plus what the profile adds, cannot fit one rank's memory."""
    gpu = config.device == "cuda"
    extra = 0
    for p in config.profile.phases:
        if p.kind == "memory_ramp" and not gpu:
            extra = max(extra, p["cpu_target_bytes"] or 0)
        if p.kind == "communication":
            # the message and gloo's or NCCL's working copy of it
            extra = max(extra, 2 * (p["message_bytes"] or (64 if gpu else 8) * 2**20))
    need = memory.estimate(config.model, world_size=world, gpu=gpu, extra=extra)
    if config.memory_limit_bytes is not None:
        limit, where = config.memory_limit_bytes, "--memory-limit"
    elif gpu:
        import torch

        limit, where = torch.cuda.get_device_properties(local_rank).total_memory, "the GPU's memory"
    else:
        limit, where = (
            memory.cpu_limit(local_world_size=local_world),
            "this machine's memory per rank",
        )
    if need.total > limit:
        m = config.model
        raise ConfigError(
            f"the model (depth {m.depth}, width {m.width}, vocab {m.vocab}, batch "
            f"{m.batch_size} x {m.context} tokens) needs about {memory.describe(need.total)} "
            f"per rank (weights, gradients and AdamW state {memory.describe(need.state)}, "
            f"activations {memory.describe(need.activations)}, profile extras "
            f"{memory.describe(need.extra)}), more than {where} ({memory.describe(limit)}): "
            "choose a smaller --model or --batch-size, or fewer ranks per machine"
        )


def launch(config: RunConfig, env: DistEnv | None = None) -> None:
    """Run the profile: as this rank, or in `config.nproc` spawned ranks."""
    env = env or distributed.from_env()
    if env is None and config.nproc > 1:
        distributed.spawn(config.nproc, run_rank, config)
        return
    run_rank(config, env or DistEnv())


class Rank:
    """One rank's running state: what the phases act on and report through."""

    def __init__(self, config: RunConfig, env: DistEnv) -> None:
        import torch

        self.config, self.env = config, env
        if config.device == "cuda":
            self.device = torch.device("cuda", env.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        self.threads = config.threads or max(1, (cpus or 1) // env.local_world_size)
        torch.set_num_threads(self.threads)
        self.watch: distributed.PeerWatch | None = None
        self.step_count = 0
        self.peak: float | None = None
        self.peak_source: str | None = None
        self.flops_per_token = flops.flops_per_token(config.model)
        self.trainer: Any = None
        self.timeline: Any = None
        self.metrics: Any = None
        self.progress: Any = None
        self.probe: Any = None
        self.server: Any = None

    def close(self) -> None:
        """Stop what the rank started beside training (it may be half started)."""
        if self.progress is not None:
            self.progress.close()
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        if self.probe is not None:
            from gpuledger import probe

            probe.disable()
            self.probe = None

    def note_progress(self, phase: str) -> None:
        if self.watch is not None:
            self.watch.progress(phase, self.step_count)

    def memory_in_use(self) -> int:
        return memory.in_use(self.device)

    def ballast_target(self, phase: Phase) -> int:
        """Bytes of ballast that bring the device to the memory ramp's target."""
        if self.device.type == "cuda":
            import torch

            free, total = torch.cuda.mem_get_info(self.device)
            return max(0, int(phase["target_fraction"] * total) - (total - free))
        return int(phase["cpu_target_bytes"])

    def record_step(self, stats: PhaseStats, t: StepTiming) -> dict[str, Any]:
        """Write a step's record to the timeline, the metrics and the progress line."""
        step_flops = self.flops_per_token * t.tokens
        algbw = t.collective_bytes / t.collective_s if t.collective_s > 0 else None
        record = self.timeline.write(
            "step",
            phase=stats.phase.name,
            kind=stats.phase.kind,
            index=stats.index,
            step=self.step_count,
            phase_step=len(stats.steps),
            start=t.start,
            end=t.start + t.step_s,
            step_s=t.step_s,
            compute_s=t.compute_s,
            stall_s=t.stall_s,
            straggle_s=t.straggle_s,
            collective_s=t.collective_s,
            collective_bytes=t.collective_bytes,
            algbw_bytes_per_s=algbw,
            busbw_bytes_per_s=algbw * busbw_factor(self.env.world_size) if algbw else None,
            tokens=t.tokens,
            tokens_per_s=t.tokens / t.step_s,
            flops=step_flops,
            flops_per_s=step_flops / t.step_s,
            mfu=step_flops / t.step_s / self.peak if self.peak else None,
            busy_ratio=min(1.0, t.busy_s / t.step_s),
            memory_bytes=self.memory_in_use(),
            loss=t.loss,
        )
        self.step_count += 1
        stats.add(record)
        self.metrics.step(record)
        if self.progress:
            self.progress.step(record)
        return record

    def barrier(self, what: str) -> None:
        if self.env.distributed:
            import torch.distributed as dist

            self.trainer.collective(dist.barrier, what)

    def probe_totals(self) -> dict | None:
        if self.probe is None:
            return None
        return {op: _as_dict(t) for op, t in self.probe.totals().items()}


def _as_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)  # type: ignore[arg-type]
    if hasattr(value, "_asdict"):
        return value._asdict()
    return vars(value) if hasattr(value, "__dict__") else value


def _enable_probe() -> Any:
    """The in-job collective probe, when this installation has it."""
    try:
        from gpuledger import probe
    except ModuleNotFoundError as e:
        if e.name != "gpuledger.probe":
            raise
        log.info("gpuledger.probe is not available: collectives are timed by loadgen only")
        return None
    return probe.enable(socket_path=None, interval_s=1.0)


def run_rank(config: RunConfig, env: DistEnv) -> None:
    """One rank from start to end. Raises RunFailed (PeerFailed if a peer was at fault)."""
    import torch

    if env.launcher == "spawn":
        from gpuledger import logs

        logs.configure(config.log_level, json_lines=config.log_json)
    threads_before = torch.get_num_threads()
    try:
        _run_rank(config, env)
    finally:
        torch.set_num_threads(threads_before)  # an in-process run leaves no trace


def _run_rank(config: RunConfig, env: DistEnv) -> None:
    rank = _start(config, env)
    run_start = time.monotonic()
    try:
        everyone = _run_phases(rank)
    except BaseException as error:
        message = str(error) or type(error).__name__
        if rank.watch is not None and not isinstance(error, PeerFailed):
            rank.watch.failed(message)  # so that the peers can name this rank
        duration = time.monotonic() - run_start
        rank.timeline.write("run_end", status="error", error=message, duration_s=duration)
        if isinstance(error, RunFailed | KeyboardInterrupt | SystemExit):
            raise
        log.error("rank %d failed", env.rank, exc_info=error)  # a bug: keep its traceback
        raise RunFailed(f"rank {env.rank}: {type(error).__name__}: {message}", env.rank) from error
    finally:
        rank.close()
    rank.timeline.write("run_end", status="ok", error=None, duration_s=time.monotonic() - run_start)
    if env.rank == 0 and config.progress != "off":
        from loadgen.progress import print_summary, summary_rows

        print_summary(
            summary_rows(everyone),
            rich_output=rank.progress is not None and rank.progress.mode == "rich",
            title=f"gpuledger loadgen: profile {config.profile.name}, {env.world_size} "
            f"rank(s), timeline {config.timeline}",
        )
    rank.timeline.close()
    if env.distributed:
        import torch.distributed as dist

        dist.destroy_process_group()


def _start(config: RunConfig, env: DistEnv) -> Rank:
    """Meet the other ranks, build the model, open the timeline and the metrics, and
    write run_start."""
    import torch

    rank = Rank(config, env)
    from loadgen.trainer import Trainer  # after the thread count is set

    if env.distributed:
        store = distributed.init_process_group(
            env,
            "nccl" if config.device == "cuda" else "gloo",
            config.collective_timeout_s,
            config.init_timeout_s,
        )
        rank.watch = distributed.PeerWatch(
            store, env.rank, env.world_size, rank0_hosts_store=not env.agent_store
        )
    rank.trainer = Trainer(
        config.model,
        rank.device,
        rank=env.rank,
        world_size=env.world_size,
        seed=config.seed,
        compile=config.compile,
        lr=config.lr,
        on_collective_error=rank.watch.explain if rank.watch else None,
    )
    # One rank per machine truncates a shared timeline file; the others wait for it.
    truncate = "{rank}" in config.timeline or env.local_rank == 0
    if truncate:
        rank.timeline = TimelineWriter(
            config.timeline, rank=env.rank, job=config.job, truncate=True
        )
    rank.barrier("start barrier")
    if not truncate:
        rank.timeline = TimelineWriter(config.timeline, rank=env.rank, job=config.job)
    rank.peak, rank.peak_source = _peak(config, rank.device)
    if env.rank == 0 and config.device == "cpu" and config.peak_flops is None:
        log.info(
            f"measured CPU matmul peak: {rank.peak / 1e9:.1f} GFLOP/s (float32, "
            f"{rank.threads} threads per rank); MFU is computed against it"
        )
    from loadgen.metrics import LoadgenMetrics

    rank.metrics = LoadgenMetrics(config.job, env.rank)
    rank.metrics.set_peak(rank.peak)
    if config.metrics_port is not None and (config.metrics_all_ranks or env.rank == 0):
        offset = env.local_rank if config.metrics_all_ranks else 0
        rank.server = rank.metrics.serve(config.metrics_port + offset)
    if config.probe and env.distributed:
        rank.probe = _enable_probe()
    total_params, matmul_params = count_parameters(config.model)
    cuda = rank.device.type == "cuda"
    rank.timeline.write(
        "run_start",
        world_size=env.world_size,
        local_rank=env.local_rank,
        launcher=env.launcher,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        profile=config.profile.name,
        device=str(rank.device),
        device_name=torch.cuda.get_device_name(rank.device) if cuda else "cpu",
        backend=("nccl" if cuda else "gloo") if env.distributed else None,
        threads=rank.threads,
        model=config.model.as_dict(),
        params=total_params,
        matmul_params=matmul_params,
        flops_per_token=rank.flops_per_token,
        tokens_per_step=rank.trainer.tokens_per_step,
        peak_flops=rank.peak,
        peak_source=rank.peak_source,
        memory_limit_bytes=config.memory_limit_bytes,
        probe=rank.probe is not None,
        phases=[
            {"name": p.name, "kind": p.kind, "duration_s": p.duration_s, "params": p.params}
            for p in config.profile.phases
        ],
        schema_version=SCHEMA_VERSION,
    )
    if env.rank == 0 and config.progress != "off":
        from loadgen.progress import Progress

        rank.progress = Progress(
            config.progress, planned_s=config.profile.planned_seconds, profile=config.profile.name
        )
    return rank


def _run_phases(rank: Rank) -> list[list[dict]]:
    """Run every phase; returns every rank's phase_end records (for rank 0's table)."""
    phases = rank.config.profile.phases
    summaries = []
    for index, phase in enumerate(phases):
        rank.barrier(f"barrier before phase {phase.name!r}")
        stats = PhaseStats(phase, index, rank.peak, rank.env.world_size)
        rank.timeline.write(
            "phase_start",
            phase=phase.name,
            kind=phase.kind,
            index=index,
            start=stats.start,
            planned_s=phase.duration_s,
            params=phase.params,
        )
        rank.metrics.phase(phase.name, phase.kind, True)
        if rank.progress:
            rank.progress.phase_start(index, len(phases), phase.name, phase.kind, phase.duration_s)
        try:
            RUNNERS[phase.kind](rank, stats)
        except BaseException:
            rank.timeline.write("phase_end", **stats.summary(status="error"))
            raise
        summary = rank.timeline.write("phase_end", **stats.summary(probe=rank.probe_totals()))
        rank.metrics.phase(phase.name, phase.kind, False)
        if rank.progress:
            rank.progress.phase_end(summary)
        summaries.append(summary)
    return _gather(rank, summaries)


def _gather(rank: Rank, summaries: list[dict]) -> list[list[dict]]:
    """Every rank's phase summaries, on every rank (for rank 0's table)."""
    if not rank.env.distributed:
        return [summaries]
    import torch.distributed as dist

    out: list[Any] = [None] * rank.env.world_size
    rank.trainer.collective(lambda: dist.all_gather_object(out, summaries), "summary gather")
    return out


def _peak(config: RunConfig, device: Any) -> tuple[float | None, str | None]:
    """The peak MFU is measured against, and where it came from."""
    if config.peak_flops:
        return config.peak_flops, "--peak-flops"
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        peak = flops.gpu_peak(name)
        if peak is None:
            log.warning(f"no datasheet peak for {name!r}: MFU is not computed; pass --peak-flops")
            return None, None
        return peak, f"datasheet dense bf16: {name}"
    return flops.measure_cpu_matmul_peak(), "measured float32 matmul on this CPU"
