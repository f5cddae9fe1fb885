"""QSM-DTI correlations in the CST: the numbers of scipy.stats.spearmanr, the missing cases, the report section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsm_bids.derivatives import GROUP_OUTPUTS
from qsm_bids.group import dti as gd
from qsm_bids.report.group import structural_view


def _cohort(n_pat=8, n_con=5, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"{k:02d}" for k in range(1, n_pat + n_con + 1)]
    groups = ["ALS"] * n_pat + ["control"] * n_con
    participants = pd.DataFrame({"participant_id": [f"sub-{i}" for i in ids], "group": groups})
    q, d = [], []
    for i in ids:
        chi = {h: -0.045 + 0.005 * rng.standard_normal() for h in "LR"}
        for h in "LR":
            q.append({"participant_id": f"sub-{i}", "region": "corticospinal_tract", "hemisphere": h,
                      "median_ppm": chi[h]})
            q.append({"participant_id": f"sub-{i}", "region": "putamen", "hemisphere": h, "median_ppm": 0.05})
            for m, base in (("FA", 0.6), ("MD", 8e-4), ("RD", 5e-4), ("AD", 1.4e-3)):
                d.append({"participant_id": i, "region": "corticospinal_tract", "hemisphere": h, "metric": m,
                          "value": base * (1 + 5 * (chi[h] + 0.045)) + base * 0.02 * rng.standard_normal(),
                          "n_voxels": 100})
    return participants, pd.DataFrame(q), pd.DataFrame(d)


def test_correlations_match_scipy():
    participants, q, d = _cohort()
    values = gd.cst_values(q, d, participants, "group")
    assert len(values) == 13
    # the bilateral means are the values correlated
    first = q[(q["participant_id"] == "sub-01") & (q["region"] == "corticospinal_tract")]["median_ppm"].mean()
    assert values.loc[values["participant_id"] == "01", "QSM"].iloc[0] == pytest.approx(first)
    corr = gd.dti_correlations(values, "ALS")
    assert corr["y"].tolist() == ["FA", "MD", "RD", "AD"]
    pat = values[values["group"] == "ALS"]
    for r in corr.itertuples():
        ref = stats.spearmanr(pat["QSM"], pat[r.y])
        assert r.n == 8
        assert r.rho == pytest.approx(ref.statistic, abs=1e-12)
        assert r.rho2 == pytest.approx(ref.statistic ** 2, abs=1e-12)
        assert r.p == pytest.approx(ref.pvalue, rel=1e-9)
        assert r.note == ""


def test_missing_hemisphere_and_too_few_patients():
    participants, q, d = _cohort(n_pat=3, n_con=2)
    d.loc[(d["participant_id"] == "01") & (d["metric"] == "FA") & (d["hemisphere"] == "L"), "value"] = np.nan
    values = gd.cst_values(q, d, participants, "group")
    assert np.isnan(values.loc[values["participant_id"] == "01", "FA"].iloc[0])
    corr = gd.dti_correlations(values, "ALS").set_index("y")
    assert corr.loc["FA", "n"] == 2 and np.isnan(corr.loc["FA", "rho"])
    assert corr.loc["FA", "note"].startswith("not computed: 2 ALS participant(s)")
    assert corr.loc["MD", "n"] == 3 and np.isfinite(corr.loc["MD", "rho"])


def test_report_section_from_files(tmp_path):
    from qsm_bids.report.group import render_group_report

    view = structural_view(tmp_path)
    assert view["dti"] is None
    assert "no participant has DWI" in view["not_computed"][0]["reason"]
    participants, q, d = _cohort()
    values = gd.cst_values(q, d, participants, "group")
    corr = gd.dti_correlations(values, "ALS")
    out = {k: tmp_path / GROUP_OUTPUTS[k] for k in ("dti_values", "dti_correlations", "dti_scatter")}
    gd.write_dti_outputs(values, corr, out, ("ALS", "control"), {"GeneratedBy": {"Name": "test"}})
    back = pd.read_csv(out["dti_correlations"], sep="\t", na_values=["n/a"])
    assert np.allclose(back["rho"], corr["rho"], atol=1e-6)
    view = structural_view(tmp_path)
    assert view["dti"]["n_participants"] == 13 and view["dti"]["figure"].startswith("data:image/png;base64,")
    html = render_group_report(structural=view)
    assert "Structural comparators" in html and "QSM-DTI in the corticospinal tract" in html
    assert "Cortical thickness (DiReCT)</b>: not computed" in html


def test_tables_read_from_files_feed_the_correlations(tmp_path):
    from qsm_bids.errors import DataError
    read_dti_tables = gd.read_dti_tables

    participants, q, d = _cohort()
    paths = {}
    for pid, rows in d.groupby("participant_id"):
        paths[f"sub-{pid}"] = tmp_path / f"sub-{pid}_dwimap.tsv"
        rows.drop(columns="participant_id").to_csv(paths[f"sub-{pid}"], sep="\t", index=False, na_rep="n/a")
    back = read_dti_tables(paths)
    assert back["participant_id"].str.startswith("sub-").all()
    from_files = gd.cst_values(q, back, participants, "group")
    in_memory = gd.cst_values(q, d, participants, "group")
    pd.testing.assert_frame_equal(from_files, in_memory, check_dtype=False)
    broken = tmp_path / "broken.tsv"
    d.drop(columns=["participant_id", "metric"]).to_csv(broken, sep="\t", index=False)
    with pytest.raises(DataError, match="broken.tsv: DTI region table lacks column.*metric"):
        read_dti_tables({"sub-99": broken})
