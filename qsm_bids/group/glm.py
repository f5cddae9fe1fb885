"""General linear model for two-group voxelwise comparisons.

The design uses cell-means coding: one indicator column per group (the two
columns sum to one, so they carry the intercept) and demeaned covariates.
A contrast ``<A>gt<B>`` is then ``[1, -1, 0, ...]`` and its t statistic is the
covariate-adjusted group difference over its standard error. The statistic is
computed for all voxels at once with BLAS on a (subjects x voxels) matrix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import DataError

__all__ = [
    "Design",
    "design_matrix",
    "check_numeric_covariate",
    "covariate_columns",
    "contrast_names",
    "ols_t",
    "reduced_model_basis",
]

logger = logging.getLogger(__name__)


@dataclass
class Design:
    """A design matrix with named columns and its two t contrasts.

    Attributes
    ----------
    X : ndarray, shape (n_subjects, n_regressors)
        Cell-means coded design (group indicators, demeaned covariates).
    columns : list of str
        Column names.
    contrasts : dict of str -> ndarray
        ``{"<A>gt<B>": c, "<B>gt<A>": -c}``, in that order.
    groups : tuple of str
        The two levels, patient side first.
    """

    X: np.ndarray
    columns: list
    contrasts: dict
    groups: tuple

    @property
    def n_subjects(self) -> int:
        return self.X.shape[0]

    @property
    def df(self) -> int:
        return self.X.shape[0] - np.linalg.matrix_rank(self.X)


def contrast_names(groups) -> tuple[str, str]:
    """``("<A>gt<B>", "<B>gt<A>")`` for the two levels (A is the patient side)."""
    a, b = (str(g) for g in groups)
    return f"{a}gt{b}", f"{b}gt{a}"


def design_matrix(design, group_column: str, groups, covariates=(), categorical=None) -> Design:
    """Build the cell-means design from a participants table.

    Parameters
    ----------
    design : pandas.DataFrame
        One row per subject, in the order of the images; must hold
        ``group_column`` and every covariate, with no missing values (the
        group workflow excludes incomplete subjects before calling this).
    group_column : str
        Column naming each subject's group.
    groups : sequence of two str
        The levels compared, the "patient" side first. Rows at other levels
        are a DataError (select the subjects first).
    covariates : sequence of str
        Nuisance columns. Numeric columns are demeaned; categorical ones
        (e.g. sex) are dummy coded against their first sorted level and
        demeaned.
    categorical : sequence of str, optional
        The covariates that are categories; default
        ``group.categorical_covariates``. Any other must be numeric.

    Returns
    -------
    Design
    """
    groups = tuple(str(g) for g in groups)
    if len(groups) != 2 or groups[0] == groups[1]:
        raise DataError(f"groups must name two different levels, got {groups!r}")
    missing = [c for c in (group_column, *covariates) if c not in design.columns]
    if missing:
        raise DataError(f"participants table lacks column(s) {missing}; "
                        f"available: {list(design.columns)}")
    labels = design[group_column].astype(str).to_numpy()
    other = sorted(set(labels) - set(groups))
    if other:
        raise DataError(f"column '{group_column}' has levels {other} outside the compared "
                        f"groups {list(groups)}; select the subjects first")
    columns = [f"{group_column}[{g}]" for g in groups]
    cols = [(labels == g).astype(float) for g in groups]
    for g, col in zip(groups, cols):
        if col.sum() < 2:
            raise DataError(f"group '{g}' of column '{group_column}' has {int(col.sum())} "
                            "subject(s); at least 2 per group are needed")
    for name in covariates:
        values = design[name]
        if values.isna().any():
            bad = list(design.index[values.isna()])
            raise DataError(f"covariate '{name}' is missing for rows {bad}; exclude them first")
    regressors = covariate_columns(design, covariates, categorical)
    for name in regressors.columns:
        v = regressors[name].to_numpy(dtype=float)
        cols.append(v - v.mean())
        columns.append(name)
    X = np.column_stack(cols)
    rank = np.linalg.matrix_rank(X)
    if rank < X.shape[1]:
        raise DataError(f"the design ({', '.join(columns)}) is rank deficient (rank {rank} "
                        f"of {X.shape[1]}): a covariate is constant or collinear with group")
    if X.shape[0] - rank < 1:
        raise DataError(f"the design leaves no residual degrees of freedom "
                        f"({X.shape[0]} subjects, {rank} regressors)")
    c = np.zeros(X.shape[1])
    c[0], c[1] = 1.0, -1.0
    names = contrast_names(groups)
    return Design(X=X, columns=columns, contrasts={names[0]: c, names[1]: -c}, groups=groups)


def covariate_columns(frame, covariates, categorical=None):
    """Numeric regressors of covariates, shared by the GLM and the region statistics.

    A covariate is numeric unless it is named in ``categorical`` (default:
    ``group.categorical_covariates`` of the config); a categorical one (e.g.
    sex) is dummy coded against its first sorted level as ``name[level]``
    columns. Missing values stay NaN (the caller decides whether to exclude
    the rows).

    Raises
    ------
    DataError
        A covariate column is absent, a numeric covariate holds a value that
        is not a number (naming the participant, column and value), or a
        categorical covariate has a single level.
    """
    import pandas as pd

    if categorical is None:
        from ..config import GroupConfig

        categorical = GroupConfig().categorical_covariates
    out = {}
    for name in covariates:
        if name not in frame.columns:
            raise DataError(f"participants table has no covariate column '{name}'; columns are "
                            f"{list(frame.columns)} (change --covariates)")
        col = frame[name]
        if name not in categorical:
            check_numeric_covariate(frame, name)
            out[name] = pd.to_numeric(col, errors="coerce").astype(float)
            continue
        text = col.astype("string")
        levels = sorted(text.dropna().unique())
        if len(levels) < 2:
            raise DataError(f"covariate '{name}' has the single level {levels}; it cannot be adjusted for "
                            "(drop it from --covariates)")
        for level in levels[1:]:
            out[f"{name}[{level}]"] = (text == level).astype(float).where(col.notna())
    return pd.DataFrame(out, index=frame.index)


def check_numeric_covariate(frame, name: str, source: str = "participants table") -> None:
    """Raise DataError naming the first participant whose ``name`` value is not a number.

    A typo such as ``sixty`` in an age column would otherwise turn the
    covariate into dummy regressors and silently change the model.
    """
    import pandas as pd

    col = frame[name]
    numeric = pd.to_numeric(col, errors="coerce")
    bad = col.notna() & numeric.isna()
    if bad.any():
        first = bad.to_numpy().nonzero()[0][0]
        who = (f"sub-{str(frame['participant_id'].iloc[first]).removeprefix('sub-')}"
               if "participant_id" in frame.columns else f"row {first + 1}")
        more = int(bad.sum()) - 1
        raise DataError(f"{source}: {who} has {name!r} = {col.iloc[first]!r}, "
                        f"not a number{f' ({more} more such value(s))' if more else ''}; fix the value (n/a "
                        f"excludes the participant) or declare '{name}' in group.categorical_covariates")


def reduced_model_basis(X: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the reduced (nuisance) model of a t contrast.

    The reduced model is every fit the full model can make with the tested
    effect set to zero, ``{X b : c'b = 0}``, i.e. ``X @ null(c')``.
    """
    from scipy.linalg import null_space, orth

    c = np.atleast_2d(np.asarray(contrast, dtype=float))
    N = null_space(c)
    if N.size == 0:
        return np.zeros((X.shape[0], 0))
    return orth(X @ N)


def ols_t(Y: np.ndarray, X: np.ndarray, contrast: np.ndarray) -> np.ndarray:
    """t statistic of a contrast at every voxel (ordinary least squares).

    Parameters
    ----------
    Y : ndarray, shape (n_subjects, n_voxels)
    X : ndarray, shape (n_subjects, n_regressors), full column rank
    contrast : ndarray, shape (n_regressors,)

    Returns
    -------
    ndarray, shape (n_voxels,), float64
        ``c'b / sqrt(s2 c'(X'X)^-1 c)``; 0 where the residual variance is 0.
    """
    Y = np.asarray(Y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    c = np.asarray(contrast, dtype=np.float64)
    pinv = np.linalg.pinv(X)
    beta = pinv @ Y
    resid = Y - X @ beta
    df = X.shape[0] - np.linalg.matrix_rank(X)
    s2 = np.einsum("ij,ij->j", resid, resid) / df
    var_c = c @ pinv @ pinv.T @ c
    se = np.sqrt(s2 * var_c)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, (c @ beta) / se, 0.0)
    return t
