"""Region statistics: every number against scipy.stats, and the paper's cohort."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsm_bids.config import GroupConfig
from qsm_bids.errors import DataError
from qsm_bids.group.nonparametric import rank_sum_test, significance_marks
from qsm_bids.group.roi_stats import (
    combine_hemispheres,
    compute_roi_stats,
    covariance_adjust,
    laterality_tests,
    read_region_tables,
    write_roi_outputs,
)

# ----------------------------------------------------------------------------- input

def test_read_region_tables(tmp_path):
    (tmp_path / "a.tsv").write_text("region\themisphere\tmedian_ppm\tn_voxels\textra\nputamen\tL\t0.1\t100\tx\n"
                                    "caudate\tNA\tn/a\t5\ty\n")
    (tmp_path / "b.tsv").write_text("region\tmedian_ppm\nputamen\t0.1\n")
    values = read_region_tables({"01": tmp_path / "a.tsv", "sub-02": tmp_path / "a.tsv"})
    assert list(values.columns) == ["participant_id", "region", "hemisphere", "median_ppm", "n_voxels", "extra"]
    assert values["participant_id"].tolist() == ["sub-01", "sub-01", "sub-02", "sub-02"]
    assert values["hemisphere"].isna().sum() == 2 and values["median_ppm"].isna().sum() == 2
    assert list(read_region_tables({}).columns) == ["participant_id", "region", "hemisphere", "median_ppm",
                                                    "n_voxels"]
    with pytest.raises(DataError, match=r"lacks column\(s\) \['hemisphere'\]; expected region, hemisphere"):
        read_region_tables({"01": tmp_path / "b.tsv"})
    with pytest.raises(DataError, match="cannot read the region table .*; rerun the participant level"):
        read_region_tables({"01": tmp_path / "absent.tsv"})
    (tmp_path / "empty.tsv").write_text("")  # a truncated write: one line, no traceback
    with pytest.raises(DataError, match="empty.tsv: cannot read the region table"):
        read_region_tables({"01": tmp_path / "empty.tsv"})


# ----------------------------------------------------------------------------- kernels

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_sum_matches_scipy_without_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.1, 0.02, 17)
    b = rng.normal(0.09, 0.02, 23)
    u, z, p = rank_sum_test(a, b, continuity=False)
    ref = stats.ranksums(a, b)  # no tie correction needed: continuous data
    assert z == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-12)
    mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=False)
    assert u == pytest.approx(mw.statistic)
    assert p == pytest.approx(mw.pvalue, rel=1e-12)


def test_rank_sum_with_ties_and_continuity_matches_mannwhitneyu():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 6, 25).astype(float)  # heavy ties
    b = rng.integers(1, 7, 30).astype(float)
    for continuity in (True, False):
        u, z, p = rank_sum_test(a, b, continuity=continuity)
        mw = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic",
                                use_continuity=continuity)
        assert p == pytest.approx(mw.pvalue, rel=1e-12)
        assert abs(z) == pytest.approx(stats.norm.isf(mw.pvalue / 2), rel=1e-9)
        assert u == pytest.approx(mw.statistic)
    # sign: positive when the first sample ranks higher
    assert rank_sum_test(b, a)[1] > 0 > rank_sum_test(a, b)[1]


def test_rank_sum_degenerate():
    u, z, p = rank_sum_test([1.0, 1.0], [1.0, 1.0, 1.0])
    assert np.isnan(z) and np.isnan(p)
    assert np.isnan(rank_sum_test([], [1.0])[2])


def test_significance_marks():
    assert significance_marks(0.04, 0.6) == "*"
    assert significance_marks(0.004, 0.06) == "**"
    assert significance_marks(0.001, 0.03) == "***"
    assert significance_marks(0.0001, 0.002) == "****"
    assert significance_marks(0.2, 1.0) == ""
    assert significance_marks(np.nan, np.nan) == ""


def _wide(rng, n, regions=("a", "b")):
    cols = pd.MultiIndex.from_tuples([(r, h) for r in regions for h in "LR"],
                                     names=["region", "hemisphere"])
    return pd.DataFrame(rng.normal(0.1, 0.01, (n, len(cols))), columns=cols,
                        index=[f"sub-{i:02d}" for i in range(n)])


def test_laterality_and_combination_match_scipy():
    rng = np.random.default_rng(3)
    wide = _wide(rng, 20)
    wide[("b", "R")] += 0.02  # strongly lateral
    grp = pd.Series([True] * 12 + [False] * 8, index=wide.index)
    lat = laterality_tests(wide, grp).set_index("region")
    for r in ("a", "b"):
        ref = stats.wilcoxon(wide.loc[grp, (r, "L")], wide.loc[grp, (r, "R")])
        assert lat.loc[r, "laterality_stat"] == pytest.approx(ref.statistic)
        assert lat.loc[r, "laterality_p"] == pytest.approx(ref.pvalue)
        assert lat.loc[r, "laterality_n"] == 12
    assert lat.loc["b", "laterality_p"] < 0.05
    units = combine_hemispheres(wide, ["b"])
    assert list(units.columns) == [("a", "bilateral"), ("b", "L"), ("b", "R")]
    np.testing.assert_allclose(units[("a", "bilateral")], (wide[("a", "L")] + wide[("a", "R")]) / 2)
    wide.iloc[0, 0] = np.nan
    assert np.isnan(combine_hemispheres(wide, [])[("a", "bilateral")].iloc[0])


def test_covariance_adjust_matches_linregress():
    rng = np.random.default_rng(4)
    n = 30
    age = pd.DataFrame({"age": rng.uniform(30, 80, n)}, index=[f"s{i}" for i in range(n)])
    ref = pd.Series(np.arange(n) >= 12, index=age.index)
    y = 0.05 + 0.001 * age["age"] + rng.normal(0, 0.005, n)
    wide = pd.DataFrame({("r", "L"): y})
    wide.index = age.index
    adjusted, slopes, msgs = covariance_adjust(wide, age, ref)
    lr = stats.linregress(age["age"][ref], y[ref])
    assert slopes.loc[("r", "L"), "age"] == pytest.approx(lr.slope, rel=1e-10)
    expected = y - lr.slope * (age["age"] - age["age"][ref].mean())
    np.testing.assert_allclose(adjusted[("r", "L")], expected, rtol=1e-12)
    assert msgs == []
    # two covariates: joint OLS, same as numpy lstsq
    cov2 = age.assign(iq=rng.normal(100, 15, n))
    adjusted2, slopes2, _ = covariance_adjust(wide, cov2, ref)
    X = np.column_stack([np.ones(ref.sum()), cov2[ref].to_numpy()])
    beta = np.linalg.lstsq(X, y[ref], rcond=None)[0]
    np.testing.assert_allclose(slopes2.loc[("r", "L")].to_numpy(dtype=float), beta[1:], rtol=1e-10)


# ----------------------------------------------------------------------------- full analysis

def _cohort(seed=0, n_a=10, n_b=12, with_nan=False):
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    ids = [f"sub-{i:02d}" for i in range(n)]
    group = ["ALS"] * n_a + ["control"] * n_b
    parts = pd.DataFrame({
        "participant_id": ids, "group": group, "age": rng.uniform(40, 80, n).round(1),
        "sex": rng.choice(["M", "F"], n),
        "alsfrs_r": [*rng.integers(20, 48, n_a), *[np.nan] * n_b],
        "onset": [*(["limb", "bulbar"] * n_a)[:n_a], *[None] * n_b],
    })
    rows = []
    for i, pid in enumerate(ids):
        age = parts.loc[i, "age"]
        for region, shift in (("globus_pallidus", 0.01), ("substantia_nigra_dorsal", 0.0),
                              ("red_nucleus", 0.015), ("corticospinal_tract", -0.004)):
            base = 0.1 + 0.0005 * (age - 60) + (shift if i < n_a else 0.0) + rng.normal(0, 0.006)
            for h in "LR":
                lat = 0.03 if (region == "red_nucleus" and h == "R") else 0.0
                rows.append((pid, region, h, base + lat + rng.normal(0, 0.004), 100))
    vals = pd.DataFrame(rows, columns=["participant_id", "region", "hemisphere", "median_ppm", "n_voxels"])
    if with_nan:
        vals.loc[(vals.participant_id == "sub-01") & (vals.region == "globus_pallidus")
                 & (vals.hemisphere == "L"), "median_ppm"] = np.nan
    return parts, vals


def test_full_analysis_numbers_equal_scipy():
    parts, vals = _cohort()
    res = compute_roi_stats(vals, parts)
    t = res.roi_stats.set_index(["region", "hemisphere"])
    # red nucleus is lateral (R = L + 0.03) and kept apart; the others averaged
    assert ("red_nucleus", "L") in t.index and ("red_nucleus", "R") in t.index
    assert ("globus_pallidus", "bilateral") in t.index
    ids_a = parts.participant_id[parts.group == "ALS"]
    ids_b = parts.participant_id[parts.group == "control"]
    age = parts.set_index("participant_id")["age"]
    v = vals.pivot(index="participant_id", columns=["region", "hemisphere"], values="median_ppm")
    n_tests = len(t)
    for (region, hemi), row in t.iterrows():
        # laterality from scipy on the raw ALS values
        ref_lat = stats.wilcoxon(v.loc[ids_a, (region, "L")], v.loc[ids_a, (region, "R")])
        assert row.laterality_p == pytest.approx(ref_lat.pvalue)
        assert row.laterality_stat == pytest.approx(ref_lat.statistic)
        y = (v[(region, "L")] + v[(region, "R")]) / 2 if hemi == "bilateral" else v[(region, hemi)]
        lr = stats.linregress(age[ids_b], y[ids_b])
        adj = y - lr.slope * (age - age[ids_b].mean())
        assert row.slope_age == pytest.approx(lr.slope, rel=1e-9)
        assert row.mean_ALS == pytest.approx(adj[ids_a].mean(), rel=1e-10)
        assert row.sem_ALS == pytest.approx(stats.sem(adj[ids_a]), rel=1e-10)
        assert row.sem_control == pytest.approx(stats.sem(adj[ids_b]), rel=1e-10)
        assert row.n_ALS == len(ids_a) and row.n_control == len(ids_b)
        assert row.raw_mean_ALS == pytest.approx(y[ids_a].mean(), rel=1e-10)
        assert row.raw_sem_control == pytest.approx(stats.sem(y[ids_b]), rel=1e-10)
        # adjusting to the reference mean leaves the reference group's mean unchanged
        assert row.mean_control == pytest.approx(row.raw_mean_control, rel=1e-9)
        mw = stats.mannwhitneyu(adj[ids_a], adj[ids_b], method="asymptotic")
        assert row.p == pytest.approx(mw.pvalue, rel=1e-10)
        assert row.z == pytest.approx(np.sign(row.mean_ALS - row.mean_control)
                                      * stats.norm.isf(mw.pvalue / 2), rel=1e-8) or abs(row.z) < 0.5
        assert row.p_bonferroni == pytest.approx(min(1.0, mw.pvalue * n_tests))
        assert row.significance == significance_marks(row.p, row.p_bonferroni)
    # clinical correlations within ALS against scipy
    c = res.correlations
    clin = c[(c.analysis == "clinical") & (c.variable == "alsfrs_r")].set_index(["region", "hemisphere"])
    vals_long = res.values.set_index(["region", "hemisphere", "participant_id"])["adjusted_ppm"].sort_index()
    frs = parts.set_index("participant_id")["alsfrs_r"]
    for (region, hemi), row in clin.iterrows():
        x = vals_long.loc[(region, hemi)].loc[ids_a]
        ref = stats.spearmanr(x, frs[ids_a])
        assert row.rho == pytest.approx(ref.statistic)
        assert row.rho_squared == pytest.approx(ref.statistic ** 2)
        assert row.p == pytest.approx(ref.pvalue)
        assert row.n == len(ids_a) and row.group == "ALS"
    assert set(clin.index) == set(t.index)
    # SN-GP within each group
    sngp = c[c.analysis == "sn_gp"]
    assert set(sngp.group) == {"ALS", "control"}
    for row in sngp.itertuples():
        ids = ids_a if row.group == "ALS" else ids_b
        ref = stats.spearmanr(vals_long.loc[(row.region, row.hemisphere)].loc[ids],
                              vals_long.loc[(row.variable, row.variable_hemisphere)].loc[ids])
        assert row.rho == pytest.approx(ref.statistic)
    # subgroups: onset levels of ALS vs controls and limb vs bulbar; sex within each group
    s = res.subgroups
    assert {"ALS onset=bulbar", "ALS onset=limb"} <= set(s.group_1)
    one = s[(s.group_1 == "ALS onset=limb") & (s.group_2 == "control")].iloc[0]
    limb = parts.participant_id[(parts.group == "ALS") & (parts.onset == "limb")]
    ref = stats.mannwhitneyu(vals_long.loc[(one.region, one.hemisphere)].loc[limb],
                             vals_long.loc[(one.region, one.hemisphere)].loc[ids_b], method="asymptotic")
    assert one.p == pytest.approx(ref.pvalue)
    assert "sex" in set(s.subgroup_column)
    assert res.warnings == []


def test_missing_values_excluded_with_warning():
    parts, vals = _cohort(with_nan=True)
    # a participant without any region table and one with no age
    parts = pd.concat([parts, pd.DataFrame({"participant_id": ["sub-99"], "group": ["control"],
                                            "age": [50.0]})], ignore_index=True)
    parts.loc[parts.participant_id == "sub-05", "age"] = np.nan
    res = compute_roi_stats(vals, parts)
    text = " ".join(res.warnings)
    assert "sub-99" in text and "sub-05" in text and "sub-01" in text
    t = res.roi_stats.set_index(["region", "hemisphere"])
    assert t.loc[("globus_pallidus", "bilateral"), "n_ALS"] == 8  # 10 - sub-01 (NaN) - sub-05 (no age)
    assert t.loc[("red_nucleus", "L"), "n_ALS"] == 9
    assert "sub-05" not in set(res.values.participant_id)


def test_min_voxels_treated_as_missing():
    parts, vals = _cohort()
    vals.loc[(vals.participant_id == "sub-02") & (vals.region == "red_nucleus"), "n_voxels"] = 2
    res = compute_roi_stats(vals, parts, min_voxels=5)
    assert any("fewer than 5 voxels" in w and "sub-02" in w for w in res.warnings)
    t = res.roi_stats.set_index(["region", "hemisphere"])
    assert t.loc[("red_nucleus", "L"), "n_ALS"] == 9


def test_labels_without_prefix():
    parts, vals = _cohort()
    with_prefix = compute_roi_stats(vals, parts)
    parts["participant_id"] = parts["participant_id"].str.replace("sub-", "")
    res = compute_roi_stats(vals, parts)
    pd.testing.assert_frame_equal(res.roi_stats, with_prefix.roi_stats)
    assert set(res.values["participant_id"]) == set(with_prefix.values["participant_id"])


def test_bad_inputs_raise_data_error():
    parts, vals = _cohort()
    with pytest.raises(DataError, match="covariate"):
        compute_roi_stats(vals, parts, GroupConfig(covariates=("height",)))
    with pytest.raises(DataError, match="group 'control'"):
        compute_roi_stats(vals, parts.assign(group=["ALS"] * 21 + ["control"]))
    with pytest.raises(DataError, match="median_ppm"):
        compute_roi_stats(vals.drop(columns="median_ppm"), parts)


def test_write_outputs_with_sidecars(tmp_path):
    parts, vals = _cohort()
    res = compute_roi_stats(vals, parts)
    from qsm_bids.group.demographics import compute_demographics

    paths = write_roi_outputs(tmp_path, res, demographics=compute_demographics(parts))
    assert (tmp_path / "demographics.json").exists()
    for p in paths:
        table = pd.read_csv(p, sep="\t", na_values="n/a")
        sidecar = json.loads(p.with_suffix(".json").read_text())
        assert set(table.columns) <= set(sidecar), (p.name, set(table.columns) - set(sidecar))
    table = pd.read_csv(tmp_path / "roi_stats.tsv", sep="\t")
    np.testing.assert_allclose(table["p"], res.roi_stats["p"], rtol=1e-5)


# ----------------------------------------------------------------------------- the paper's cohort

# Acosta-Cabronero et al. 2018: mean +- SEM (ppm), ALS (n=28) vs control (n=39), and P.
PAPER = {
    # region, hemisphere: (mean_A, sem_A, mean_B, sem_B, paper P; None = "P < .001")
    ("precentral_gyrus", "bilateral"): (0.0188, 0.0003, 0.0173, 0.0003, None),
    ("substantia_nigra_dorsal", "L"): (0.127, 0.004, 0.113, 0.003, 0.008),
    ("substantia_nigra_dorsal", "R"): (0.141, 0.005, 0.120, 0.003, None),
    ("globus_pallidus", "bilateral"): (0.086, 0.003, 0.075, 0.002, 0.003),
    ("red_nucleus", "bilateral"): (0.115, 0.004, 0.098, 0.003, None),
    ("corticospinal_tract", "bilateral"): (-0.047, 0.001, -0.043, 0.001, 0.01),
}


def _paper_cohort(seed, n_a=28, n_b=39):
    """Values drawn from the paper's means and SDs (SD = SEM sqrt(n)), with an age effect.

    Bilateral regions get L and R that differ by a small balanced jitter (no
    laterality, so no chance split by the laterality test); the SN's hemispheres are separate draws of the paper's L and R
    distributions correlated within participants (laterality: R > L).
    """
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    ids = [f"sub-{i:02d}" for i in range(n)]
    is_a = np.arange(n) < n_a
    age = rng.uniform(45, 80, n)
    rows = []
    sn_common = rng.standard_normal(n)
    for (region, hemi), (ma, sa, mb, sb, _) in PAPER.items():
        sd = np.where(is_a, sa * np.sqrt(n_a), sb * np.sqrt(n_b))
        mean = np.where(is_a, ma, mb)
        if region.startswith("substantia"):
            e = 0.97 * sn_common + 0.2431 * rng.standard_normal(n)  # L-R correlation 0.94
        else:
            e = rng.standard_normal(n)
        value = mean + sd * e + 1e-4 * abs(mb) * (age - 60)  # age effect removed by the adjustment
        hemis = [hemi] if hemi in "LR" else ["L", "R"]
        for h in hemis:
            # L - R of +d, -d, +2d, -2d, ...: balanced signed ranks, no laterality (p = 1)
            jitter = 0.0 if len(hemis) == 1 else (0.01 * abs(mb) * (np.arange(n) // 2 + 1)
                                                  * (-1.0) ** np.arange(n) * (0.5 if h == "L" else -0.5))
            rows += list(zip(ids, [region] * n, [h] * n, value + jitter))
    vals = pd.DataFrame(rows, columns=["participant_id", "region", "hemisphere", "median_ppm"])
    parts = pd.DataFrame({"participant_id": ids, "group": np.where(is_a, "ALS", "control"), "age": age})
    return parts, vals


def test_paper_cohort_reproduces_z_and_p():
    """Z averaged over 24 cohorts is within 0.5 of the paper's Z.

    One cohort's Z has a sampling SD of about 1 (it is a standard normal
    deviate around its expectation), so a single draw can only be checked for
    sign and rough magnitude. The mean over 24 independent draws has an SD of
    about 0.2, and the expected Z from the paper's summary statistics
    (AUC = Phi(delta / sqrt(SD_A^2 + SD_B^2))) is 2.63, 2.87 and -2.60 for the
    rows with an exact P (paper: 2.65, 2.97, -2.58). Tolerance 0.5 is ~2.5 SD
    of the mean plus the rounding of the paper's SEMs. For the "P < .001"
    rows (paper Z > 3.29) the SEMs' rounding to one digit leaves an expected
    Z of 3.1-3.4, so those must have a mean Z above 2.8 and a median P below .005.
    """
    seeds = range(24)
    z = {k: [] for k in PAPER}
    p = {k: [] for k in PAPER}
    for seed in seeds:
        parts, vals = _paper_cohort(seed)
        res = compute_roi_stats(vals, parts)
        t = res.roi_stats.set_index(["region", "hemisphere"])
        assert set(PAPER) <= set(t.index), t.index  # SN kept apart, others averaged
        for k in PAPER:
            z[k].append(t.loc[k, "z"])
            p[k].append(t.loc[k, "p"])
            assert t.loc[k, "n_ALS"] == 28 and t.loc[k, "n_control"] == 39
    for k, (ma, sa, mb, sb, p_paper) in PAPER.items():
        mean_z = float(np.mean(z[k]))
        assert np.sign(mean_z) == np.sign(ma - mb)
        if p_paper is not None:
            z_paper = np.sign(ma - mb) * stats.norm.isf(p_paper / 2)
            assert abs(mean_z - z_paper) < 0.5, (k, mean_z, z_paper)
        else:
            assert abs(mean_z) > 2.8, (k, mean_z)
            assert np.median(p[k]) < 0.005, (k, np.median(p[k]))
        # every cohort is at least nominally significant in the paper's direction
        assert np.mean(np.array(p[k]) < 0.05) > 0.6, k
