"""Nonparametric kernels of the region statistics: rank-sum, Spearman, mean +- SEM, Bonferroni.

Pure functions on arrays and Series, tested against scipy (``tests/test_roi_stats.py``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["rank_sum_test", "mean_sem", "spearman", "bonferroni", "significance_marks"]


def rank_sum_test(a, b, continuity: bool = True) -> tuple[float, float, float]:
    """Two-tailed Wilcoxon rank-sum (Mann-Whitney U) test, normal approximation.

    Parameters
    ----------
    a, b : array_like
        The two samples (non-finite values are dropped).
    continuity : bool
        Apply the 0.5 continuity correction (as ``scipy.stats.mannwhitneyu``
        with ``use_continuity=True`` and MATLAB's ``ranksum``).

    Returns
    -------
    u : float
        Mann-Whitney U of ``a`` (rank sum of ``a`` minus ``n_a (n_a + 1) / 2``).
    z : float
        Standard normal deviate with tie correction; positive when ``a`` ranks higher.
    p : float
        Two-tailed p value, ``2 * (1 - Phi(|z|))``.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a = a[np.isfinite(a)]
    b = b[np.isfinite(b)]
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return np.nan, np.nan, np.nan
    ranks = stats.rankdata(np.concatenate([a, b]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    _, counts = np.unique(ranks, return_counts=True)
    tie_term = float(np.sum(counts.astype(float) ** 3 - counts)) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if not var > 0:
        return float(u), np.nan, np.nan
    d = u - n1 * n2 / 2.0
    if continuity:
        d = np.sign(d) * max(abs(d) - 0.5, 0.0)
    z = d / np.sqrt(var)
    p = min(1.0, 2.0 * stats.norm.sf(abs(z)))
    return float(u), float(z), float(p)


def mean_sem(x) -> tuple[int, float, float]:
    """(n, mean, standard error of the mean) of the finite values."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return 0, np.nan, np.nan
    sem = float(np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else np.nan
    return n, float(np.mean(x)), sem


def spearman(x, y) -> tuple[int, float, float]:
    """(n, rho, p) of Spearman's rank correlation over the pairs where both are finite (NaN when n < 3)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return n, np.nan, np.nan
    res = stats.spearmanr(x[ok], y[ok])
    return n, float(res.statistic), float(res.pvalue)


def bonferroni(p: pd.Series) -> pd.Series:
    """Bonferroni-corrected p over the finite p values (capped at 1)."""
    m = int(np.isfinite(p.to_numpy(dtype=float)).sum())
    return (p * m).clip(upper=1.0) if m else p


def significance_marks(p: float, p_bonferroni: float) -> str:
    """The paper's marks: * P<.05, ** P<.01, *** Bonferroni P<.05, **** Bonferroni P<.01."""
    if np.isfinite(p_bonferroni) and p_bonferroni < 0.01:
        return "****"
    if np.isfinite(p_bonferroni) and p_bonferroni < 0.05:
        return "***"
    if np.isfinite(p) and p < 0.01:
        return "**"
    if np.isfinite(p) and p < 0.05:
        return "*"
    return ""
