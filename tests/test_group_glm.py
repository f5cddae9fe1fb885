"""GLM, design and smoothing of the voxelwise group analysis, against scipy/statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsm_bids.errors import DataError
from qsm_bids.group.glm import contrast_names, design_matrix, ols_t, reduced_model_basis
from qsm_bids.group.permutation import FreedmanLane, permutation_for
from qsm_bids.group.smoothing import sigma_mm_to_voxels, smooth_within_mask, voxel_sizes


def _table(n_a=7, n_b=9, seed=0, sex=False):
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    frame = pd.DataFrame({"dx": ["PD"] * n_a + ["HC"] * n_b, "age": rng.uniform(40, 80, n)})
    if sex:
        frame["sex"] = rng.choice(["M", "F"], n)
    return frame


def test_design_cell_means_and_contrast_names():
    frame = _table(sex=True)
    des = design_matrix(frame, "dx", ("PD", "HC"), ("age", "sex"))
    assert des.columns == ["dx[PD]", "dx[HC]", "age", "sex[M]"]
    np.testing.assert_allclose(des.X[:, 0] + des.X[:, 1], 1.0)  # the intercept
    np.testing.assert_allclose(des.X[:, 2:].mean(axis=0), 0.0, atol=1e-12)
    assert list(des.contrasts) == ["PDgtHC", "HCgtPD"]
    np.testing.assert_array_equal(des.contrasts["PDgtHC"], [1, -1, 0, 0])
    assert contrast_names(("ALS", "control")) == ("ALSgtcontrol", "controlgtALS")
    assert des.df == len(frame) - 4


def test_design_errors():
    frame = _table()
    with pytest.raises(DataError, match="at least 2"):
        design_matrix(frame.iloc[6:], "dx", ("PD", "HC"), ("age",))
    with pytest.raises(DataError, match="outside"):
        design_matrix(frame.assign(dx=["X"] + list(frame.dx[1:])), "dx", ("PD", "HC"))
    with pytest.raises(DataError, match="rank deficient"):
        design_matrix(frame.assign(age=1.0), "dx", ("PD", "HC"), ("age",))
    with pytest.raises(DataError, match="lacks column"):
        design_matrix(frame, "dx", ("PD", "HC"), ("weight",))


def test_t_without_covariates_is_the_pooled_two_sample_t():
    frame = _table(seed=1)
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((len(frame), 50)) + (frame.dx == "PD").to_numpy()[:, None] * 0.7
    des = design_matrix(frame, "dx", ("PD", "HC"))
    t = ols_t(Y, des.X, des.contrasts["PDgtHC"])
    ref = stats.ttest_ind(Y[frame.dx == "PD"], Y[frame.dx == "HC"], axis=0).statistic
    np.testing.assert_allclose(t, ref, rtol=1e-10)


def test_t_with_covariates_matches_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    frame = _table(seed=3, sex=True)
    rng = np.random.default_rng(4)
    Y = rng.standard_normal((len(frame), 20)) + 0.03 * frame.age.to_numpy()[:, None]
    des = design_matrix(frame, "dx", ("PD", "HC"), ("age", "sex"))
    t = ols_t(Y, des.X, des.contrasts["HCgtPD"])
    exog = sm.add_constant(np.column_stack([(frame.dx == "HC").astype(float), frame.age,
                                            (frame.sex == "M").astype(float)]))
    for j in range(Y.shape[1]):
        fit = sm.OLS(Y[:, j], exog).fit()
        assert t[j] == pytest.approx(fit.tvalues[1], rel=1e-9)


def test_freedman_lane_t_is_the_refit_of_the_permuted_reduced_residuals():
    frame = _table(seed=5)
    rng = np.random.default_rng(6)
    Y = rng.standard_normal((len(frame), 40)) + 0.05 * frame.age.to_numpy()[:, None]
    des = design_matrix(frame, "dx", ("PD", "HC"), ("age",))
    c = des.contrasts["PDgtHC"]
    model = FreedmanLane.from_data(Y, des.X, c)
    np.testing.assert_allclose(model.t(None), ols_t(Y, des.X, c), rtol=2e-4, atol=2e-5)
    Z = des.X[:, 2:3]
    Z = np.column_stack([np.ones(len(frame)), Z])  # the reduced model: intercept and age
    Hz = Z @ np.linalg.pinv(Z)
    resid = Y - Hz @ Y
    for k in (1, 2, 3):
        perm = permutation_for(11, k, len(frame))
        y_star = resid[perm] + Hz @ Y          # Freedman & Lane 1983, spelled out
        np.testing.assert_allclose(model.t(perm), ols_t(y_star, des.X, c), rtol=2e-4, atol=2e-5)
    # the reduced model of [1, -1, 0] is spanned by the intercept and age
    B = reduced_model_basis(des.X, c)
    assert B.shape[1] == 2
    np.testing.assert_allclose(B @ B.T @ Z, Z, atol=1e-10)


def test_smoothing_keeps_a_constant_constant_up_to_the_boundary():
    mask = np.zeros((20, 20, 20), bool)
    mask[4:15, 3:17, 5:12] = True
    out = smooth_within_mask(np.full(mask.shape, 0.1), mask, 3.0, (1.0, 1.5, 2.0))
    np.testing.assert_allclose(out[mask], 0.1, rtol=1e-5)
    assert np.all(out[~mask] == 0)
    # plain smoothing would have pulled the edge down: the compensation is doing the work
    from scipy.ndimage import gaussian_filter

    plain = gaussian_filter(np.where(mask, 0.1, 0.0), sigma_mm_to_voxels(3.0, (1.0, 1.5, 2.0)))
    assert plain[mask].min() < 0.05


def test_smoothing_sigma_is_in_mm_per_axis():
    shape = (41, 41, 41)
    img = np.zeros(shape)
    img[20, 20, 20] = 1.0
    vox = (1.0, 2.0, 0.5)
    out = smooth_within_mask(img, np.ones(shape, bool), 3.0, vox).astype(float)
    out /= out.sum()
    grid = np.indices(shape) - 20
    for axis in range(3):
        var_mm = (out * (grid[axis] * vox[axis]) ** 2).sum()
        assert np.sqrt(var_mm) == pytest.approx(3.0, rel=0.03)
    aff = np.diag([*vox, 1.0])
    np.testing.assert_allclose(voxel_sizes(aff), vox)
