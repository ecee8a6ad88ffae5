"""Scores: the unbiased pass@k estimator, pass@k over a benchmark, exact match of an infilled middle, and the
confidence interval a score is printed with."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct.

    1 - C(n-c, k) / C(n, k), computed as a product of ratios so large n neither overflows nor loses
    precision. Undefined for k > n: raises ValueError (the official package's shortcut returns 1.0
    there even with no correct sample, which is why pass@k is only reported where every task has n >= k).
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    remaining = 1.0
    for i in range(n - c + 1, n + 1):
        remaining *= 1.0 - k / i
    return 1.0 - remaining


def pass_at_k_table(counts: Mapping[str, tuple[int, int]], ks: Iterable[int] = KS) -> dict[str, float]:
    """`{"pass@k": mean over tasks}` for each k that every task's sample count allows.

    counts: task id -> (samples n, correct c).
    """
    if not counts:
        return {}
    fewest = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts.values()) / len(counts)
        for k in ks
        if k <= fewest
    }


def count_correct(records: Iterable[Mapping]) -> dict[str, tuple[int, int]]:
    """task id -> (samples, passed) from result records with `task_id` and `passed`."""
    counts: dict[str, tuple[int, int]] = {}
    for record in records:
        n, c = counts.get(record["task_id"], (0, 0))
        counts[record["task_id"]] = (n + 1, c + bool(record["passed"]))
    return counts


def exact_match(completion: str, reference: str) -> bool:
    """The infilled middle equals the removed one, ignoring surrounding whitespace."""
    return completion.strip() == reference.strip()


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96). Unlike the normal approximation it
    stays inside [0, 1] and is not zero-width at 0% or 100%, which matters for the low scores of small
    models. `successes` may be fractional (pass@1 averaged over several samples per task)."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one task, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
