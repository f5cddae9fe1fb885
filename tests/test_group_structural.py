"""Group structural comparators: volumes by the QSM region method (checked against scipy and a direct
covariance-method fit), VBM through the voxelwise engine on small maps, the report section."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qsm_bids.config import Config
from qsm_bids.derivatives import GROUP_OUTPUTS
from qsm_bids.errors import DataError
from qsm_bids.group import structural as gs
from qsm_bids.io import write_tsv
from qsm_bids.report.group import render_group_report, structural_view

REGIONS = ("putamen", "caudate")


def _cohort(n_pat=8, n_con=8, putamen_loss=400.0, seed=1):
    """Volumes = base + 2 mm3/ml ICV - 10 mm3/year + noise; the patients' putamen smaller by ``putamen_loss``."""
    rng = np.random.default_rng(seed)
    ids = [f"{k:02d}" for k in range(1, n_pat + n_con + 1)]
    groups = ["ALS"] * n_pat + ["control"] * n_con
    ages = rng.uniform(45, 75, len(ids)).round(1)
    icv = rng.uniform(1300, 1700, len(ids))
    participants = pd.DataFrame({"participant_id": [f"sub-{i}" for i in ids], "group": groups, "age": ages})
    rows = []
    for i, g, a, v in zip(ids, groups, ages, icv):
        for region, base in (("putamen", 5000.0), ("caudate", 3500.0)):
            for h in "LR":
                vol = base + 2.0 * (v - 1500) - 10.0 * (a - 60) + 30 * rng.standard_normal()
                if region == "putamen" and g == "ALS":
                    vol -= putamen_loss
                rows.append({"participant_id": f"sub-{i}", "region": region, "hemisphere": h,
                             "measure": "volume_mm3", "value": vol})
        rows.append({"participant_id": f"sub-{i}", "region": "intracranial", "hemisphere": "bilateral",
                     "measure": "icv_mm3", "value": v * 1000})
    return participants, pd.DataFrame(rows)


def test_volumes_adjusted_by_the_covariance_method_and_ranked_as_scipy():
    participants, tables = _cohort()
    g, r = Config().group, Config().roi_stats
    result, values, _ = gs.volume_statistics(tables, participants, g, r, regions=REGIONS)
    assert result["hemisphere"].tolist() == ["bilateral", "bilateral"]  # no laterality planted
    ctrl = participants["group"] == "control"
    icv = tables[tables.measure == "icv_mm3"].set_index("participant_id")["value"] / 1000
    x = np.column_stack([participants["age"].to_numpy(float), icv[participants["participant_id"]].to_numpy()])
    for region in REGIONS:
        v = tables[(tables.measure == "volume_mm3") & (tables.region == region)]
        y = v.groupby("participant_id")["value"].mean()[participants["participant_id"]].to_numpy()
        # the covariance method, fitted here directly: OLS in the controls, values moved to their means
        xc = x - x[ctrl].mean(axis=0)
        beta = np.linalg.lstsq(np.column_stack([np.ones(ctrl.sum()), xc[ctrl]]), y[ctrl], rcond=None)[0]
        adjusted = y - xc @ beta[1:]
        got = values[values.region == region].set_index("participant_id")["adjusted_mm3"]
        assert np.allclose(got[participants["participant_id"]], adjusted)
        row = result.set_index("region").loc[region]
        assert row["slope_age"] == pytest.approx(beta[1]) and row["slope_icv_ml"] == pytest.approx(beta[2])
        ref = stats.mannwhitneyu(adjusted[~ctrl], adjusted[ctrl], alternative="two-sided", method="asymptotic")
        assert row["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert row["p_bonferroni"] == pytest.approx(min(1.0, 2 * ref.pvalue), rel=1e-9)
    res = result.set_index("region")
    # the planted putamen loss is found after the ICV/age adjustment, the caudate is not different
    assert res.loc["putamen", "p_bonferroni"] < 0.05 and res.loc["putamen", "z"] < 0
    assert res.loc["caudate", "p_bonferroni"] > 0.05
    assert res.loc["putamen", "mean_ALS"] < res.loc["putamen", "mean_control"] - 300


def test_no_planted_change_is_negative():
    participants, tables = _cohort(putamen_loss=0.0, seed=4)
    result, _, _ = gs.volume_statistics(tables, participants, Config().group, Config().roi_stats, regions=REGIONS)
    assert (result["p_bonferroni"] > 0.05).all()


def test_too_few_per_group_is_a_clear_error():
    participants, tables = _cohort()
    keep = ["sub-01", "sub-09", "sub-10"]
    with pytest.raises(Exception, match="group 'ALS' has 1 participant"):
        gs.volume_statistics(tables[tables.participant_id.isin(keep)], participants, Config().group,
                             Config().roi_stats)


def test_read_volume_tables(tmp_path):
    (tmp_path / "a.tsv").write_text("region\themisphere\tmeasure\tvalue\textra\nputamen\tleft\tvolume_mm3\t5000\tx\n"
                                    "NA\tn/a\ticv_mm3\tn/a\ty\n")
    (tmp_path / "b.tsv").write_text("region\themisphere\tvalue\nputamen\tL\t1\n")
    (tmp_path / "empty.tsv").write_text("")
    tables = gs.read_volume_tables({"01": tmp_path / "a.tsv"})
    assert list(tables.columns) == ["participant_id", "region", "hemisphere", "measure", "value"]
    assert tables["participant_id"].tolist() == ["sub-01", "sub-01"]
    assert tables["region"].tolist() == ["putamen", "NA"]  # only "n/a" is missing
    assert tables["hemisphere"].tolist() == ["L", "bilateral"]
    assert tables["value"].iloc[0] == 5000 and np.isnan(tables["value"].iloc[1])
    assert len(gs.read_volume_tables({})) == 0
    with pytest.raises(DataError, match=r"volumes table lacks column\(s\) \['measure'\]$"):
        gs.read_volume_tables({"01": tmp_path / "b.tsv"})
    with pytest.raises(DataError, match="cannot read the volumes table"):
        gs.read_volume_tables({"01": tmp_path / "empty.tsv"})


def test_vbm_mask():
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[0, 0], b[0, 0] = 0.5, 0.1  # mean 0.3
    a[1, 1], b[1, 1] = 0.3, 0.0  # mean 0.15
    assert gs.vbm_mask([a, b], 0.2).tolist() == [[True, False, False], [False, False, False],
                                                 [False, False, False]]


SHAPE = (16, 16, 12)


def _run_from_files(tmp_path, gm_loss: float, rim: float = 0.0):
    """12 participants' volumes tables and modulated GM maps (4 mm); the patients lose ``gm_loss`` in a block.
    ``rim``: the mean GM of a partial-volume shell one voxel around the tissue (below the VBM mask's 0.2)."""
    participants, tables = _cohort(n_pat=6, n_con=6)
    rng = np.random.default_rng(0)
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = [-40, -40, -20]
    files = {}
    for pid, g in zip(participants.participant_id, participants.group):
        label = pid.removeprefix("sub-")
        gm = np.zeros(SHAPE, np.float32)
        if rim:
            gm[1:15, 1:15, 1:11] = rim * (1 + 0.5 * rng.standard_normal((14, 14, 10)))
        gm[2:14, 2:14, 2:10] = 0.6 + 0.02 * rng.standard_normal((12, 12, 8))
        if g == "ALS":
            gm[4:8, 4:8, 3:7] -= gm_loss
        path = tmp_path / f"{pid}_gm.nii.gz"
        nib.Nifti1Image(gm, aff).to_filename(str(path))
        vol = tmp_path / f"{pid}_volumes.tsv"
        write_tsv(vol, tables[tables.participant_id == pid].drop(columns="participant_id"))
        files[label] = {"volumes": vol, "gm_modulated_template": path}
    participants["participant_id"] = participants["participant_id"].str.removeprefix("sub-")
    cfg = Config()
    cfg.update({"group": {"n_permutations": 200, "smoothing_sigma_mm": 4.0}})
    group_dir = tmp_path / "group"
    out = {k: group_dir / GROUP_OUTPUTS[k] for k in ("volumes_stats", "volumes_values", "vbm", "thickness",
                                                     "structural_summary")}
    summary = gs.run_structural_group(files, participants, out, group=cfg.group, roi_stats=cfg.roi_stats,
                                      structural=cfg.structural, seed=0, parameters=cfg.to_dict())
    return summary, out, group_dir


def test_vbm_without_a_planted_change_is_negative(tmp_path):
    summary, _, _ = _run_from_files(tmp_path, gm_loss=0.0)
    assert summary["vbm"]["computed"]
    assert all(c["n_significant_voxels"] == 0 for c in summary["vbm"]["contrasts"].values())


def test_vbm_smooths_the_gm_density_over_the_whole_grid(tmp_path):
    """VBM's t: that of an OLS fit (group, age, ICV) to each map smoothed over the whole grid, the
    partial-volume GM outside the analysis mask included (smoothed within the mask, it would be left out)."""
    from scipy.ndimage import gaussian_filter

    summary, _, group_dir = _run_from_files(tmp_path, gm_loss=0.2, rim=0.1)
    assert summary["vbm"]["n_voxels"] == 12 * 12 * 8  # the rim is below the mask's threshold
    t_map = np.asarray(nib.load(str(group_dir / "vbm" / "contrast-ALSgtcontrol_stat-t_statmap.nii.gz")).dataobj)
    participants, tables = _cohort(n_pat=6, n_con=6)
    icv = tables[tables.measure == "icv_mm3"].set_index("participant_id")["value"] / 1000
    x = np.column_stack([np.ones(12), (participants.group == "ALS").to_numpy(float), participants.age,
                         icv[participants.participant_id].to_numpy()])
    ones = gaussian_filter(np.ones(SHAPE, np.float32), 1.0, mode="constant")  # sigma 4 mm on 4 mm voxels
    smoothed = np.stack([gaussian_filter(np.asarray(nib.load(str(tmp_path / f"{pid}_gm.nii.gz")).dataobj),
                                         1.0, mode="constant") / ones for pid in participants.participant_id])
    for voxel in [(2, 8, 6), (4, 6, 5), (8, 13, 5)]:  # the GM's edge, the planted block, the far edge
        y = smoothed[(slice(None),) + voxel]
        beta, res, *_ = np.linalg.lstsq(x, y, rcond=None)
        se = np.sqrt(res[0] / (12 - 4) * np.linalg.inv(x.T @ x)[1, 1])
        assert t_map[voxel] == pytest.approx(beta[1] / se, rel=1e-3)


def test_group_outputs_and_report_from_files(tmp_path):
    """Volumes, VBM (a planted GM loss in a block of the patients' maps) and the report section."""
    summary, out, group_dir = _run_from_files(tmp_path, gm_loss=0.2)
    shape = SHAPE
    assert summary["volumes"]["computed"] and summary["vbm"]["computed"]
    assert not summary["thickness"]["computed"] and "structural.thickness" in summary["thickness"]["reason"]
    assert json.loads(out["structural_summary"].read_text())["vbm"]["n_participants"] == 12
    stats_tsv = pd.read_csv(out["volumes_stats"], sep="\t")
    assert set(stats_tsv.region) == {"putamen", "caudate"}
    vbm = group_dir / "vbm"
    p_loss = np.asarray(nib.load(str(vbm / "contrast-controlgtALS_stat-pfwe_statmap.nii.gz")).dataobj)
    p_gain = np.asarray(nib.load(str(vbm / "contrast-ALSgtcontrol_stat-pfwe_statmap.nii.gz")).dataobj)
    block = np.zeros(shape, bool)
    block[4:8, 4:8, 3:7] = True
    assert (p_loss[block] < 0.05).any() and (p_gain >= 0.05).all()
    # found where it was planted: within the block grown by the smoothing's reach (2 voxels)
    near = np.zeros(shape, bool)
    near[2:10, 2:10, 1:9] = True
    assert not ((p_loss < 0.05) & ~near).any()
    mask = np.asarray(nib.load(str(vbm / "desc-analysis_mask.nii.gz")).dataobj) > 0
    assert mask.sum() == 12 * 12 * 8  # mean modulated GM >= 0.2 inside the tissue block only
    side = json.loads((vbm / "desc-analysis_mask.json").read_text())
    assert "modulated GM" in side["Description"] and "vbm_gm_threshold" in side["Description"]
    view = structural_view(group_dir)
    assert view["volumes"] is not None and view["vbm"] is not None and view["thickness"] is None
    html = render_group_report(structural=view)
    assert "Subcortical volumes</h3>" in html and "Voxel-based morphometry</h3>" in html
    assert "Cortical thickness (DiReCT)</b>: not computed" in html
    assert "no participant has DWI" in html


def test_report_without_structural_results(tmp_path):
    view = structural_view(tmp_path)
    reasons = {m["measure"]: m["reason"] for m in view["not_computed"]}
    assert "structural.enabled false" in reasons["Subcortical volumes"]
    assert "no T1w" in reasons["Voxel-based morphometry (modulated GM)"]
