import math

import pytest

from loadgen.flops import flops_per_token, gpu_peak, measure_cpu_matmul_peak, mfu
from loadgen.model import ModelConfig


def test_flops_per_token_by_hand() -> None:
    # V=256, T=64, L=2, d=64 (H=4 heads of Q=16), tied embeddings, no biases.
    config = ModelConfig(depth=2, width=64, heads=4, context=64, vocab=256, batch_size=8)
    n = 256 * 64 + 2 * (12 * 64 * 64 + 2 * 64) + 64  # token embedding, blocks, final norm
    assert n == 115_008
    by_hand = 6 * n + 12 * 2 * 4 * 16 * 64  # 6N + 12·L·H·Q·T
    assert by_hand == 788_352
    assert flops_per_token(config) == by_hand


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA H20", 148e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA B200", 2.25e15),
        ("Tesla T4", None),
    ],
)
def test_datasheet_peaks(name: str, peak: float | None) -> None:
    assert gpu_peak(name) == peak


def test_cpu_matmul_peak_is_measured() -> None:
    peak = measure_cpu_matmul_peak(size=256, repeats=3)
    assert math.isfinite(peak) and peak > 1e8  # any CPU of this century


def test_mfu_without_a_peak_is_unknown() -> None:
    assert mfu(5e9, 1e10) == 0.5
    assert mfu(5e9, None) is None
