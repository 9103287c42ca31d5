"""Model FLOPs, device peaks and MFU.

FLOPs per token follow PaLM (Chowdhery et al. 2022, appendix B):
    6·N + 12·L·H·Q·T
where N is the number of parameters that take part in matmuls (see
`model.count_parameters`), L the depth, H the heads, Q the head size and T the
context. The first term is forward (2N) plus backward (4N) of the weight matmuls;
the second is attention's QKᵀ and AV, forward and backward, over the full context.

MFU = tokens/s × FLOPs per token / peak. The peak is the datasheet dense bf16
figure for known GPUs (`GPU_PEAKS`) and, on the CPU, a float32 matmul peak measured
once at the start of a run with the threads the run was given.
"""

from __future__ import annotations

import re
import time

from loadgen.model import ModelConfig, count_parameters

# Dense (not sparse) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s.
# Patterns are tried in order against torch.cuda.get_device_name(); more specific first.
GPU_PEAKS: tuple[tuple[str, float], ...] = (
    (r"GB200", 2.5e15),
    (r"B200", 2.25e15),
    (r"B100", 1.75e15),
    (r"GH200", 989e12),
    (r"H200", 989e12),
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100", 989e12),
    (r"H800", 989e12),
    (r"\bH20\b", 148e12),
    (r"A100", 312e12),
    (r"A800", 312e12),
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
    (r"MI300X", 1307e12),
    (r"MI250X", 383e12),
)


def flops_per_token(config: ModelConfig) -> int:
    """Training FLOPs (forward + backward) per token: 6·N + 12·L·H·Q·T."""
    _, n_matmul = count_parameters(config)
    return 6 * n_matmul + 12 * config.depth * config.width * config.context


def gpu_peak(device_name: str) -> float | None:
    """Datasheet dense bf16 peak of a GPU by its name, or None if the table lacks it."""
    for pattern, peak in GPU_PEAKS:
        if re.search(pattern, device_name):
            return peak
    return None


def measure_cpu_matmul_peak(size: int = 1024, repeats: int = 8) -> float:
    """Best float32 FLOP/s of a square matmul on this CPU with torch's current threads.

    Best-of-n, because the peak is what the hardware can do; noise from other work on
    the machine only ever makes a run slower.
    """
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(2):  # warm the kernels and caches
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def mfu(flops_per_second: float, peak: float | None) -> float | None:
    """Model FLOP utilisation, or None when the peak is unknown."""
    if not peak:
        return None
    return flops_per_second / peak
