"""Demographics table of a two-group study (group step 4).

- n per group;
- sex counts per group and Pearson's chi-square test of independence
  (``scipy.stats.chi2_contingency`` with ``correction=False`` by default: no
  Yates continuity correction, as MATLAB's ``crosstab`` and SPSS's "Pearson
  Chi-Square" row report; pass ``yates=True`` for the corrected statistic);
- age (and every other numeric column) as mean +- SD (range) per group with
  the two-tailed Wilcoxon rank-sum test (same Z and p as the region analysis);
- categorical clinical columns (e.g. onset) as counts per level, with a
  chi-square test when both groups have values.

Pure function: DataFrame in, DataFrame out (plus the column sidecar).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..bids import with_prefix
from ..errors import DataError
from .nonparametric import rank_sum_test

__all__ = ["compute_demographics", "demographics_sidecar", "format_mean_sd_range"]

logger = logging.getLogger(__name__)

_SEX_COLUMNS = ("sex", "gender")


def format_mean_sd_range(x, digits: int = 1) -> str:
    """``'62.3 ± 9.8 (41.0–79.0)'`` for the finite values of ``x``; ``'n/a'`` when empty."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return "n/a"
    sd = np.std(x, ddof=1) if x.size > 1 else float("nan")
    return f"{np.mean(x):.{digits}f} ± {sd:.{digits}f} ({np.min(x):.{digits}f}–{np.max(x):.{digits}f})"


def _columns(a: str, b: str) -> list[str]:
    cols = ["variable", "level"]
    for g in (a, b):
        cols += [f"n_{g}", f"count_{g}", f"mean_{g}", f"sd_{g}", f"min_{g}", f"max_{g}", f"summary_{g}"]
    return cols + ["test", "statistic", "df", "p"]


def _chi_square(table: np.ndarray, yates: bool) -> tuple[float, int, float]:
    # drop empty rows/columns, which make the expected counts zero
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return np.nan, 0, np.nan
    res = stats.chi2_contingency(table, correction=yates)
    return float(res.statistic), int(res.dof), float(res.pvalue)


def compute_demographics(
    participants: pd.DataFrame,
    *,
    group_column: str = "group",
    groups: Sequence[str] = ("ALS", "control"),
    columns: Sequence[str] | None = None,
    yates: bool = False,
    max_levels: int = 10,
    include: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Demographics and clinical summary per group with between-group tests.

    Parameters
    ----------
    participants : DataFrame
        participants.tsv (participant_id, group column, age, sex, clinical columns).
    group_column, groups : the column and its two levels (first = patient side).
    columns : columns to summarise (default: every column but participant_id and
        the group column; age and sex first).
    yates : Yates continuity correction of the 2x2 chi-square (default False).
    max_levels : a non-numeric column with more levels than this is skipped
        (free text, identifiers).
    include : participant ids to keep (e.g. those that entered the region
        analysis); default every participant of the two groups.

    Returns
    -------
    DataFrame, one row per variable (numeric) or per level (categorical):
    variable, level, then for each group ``n_<g>`` (participants with a value),
    ``count_<g>`` (participants at this level), ``mean_<g>``, ``sd_<g>``,
    ``min_<g>``, ``max_<g>``, ``summary_<g>`` (formatted), and test, statistic,
    df, p on the first row of each variable.
    """
    a, b = (str(g) for g in groups)
    if group_column not in participants.columns:
        raise DataError(f"participants.tsv has no group column '{group_column}'")
    parts = participants.copy()
    if "participant_id" in parts.columns:
        parts["participant_id"] = parts["participant_id"].map(with_prefix)
        if include is not None:
            keep = {with_prefix(p) for p in include}
            parts = parts[parts["participant_id"].isin(keep)]
    grp = parts[group_column].astype("string")
    parts = parts[grp.isin([a, b]).fillna(False).astype(bool)]
    grp = parts[group_column].astype(str)
    in_a, in_b = grp == a, grp == b

    if columns is None:
        rest = [c for c in parts.columns if c not in ("participant_id", group_column)]
        first = [c for c in ("age", *_SEX_COLUMNS) if c in rest]
        columns = first + [c for c in rest if c not in first]
    rows: list[dict] = []
    rows.append({"variable": "n", "level": "", f"n_{a}": int(in_a.sum()), f"n_{b}": int(in_b.sum()),
                 f"count_{a}": int(in_a.sum()), f"count_{b}": int(in_b.sum()),
                 f"summary_{a}": str(int(in_a.sum())), f"summary_{b}": str(int(in_b.sum())),
                 "test": ""})
    for col in columns:
        if col not in parts.columns:
            raise DataError(f"participants.tsv has no column '{col}' to summarise")
        values = parts[col]
        numeric = pd.to_numeric(values, errors="coerce")
        if values.notna().sum() == 0:
            continue
        if numeric.notna().sum() == values.notna().sum() and col.lower() not in _SEX_COLUMNS:
            row = {"variable": col, "level": ""}
            for g, m in ((a, in_a), (b, in_b)):
                x = numeric[m].to_numpy(dtype=float)
                x = x[np.isfinite(x)]
                row[f"n_{g}"] = int(x.size)
                if x.size:
                    row.update({f"mean_{g}": float(x.mean()),
                                f"sd_{g}": float(x.std(ddof=1)) if x.size > 1 else np.nan,
                                f"min_{g}": float(x.min()), f"max_{g}": float(x.max())})
                row[f"summary_{g}"] = format_mean_sd_range(x)
            if row[f"n_{a}"] >= 2 and row[f"n_{b}"] >= 2:
                _, z, p = rank_sum_test(numeric[in_a], numeric[in_b])
                row.update({"test": "Wilcoxon rank-sum Z", "statistic": z, "p": p})
            else:
                row["test"] = ""
            rows.append(row)
            continue
        levels = sorted(values.dropna().astype(str).unique())
        if len(levels) > max_levels:
            logger.info("demographics: column %s has %d levels; not summarised", col, len(levels))
            continue
        text = values.astype("string")
        counts = np.array([[int(((text == lev) & m).sum()) for m in (in_a, in_b)] for lev in levels])
        n_a, n_b = int((text.notna() & in_a).sum()), int((text.notna() & in_b).sum())
        stat = df = p = np.nan
        test = ""
        if n_a > 0 and n_b > 0 and len(levels) >= 2:
            stat, df, p = _chi_square(counts, yates)
            test = "chi-square" + (" (Yates)" if yates and df == 1 else "")
        for i, lev in enumerate(levels):
            row = {"variable": col, "level": lev}
            for j, (g, n) in enumerate(((a, n_a), (b, n_b))):
                c = int(counts[i, j])
                row[f"n_{g}"] = n
                row[f"count_{g}"] = c
                row[f"summary_{g}"] = f"{c} ({100.0 * c / n:.0f}%)" if n else "n/a"
            if i == 0:
                row.update({"test": test, "statistic": stat, "df": df, "p": p})
            else:
                row["test"] = ""
            rows.append(row)
    out = pd.DataFrame(rows).reindex(columns=_columns(a, b))
    for g in (a, b):
        out[f"n_{g}"] = out[f"n_{g}"].astype("Int64")
        out[f"count_{g}"] = out[f"count_{g}"].astype("Int64")
    out["df"] = out["df"].astype("Int64")
    out["test"] = out["test"].fillna("")
    return out


def demographics_sidecar(groups: Sequence[str], yates: bool = False) -> dict:
    """Column descriptions of demographics.tsv."""
    a, b = groups
    sc = {"variable": {"Description": "participants.tsv column ('n' for the group sizes)."},
          "level": {"Description": "Level of a categorical column; empty for numeric columns."}}
    for g in (a, b):
        sc[f"n_{g}"] = {"Description": f"{g} participants with a value in this column."}
        sc[f"count_{g}"] = {"Description": f"{g} participants at this level (categorical columns)."}
        sc[f"mean_{g}"] = {"Description": f"Mean in {g} (numeric columns)."}
        sc[f"sd_{g}"] = {"Description": f"Standard deviation (ddof=1) in {g}."}
        sc[f"min_{g}"] = {"Description": f"Minimum in {g}."}
        sc[f"max_{g}"] = {"Description": f"Maximum in {g}."}
        sc[f"summary_{g}"] = {"Description": f"Formatted: mean ± SD (range), or count (percent of {g})."}
    sc["test"] = {"Description": "Between-group test: 'Wilcoxon rank-sum Z' (two-tailed, normal "
                                 "approximation with tie and continuity correction; positive when "
                                 f"{a} ranks higher) or 'chi-square' (Pearson, scipy.stats."
                                 f"chi2_contingency, correction={yates})."}
    sc["statistic"] = {"Description": "Z of the rank-sum test or the chi-square statistic."}
    sc["df"] = {"Description": "Degrees of freedom of the chi-square test."}
    sc["p"] = {"Description": "Two-tailed p value."}
    return sc
