"""Partial Spearman correlations, effect sizes and region-pair correlations:
against pingouin (reference only, not a runtime dependency), scipy and hand-checked cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsm_bids.group.effects import (
    EFFECT_SIZE_COLUMNS,
    cohens_d,
    covariate_matrix,
    effect_size_table,
    effect_sizes,
    partial_fields,
    partial_spearman,
    rank_biserial,
    region_pair_correlations,
    region_units,
)

pg = pytest.importorskip("pingouin")


# ----------------------------------------------------------------------------- partial Spearman

def test_partial_spearman_hand_checked_case():
    # ranks 1..6 and [2,1,4,3,6,5]; removing a two-level covariate leaves
    # ex = [-1,0,1,-1,0,1], ey = [-1,-4,5,-5,4,1]/3: ex.ey = 4, |ex|^2 = 4,
    # |ey|^2 = 28/3, so rho = sqrt(3/7), df = 3 and t = 1.5 exactly
    x = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    y = [0.2, 0.1, 0.4, 0.3, 0.6, 0.5]
    z = [0, 0, 0, 1, 1, 1]
    r = partial_spearman(x, y, z)
    assert (r.n, r.df, r.k) == (6, 3, 1)
    assert r.rho == pytest.approx(np.sqrt(3 / 7), rel=1e-12)
    assert r.rho_squared == pytest.approx(3 / 7, rel=1e-12)
    assert r.p == pytest.approx(2 * stats.t.sf(1.5, 3), rel=1e-12)


def test_partial_spearman_one_covariate_is_the_recursion_on_spearman_rhos():
    rng = np.random.default_rng(11)
    z = rng.normal(size=40)
    x = z + rng.normal(size=40)
    y = z + 0.5 * x + rng.normal(size=40)
    rxy, rxz, ryz = (stats.spearmanr(u, v).statistic for u, v in ((x, y), (x, z), (y, z)))
    expected = (rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    assert partial_spearman(x, y, z).rho == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_no_covariate_is_scipy_spearman(ties):
    rng = np.random.default_rng(3)
    x = rng.normal(size=25)
    y = x + rng.normal(size=25)
    if ties:
        x, y = np.round(x), np.round(y * 2) / 2
    r = partial_spearman(x, y)
    ref = stats.spearmanr(x, y)
    assert r.rho == pytest.approx(ref.statistic, rel=1e-12)
    assert r.p == pytest.approx(ref.pvalue, rel=1e-10)
    assert (r.df, r.k) == (23, 0)


def _clinical_cohort(seed, n=30):
    """Numeric, tied and categorical (dummy-coded) covariates, some missing values."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    onset = rng.choice(["bulbar", "limb"], n, p=[0.35, 0.65])
    age = rng.normal(60, 9, n).round()  # integer ages: ties in the covariate
    latent = rng.normal(size=n)
    qsm = 0.1 + 0.01 * latent + 0.006 * (onset == "bulbar") + 0.003 * (sex == "M") \
        + 0.004 * rng.normal(size=n)
    score = 40 - 4 * latent - 5 * (onset == "bulbar") + 0.1 * age + 2 * rng.normal(size=n)
    score = np.round(score)  # tied clinical scores
    frame = pd.DataFrame({"qsm": qsm, "score": score, "age": age, "sex": sex, "onset": onset})
    frame.loc[[3, 17], "score"] = np.nan
    return frame


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("names", [["age"], ["onset", "sex"], ["onset", "sex", "age"]])
def test_partial_spearman_matches_pingouin(seed, names):
    frame = _clinical_cohort(seed)
    z, terms, dropped = covariate_matrix(frame, names)
    assert dropped == []
    r = partial_spearman(frame["qsm"], frame["score"], z)
    coded = frame[["qsm", "score"]].join(pd.DataFrame(z, columns=terms, index=frame.index))
    ref = pg.partial_corr(data=coded, x="qsm", y="score", covar=terms, method="spearman")
    assert r.n == int(ref["n"].iloc[0]) == 28
    assert r.df == 28 - 2 - len(terms)
    assert r.rho == pytest.approx(float(ref["r"].iloc[0]), abs=1e-12)
    assert r.p == pytest.approx(float(ref["p_val"].iloc[0]), rel=1e-9, abs=1e-15)


def test_three_level_covariate_is_dummy_coded():
    rng = np.random.default_rng(8)
    n = 45
    site = np.repeat(["a", "b", "c"], 15)
    shift = {"a": 0.0, "b": 2.0, "c": -1.5}
    s = np.array([shift[v] for v in site])
    x = s + rng.normal(size=n)
    y = s + 0.4 * x + rng.normal(size=n)
    z, terms, _ = covariate_matrix(pd.DataFrame({"site": site}), ["site"], categorical=("site",))
    assert terms == ["site[b]", "site[c]"]
    assert z.shape == (45, 2)
    r = partial_spearman(x, y, z)
    data = pd.DataFrame({"x": x, "y": y, "b": z[:, 0], "c": z[:, 1]})
    ref = pg.partial_corr(data=data, x="x", y="y", covar=["b", "c"], method="spearman")
    assert r.rho == pytest.approx(float(ref["r"].iloc[0]), abs=1e-12)
    assert r.df == 41
    # controlling for the site removes most of the shared site shift
    assert abs(r.rho) < abs(stats.spearmanr(x, y).statistic)


def test_partial_spearman_recovers_a_planted_partial_correlation():
    # x and y share a latent factor (partial correlation of the Gaussian part
    # 0.6, Spearman 6/pi asin(0.3) = 0.58) and both move with a binary onset
    # and sex: the plain rho is inflated, the partial one recovers the plant
    rng = np.random.default_rng(21)
    n = 2000
    onset = rng.integers(0, 2, n)
    sex = rng.integers(0, 2, n)
    e = rng.multivariate_normal([0, 0], [[1, 0.6], [0.6, 1]], n)
    x = e[:, 0] + 2.0 * onset + 1.0 * sex
    y = e[:, 1] + 2.0 * onset + 1.0 * sex
    r = partial_spearman(x, y, np.column_stack([onset, sex]))
    assert r.rho == pytest.approx(6 / np.pi * np.arcsin(0.3), abs=0.03)
    assert stats.spearmanr(x, y).statistic > r.rho + 0.05


def test_partial_spearman_degenerate_cases():
    x = np.arange(5.0)
    # x^2 ranks like x: nothing of x is left once it is removed
    r = partial_spearman(x, np.sin(x), np.column_stack([x ** 2, np.cos(x)]))
    assert r.df == 1 and np.isnan(r.rho) and np.isnan(r.p)
    r = partial_spearman(x[:4], x[:4], np.column_stack([[0, 1, 0, 1], [1, 1, 0, 0]]))
    assert r.df == 0 and np.isnan(r.rho)
    assert np.isnan(partial_spearman(np.ones(8), np.arange(8.0)).rho)  # constant x
    z = np.column_stack([np.arange(8.0), 2 * np.arange(8.0)])  # collinear covariates
    assert np.isnan(partial_spearman(np.arange(8.0) % 3, np.arange(8.0) % 4, z).rho)
    # x fully explained by the covariate: residual is zero
    assert np.isnan(partial_spearman([1, 1, 2, 2, 3, 3.0], [1, 2, 3, 4, 5, 6.0],
                                     [0, 0, 1, 1, 2, 2]).rho)
    assert partial_spearman([1, 2, 3, np.nan], [1, 2, 3, 4]).n == 3
    with pytest.raises(ValueError, match="differ in length"):
        partial_spearman([1, 2, 3], [1, 2])


def test_perfect_partial_correlation_has_p_zero():
    r = partial_spearman([1, 2, 3, 4, 5, 6.0], [2, 4, 6, 8, 10, 12.0], [0, 1, 0, 1, 0, 1])
    assert r.rho == pytest.approx(1.0) and r.p == 0.0


def test_covariate_matrix_drops_absent_and_single_level_columns():
    frame = pd.DataFrame({"sex": ["F", "F", "F"], "onset": ["limb", "bulbar", None],
                          "age": [50.0, 60.0, 70.0], "batch": [1.0, 1.0, 1.0]})
    z, terms, dropped = covariate_matrix(frame, ["sex", "onset", "age", "batch", "apoe"])
    assert terms == ["onset[limb]", "age"]
    np.testing.assert_array_equal(z[:, 0][:2], [1.0, 0.0])
    assert np.isnan(z[2, 0])
    assert [d.split()[0] for d in dropped] == ["sex", "batch", "apoe"]


# ----------------------------------------------------------------------------- effect sizes

def test_effect_sizes_hand_checked():
    assert rank_biserial([3, 4, 5], [1, 2]) == 1.0
    assert rank_biserial([1, 2], [3, 4, 5]) == -1.0
    # pairs vs 2: 1 < 2, 2 = 2, 3 > 2 -> U = 1.5 of 3 -> 0
    assert rank_biserial([1, 2, 3], [2]) == 0.0
    # U = 3 of 4 (4 > 1, 4 > 3, 2 > 1, 2 < 3) -> 2 * 3/4 - 1 = 1/2; NaN dropped
    assert rank_biserial([4, 2], [1, 3, np.nan]) == pytest.approx(0.5)
    # means differ by 2, both variances 1
    assert cohens_d([3, 4, 5], [1, 2, 3]) == pytest.approx(2.0)
    # pooled variance ((2*1 + 1*8) / 3): d = (4 - 1) / sqrt(10/3)
    assert cohens_d([3, 4, 5], [-1, 3]) == pytest.approx(3 / np.sqrt(10 / 3))
    assert np.isnan(cohens_d([1], [2, 3])) and np.isnan(rank_biserial([], [1]))
    assert np.isnan(cohens_d([1, 1], [1, 1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effect_sizes_match_pingouin_and_scipy(seed):
    rng = np.random.default_rng(seed)
    a = np.round(rng.normal(0.12, 0.02, 28), 3)  # ties
    b = np.round(rng.normal(0.11, 0.02, 39), 3)
    mwu = pg.mwu(a, b, alternative="two-sided")
    assert rank_biserial(a, b) == pytest.approx(float(mwu["RBC"].iloc[0]), abs=1e-12)
    u = stats.mannwhitneyu(a, b).statistic
    assert rank_biserial(a, b) == pytest.approx(2 * u / (28 * 39) - 1, abs=1e-12)
    assert cohens_d(a, b) == pytest.approx(pg.compute_effsize(a, b, eftype="cohen"), rel=1e-12)


def test_bootstrap_intervals_are_seeded_and_contain_the_estimate():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.5, 1, 20), rng.normal(0, 1, 25)
    e1 = effect_sizes(a, b, n_bootstrap=1500, seed=7)
    e2 = effect_sizes(a, b, n_bootstrap=1500, seed=7)
    e3 = effect_sizes(a, b, n_bootstrap=1500, seed=8)
    assert e1 == e2
    assert e1.rank_biserial_ci != e3.rank_biserial_ci
    assert e1.rank_biserial == rank_biserial(a, b) and e1.cohens_d == cohens_d(a, b)
    lo, hi = e1.rank_biserial_ci
    assert -1 <= lo < e1.rank_biserial < hi <= 1
    lo, hi = e1.cohens_d_ci
    assert lo < e1.cohens_d < hi
    # NaN values are dropped before resampling
    assert effect_sizes(np.append(a, np.nan), b, n_bootstrap=1500, seed=7) == e1


def test_bootstrap_widths_match_large_sample_standard_errors():
    # d: SE = sqrt((na + nb) / (na nb) + d^2 / (2 (na + nb))) (Hedges & Olkin);
    # rank-biserial with no effect: var = 4 var(U) / (na nb)^2 = (na + nb + 1) / (3 na nb)
    rng = np.random.default_rng(9)
    na, nb = 150, 180
    a, b = rng.normal(0.4, 1, na), rng.normal(0, 1, nb)
    e = effect_sizes(a, b, n_bootstrap=2000, confidence=0.95, seed=1)
    se_d = np.sqrt((na + nb) / (na * nb) + e.cohens_d ** 2 / (2 * (na + nb)))
    half = (e.cohens_d_ci[1] - e.cohens_d_ci[0]) / 2
    assert half == pytest.approx(stats.norm.isf(0.025) * se_d, rel=0.12)
    null = effect_sizes(rng.normal(size=na), rng.normal(size=nb), n_bootstrap=2000, seed=2)
    half = (null.rank_biserial_ci[1] - null.rank_biserial_ci[0]) / 2
    se_r = np.sqrt((na + nb + 1) / (3 * na * nb))
    assert half == pytest.approx(stats.norm.isf(0.025) * se_r, rel=0.12)
    # a 50 % interval is narrower
    e50 = effect_sizes(a, b, n_bootstrap=2000, confidence=0.5, seed=1)
    assert e50.cohens_d_ci[1] - e50.cohens_d_ci[0] < 0.6 * (e.cohens_d_ci[1] - e.cohens_d_ci[0])


def test_effect_sizes_without_bootstrap_or_with_tiny_groups():
    e = effect_sizes([1.0, 2.0, 3.0], [0.0, 1.0], n_bootstrap=0)
    assert np.isnan(e.cohens_d_ci[0]) and e.rank_biserial == pytest.approx(2 * 5.5 / 6 - 1)
    e = effect_sizes([1.0], [0.0, 1.0], n_bootstrap=100)
    assert np.isnan(e.rank_biserial_ci[0]) and np.isnan(e.cohens_d)
    # resamples of two tied values often have SD 0: d is undefined, not infinite
    e = effect_sizes([1.0, 1.0, 2.0], [0.0, 0.0], n_bootstrap=400, seed=0)
    assert np.isnan(e.cohens_d_ci[0]) or np.all(np.isfinite(e.cohens_d_ci))
    with pytest.raises(ValueError, match="confidence"):
        effect_sizes([1, 2], [3, 4], confidence=95)


# ----------------------------------------------------------------------------- region pairs

def _units(rng, n):
    cols = pd.MultiIndex.from_tuples(
        [("corticospinal_tract", "L"), ("corticospinal_tract", "R"), ("globus_pallidus", "bilateral"),
         ("substantia_nigra_dorsal", "L"), ("substantia_nigra_dorsal", "R"),
         ("substantia_nigra_ventral", "bilateral"), ("putamen", "L"), ("putamen", "R")],
        names=["region", "hemisphere"])
    return pd.DataFrame(rng.normal(size=(n, len(cols))), columns=cols,
                        index=[f"sub-{i:02d}" for i in range(n)])


def test_region_units_prefix():
    cols = _units(np.random.default_rng(0), 3).columns
    assert region_units(cols, "substantia_nigra") == [
        ("substantia_nigra_dorsal", "L"), ("substantia_nigra_dorsal", "R"),
        ("substantia_nigra_ventral", "bilateral")]
    assert region_units(cols, "substantia_nig") == []  # whole name parts only
    assert region_units(cols, "globus_pallidus") == [("globus_pallidus", "bilateral")]


def test_region_pair_correlations_match_scipy_and_pair_hemispheres():
    rng = np.random.default_rng(5)
    values = _units(rng, 20)
    values[("globus_pallidus", "bilateral")] += 0.8 * values[("corticospinal_tract", "L")]
    values.iloc[2, 0] = np.nan
    z = rng.normal(size=(20, 1))
    out = region_pair_correlations(values, [("corticospinal_tract", "globus_pallidus"),
                                            ("substantia_nigra", "putamen"), ("amygdala", "putamen")],
                                   covariates=z)
    pairs = list(zip(out["region_1"], out["hemisphere_1"], out["region_2"], out["hemisphere_2"]))
    assert pairs == [
        ("corticospinal_tract", "L", "globus_pallidus", "bilateral"),
        ("corticospinal_tract", "R", "globus_pallidus", "bilateral"),
        ("substantia_nigra_dorsal", "L", "putamen", "L"),
        ("substantia_nigra_dorsal", "R", "putamen", "R"),
        ("substantia_nigra_ventral", "bilateral", "putamen", "L"),
        ("substantia_nigra_ventral", "bilateral", "putamen", "R")]
    first = out.iloc[0]
    x = values[("corticospinal_tract", "L")].to_numpy()
    y = values[("globus_pallidus", "bilateral")].to_numpy()
    ok = np.isfinite(x)
    ref = stats.spearmanr(x[ok], y[ok])
    assert first["n"] == 19
    assert first["rho"] == pytest.approx(ref.statistic, rel=1e-12)
    assert first["p"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert first["rho_squared"] == pytest.approx(ref.statistic ** 2, rel=1e-12)
    data = pd.DataFrame({"x": x, "y": y, "z": z[:, 0]})
    pref = pg.partial_corr(data=data, x="x", y="y", covar="z", method="spearman")
    assert first["partial_rho"] == pytest.approx(float(pref["r"].iloc[0]), abs=1e-12)
    assert first["partial_df"] == 16
    assert "partial_rho" not in region_pair_correlations(values, [("putamen", "globus_pallidus")])
    with pytest.raises(ValueError, match="two regions"):
        region_pair_correlations(values, [("putamen",)])


def test_effect_size_table_and_partial_fields():
    rng = np.random.default_rng(6)
    values = _units(rng, 12)
    in_a = np.arange(12) < 5
    table = effect_size_table(values, in_a, ~in_a, n_bootstrap=300, seed=3)
    assert list(table.columns) == list(EFFECT_SIZE_COLUMNS)
    assert list(table.index) == list(values.columns)
    col = ("putamen", "R")
    e = effect_sizes(values[col][in_a], values[col][~in_a], n_bootstrap=300, seed=3)
    assert table.loc[col, "cohens_d"] == e.cohens_d
    assert (table.loc[col, "rank_biserial_ci_low"], table.loc[col, "rank_biserial_ci_high"]) == \
        e.rank_biserial_ci
    x, y, z = values[col].to_numpy(), values[("putamen", "L")].to_numpy(), rng.normal(size=(12, 2))
    f = partial_fields(x, y, z, ["a", "b"])
    assert f["partial_covariates"] == "a, b" and f["partial_df"] == 8
    assert f["partial_rho"] == partial_spearman(x, y, z).rho
    assert np.isnan(partial_fields(x, y, None, [])["partial_rho"])


def test_pair_correlation_rows_and_sidecars():
    from qsm_bids.group.effects import (
        PARTIAL_COLUMNS,
        effect_size_sidecar,
        pair_correlation_rows,
        partial_sidecar,
    )

    rng = np.random.default_rng(12)
    values = _units(rng, 15)
    z = rng.normal(size=(15, 1))
    rows = pair_correlation_rows(values, [("corticospinal_tract", "globus_pallidus")], "ALS", "leakage",
                                 z, ["sex[M]"])
    assert [(r["region"], r["hemisphere"], r["variable"]) for r in rows] == [
        ("corticospinal_tract", "L", "globus_pallidus"), ("corticospinal_tract", "R", "globus_pallidus")]
    ref = partial_spearman(values[("corticospinal_tract", "R")], values[("globus_pallidus", "bilateral")], z)
    assert rows[1]["partial_rho"] == ref.rho and rows[1]["partial_covariates"] == "sex[M]"
    assert rows[0]["analysis"] == "leakage" and rows[0]["group"] == "ALS"
    plain = pair_correlation_rows(values, [("putamen", "globus_pallidus")], "ALS", "leakage")
    assert plain[0]["partial_covariates"] == "" and np.isnan(plain[0]["partial_rho"])
    assert set(partial_sidecar(["onset", "sex"])) == set(PARTIAL_COLUMNS)
    assert set(effect_size_sidecar("ALS", "control", 2000, 0.95)) == set(EFFECT_SIZE_COLUMNS)
