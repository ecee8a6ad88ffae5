"""Turning logits into tokens: greedy, or temperature / top-k / top-p with a seeded generator.

`probs` gives the warped distribution that both plain sampling and speculative verification use, so the
speculative path samples from exactly the distribution the plain path does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Sampler:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature must be >= 0, top_p in (0, 1], top_k >= 0")
        self.generator = torch.Generator()
        if self.seed is not None:
            self.generator.manual_seed(self.seed)
        else:
            self.generator.seed()

    @property
    def greedy(self) -> bool:
        # below this, logits / temperature overflows float32: such a temperature means greedy anyway
        return self.temperature < 1e-5

    def probs(self, logits: Tensor) -> Tensor:
        """logits [..., V] -> warped probabilities [..., V] (float32)."""
        logits = logits.float() / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            # keep the smallest set whose mass reaches top_p (the first token always stays)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= self.top_p
            # said, not left to the comparison: a top_p below float32's range (1e-300) is 0.0 there
            drop[..., 0] = False
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
            probs = probs / probs.sum(-1, keepdim=True)
        return probs

    def draw(self, probs: Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def sample(self, logits: Tensor) -> int:
        """logits [V] -> one token id."""
        if self.greedy:
            return int(torch.argmax(logits))
        return self.draw(self.probs(logits))
