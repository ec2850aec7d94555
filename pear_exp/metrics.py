"""Evaluation metrics: unbiased pass@k, avg@n and their confidence intervals."""

from __future__ import annotations

import math
from math import comb


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    The probability that a random k-subset of the n samples holds at least one correct one
    (Chen et al., 2021), not the biased "best of the first k".
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a normal-approximation 95% interval over problems."""
    m = len(values)
    if m == 0:
        return float("nan"), float("nan")
    mean = sum(values) / m
    if m == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    return mean, 1.96 * math.sqrt(var / m)
