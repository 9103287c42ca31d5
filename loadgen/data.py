"""Synthetic training tokens with structure a model can learn, and an input stall.

Uniform random tokens cannot be learned (the loss stays at ln V), so the stream is a
noisy successor chain: after token a comes `successor(a) = (m·a + c) mod V` with
probability `1 - noise`, otherwise a uniform token. The affine successor (m coprime
with V, so a permutation) lets a whole batch be drawn in a few vector operations:
k steps after the last jump to token b the token is (mᵏ·b + c·(1+m+…+mᵏ⁻¹)) mod V. The best possible loss is known (the entropy
of one step of the chain, `floor_loss`), so a run shows the loss falling from ln V
towards it. Each rank draws from its own generator, as data-parallel ranks read
different shards.
"""

from __future__ import annotations

import math
import random
import time

import torch


def _coprime_multiplier(rng: random.Random, vocab: int) -> int:
    """A multiplier m > 1 with gcd(m, V) = 1, so that a -> m·a + c is a permutation."""
    candidates = [m for m in range(2, vocab) if math.gcd(m, vocab) == 1]
    return rng.choice(candidates) if candidates else 1


class SyntheticTokens:
    """Batches of (inputs, targets), each `batch_size × context` token ids."""

    def __init__(
        self,
        vocab: int,
        context: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        noise: float = 0.1,
        device: torch.device | str = "cpu",
    ) -> None:
        self.vocab, self.context, self.batch_size = vocab, context, batch_size
        self.noise = noise
        self.device = torch.device(device)
        # The chain is the same on every rank (one "language"); the samples are not.
        chain = random.Random(seed)
        self.m = _coprime_multiplier(chain, vocab)
        self.c = chain.randrange(vocab)
        # mᵏ mod V and c·(1+m+…+mᵏ⁻¹) mod V for k = 0..context: the chain k steps on.
        powers, offsets = [1], [0]
        for _ in range(context):
            offsets.append((offsets[-1] * self.m + self.c) % vocab)
            powers.append(powers[-1] * self.m % vocab)
        self._powers = torch.tensor(powers, dtype=torch.long)
        self._offsets = torch.tensor(offsets, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + rank + 1)

    def successor(self, tokens: torch.Tensor) -> torch.Tensor:
        """The likely next token after each of `tokens`."""
        return (tokens * self.m + self.c) % self.vocab

    def floor_loss(self) -> float:
        """Cross-entropy of the best predictor of this stream (nats)."""
        p_succ = 1 - self.noise + self.noise / self.vocab
        p_other = self.noise / self.vocab
        return -(p_succ * math.log(p_succ) + (self.vocab - 1) * p_other * math.log(p_other))

    def next_batch(self, stall_s: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch; with `stall_s` > 0 the loader first waits that long (a slow input)."""
        if stall_s > 0:
            time.sleep(stall_s)
        b, t, g = self.batch_size, self.context + 1, self.generator
        jumps = torch.rand(b, t, generator=g) < self.noise
        jumps[:, 0] = True  # the first token of a sequence is drawn uniformly
        randoms = torch.randint(self.vocab, (b, t), generator=g)
        index = torch.arange(t).expand(b, t)
        last_jump = torch.where(jumps, index, torch.zeros_like(index)).cummax(dim=1).values
        base = randoms.gather(1, last_jump)
        k = index - last_jump
        seq = (self._powers[k] * base + self._offsets[k]) % self.vocab
        seq = seq.to(self.device, non_blocking=True)
        return seq[:, :-1], seq[:, 1:]
