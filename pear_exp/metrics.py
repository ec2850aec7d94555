"""Evaluation metrics: unbiased pass@k, and a mean with its 95% interval (problems or seeds)."""

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


def mean_ci95(values: list[float], *, student_t: bool = False) -> tuple[float, float]:
    """Mean of `values` and the half-width of a two-sided 95% interval for it: q * s / sqrt(n),
    s the sample standard deviation. Both are nan without values, the half-width with one.

    q is 1.96, the normal approximation, unless `student_t`: then Student's t quantile with
    n - 1 degrees of freedom (exact, from scipy), for a sweep's few seeds, where 1.96 would be
    far too narrow (t is 12.7 for 2 seeds, 2.78 for 5). Evaluation averages over problems and
    keeps the normal 1.96 it has always reported with (for AIME's 30 problems t would give 2.05).
    """
    m = len(values)
    if m == 0:
        return float("nan"), float("nan")
    mean = sum(values) / m
    if m == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (m - 1)
    q = 1.96
    if student_t:
        # imported here: scipy.stats adds ~0.4 s to the start of every command, evaluation's
        # import of this module included, and only the sweep report needs it
        from scipy.stats import t

        q = float(t.ppf(0.975, m - 1))
    return mean, q * math.sqrt(var / m)
