"""The model the load generator trains: a GPT-style decoder (pre-norm, tied embeddings).

Sizes are named presets (from about 100k parameters for tests to about 1B for a large
GPU) or a custom `ModelConfig`. Attention uses `F.scaled_dot_product_attention`, which
picks flash or memory-efficient kernels on GPUs and a fused path on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder. `width` must divide by `heads` (head size Q = width/heads)."""

    depth: int = 4  # L, transformer blocks
    width: int = 256  # d_model = H * Q
    heads: int = 4  # H
    context: int = 128  # T, sequence length
    vocab: int = 4096
    batch_size: int = 8  # sequences per step per rank

    def problems(self) -> list[str]:
        """What is wrong with this shape, in words a user can act on (empty if fine)."""
        out = [
            f"{name} must be a positive integer (got {value!r})"
            for name, value in asdict(self).items()
            if not isinstance(value, int) or isinstance(value, bool) or value < 1
        ]
        if not out and self.width % self.heads:
            out.append(f"width {self.width} must be a multiple of heads {self.heads}")
        return out

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# Presets: `tiny` for tests, `cpu` sized so that matmuls dominate a CPU step, GPT-2
# small and medium shapes, and a ~1B model for a large GPU (fits an 80 GB card).
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(depth=2, width=64, heads=4, context=64, vocab=256, batch_size=8),
    "cpu-small": ModelConfig(depth=4, width=128, heads=4, context=128, vocab=2048, batch_size=8),
    "cpu": ModelConfig(depth=4, width=512, heads=8, context=128, vocab=4096, batch_size=16),
    "gpt2-124m": ModelConfig(
        depth=12, width=768, heads=12, context=1024, vocab=50304, batch_size=16
    ),
    "gpt2-350m": ModelConfig(
        depth=24, width=1024, heads=16, context=1024, vocab=50304, batch_size=8
    ),
    "gpt-1b": ModelConfig(depth=20, width=2048, heads=16, context=2048, vocab=50304, batch_size=8),
}
DEFAULT_CPU_PRESET = "cpu"
DEFAULT_GPU_PRESET = "gpt2-124m"


def resolve(
    preset: str | dict | None, overrides: dict | None = None, *, gpu: bool = False
) -> ModelConfig:
    """A config from a preset name, or a mapping of fields (optionally with `preset`)."""
    fields = dict(preset) if isinstance(preset, dict) else {"preset": preset}
    name = fields.pop("preset", None) or (DEFAULT_GPU_PRESET if gpu else DEFAULT_CPU_PRESET)
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}: choose one of {', '.join(PRESETS)}")
    known = set(asdict(PRESETS[name]))
    fields.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"unknown model field(s) {', '.join(unknown)}: the fields are {', '.join(sorted(known))}"
        )
    config = replace(PRESETS[name], **fields)
    problems = config.problems()
    if problems:
        raise ValueError("model: " + "; ".join(problems))
    return config


def count_parameters(config: ModelConfig) -> tuple[int, int]:
    """(all parameters, parameters that take part in matmuls) without building the model.

    The second excludes the position embedding, a lookup; the token embedding counts
    because it is tied to the output projection, a matmul (as in nanoGPT and PaLM).
    """
    d, L = config.width, config.depth
    per_block = 12 * d * d + 2 * d  # qkv 3d², proj d², MLP 8d², two LayerNorm weights
    matmul = config.vocab * d + L * per_block + d  # + final LayerNorm weight
    return matmul + config.context * d, matmul


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.width
        self.heads = config.heads
        self.norm1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x)), approximate="tanh"))


class GPT(nn.Module):
    """Decoder-only transformer; `forward(tokens, targets)` returns the mean cross-entropy."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab, config.width)
        self.pos = nn.Embedding(config.context, config.width)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, bias=False)
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.apply(self._init)
        # GPT-2: scale the residual projections by depth so activations stay bounded.
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.depth))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        x = self.tok(tokens) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), targets.reshape(-1))
