"""Correlations that control for covariates, and effect sizes of two-group comparisons.

Pure functions on arrays (and, for the region pairs, on a participants x
region-unit DataFrame); no file I/O.

- :func:`partial_spearman`: Spearman correlation of x and y controlling for
  covariates. x, y and every covariate column are rank-transformed (average
  ranks for ties), the ranks of x and y are regressed on the covariate ranks
  by least squares with an intercept, and the Pearson correlation of the two
  residual vectors is the partial rho. Its p value comes from
  ``t = rho sqrt(df / (1 - rho^2))`` with ``df = n - 2 - k`` (k covariate
  columns), two-sided. With no covariate this is the ordinary Spearman
  correlation with scipy's p. Ranking the covariates too is the usual
  definition (R's ppcor, pingouin); a 0/1 dummy column ranks to an affine
  copy of itself, so categorical covariates enter exactly as dummy codes.
- :func:`covariate_matrix`: dummy coding of the covariates within the
  participants analysed, dropping those constant there.
- :func:`rank_biserial` and :func:`cohens_d`: effect sizes of A vs B, both
  positive when A is higher (the sign of the rank-sum Z), and
  :func:`effect_sizes` with their seeded percentile-bootstrap intervals.
- :func:`region_pair_correlations`: Spearman (and partial) correlation of two
  regions' values across participants, hemispheres matched, for checks such
  as CST vs globus pallidus leakage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "EFFECT_SIZE_COLUMNS",
    "PARTIAL_COLUMNS",
    "Correlation",
    "EffectSizes",
    "cohens_d",
    "covariate_matrix",
    "effect_size_sidecar",
    "effect_size_table",
    "effect_sizes",
    "pair_correlation_rows",
    "partial_fields",
    "partial_sidecar",
    "partial_spearman",
    "rank_biserial",
    "region_pair_correlations",
    "region_units",
]


@dataclass(frozen=True)
class Correlation:
    """A (partial) rank correlation.

    Attributes
    ----------
    n : participants with every value present.
    rho : correlation coefficient (NaN when undefined).
    p : two-sided p value.
    df : residual degrees of freedom of the t test, ``n - 2 - k``.
    k : number of covariate columns controlled for.
    """

    n: int
    rho: float
    p: float
    df: int
    k: int

    @property
    def rho_squared(self) -> float:
        return self.rho * self.rho if np.isfinite(self.rho) else np.nan


def _as_covariates(covariates, n: int) -> np.ndarray:
    if covariates is None:
        return np.empty((n, 0))
    z = np.asarray(covariates, dtype=float)
    if z.ndim == 1:
        z = z[:, None]
    if z.shape[0] != n:
        raise ValueError(f"covariates have {z.shape[0]} rows for {n} observations")
    return z


def _residualise(v: np.ndarray, basis: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(basis, v, rcond=None)
    return v - basis @ coef


def partial_spearman(x, y, covariates=None) -> Correlation:
    """Spearman correlation of ``x`` and ``y`` controlling for ``covariates``.

    Parameters
    ----------
    x, y : array_like, shape (n,)
    covariates : array_like, shape (n,) or (n, k), optional
        Numeric covariate columns (categorical covariates dummy coded, see
        :func:`covariate_matrix`). Rows with a non-finite value in x, y or any
        covariate are dropped.

    Returns
    -------
    Correlation
        NaN rho and p when fewer than 3 complete rows remain, when
        ``df = n - 2 - k < 1``, when the covariate ranks are collinear, or when
        x or y is constant (or fully explained by the covariates).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length ({x.size} vs {y.size})")
    z = _as_covariates(covariates, x.size)
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z).all(axis=1)
    n, k = int(ok.sum()), z.shape[1]
    df = n - 2 - k
    if n < 3 or df < 1:
        return Correlation(n, np.nan, np.nan, df, k)
    rx = stats.rankdata(x[ok])
    ry = stats.rankdata(y[ok])
    rz = stats.rankdata(z[ok], axis=0) if k else np.empty((n, 0))
    basis = np.column_stack([np.ones(n), rz])
    if np.linalg.matrix_rank(basis) < k + 1:
        return Correlation(n, np.nan, np.nan, df, k)
    ex = _residualise(rx, basis)
    ey = _residualise(ry, basis)
    sx, sy = np.sqrt(ex @ ex), np.sqrt(ey @ ey)
    # ranks are at most n; residual norms below this are rounding of an exact fit
    tiny = 1e-9 * n
    if sx <= tiny or sy <= tiny:
        return Correlation(n, np.nan, np.nan, df, k)
    rho = float(np.clip((ex @ ey) / (sx * sy), -1.0, 1.0))
    if abs(rho) == 1.0:
        return Correlation(n, rho, 0.0, df, k)
    t = rho * np.sqrt(df / (1.0 - rho * rho))
    p = float(2.0 * stats.t.sf(abs(t), df))
    return Correlation(n, rho, p, df, k)


def covariate_matrix(frame: pd.DataFrame, names: Sequence[str], categorical=None
                     ) -> tuple[np.ndarray, list[str], list[str]]:
    """Numeric covariate columns of ``frame`` for :func:`partial_spearman`.

    A numeric column is used as it is; a categorical one (``categorical``,
    default ``group.categorical_covariates``: sex, onset) is dummy coded
    against its first sorted level as ``name[level]`` (the coding of
    :func:`qsm_bids.group.glm.covariate_columns`). Coding happens within the
    rows given, so a covariate with a single level (or a constant value)
    among them carries no information there and is dropped. Missing values
    stay NaN.

    Returns
    -------
    matrix : ndarray, shape (len(frame), n_terms)
    terms : list of str
        Column names (``age``, ``sex[M]``, ...).
    dropped : list of str
        Names absent from ``frame`` or constant within it, with the reason.
    """
    from .glm import covariate_columns

    usable, dropped = [], []
    for name in names:
        if name not in frame.columns:
            dropped.append(f"{name} (not in participants.tsv)")
            continue
        present = frame[name].dropna()
        if present.empty:
            dropped.append(f"{name} (no value among these participants)")
            continue
        if present.astype(str).nunique() < 2:
            dropped.append(f"{name} (a single value among these participants)")
            continue
        usable.append(name)
    coded = covariate_columns(frame, usable, categorical)
    return coded.to_numpy(dtype=float), list(coded.columns), dropped


def rank_biserial(a, b) -> float:
    """Rank-biserial correlation of A vs B: ``2 U_A / (n_A n_B) - 1``.

    U_A counts the pairs where A is higher (ties count one half), so the
    value is P(A > B) - P(A < B): +1 when every A exceeds every B, positive
    when A ranks higher (the sign of the rank-sum Z). Non-finite values are
    dropped; NaN when a sample is empty.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return np.nan
    return float(_rank_biserial_rows(a[None, :], b[None, :])[0])


def _rank_biserial_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank-biserial correlation of each row pair (shape (m, n_a) and (m, n_b))."""
    na, nb = a.shape[1], b.shape[1]
    ranks = stats.rankdata(np.concatenate([a, b], axis=1), axis=1)
    u = ranks[:, :na].sum(axis=1) - na * (na + 1) / 2.0
    return 2.0 * u / (na * nb) - 1.0


def cohens_d(a, b) -> float:
    """Cohen's d of A vs B: mean difference over the pooled SD (ddof=1 per group).

    Non-finite values are dropped; NaN with fewer than 2 values in a group or
    a pooled SD of 0.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return np.nan
    return float(_cohens_d_rows(a[None, :], b[None, :])[0])


def _cohens_d_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = a.shape[1], b.shape[1]
    pooled = ((na - 1) * a.var(axis=1, ddof=1) + (nb - 1) * b.var(axis=1, ddof=1)) / (na + nb - 2)
    diff = a.mean(axis=1) - b.mean(axis=1)
    sd = np.sqrt(pooled)
    # a zero SD relative to the values is a resample of ties: d undefined
    scale = np.maximum(np.abs(a).max(axis=1), np.abs(b).max(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sd > 1e-12 * np.maximum(scale, 1e-300), diff / sd, np.nan)


@dataclass(frozen=True)
class EffectSizes:
    """Effect sizes of A vs B with bootstrap intervals (NaN where undefined)."""

    rank_biserial: float
    rank_biserial_ci: tuple[float, float]
    cohens_d: float
    cohens_d_ci: tuple[float, float]
    n_bootstrap: int
    confidence: float


# replicates drawn per block: bounds the memory at _BLOCK x (n_a + n_b) values
# (fixed: the seeded draws, hence the intervals, depend on it)
_BLOCK = 1000


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    # an interval from a minority of defined resamples would misstate the spread
    if finite.size < 0.5 * samples.size or finite.size == 0:
        return (np.nan, np.nan)
    lo, hi = np.percentile(finite, [50.0 * (1 - confidence), 50.0 * (1 + confidence)])
    return (float(lo), float(hi))


def effect_sizes(a, b, n_bootstrap: int = 2000, confidence: float = 0.95,
                 seed: int | np.random.SeedSequence = 0) -> EffectSizes:
    """Rank-biserial correlation and Cohen's d of A vs B with percentile-bootstrap intervals.

    Each bootstrap replicate resamples A and B separately, with replacement,
    at their own sizes (the design of the comparison); the interval is the
    central ``confidence`` range of the replicates. The draws depend only on
    ``seed`` and the two sample sizes, so two regions with the same
    participants get the same resamples and a result never depends on which
    other regions were analysed.

    Parameters
    ----------
    a, b : array_like
        The samples (non-finite values dropped).
    n_bootstrap : number of replicates (0: no intervals).
    confidence : coverage of the interval, in (0, 1).
    seed : seed of ``numpy.random.default_rng``.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    rbc, d = rank_biserial(a, b), cohens_d(a, b)
    nan2 = (np.nan, np.nan)
    if n_bootstrap < 1 or a.size < 2 or b.size < 2:
        return EffectSizes(rbc, nan2, d, nan2, int(n_bootstrap), confidence)
    rng = np.random.default_rng(seed)
    rbc_boot = np.empty(n_bootstrap)
    d_boot = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, _BLOCK):
        m = min(_BLOCK, n_bootstrap - start)
        ia = rng.integers(0, a.size, size=(m, a.size))
        ib = rng.integers(0, b.size, size=(m, b.size))
        ra, rb = a[ia], b[ib]
        rbc_boot[start:start + m] = _rank_biserial_rows(ra, rb)
        d_boot[start:start + m] = _cohens_d_rows(ra, rb)
    return EffectSizes(rbc, _percentile_interval(rbc_boot, confidence), d,
                       _percentile_interval(d_boot, confidence), int(n_bootstrap), confidence)


def region_units(columns, region: str) -> list:
    """The (region, hemisphere) units of ``columns`` that belong to ``region``.

    A unit belongs when its region equals ``region`` or starts with
    ``region + "_"`` (``substantia_nigra`` matches its dorsal and ventral
    subdivisions).
    """
    return [c for c in columns if c[0] == region or str(c[0]).startswith(region + "_")]


def region_pair_correlations(values: pd.DataFrame, pairs: Sequence[Sequence[str]],
                             covariates: np.ndarray | None = None) -> pd.DataFrame:
    """Spearman correlation across participants of each pair of regions.

    Parameters
    ----------
    values : DataFrame
        Index participant_id, columns (region, hemisphere) tuples (a
        MultiIndex), e.g. the age-adjusted values of the patients.
    pairs : sequence of (region_1, region_2)
        Region names (a prefix matches subdivisions, see :func:`region_units`).
        Every unit of region_1 is paired with every unit of region_2, except
        that two lateral units are paired only within the same hemisphere.
    covariates : ndarray (n_participants, k), optional
        Also report the partial correlation controlling for these columns.

    Returns
    -------
    DataFrame with columns region_1, hemisphere_1, region_2, hemisphere_2, n,
    rho, rho_squared, p, and, with covariates, partial_n, partial_rho,
    partial_rho_squared, partial_p, partial_df. Pairs whose regions are
    absent give no row.
    """
    cols = ["region_1", "hemisphere_1", "region_2", "hemisphere_2", "n", "rho", "rho_squared", "p"]
    if covariates is not None:
        cols += ["partial_n", "partial_rho", "partial_rho_squared", "partial_p", "partial_df"]
    rows = []
    lateral = ("L", "R")
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"a region pair names two regions, got {list(pair)!r}")
        r1, r2 = (str(p) for p in pair)
        for u1 in region_units(values.columns, r1):
            for u2 in region_units(values.columns, r2):
                if u1 == u2 or (u1[1] in lateral and u2[1] in lateral and u1[1] != u2[1]):
                    continue
                x = values[u1].to_numpy(dtype=float)
                y = values[u2].to_numpy(dtype=float)
                plain = partial_spearman(x, y)
                row = {"region_1": u1[0], "hemisphere_1": u1[1], "region_2": u2[0],
                       "hemisphere_2": u2[1], "n": plain.n, "rho": plain.rho,
                       "rho_squared": plain.rho_squared, "p": plain.p}
                if covariates is not None:
                    part = partial_spearman(x, y, covariates)
                    row.update({"partial_n": part.n, "partial_rho": part.rho,
                                "partial_rho_squared": part.rho_squared, "partial_p": part.p,
                                "partial_df": part.df})
                rows.append(row)
    return pd.DataFrame(rows, columns=cols)


#: Columns that :func:`effect_size_table` adds next to each rank-sum Z and p.
EFFECT_SIZE_COLUMNS = ("rank_biserial", "rank_biserial_ci_low", "rank_biserial_ci_high",
                       "cohens_d", "cohens_d_ci_low", "cohens_d_ci_high")

#: Columns of a partial correlation beside the plain one (see :func:`partial_fields`).
PARTIAL_COLUMNS = ("partial_covariates", "partial_n", "partial_rho", "partial_rho_squared", "partial_p",
                   "partial_df")


def effect_size_table(values: pd.DataFrame, in_a, in_b, n_bootstrap: int = 2000,
                      confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """:func:`effect_sizes` of A vs B for every column of ``values``.

    Parameters
    ----------
    values : DataFrame
        Participants x units (e.g. the adjusted region values).
    in_a, in_b : boolean masks on the rows of ``values``.

    Returns
    -------
    DataFrame indexed like ``values.columns`` with :data:`EFFECT_SIZE_COLUMNS`.
    """
    a_mask = np.asarray(in_a, dtype=bool)
    b_mask = np.asarray(in_b, dtype=bool)
    rows = []
    for col in values.columns:
        v = values[col].to_numpy(dtype=float)
        e = effect_sizes(v[a_mask], v[b_mask], n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
        rows.append((e.rank_biserial, *e.rank_biserial_ci, e.cohens_d, *e.cohens_d_ci))
    return pd.DataFrame(rows, index=values.columns, columns=list(EFFECT_SIZE_COLUMNS), dtype=float)


def partial_fields(x, y, covariates: np.ndarray | None, terms: Sequence[str]) -> dict:
    """The :data:`PARTIAL_COLUMNS` of one correlation row (NaN without covariates)."""
    if covariates is None or not len(terms):
        return {"partial_covariates": "", "partial_n": np.nan, "partial_rho": np.nan,
                "partial_rho_squared": np.nan, "partial_p": np.nan, "partial_df": np.nan}
    r = partial_spearman(x, y, covariates)
    return {"partial_covariates": ", ".join(terms), "partial_n": r.n, "partial_rho": r.rho,
            "partial_rho_squared": r.rho_squared, "partial_p": r.p, "partial_df": r.df}


def pair_correlation_rows(values: pd.DataFrame, pairs: Sequence[Sequence[str]], group: str,
                          analysis: str, covariates: np.ndarray | None = None,
                          terms: Sequence[str] = ()) -> list[dict]:
    """:func:`region_pair_correlations` as rows of correlations.tsv (``analysis`` e.g. ``leakage``).

    ``values`` holds the participants of ``group`` only; ``covariates`` (with
    their ``terms``) are controlled for in the ``partial_*`` columns.
    """
    use = covariates if covariates is not None and len(terms) else None
    table = region_pair_correlations(values, pairs, covariates=use)
    rows = []
    for r in table.to_dict("records"):
        row = {"analysis": analysis, "group": group, "region": r["region_1"],
               "hemisphere": r["hemisphere_1"], "variable": r["region_2"],
               "variable_hemisphere": r["hemisphere_2"], "n": r["n"], "rho": r["rho"],
               "rho_squared": r["rho_squared"], "p": r["p"]}
        x = values[(r["region_1"], r["hemisphere_1"])].to_numpy(dtype=float)
        y = values[(r["region_2"], r["hemisphere_2"])].to_numpy(dtype=float)
        row.update(partial_fields(x, y, use, terms))
        rows.append(row)
    return rows


def effect_size_sidecar(first: str, second: str, n_bootstrap: int, confidence: float) -> dict:
    """Column descriptions of :data:`EFFECT_SIZE_COLUMNS` (``first`` vs ``second``)."""
    pct = f"{100 * confidence:g} %"
    boot = (f"percentile bootstrap, {n_bootstrap} replicates resampling each group with replacement "
            "at its own size, seeded by the run's seed")
    return {
        "rank_biserial": {"Description": f"Rank-biserial correlation of {first} vs {second} on the adjusted "
                                         f"values, 2U/(n1 n2) - 1 = P({first} > {second}) - "
                                         f"P({first} < {second}); same sign as z."},
        "rank_biserial_ci_low": {"Description": f"Lower end of the {pct} interval of rank_biserial ({boot})."},
        "rank_biserial_ci_high": {"Description": f"Upper end of the {pct} interval of rank_biserial."},
        "cohens_d": {"Description": f"Cohen's d of {first} vs {second} on the adjusted values: mean "
                                    "difference over the pooled SD (ddof=1 per group)."},
        "cohens_d_ci_low": {"Description": f"Lower end of the {pct} interval of cohens_d ({boot})."},
        "cohens_d_ci_high": {"Description": f"Upper end of the {pct} interval of cohens_d."},
    }


def partial_sidecar(covariates: Sequence[str]) -> dict:
    """Column descriptions of :data:`PARTIAL_COLUMNS`."""
    names = ", ".join(covariates) or "none configured"
    return {
        "partial_covariates": {"Description": "Covariate columns controlled for in the partial correlation "
                                              f"(configured: {names}); text covariates dummy coded as "
                                              "name[level] against the first sorted level; covariates "
                                              "with a single value within the group are dropped. Empty: "
                                              "no partial correlation."},
        "partial_n": {"Description": "Participants with both values and every covariate."},
        "partial_rho": {"Description": "Partial Spearman correlation: the two variables and the covariates "
                                       "rank-transformed, the two rank vectors regressed on the covariate "
                                       "ranks (least squares with intercept), residuals correlated."},
        "partial_rho_squared": {"Description": "partial_rho squared."},
        "partial_p": {"Description": "Two-sided p of partial_rho from t = rho sqrt(df / (1 - rho^2)) "
                                     "with df = partial_df."},
        "partial_df": {"Description": "Degrees of freedom n - 2 - k (k covariate columns)."},
    }
