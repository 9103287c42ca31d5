"""One rank's training: real forward, backward, gradient all-reduce and AdamW steps,
each timed so that the timeline can say where the time went.

Gradients live in one flat buffer (the parameters' .grad are views into it), so the
data-parallel all-reduce is a single collective whose bytes and time are exact. One
extra element carries each rank's "this is my last step" vote, so that all ranks end
a phase on the same step without a second collective.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from loadgen.data import SyntheticTokens
from loadgen.model import GPT, ModelConfig

T = TypeVar("T")


def busbw_factor(world_size: int) -> float:
    """nccl-tests' bus bandwidth factor for all_reduce: 2(n-1)/n."""
    return 2 * (world_size - 1) / world_size


@dataclass
class StepTiming:
    """Where one step's wall time went (seconds), and what it moved."""

    start: float  # unix time
    step_s: float
    compute_s: float
    stall_s: float = 0.0
    straggle_s: float = 0.0
    collective_s: float = 0.0
    collective_bytes: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    loss: float | None = None
    last: bool = False  # some rank voted this the phase's last step


def _adamw(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel (one pass over all parameters; on the CPU too since
    torch 2.4, where it is several times faster than the per-tensor loop)."""
    options = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.01}
    try:
        return torch.optim.AdamW(params, fused=True, **options)
    except (RuntimeError, ValueError):  # older torch: fused on GPUs only
        return torch.optim.AdamW(params, **options)


class _GpuBusy:
    """Sums CUDA-event time over the spans of a step where the GPU has work."""

    def __init__(self) -> None:
        self._pairs: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def span(self) -> Any:
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        yield
        end.record()
        self._pairs.append((begin, end))

    def seconds(self) -> float:
        if self._pairs:
            self._pairs[-1][1].synchronize()
        return sum(b.elapsed_time(e) for b, e in self._pairs) / 1000.0


class Trainer:
    """Model, optimizer, data and the timed step of one rank."""

    def __init__(
        self,
        config: ModelConfig,
        device: torch.device,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        compile: bool = False,
        lr: float = 3e-3,
        on_collective_error: Callable[[BaseException, str], BaseException] | None = None,
    ) -> None:
        self.config, self.device = config, device
        self.rank, self.world_size = rank, world_size
        self.cuda = device.type == "cuda"
        torch.manual_seed(seed)  # same initial weights on every rank, as DDP broadcasts
        self.model = GPT(config).to(device)
        self.forward: Callable[..., torch.Tensor] = (
            torch.compile(self.model) if compile else self.model
        )
        params = list(self.model.parameters())
        self.n_params = sum(p.numel() for p in params)
        self.optimizer = _adamw(params, lr)
        self.flat_grads = torch.zeros(self.n_params + 1, device=device)
        offset = 0
        for p in params:
            p.grad = self.flat_grads[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.data = SyntheticTokens(
            config.vocab, config.context, config.batch_size, seed=seed, rank=rank, device=device
        )
        self.tokens_per_step = config.batch_size * config.context
        self._on_error = on_collective_error
        self._last_compute_s = 0.0

    def collective(self, fn: Callable[[], T], what: str) -> T:
        """Run a collective; a peer's crash or hang becomes an error that names it."""
        try:
            return fn()
        except RuntimeError as e:  # gloo/NCCL errors and timeouts (DistBackendError)
            if self._on_error is None:
                raise
            raise self._on_error(e, what) from e

    def all_reduce(self, tensor: torch.Tensor, what: str) -> float:
        """Sum `tensor` over ranks in place; returns the seconds it took (incl. waiting)."""
        import torch.distributed as dist

        start = time.perf_counter()
        self.collective(lambda: dist.all_reduce(tensor), what)
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _autocast(self) -> Any:
        if self.cuda:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(
        self, *, last: bool = False, stall_s: float = 0.0, straggle_factor: float = 1.0
    ) -> StepTiming:
        """One training step. `last`: this rank votes to end the phase after it."""
        wall_start, t0 = time.time(), time.perf_counter()
        inputs, targets = self.data.next_batch(stall_s)
        t_data = time.perf_counter()
        gpu = _GpuBusy() if self.cuda else None
        span = gpu.span if gpu else contextlib.nullcontext
        with span():
            with self._autocast():
                loss = self.forward(inputs, targets)
            loss.backward()
        if self.cuda:
            # Not overlapped with the all-reduce, so that compute and collective times
            # are each what they say.
            torch.cuda.synchronize(self.device)
        fwd_bwd_s = time.perf_counter() - t_data
        straggle_s = 0.0
        if straggle_factor > 1:
            # Slower by `factor`: sleep for (factor - 1) × the compute of this step.
            slept = time.perf_counter()
            time.sleep((straggle_factor - 1) * (fwd_bwd_s + self._last_compute_s))
            straggle_s = time.perf_counter() - slept
        collective_s, collective_bytes = 0.0, 0
        self.flat_grads[-1] = 1.0 if last else 0.0
        if self.world_size > 1:
            with span():
                collective_s = self.all_reduce(self.flat_grads, "gradient all_reduce")
            collective_bytes = self.flat_grads.numel() * self.flat_grads.element_size()
            self.flat_grads.div_(self.world_size)
        last = bool(self.flat_grads[-1].item() > 0)
        t_opt = time.perf_counter()
        with span():
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=False)  # keep .grad as views of flat_grads
        loss_value = loss.item()  # waits for the device
        t_end = time.perf_counter()
        opt_s = t_end - t_opt
        compute_s = fwd_bwd_s + opt_s
        self._last_compute_s = opt_s
        # GPU: kernel time between events, NCCL included (NVML counts it busy too).
        busy_s = gpu.seconds() if gpu else compute_s
        return StepTiming(
            start=wall_start,
            step_s=t_end - t0,
            compute_s=compute_s,
            stall_s=t_data - t0,
            straggle_s=straggle_s,
            collective_s=collective_s,
            collective_bytes=collective_bytes,
            tokens=self.tokens_per_step,
            busy_s=busy_s,
            loss=loss_value,
            last=last,
        )

    def exchange(
        self, buffer: torch.Tensor, *, last: bool, delay_s: float, turn: int
    ) -> StepTiming:
        """One all_reduce of `buffer` (a communication phase's step).

        With `delay_s`, rank `turn % world_size` waits before the call, so that every
        other rank waits inside the collective, and sees a lower bandwidth.
        """
        wall_start, t0 = time.time(), time.perf_counter()
        buffer.zero_()  # repeated sums would overflow
        buffer[0] = 1.0 if last else 0.0
        delayed_s = 0.0
        if delay_s > 0 and turn % self.world_size == self.rank:
            slept = time.perf_counter()
            time.sleep(delay_s)
            delayed_s = time.perf_counter() - slept
        seconds = self.all_reduce(buffer, "all_reduce of the communication phase")
        last = bool(buffer[0].item() > 0)
        busy_s = seconds if self.cuda else 0.0
        return StepTiming(
            start=wall_start,
            step_s=time.perf_counter() - t0,
            compute_s=0.0,
            straggle_s=delayed_s,
            collective_s=seconds,
            collective_bytes=buffer.numel() * buffer.element_size(),
            busy_s=busy_s,
            last=last,
        )
