"""When speculation pays, and how long a draft should be: from the measured cost of verifying drafts.

Verifying k draft tokens is one forward pass over 1 + k positions. Its cost relative to a plain decode step
depends on the CPU, the weight format and the model size (memory-bound steps verify cheaply, compute-bound
ones do not), so it is measured on the machine rather than assumed. With a per-token acceptance
probability a, a draft of k tokens yields 1 + a + ... + a^k tokens for its pass (the accepted run plus the
target's own next token), so the best draft length maximises (1 - a^(k+1)) / (1 - a) / cost(k), and
drafting pays at all only where that ratio exceeds 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from codegemma.model import Transformer

# Per-token acceptance the engine assumes to decide whether speculation is on by default: n-gram drafts of
# code completions were accepted 56% of the time on multi-line and 18% on single-line HumanEval-Infilling
# (`codegemma bench speculative`); the draft policy adapts to what it sees from there.
TYPICAL_ACCEPTANCE = 0.5


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens one verification of a k-token draft yields: 1 + a + ... + a^k."""
    a = min(max(acceptance, 0.0), 1.0)
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


@dataclass(frozen=True)
class VerifyCost:
    """Time of a forward pass over 1 + k positions relative to one over a single position, measured at
    some ks (k = 0 is 1.0); other ks interpolate linearly, and beyond the last measured k extrapolate."""

    points: tuple[tuple[int, float], ...]  # ((k, ratio), ...) with k ascending, starting (0, 1.0)

    def __call__(self, k: int) -> float:
        pts = self.points
        for (k0, c0), (k1, c1) in zip(pts, pts[1:]):
            if k <= k1:
                return c0 + (c1 - c0) * (k - k0) / (k1 - k0)
        (k0, c0), (k1, c1) = pts[-2], pts[-1]
        return c1 + (c1 - c0) / (k1 - k0) * (k - k1)

    def best_draft(self, acceptance: float, max_k: int) -> int:
        """The draft length with the most tokens per unit of time; 0 where no draft beats a plain step."""
        best_k, best = 0, 1.0
        for k in range(1, max_k + 1):
            gain = expected_tokens(acceptance, k) / self(k)
            if gain > best:
                best_k, best = k, gain
        return best_k

    def pays(self, acceptance: float = TYPICAL_ACCEPTANCE, max_k: int = 16) -> bool:
        return self.best_draft(acceptance, max_k) > 0

    def to_dict(self) -> dict[str, float]:
        return {str(k): round(c, 3) for k, c in self.points[1:]}


FREE = VerifyCost(((0, 1.0), (1, 1.0)))  # a cost table in which drafts cost nothing (e.g. a draft model's choice)


@torch.inference_mode()
def measure_pass_times(model: Transformer, ks: tuple[int, ...] = (1, 2, 4, 8, 15), depth: int = 128,
                       reps: int = 3) -> dict[int, float]:
    """The best seconds of a forward pass over n = 1 and n = 1 + k positions after `depth` cached ones, for
    the ks that fit the model's context, interleaved over the ns so that drift of the machine's speed hits
    all alike, best of `reps` each. Overwrites the model's KV cache from position 0: callers must drop
    whatever their prompt cache believed it held."""
    ks = tuple(k for k in ks if depth + 1 + k <= model.max_len)
    if not ks:
        return {}
    depth = min(depth, model.max_len - 1 - max(ks))
    generator = torch.Generator().manual_seed(0)
    vocab = model.cfg.vocab_size
    if depth > 0:
        model(torch.randint(3, vocab, (1, depth), generator=generator), torch.arange(depth))
    ids = torch.randint(3, vocab, (1, 1 + max(ks)), generator=generator)
    best = {n: float("inf") for n in (1, *(1 + k for k in ks))}
    for _ in range(reps):
        for n in best:
            start = time.perf_counter()
            model(ids[:, :n], torch.arange(depth, depth + n))
            best[n] = min(best[n], time.perf_counter() - start)
    return best


def cost_from_times(times: dict[int, float]) -> VerifyCost:
    """The cost table of best pass times by number of positions (measure_pass_times; several measurements'
    times may be merged by taking each n's minimum: outside load only ever adds time)."""
    if 1 not in times or len(times) < 2:
        return FREE
    one = times[1]
    points, floor = [(0, 1.0)], 1.0
    for n in sorted(times)[1:]:
        floor = max(floor, times[n] / one)  # more positions never cost less: drop timing noise
        points.append((n - 1, floor))
    return VerifyCost(tuple(points))
