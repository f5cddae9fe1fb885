"""Demographics table against scipy.stats."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsm_bids.group.demographics import (
    compute_demographics,
    demographics_sidecar,
    format_mean_sd_range,
)


def _participants(seed=0):
    rng = np.random.default_rng(seed)
    n_a, n_b = 28, 39
    n = n_a + n_b
    return pd.DataFrame({
        "participant_id": [f"{i:02d}" for i in range(n)],
        "group": ["ALS"] * n_a + ["control"] * n_b,
        "age": rng.integers(40, 80, n).astype(float),  # integers: ties in the rank-sum
        "sex": rng.choice(["M", "F"], n),
        "alsfrs_r": [*rng.integers(20, 48, n_a), *[np.nan] * n_b],
        "onset": [*rng.choice(["limb", "bulbar"], n_a), *[None] * n_b],
    })


def test_demographics_numbers_match_scipy():
    parts = _participants()
    d = compute_demographics(parts)
    a = parts[parts.group == "ALS"]
    b = parts[parts.group == "control"]
    n_row = d[d.variable == "n"].iloc[0]
    assert n_row.n_ALS == 28 and n_row.n_control == 39
    age = d[d.variable == "age"].iloc[0]
    assert age.mean_ALS == pytest.approx(a.age.mean()) and age.sd_control == pytest.approx(b.age.std(ddof=1))
    assert age.min_ALS == a.age.min() and age.max_control == b.age.max()
    mw = stats.mannwhitneyu(a.age, b.age, method="asymptotic")
    assert age.p == pytest.approx(mw.pvalue)
    assert abs(age.statistic) == pytest.approx(stats.norm.isf(mw.pvalue / 2))
    assert age.summary_ALS == format_mean_sd_range(a.age)
    sex = d[d.variable == "sex"]
    assert list(sex.level) == ["F", "M"]
    table = pd.crosstab(parts.sex, parts.group).loc[["F", "M"], ["ALS", "control"]].to_numpy()
    ref = stats.chi2_contingency(table, correction=False)
    assert sex.iloc[0].statistic == pytest.approx(ref.statistic)
    assert sex.iloc[0].p == pytest.approx(ref.pvalue) and sex.iloc[0].df == 1
    assert sex.iloc[1].count_ALS == (a.sex == "M").sum()
    yates = compute_demographics(parts, yates=True)
    ref_y = stats.chi2_contingency(table, correction=True)
    assert yates[yates.variable == "sex"].iloc[0].p == pytest.approx(ref_y.pvalue)
    assert ref_y.pvalue != pytest.approx(ref.pvalue)
    frs = d[d.variable == "alsfrs_r"].iloc[0]
    assert frs.n_ALS == 28 and frs.n_control == 0 and frs.test == ""
    assert frs.mean_ALS == pytest.approx(a.alsfrs_r.mean())
    onset = d[d.variable == "onset"]
    assert set(onset.level) == {"limb", "bulbar"}
    assert onset.count_ALS.sum() == 28 and onset.iloc[0].test == ""


def test_demographics_include_and_sidecar():
    parts = _participants()
    keep = [f"sub-{i:02d}" for i in range(10)] + [f"sub-{i:02d}" for i in range(30, 40)]
    d = compute_demographics(parts, include=keep)
    n_row = d[d.variable == "n"].iloc[0]
    assert n_row.n_ALS == 10 and n_row.n_control == 10
    sc = demographics_sidecar(("ALS", "control"))
    assert set(d.columns) <= set(sc)
    assert "correction=False" in sc["test"]["Description"]


def test_format_mean_sd_range():
    assert format_mean_sd_range([1, 2, 3]) == "2.0 ± 1.0 (1.0–3.0)"
    assert format_mean_sd_range([]) == "n/a"
