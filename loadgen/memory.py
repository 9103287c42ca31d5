"""Memory: will the model fit, how much does the rank hold, and the ramp's ballast."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loadgen.model import ModelConfig, count_parameters

GiB = 2**30
_CHUNK = 64 * 2**20  # ballast grows in pieces this size, so a ramp is smooth


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank needs, by part (an estimate with no allocator slack)."""

    state: int  # weights, gradients, AdamW moments, the gradient all-reduce buffer
    activations: int  # saved for backward, plus the logits and their gradient
    extra: int  # ballast and message buffers the profile asks for

    @property
    def total(self) -> int:
        return self.state + self.activations + self.extra


def estimate(config: ModelConfig, *, world_size: int, gpu: bool, extra: int = 0) -> MemoryEstimate:
    """Bytes per rank for training `config` with AdamW (float32 master state).

    Activations follow Korthikanti et al. 2022 (34·s·b·h bytes a layer in 16-bit,
    with the attention-score term dropped: scaled_dot_product_attention does not keep
    the score matrix); float32 on the CPU doubles them.
    """
    total, _ = count_parameters(config)
    per_param = 4 + 4 + 8 + (4 if world_size > 1 else 0) + (2 if gpu else 0)  # +bf16 copies
    b, t, d = config.batch_size, config.context, config.width
    per_layer = 34 * b * t * d * (1 if gpu else 2)
    logits = b * t * config.vocab * (4 + 4 + 4 + (2 if gpu else 0))
    return MemoryEstimate(total * per_param, config.depth * per_layer + logits, extra)


def cpu_limit(root: str | Path = "/", local_world_size: int = 1) -> int:
    """Memory one rank may use on this machine: the cgroup limit if any, else MemTotal,
    shared evenly by the local ranks."""
    root = Path(root)
    limit: int | None = None
    for path in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = (root / path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for no limit
            limit = int(text)
            break
    if limit is None:
        for line in (root / "proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                limit = int(line.split()[1]) * 1024
                break
    if limit is None:
        raise RuntimeError(f"cannot read the memory size from {root}/proc/meminfo")
    return limit // max(1, local_world_size)


def rss_bytes() -> int:
    """Resident set size of this process (what the CPU 'device' has in use)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_use(device: object) -> int:
    """Memory the rank holds on its device: reserved by torch on a GPU, RSS on the CPU."""
    import torch

    if isinstance(device, torch.device) and device.type == "cuda":
        return int(torch.cuda.memory_reserved(device))
    return rss_bytes()


class Ballast:
    """Memory held on purpose, grown in chunks and freed at once."""

    def __init__(self, device: object) -> None:
        self.device = device
        self._chunks: list = []
        self.bytes = 0

    def grow_to(self, target: int) -> None:
        import torch

        while self.bytes < target:
            n = min(_CHUNK, target - self.bytes)
            # Write every page: untouched pages of an empty tensor are not resident.
            self._chunks.append(torch.ones(n, dtype=torch.uint8, device=self.device))
            self.bytes += n

    def release(self) -> None:
        import torch

        self._chunks.clear()
        self.bytes = 0
        if isinstance(self.device, torch.device) and self.device.type == "cuda":
            torch.cuda.empty_cache()  # so that NVML sees the memory go


def describe(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"
