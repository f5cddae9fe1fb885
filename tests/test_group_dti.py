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


def _cylinder(shape, centre, radius, axis=2):
    """Voxels within ``radius`` of a line through ``centre`` along ``axis``."""
    grid = np.indices(shape, dtype=float)
    others = [a for a in range(3) if a != axis]
    r2 = sum((grid[a] - centre[a]) ** 2 for a in others)
    return r2 <= radius ** 2


@pytest.mark.parametrize("axis", [0, 2])
def test_centreline_of_a_cylinder_is_its_axis(axis):
    shape = (21, 23, 19)
    centre = (10, 11, 9)
    tube = _cylinder(shape, centre, 3.0, axis)
    for tolerance in (0.0, 0.5):  # the deepest voxel is unique: the axis, depth r + 1 against r for its neighbours
        line = gd.tract_centreline(tube, tolerance, axis)
        expected = np.zeros(shape, bool)
        idx = [slice(None)] * 3
        for a in range(3):
            if a != axis:
                idx[a] = centre[a]
        expected[tuple(idx)] = True
        np.testing.assert_array_equal(line, expected)


def test_centreline_of_a_bar_is_its_middle_row():
    # a 7 x 3 cross-section: in-plane depth 2 on the middle row away from the ends, 1 on the rim
    bar = np.zeros((11, 9, 5), bool)
    bar[2:9, 3:6, :] = True
    line = gd.tract_centreline(bar, 0.5)
    expected = np.zeros_like(bar)
    expected[3:8, 4, :] = True
    np.testing.assert_array_equal(line, expected)
    # a wider tolerance takes the rim too
    assert gd.tract_centreline(bar, 1.0).sum() == bar.sum()


def test_centreline_medians_read_the_core_inside_the_mask():
    shape = (30, 20, 12)
    table = pd.DataFrame({"index": [25, 26, 3], "region": ["corticospinal_tract"] * 2 + ["putamen"],
                          "hemisphere": ["L", "R", "L"]})
    labels = np.zeros(shape, np.int32)
    labels[_cylinder(shape, (8, 10, 0), 3.0)] = 25
    labels[_cylinder(shape, (22, 10, 0), 3.0)] = 26
    line = gd.centreline_labels(labels, table, "corticospinal_tract", 0.5)
    assert set(np.unique(line)) == {0, 25, 26} and (line == 25).sum() == shape[2]
    chi = np.where(labels > 0, -0.02, 0.0).astype(np.float32)  # the tract's rim: partial volume
    chi[line == 25] = -0.05
    chi[line == 26] = -0.04
    chi[22, 10, :6] = 1.0  # outside the participant's mask below
    mask = np.ones(shape, np.uint8)
    mask[:, :, :6] = np.where(labels[:, :, :6] == 26, 0, 1)
    other = chi.copy()
    other[line == 25] = np.nan  # no finite value on the left line
    got = gd.centreline_medians([chi, other], [mask, mask], ["01", "02"], line, table, "corticospinal_tract",
                                min_voxels=5)
    assert got.columns.tolist() == ["participant_id", "region", "hemisphere", "median_ppm", "n_voxels"]
    first = got[got.participant_id == "01"].set_index("hemisphere")
    assert first.loc["L", "median_ppm"] == pytest.approx(-0.05) and first.loc["L", "n_voxels"] == 12
    assert first.loc["R", "median_ppm"] == pytest.approx(-0.04) and first.loc["R", "n_voxels"] == 6
    second = got[got.participant_id == "02"].set_index("hemisphere")
    assert np.isnan(second.loc["L", "median_ppm"]) and second.loc["L", "n_voxels"] == 0
    fa = pd.DataFrame({"participant_id": "01", "region": "corticospinal_tract", "hemisphere": ["L", "R"],
                       "metric": "FA", "value": [0.6, 0.62]})
    values = gd.cst_values(got, fa, pd.DataFrame({"participant_id": ["sub-01", "sub-02"],
                                                  "group": ["ALS", "control"]}), "group")
    assert values.set_index("participant_id").loc["01", "QSM"] == pytest.approx(-0.045)
    # an atlas without the region gives no rows (the group step then warns)
    assert gd.centreline_medians([chi], [mask], ["01"], line, table[table.region == "putamen"]).empty
    with pytest.raises(ValueError, match="participant 01: map"):
        gd.centreline_medians([chi[:-1]], [mask], ["01"], line, table)
