"""Region statistics of signed QSM for a two-group study (group step 3).

The analysis follows Acosta-Cabronero et al. (Radiology 2018):

1. Laterality: a Wilcoxon signed-rank test of left against right in the
   first group (the patients). Regions with ``p < laterality_alpha`` keep
   their hemispheres apart; the others are averaged across hemispheres
   (hemisphere ``bilateral``). The test runs on the unadjusted medians: it is
   paired within participants, so between-participant covariates cancel.
2. Covariate correction by the covariance method: in the reference group
   (the second group) each region's value is regressed on the covariates
   (ordinary least squares with an intercept; one covariate gives the simple
   slope on age of the paper), and every participant's value is moved to the
   reference group's covariate means: ``adjusted = value - sum_c slope_c *
   (x_c - mean_ref(x_c))``.
3. Two-tailed Wilcoxon rank-sum test between the groups on the adjusted
   values: ``Z`` from the normal approximation of the Mann-Whitney U with tie
   correction (and, by default, a continuity correction of 0.5, as MATLAB's
   ``ranksum`` and scipy's ``mannwhitneyu`` do), positive when the first group
   ranks higher; Bonferroni over the regions tested.
4. Spearman correlations of adjusted values with numeric clinical columns in
   the first group; the substantia nigra - globus pallidus cross-correlation
   in each group; subgroup comparisons (``onset``, ``sex``).

Every function here is pure (DataFrames in, DataFrames out) except
:func:`read_participant_tables`, :func:`read_region_tables` and
:func:`write_roi_outputs`, which do the I/O.
"""

from __future__ import annotations

import logging
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..bids import with_prefix
from ..config import GroupConfig, RoiStatsConfig
from ..errors import DataError
from .glm import covariate_columns
from .nonparametric import bonferroni, mean_sem, rank_sum_test, significance_marks, spearman
from .roi_sidecars import (
    correlations_sidecar,
    roi_stats_sidecar,
    subgroups_sidecar,
    values_sidecar,
)

__all__ = [
    "RoiStatsResult",
    "normalise_hemisphere",
    "read_participant_tables",
    "read_region_tables",
    "laterality_tests",
    "combine_hemispheres",
    "covariance_adjust",
    "compare_groups",
    "compute_roi_stats",
    "write_roi_outputs",
]

logger = logging.getLogger(__name__)

VALUE_COLUMNS = ("participant_id", "region", "hemisphere", "median_ppm")
BILATERAL = "bilateral"
_SN_PREFIX = "substantia_nigra"
_GP = "globus_pallidus"


@dataclass
class RoiStatsResult:
    """Everything the region analysis produced.

    Attributes
    ----------
    roi_stats : DataFrame
        One row per region unit (region, hemisphere): n, mean and SEM of the
        adjusted values per group, rank-sum U, Z, p, Bonferroni p, the
        laterality test and the covariate slopes.
    correlations : DataFrame
        Long table of Spearman correlations (clinical, SN-GP).
    subgroups : DataFrame
        Rank-sum comparisons of subgroups (onset, sex).
    values : DataFrame
        Long table of every participant's raw and adjusted value per unit.
    warnings : list of str
        Excluded participants and regions, failed fits, skipped tests.
    groups : (str, str)
        The compared levels, first = patient side.
    covariates : tuple of str
        Covariate names as used (binary categorical ones as ``name[level]``).
    parameters : dict
        The parameters of the analysis (for sidecars and the report).
    """

    roi_stats: pd.DataFrame
    correlations: pd.DataFrame
    subgroups: pd.DataFrame
    values: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    groups: tuple[str, str] = ("ALS", "control")
    covariates: tuple[str, ...] = ("age",)
    parameters: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- input handling

def normalise_hemisphere(h) -> str:
    """One spelling per hemisphere: ``L``, ``R`` or ``bilateral``.

    Missing, empty and midline labels are ``bilateral``; a label not
    recognised is returned stripped, as it is.
    """
    if h is None or (isinstance(h, float) and np.isnan(h)):
        return BILATERAL
    s = str(h).strip()
    low = s.lower()
    if low in ("l", "left", "lh"):
        return "L"
    if low in ("r", "right", "rh"):
        return "R"
    if low in ("", "n/a", "b", "bilateral", "both", "midline", "none"):
        return BILATERAL
    return s


def read_participant_tables(
    paths: Mapping[str, str | Path],
    required: Sequence[str],
    *,
    name: str,
    expected: Sequence[str] | None = None,
    extra_columns: bool = True,
    keep_default_na: bool = True,
) -> pd.DataFrame:
    """Read one TSV per participant into one long table with a ``participant_id`` column first.

    Parameters
    ----------
    paths : mapping participant label -> TSV path
        Labels with or without ``sub-``.
    required : the columns every table must have, in the order kept.
    name : what the table is called in error messages (``"region table"``).
    expected : the table's documented columns, named when a required one is
        missing and the columns of an empty result (None: ``required``, not named).
    extra_columns : keep columns beyond ``required`` (False: only those).
    keep_default_na : as :func:`pandas.read_csv` (``n/a`` is always missing).

    Returns
    -------
    DataFrame with columns participant_id (``sub-`` prefixed) and the tables' columns.

    Raises
    ------
    DataError
        A file cannot be read or lacks a required column.
    """
    frames = []
    for label, path in paths.items():
        try:
            table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=keep_default_na)
        except (OSError, ValueError) as exc:  # ValueError: pandas' parser, empty-file and decoding errors
            raise DataError(f"{path}: cannot read the {name} ({exc}); rerun the participant level for "
                            "this subject") from None
        missing = set(required) - set(table.columns)
        if missing:
            named = f"; expected {', '.join(expected)}" if expected is not None else ""
            raise DataError(f"{path}: {name} lacks column(s) {sorted(missing)}{named}")
        table = (table if extra_columns else table[list(required)]).copy()
        table.insert(0, "participant_id", with_prefix(label))
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["participant_id", *(expected if expected is not None else required)])
    return pd.concat(frames, ignore_index=True)


def read_region_tables(paths: Mapping[str, str | Path]) -> pd.DataFrame:
    """Read participants' ``..._stat-median_Chimap.tsv`` into one long table.

    Parameters
    ----------
    paths : mapping participant label -> TSV path
        Labels with or without ``sub-``.

    Returns
    -------
    DataFrame with columns participant_id, region, hemisphere, median_ppm, n_voxels.
    """
    return read_participant_tables(paths, ("region", "hemisphere", "median_ppm"), name="region table",
                                   expected=("region", "hemisphere", "median_ppm", "n_voxels"))


# ----------------------------------------------------------------------------- analysis steps

def laterality_tests(wide: pd.DataFrame, in_group: pd.Series) -> pd.DataFrame:
    """Wilcoxon signed-rank test of left vs right per region within one group.

    Parameters
    ----------
    wide : DataFrame
        Index participant_id, columns MultiIndex (region, hemisphere).
    in_group : boolean Series on the same index
        The participants tested (the first group).

    Returns
    -------
    DataFrame: region, laterality_n, laterality_stat (scipy's statistic: the
    smaller of the signed-rank sums), laterality_p, laterality_mean_diff_ppm
    (mean of L - R). Only regions that have both an L and an R column.
    """
    rows = []
    regions = dict.fromkeys(r for r, _ in wide.columns)
    for region in regions:
        if (region, "L") not in wide.columns or (region, "R") not in wide.columns:
            continue
        left = wide.loc[in_group, (region, "L")].to_numpy(dtype=float)
        right = wide.loc[in_group, (region, "R")].to_numpy(dtype=float)
        ok = np.isfinite(left) & np.isfinite(right)
        diff = left[ok] - right[ok]
        stat = p = np.nan
        if np.count_nonzero(diff) >= 1:
            with _warnings.catch_warnings():
                _warnings.simplefilter("ignore", RuntimeWarning)
                res = stats.wilcoxon(left[ok], right[ok])
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append({"region": region, "laterality_n": int(ok.sum()), "laterality_stat": stat,
                     "laterality_p": p,
                     "laterality_mean_diff_ppm": float(np.mean(diff)) if diff.size else np.nan})
    return pd.DataFrame(rows, columns=["region", "laterality_n", "laterality_stat", "laterality_p",
                                       "laterality_mean_diff_ppm"])


def combine_hemispheres(wide: pd.DataFrame, keep_apart: Sequence[str]) -> pd.DataFrame:
    """Average L and R of every region not in ``keep_apart`` (hemisphere ``bilateral``).

    A participant missing one hemisphere gets NaN for the average. Regions
    with a single hemisphere column are kept as they are.
    """
    keep_apart = set(keep_apart)
    out = {}
    for region in dict.fromkeys(r for r, _ in wide.columns):
        hemis = [h for r, h in wide.columns if r == region]
        if region not in keep_apart and "L" in hemis and "R" in hemis:
            # skipna=False: an average of one hemisphere would not be comparable
            out[(region, BILATERAL)] = wide[[(region, "L"), (region, "R")]].mean(axis=1, skipna=False)
            for h in hemis:
                if h not in ("L", "R"):
                    out[(region, h)] = wide[(region, h)]
        else:
            for h in hemis:
                out[(region, h)] = wide[(region, h)]
    frame = pd.DataFrame(out, index=wide.index)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["region", "hemisphere"])
    return frame


def covariance_adjust(wide: pd.DataFrame, covariates: pd.DataFrame, reference: pd.Series
                      ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Covariance-method adjustment of every column to the reference group's covariate means.

    Parameters
    ----------
    wide : DataFrame
        Index participant_id, one column per region unit.
    covariates : DataFrame
        Numeric covariates on the same index (no missing values).
    reference : boolean Series on the same index
        The reference group whose slopes and covariate means are used.

    Returns
    -------
    adjusted : DataFrame like ``wide``
    slopes : DataFrame, index = wide's columns, one column per covariate
        (value units per covariate unit); NaN where the fit was impossible.
    warnings : list of str
    """
    messages: list[str] = []
    names = list(covariates.columns)
    slopes = pd.DataFrame(np.nan, index=wide.columns, columns=names, dtype=float)
    if not names:
        return wide.copy(), slopes, messages
    x_all = covariates.to_numpy(dtype=float)
    ref = reference.to_numpy(dtype=bool)
    x_mean = x_all[ref].mean(axis=0)
    adjusted = wide.copy()
    for col in wide.columns:
        y = wide[col].to_numpy(dtype=float)
        fit = ref & np.isfinite(y)
        k = len(names)
        xc = x_all[fit] - x_mean
        if fit.sum() < k + 2 or np.linalg.matrix_rank(np.column_stack([np.ones(fit.sum()), xc])) < k + 1:
            messages.append(f"{_unit_name(col)}: too few reference participants ({int(fit.sum())}) "
                            f"or constant covariates to fit the covariate slopes; values left unadjusted")
            continue
        design = np.column_stack([np.ones(fit.sum()), xc])
        beta, *_ = np.linalg.lstsq(design, y[fit], rcond=None)
        b = beta[1:]
        slopes.loc[col, :] = b
        adjusted[col] = y - (x_all - x_mean) @ b
    return adjusted, slopes, messages


def compare_groups(wide: pd.DataFrame, in_a: pd.Series, in_b: pd.Series, continuity: bool = True
                   ) -> pd.DataFrame:
    """Per column: n, mean, SEM per group and the rank-sum test (A vs B), Bonferroni over columns."""
    rows = []
    for col in wide.columns:
        a = wide.loc[in_a, col].to_numpy(dtype=float)
        b = wide.loc[in_b, col].to_numpy(dtype=float)
        na, ma, sa = mean_sem(a)
        nb, mb, sb = mean_sem(b)
        u = z = p = np.nan
        if na >= 2 and nb >= 2:
            u, z, p = rank_sum_test(a, b, continuity=continuity)
        rows.append({"unit": col, "n_a": na, "mean_a": ma, "sem_a": sa, "n_b": nb, "mean_b": mb,
                     "sem_b": sb, "u": u, "z": z, "p": p})
    out = pd.DataFrame(rows, columns=["unit", "n_a", "mean_a", "sem_a", "n_b", "mean_b", "sem_b",
                                      "u", "z", "p"])
    out["p_bonferroni"] = bonferroni(out["p"].astype(float))
    return out


def _unit_name(col) -> str:
    region, hemi = col
    return f"{region} ({hemi})"


def _numeric_clinical_columns(participants: pd.DataFrame, exclude: set[str]) -> list[str]:
    cols = []
    for name in participants.columns:
        if name in exclude:
            continue
        col = participants[name]
        if col.notna().sum() == 0:
            continue
        num = pd.to_numeric(col, errors="coerce")
        if num.notna().sum() == col.notna().sum():
            cols.append(name)
    return cols


# ----------------------------------------------------------------------------- the analysis

def compute_roi_stats(
    values: pd.DataFrame,
    participants: pd.DataFrame,
    group: GroupConfig | None = None,
    params: RoiStatsConfig | None = None,
    *,
    min_voxels: int | None = None,
    seed: int | None = None,
) -> RoiStatsResult:
    """Run the paper's region analysis.

    Parameters
    ----------
    values : DataFrame
        Long table with columns participant_id, region, hemisphere, median_ppm
        (see :func:`read_region_tables`).
    participants : DataFrame
        participants.tsv: participant_id, the group column, covariates and
        clinical columns.
    group : ``Config.group`` (None: the defaults): ``group_column`` and its two ``groups`` (first = patient
        side), ``covariates`` (participants' columns of the covariance-method adjustment).
    params : ``Config.roi_stats`` (None: the defaults): ``laterality_alpha`` (regions with laterality p
        below it keep L and R apart), ``clinical_columns`` (correlated with QSM in the first group; empty =
        every numeric column that is not the group, a covariate or a subgroup column),
        ``subgroup_columns`` (categorical columns for subgroup comparisons when present),
        ``rank_sum_continuity`` (continuity correction of the rank-sum Z).
    min_voxels : when given and ``values`` has ``n_voxels``, a region value from
        fewer voxels is treated as missing (with a warning).

    Returns
    -------
    RoiStatsResult
    """
    group = group if group is not None else GroupConfig()
    params = params if params is not None else RoiStatsConfig()
    from ..config import Config

    seed = Config().seed if seed is None else seed  # the bootstrap intervals' seed (--seed)
    bootstrap = (params.n_bootstrap, params.bootstrap_confidence, seed)
    group_column = group.group_column
    groups = tuple(str(g) for g in group.groups)
    if len(groups) != 2 or groups[0] == groups[1]:
        raise DataError(f"two different group levels are needed, got {groups!r}")
    group_a, group_b = groups
    messages: list[str] = []

    parts, vals = _tidy_inputs(values, participants, group_column, min_voxels, messages)

    sample = _analysis_sample(parts, vals, group, messages)
    keep, cov_frame, cov_names, wide, grp, in_a, in_b = sample

    roi_stats, units, adjusted = _group_comparison(wide, cov_frame.loc[keep], cov_names, in_a, in_b, groups,
                                                   params, bootstrap, messages)

    # long table of values
    long_raw = units.stack(["region", "hemisphere"], future_stack=True).rename("value_ppm")
    long_adj = adjusted.stack(["region", "hemisphere"], future_stack=True).rename("adjusted_ppm")
    values_long = pd.concat([long_raw, long_adj], axis=1).reset_index()
    values_long.insert(1, "group", values_long["participant_id"].map(grp))

    correlations, clin, subgroup_columns, partial_names, partial = _correlations(
        adjusted, parts, keep, in_a, in_b, group, params, messages)

    # 5. subgroups
    subgroups = _subgroup_tables(adjusted, parts.loc[keep], subgroup_columns, group_column,
                                 group_a, group_b, params.rank_sum_continuity, bootstrap=bootstrap)

    record = _parameters_record(group, params, cov_names, cov_frame.loc[keep][in_b.to_numpy()], roi_stats, clin,
                                subgroup_columns, partial_names, partial, seed, in_a, in_b)
    for m in messages:
        logger.warning(m)
    logger.info("region statistics: %d units, %d %s and %d %s participants, %d correlations",
                len(roi_stats), int(in_a.sum()), group_a, int(in_b.sum()), group_b, len(correlations))
    return RoiStatsResult(roi_stats=roi_stats, correlations=correlations, subgroups=subgroups,
                          values=values_long, warnings=messages, groups=(group_a, group_b),
                          covariates=tuple(cov_names), parameters=record)


# ----------------------------------------------------------------------------- its parts

def _tidy_inputs(values: pd.DataFrame, participants: pd.DataFrame, group_column: str, min_voxels,
                 messages: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Checked copies: participants indexed by ``sub-`` id, region values with tidy names and units."""
    missing = set(VALUE_COLUMNS) - set(values.columns)
    if missing:
        raise DataError(f"region values lack column(s) {sorted(missing)}")
    for name in ("participant_id", group_column):
        if name not in participants.columns:
            raise DataError(f"participants.tsv has no '{name}' column (columns: "
                            f"{list(participants.columns)})")

    parts = participants.copy()
    parts["participant_id"] = parts["participant_id"].map(with_prefix)
    if parts["participant_id"].duplicated().any():
        dup = sorted(parts.loc[parts["participant_id"].duplicated(), "participant_id"])
        raise DataError(f"participants.tsv lists participant(s) more than once: {dup}")
    parts[group_column] = parts[group_column].astype("string")
    parts = parts.set_index("participant_id")

    vals = values.copy()
    vals["participant_id"] = vals["participant_id"].map(with_prefix)
    vals["hemisphere"] = vals["hemisphere"].map(normalise_hemisphere)
    vals["region"] = vals["region"].astype(str)
    vals["median_ppm"] = pd.to_numeric(vals["median_ppm"], errors="coerce")
    if min_voxels is not None and "n_voxels" in vals.columns:
        nvox = pd.to_numeric(vals["n_voxels"], errors="coerce")
        small = vals[(nvox < min_voxels) & vals["median_ppm"].notna()]
        if len(small):
            messages.append(f"{len(small)} region value(s) from fewer than {min_voxels} voxels treated "
                            "as missing: " + ", ".join(
                                f"{r.participant_id} {r.region} ({r.hemisphere})"
                                for r in small.itertuples(index=False)))
            vals.loc[small.index, "median_ppm"] = np.nan
    if vals.duplicated(["participant_id", "region", "hemisphere"]).any():
        raise DataError("region values list a (participant, region, hemisphere) more than once")

    return parts, vals


def _analysis_sample(parts: pd.DataFrame, vals: pd.DataFrame, group: GroupConfig, messages: list):
    """Who enters (in the two groups, with region values and covariates) and their wide value table."""
    group_column, covariates = group.group_column, tuple(group.covariates)
    group_a, group_b = (str(g) for g in group.groups)
    groups = (group_a, group_b)
    # who is in the analysis
    in_study = parts[group_column].isin(groups).fillna(False).astype(bool)
    other = sorted(set(parts.index[~in_study]))
    if other:
        messages.append(f"{len(other)} participant(s) not in groups {group_a}/{group_b} were "
                        f"left out: {', '.join(other)}")
    unknown = sorted(set(vals["participant_id"]) - set(parts.index))
    if unknown:
        messages.append(f"region values of participant(s) not in participants.tsv were excluded: "
                        f"{', '.join(unknown)}")
    with_values = set(vals["participant_id"])
    no_values = sorted(p for p in parts.index[in_study] if p not in with_values)
    if no_values:
        messages.append(f"participant(s) without region values were excluded: {', '.join(no_values)}")
    cov_frame = covariate_columns(parts, covariates, group.categorical_covariates)
    cov_names = list(cov_frame.columns)
    cov_missing = sorted(p for p in parts.index[in_study] if cov_frame.loc[p].isna().any())
    if cov_missing:
        messages.append(f"participant(s) missing a covariate ({', '.join(covariates)}) were "
                        f"excluded: {', '.join(cov_missing)}")
    keep = [p for p in parts.index[in_study] if p in with_values and p not in set(cov_missing)]
    if not keep:
        raise DataError("no participant of the two groups has both region values and covariates")

    wide = vals[vals["participant_id"].isin(keep)].pivot(
        index="participant_id", columns=["region", "hemisphere"], values="median_ppm")
    wide = wide.reindex(keep)
    region_order = list(dict.fromkeys(vals["region"]))
    hemi_rank = {"L": 0, "R": 1, BILATERAL: 2}
    wide = wide[sorted(wide.columns, key=lambda c: (region_order.index(c[0]), hemi_rank.get(c[1], 3), c[1]))]
    grp = parts.loc[keep, group_column].astype(str)
    in_a = grp == group_a
    in_b = grp == group_b
    for g, mask in ((group_a, in_a), (group_b, in_b)):
        if mask.sum() < 2:
            raise DataError(f"group '{g}' has {int(mask.sum())} participant(s) with region values; "
                            "at least 2 per group are needed")
    for col in wide.columns:
        absent = wide.index[wide[col].isna()]
        if len(absent):
            messages.append(f"{_unit_name(col)}: {len(absent)} participant(s) without a value "
                            f"excluded from this region: {', '.join(absent)}")

    return keep, cov_frame, cov_names, wide, grp, in_a, in_b


def _group_comparison(wide: pd.DataFrame, covariates: pd.DataFrame, cov_names: list, in_a: pd.Series,
                      in_b: pd.Series, groups: tuple, params: RoiStatsConfig, bootstrap: tuple, messages: list):
    """Steps 1-3 of the paper: laterality, covariance-method adjustment, rank-sum per region unit."""
    group_a, group_b = groups
    laterality_alpha, continuity = params.laterality_alpha, params.rank_sum_continuity
    from .effects import effect_size_table

    # 1. laterality in the first group
    lat = laterality_tests(wide, in_a)
    keep_apart = []
    for row in lat.itertuples(index=False):
        if np.isfinite(row.laterality_p) and row.laterality_p < laterality_alpha:
            keep_apart.append(row.region)
        elif not np.isfinite(row.laterality_p):
            messages.append(f"{row.region}: laterality test not possible in {group_a} "
                            f"(n={row.laterality_n}); hemispheres averaged")
    units = combine_hemispheres(wide, keep_apart)

    # 2. covariance-method adjustment
    adjusted, slopes, adj_msgs = covariance_adjust(units, covariates, in_b)
    messages.extend(adj_msgs)

    # 3. group comparison
    comp = compare_groups(adjusted, in_a, in_b, continuity=continuity)
    effects = effect_size_table(adjusted, in_a, in_b, *bootstrap)
    raw = {g: {col: mean_sem(units.loc[m, col]) for col in units.columns}
           for g, m in ((group_a, in_a), (group_b, in_b))}
    lat_by_region = lat.set_index("region")
    rows = []
    for r in comp.itertuples(index=False):
        region, hemi = r.unit
        row = {"region": region, "hemisphere": hemi,
               f"n_{group_a}": r.n_a, f"mean_{group_a}": r.mean_a, f"sem_{group_a}": r.sem_a,
               f"n_{group_b}": r.n_b, f"mean_{group_b}": r.mean_b, f"sem_{group_b}": r.sem_b,
               "u": r.u, "z": r.z, "p": r.p, "p_bonferroni": r.p_bonferroni,
               "significance": significance_marks(r.p, r.p_bonferroni),
               **effects.loc[r.unit].to_dict(),
               f"raw_mean_{group_a}": raw[group_a][r.unit][1], f"raw_sem_{group_a}": raw[group_a][r.unit][2],
               f"raw_mean_{group_b}": raw[group_b][r.unit][1], f"raw_sem_{group_b}": raw[group_b][r.unit][2]}
        if region in lat_by_region.index:
            lr = lat_by_region.loc[region]
            row.update({"laterality_n": int(lr.laterality_n), "laterality_stat": lr.laterality_stat,
                        "laterality_p": lr.laterality_p,
                        "laterality": "separate" if region in keep_apart else "averaged"})
        else:
            row.update({"laterality_n": np.nan, "laterality_stat": np.nan, "laterality_p": np.nan,
                        "laterality": "not tested"})
        for c in cov_names:
            row[f"slope_{c}"] = slopes.loc[(region, hemi), c]
        rows.append(row)
    roi_stats = pd.DataFrame(rows)
    roi_stats["laterality_n"] = roi_stats["laterality_n"].astype("Int64")
    for c in (f"n_{group_a}", f"n_{group_b}"):
        roi_stats[c] = roi_stats[c].astype(int)
        if (roi_stats[c] < 3).any():
            few = roi_stats.loc[roi_stats[c] < 3, ["region", "hemisphere"]]
            messages.append(f"fewer than 3 values in group {c[2:]} for: " + ", ".join(
                f"{a} ({b})" for a, b in few.itertuples(index=False)))

    return roi_stats, units, adjusted


def _correlations(adjusted: pd.DataFrame, parts: pd.DataFrame, keep: list, in_a: pd.Series, in_b: pd.Series,
                  group: GroupConfig, params: RoiStatsConfig, messages: list):
    """Step 4: clinical, SN-GP and leakage correlations in each group, plain and partial."""
    from .effects import PARTIAL_COLUMNS, covariate_matrix, pair_correlation_rows, partial_fields

    group_column, covariates = group.group_column, tuple(group.covariates)
    group_a, group_b = (str(g) for g in group.groups)
    clinical_columns, subgroup_columns = tuple(params.clinical_columns), tuple(params.subgroup_columns)
    subgroup_columns = [c for c in subgroup_columns if c in parts.columns]
    exclude = {"participant_id", group_column, *covariates, *subgroup_columns}
    if clinical_columns:
        clin = [c for c in clinical_columns if c in parts.columns]
        absent = [c for c in clinical_columns if c not in parts.columns]
        if absent:
            messages.append(f"clinical column(s) not in participants.tsv: {', '.join(absent)}")
    else:
        clin = _numeric_clinical_columns(parts.loc[keep], exclude)
    corr_rows = []
    # partial correlations: onset, sex (config) removed within each group, dummy coded there
    partial_names = [c for c in params.partial_covariates if c in parts.columns]
    partial = {}
    for g, mask in ((group_a, in_a), (group_b, in_b)):
        z, terms, dropped = covariate_matrix(parts.loc[keep][mask.to_numpy()], partial_names,
                                                 group.categorical_covariates)
        partial[g] = (z, terms)
        if g == group_a and dropped:
            messages.append(f"partial correlations in {g}: not controlled for {', '.join(dropped)}")
    for c in clin:
        x = pd.to_numeric(parts.loc[keep, c], errors="coerce")
        for col in adjusted.columns:
            n, rho, p = spearman(adjusted.loc[in_a, col], x[in_a])
            corr_rows.append({**_corr_row("clinical", group_a, col, c, "", n, rho, p),
                              **partial_fields(adjusted.loc[in_a, col], x[in_a], *partial[group_a])})
    sn_units = [u for u in adjusted.columns if u[0].startswith(_SN_PREFIX)]
    gp_units = [u for u in adjusted.columns if u[0] == _GP]
    for g, mask in ((group_a, in_a), (group_b, in_b)):
        for sn in sn_units:
            for gp in gp_units:
                if sn[1] in ("L", "R") and gp[1] in ("L", "R") and sn[1] != gp[1]:
                    continue
                n, rho, p = spearman(adjusted.loc[mask, sn], adjusted.loc[mask, gp])
                corr_rows.append({**_corr_row("sn_gp", g, sn, gp[0], gp[1], n, rho, p),
                                  **partial_fields(adjusted.loc[mask, sn], adjusted.loc[mask, gp], *partial[g])})
    # leakage check (paper: CST vs globus pallidus in patients, age-adjusted values)
    corr_rows.extend(pair_correlation_rows(adjusted.loc[in_a], params.leakage_pairs, group_a, "leakage",
                                           *partial[group_a]))
    correlations = pd.DataFrame(corr_rows, columns=["analysis", "group", "region", "hemisphere",
                                                    "variable", "variable_hemisphere", "n", "rho",
                                                    "rho_squared", "p", *PARTIAL_COLUMNS])
    for c in clin:
        if (correlations["variable"] == c).any() and correlations.loc[correlations["variable"] == c, "rho"].isna().all():
            messages.append(f"clinical column '{c}': fewer than 3 values in {group_a}; not correlated")

    return correlations, clin, subgroup_columns, partial_names, partial


def _parameters_record(group: GroupConfig, params: RoiStatsConfig, cov_names: list, reference: pd.DataFrame,
                       roi_stats: pd.DataFrame, clin: list, subgroup_columns: list, partial_names: list,
                       partial: dict, seed: int, in_a: pd.Series, in_b: pd.Series) -> dict:
    """What was done, for the sidecars and the report (regions.json)."""
    group_column, covariates = group.group_column, tuple(group.covariates)
    groups = tuple(str(g) for g in group.groups)
    group_a, group_b = groups
    laterality_alpha, continuity = params.laterality_alpha, params.rank_sum_continuity
    record = {"group_column": group_column, "groups": list(groups), "covariates": list(covariates),
              "covariate_terms": cov_names, "laterality_alpha": laterality_alpha,
              "laterality_test": f"Wilcoxon signed-rank, left vs right, in {group_a}",
              "adjustment": f"covariance method: OLS slope(s) on {', '.join(cov_names) or 'none'} in "
                            f"{group_b}, values adjusted to {group_b}'s covariate mean(s)",
              "covariate_reference_means": {c: float(reference[c].mean()) for c in cov_names},
              "group_test": "two-tailed Wilcoxon rank-sum, normal approximation with tie correction"
                            + (" and continuity correction" if continuity else ""),
              "multiple_comparisons": f"Bonferroni over {int(roi_stats['p'].notna().sum())} regions",
              "clinical_columns": clin, "subgroup_columns": list(subgroup_columns),
              "partial_covariates": partial_names, "partial_terms": {g: t for g, (_, t) in partial.items()},
              "partial_correlation": "Spearman: ranks of both variables regressed on the covariate ranks "
                                     "(dummy-coded text covariates), residuals correlated; p from t with "
                                     "n - 2 - k df",
              "leakage_pairs": [list(p) for p in params.leakage_pairs],
              "effect_sizes": "rank-biserial correlation and Cohen's d on the adjusted values, "
                              f"{100 * params.bootstrap_confidence:g} % percentile-bootstrap intervals",
              "n_bootstrap": params.n_bootstrap, "bootstrap_confidence": params.bootstrap_confidence,
              "seed": seed,
              "n_participants": {group_a: int(in_a.sum()), group_b: int(in_b.sum())}}
    return record


def _corr_row(analysis, group, unit, variable, variable_hemisphere, n, rho, p) -> dict:
    return {"analysis": analysis, "group": group, "region": unit[0], "hemisphere": unit[1],
            "variable": variable, "variable_hemisphere": variable_hemisphere, "n": n, "rho": rho,
            "rho_squared": rho * rho if np.isfinite(rho) else np.nan, "p": p}


def _subgroup_tables(adjusted, parts, columns, group_column, group_a, group_b, continuity,
                     bootstrap=None) -> pd.DataFrame:
    """Each subgroup level of the first group vs the whole second group, and the levels
    against each other within each group when there are exactly two."""
    grp = parts[group_column].astype(str)
    comparisons = []
    for col in columns:
        lev = parts[col].astype("string")
        a_levels = sorted(lev[(grp == group_a) & lev.notna()].unique())
        for level in a_levels:
            m1 = (grp == group_a) & (lev == level)
            comparisons.append((col, f"{group_a} {col}={level}", m1, group_b, grp == group_b))
        for g in (group_a, group_b):
            levels = sorted(lev[(grp == g) & lev.notna()].unique())
            if len(levels) == 2:
                m1 = (grp == g) & (lev == levels[0])
                m2 = (grp == g) & (lev == levels[1])
                comparisons.append((col, f"{g} {col}={levels[0]}", m1, f"{g} {col}={levels[1]}", m2))
    frames = []
    for col, label1, m1, label2, m2 in comparisons:
        m1 = m1.fillna(False).astype(bool)
        m2 = m2.fillna(False).astype(bool)
        if m1.sum() < 2 or m2.sum() < 2:
            continue
        comp = compare_groups(adjusted, m1, m2, continuity=continuity)
        if bootstrap is not None:
            from .effects import EFFECT_SIZE_COLUMNS, effect_size_table

            es = effect_size_table(adjusted, m1, m2, *bootstrap)
            for c in EFFECT_SIZE_COLUMNS:
                comp[c] = es[c].to_numpy()
        comp.insert(0, "subgroup_column", col)
        comp.insert(1, "group_1", label1)
        comp.insert(2, "group_2", label2)
        frames.append(comp)
    cols = ["subgroup_column", "group_1", "group_2", "region", "hemisphere", "n_1", "mean_1",
            "sem_1", "n_2", "mean_2", "sem_2", "u", "z", "p", "p_bonferroni"]
    if bootstrap is not None:
        from .effects import EFFECT_SIZE_COLUMNS

        cols += list(EFFECT_SIZE_COLUMNS)
    if not frames:
        return pd.DataFrame(columns=cols)
    out = pd.concat(frames, ignore_index=True)
    out["region"] = [u[0] for u in out["unit"]]
    out["hemisphere"] = [u[1] for u in out["unit"]]
    out = out.rename(columns={"n_a": "n_1", "mean_a": "mean_1", "sem_a": "sem_1", "n_b": "n_2",
                              "mean_b": "mean_2", "sem_b": "sem_2"})
    return out[cols]


# ----------------------------------------------------------------------------- sidecars and files

def write_roi_outputs(out_dir: str | Path, result: RoiStatsResult,
                      demographics: pd.DataFrame | None = None,
                      demographics_sidecar: dict | None = None) -> list[Path]:
    """Write roi_stats.tsv, correlations.tsv, roi_subgroups.tsv, roi_values.tsv (and
    demographics.tsv when given) with JSON sidecars into ``out_dir`` (OUTPUT_DIR/group)."""
    from ..derivatives import GROUP_OUTPUTS
    from ..io import write_tsv

    out_dir = Path(out_dir)
    lat_alpha = result.parameters.get("laterality_alpha", 0.05)
    continuity = "continuity" in result.parameters.get("group_test", "continuity")
    from .effects import effect_size_sidecar, partial_sidecar

    boot = (result.parameters.get("n_bootstrap", RoiStatsConfig.n_bootstrap),
            result.parameters.get("bootstrap_confidence", RoiStatsConfig.bootstrap_confidence))
    written = [
        write_tsv(out_dir / GROUP_OUTPUTS["roi_stats"], result.roi_stats,
                  sidecar={**roi_stats_sidecar(result.groups, result.covariates, lat_alpha, continuity),
                           **effect_size_sidecar(*result.groups, *boot)}),
        write_tsv(out_dir / GROUP_OUTPUTS["correlations"], result.correlations,
                  sidecar={**correlations_sidecar(result.groups),
                           **partial_sidecar(result.parameters.get("partial_covariates", ()))}),
        write_tsv(out_dir / GROUP_OUTPUTS["roi_subgroups"], result.subgroups,
                  sidecar={**subgroups_sidecar(), **effect_size_sidecar("group_1", "group_2", *boot)}),
        write_tsv(out_dir / GROUP_OUTPUTS["roi_values"], result.values, sidecar=values_sidecar(result.covariates)),
    ]
    if demographics is not None:
        if demographics_sidecar is None:
            from .demographics import demographics_sidecar as _sidecar

            demographics_sidecar = _sidecar(result.groups)
        written.append(write_tsv(out_dir / GROUP_OUTPUTS["demographics"], demographics,
                                 sidecar=demographics_sidecar))
    return written
