"""Voxelwise entry point: planted effects found in the right direction only, files, determinism."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from qsm_bids.config import GroupConfig
from qsm_bids.derivatives import statmap_name
from qsm_bids.errors import DataError
from qsm_bids.group.clusters import CLUSTER_COLUMNS, atlas_lookup, cluster_table
from qsm_bids.group.voxelwise import analysis_mask, run_voxelwise, voxelwise_inference

SHAPE = (22, 24, 18)

def _params(**kw):
    return GroupConfig(group_column="status", groups=("PD", "HC"), covariates=("age",), **kw)

AFF = np.array([[2.0, 0, 0, -22], [0, 2, 0, -24], [0, 0, 2, -18], [0, 0, 0, 1]])
UP = (slice(4, 8), slice(5, 9), slice(5, 9))      # patients higher here
DOWN = (slice(14, 18), slice(14, 18), slice(9, 13))  # patients lower here


def _cohort(seed=0, n_a=10, n_b=12, effect=0.04, noise=0.1):
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    frame = pd.DataFrame({"participant_id": [f"{i:02d}" for i in range(n)],
                          "status": ["PD"] * n_a + ["HC"] * n_b, "age": rng.uniform(50, 80, n)})
    brain = np.zeros(SHAPE, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    chis, masks = [], []
    for i in range(n):
        chi = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 1.0).astype(np.float32) * noise
        chi += 0.0005 * frame.age[i]
        if i < n_a:
            chi[UP] += effect
            chi[DOWN] -= effect
        m = brain.copy()
        m[2, 2, 2 + i % 3] = False  # imperfect coverage
        chis.append(nib.Nifti1Image(np.where(m, chi, 0).astype(np.float32), AFF))
        masks.append(nib.Nifti1Image(m.astype(np.uint8), AFF))
    return frame, chis, masks


def _near(region, margin=4):
    out = np.zeros(SHAPE, bool)
    out[region] = True
    return ndimage.binary_dilation(out, iterations=margin)


def test_planted_effects_found_in_the_right_direction_and_nowhere_else():
    frame, chis, masks = _cohort()
    res = voxelwise_inference(chis, masks, frame, _params(n_permutations=100, permutation_chunk_size=40), seed=1)
    up, down = res.contrasts["PDgtHC"], res.contrasts["HCgtPD"]
    sig_up, sig_down = up["pfwe"] < 0.05, down["pfwe"] < 0.05
    # most of each planted box is found; nothing beyond the smoothing kernel's reach (8 mm)
    assert sig_up[UP].mean() > 0.5 and sig_down[DOWN].mean() > 0.5
    assert not (sig_up & ~_near(UP)).any()
    assert not (sig_down & ~_near(DOWN)).any()
    assert up["pfwe"].min() == pytest.approx(1 / 100)
    # t and tfce of the two contrasts mirror each other; tfce is the contrast's own side
    np.testing.assert_array_equal(up["t"], -down["t"])
    assert (up["tfce"] >= 0).all() and (down["tfce"] >= 0).all()
    assert res.mask.sum() < np.prod(SHAPE) and not res.mask[2, 2, 2]


def test_analysis_mask_coverage():
    m = [np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), np.array([1, 1, 1, 0]), np.array([1, 1, 0, 0])]
    np.testing.assert_array_equal(analysis_mask(m, 1.0), [1, 0, 0, 0])
    np.testing.assert_array_equal(analysis_mask(m, 0.75), [1, 1, 0, 0])
    np.testing.assert_array_equal(analysis_mask(m, 0.5), [1, 1, 1, 0])


def test_run_voxelwise_writes_everything_and_is_reproducible(tmp_path):
    frame, chis, masks = _cohort(seed=3)
    chi_paths, mask_paths = [], []
    for i, (c, m) in enumerate(zip(chis, masks)):
        chi_paths.append(tmp_path / "in" / f"sub-{i:02d}_space-MNI152NLin2009aSym_Chimap.nii.gz")
        mask_paths.append(tmp_path / "in" / f"sub-{i:02d}_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz")
        chi_paths[-1].parent.mkdir(exist_ok=True)
        nib.save(c, chi_paths[-1])
        nib.save(m, mask_paths[-1])
    labels = nib.Nifti1Image(np.where(_near(UP, 0), 3, 0).astype(np.int16), AFF)
    lookup = atlas_lookup(labels, pd.DataFrame({"index": [3], "region": ["putamen"], "hemisphere": ["L"]}))
    kw = dict(seed=5, n_jobs=1, label_lookup=lookup, parameters={"group": {"n_permutations": 60}})
    params = _params(n_permutations=60, permutation_chunk_size=25)
    out1 = run_voxelwise(chi_paths, mask_paths, frame, params, tmp_path / "g1", **kw)
    run_voxelwise(chi_paths, mask_paths, frame, params, tmp_path / "g2", **kw)
    for contrast in ("PDgtHC", "HCgtPD"):
        for stat in ("t", "tfce", "pfwe"):
            for space in (None, "MNI152NLin2009aSym"):
                name = statmap_name(contrast, stat, space=space)
                a, b = nib.load(tmp_path / "g1" / name), nib.load(tmp_path / "g2" / name)
                np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
        side = json.loads((tmp_path / "g1" / f"contrast-{contrast}_stat-pfwe_statmap.json").read_text())
        assert side["Parameters"]["voxelwise"]["tfce_connectivity"] == 26
        assert side["Parameters"]["voxelwise"]["seed"] == 5
        table = pd.read_csv(out1[f"{contrast}_clusters"], sep="\t", keep_default_na=False)
        assert list(table.columns) == CLUSTER_COLUMNS
        assert len(table) >= 1
    table = pd.read_csv(out1["PDgtHC_clusters"], sep="\t", keep_default_na=False)
    assert table.peak_label[0] == "putamen_L"
    assert table.peak_pfwe[0] < 0.05 and table.peak_t[0] > 0
    assert (tmp_path / "g1" / "contrast-PDgtHC_stat-pfwe_statmap.nii.gz").name == \
        "contrast-PDgtHC_stat-pfwe_statmap.nii.gz"
    # the coverage map counts the participants' masks; the analysis mask follows the stated rule
    cov = np.asarray(nib.load(out1["coverage_map"]).dataobj)
    count = np.sum([np.asarray(m.dataobj) > 0 for m in masks], axis=0)
    np.testing.assert_array_equal(cov, count)
    need = int(np.ceil(params.coverage_fraction * len(masks) - 1e-9))
    analysis = np.asarray(nib.load(out1["analysis_mask"]).dataobj) > 0
    np.testing.assert_array_equal(analysis, count >= need)
    side = json.loads((tmp_path / "g1" / "desc-coverage_map.json").read_text())
    assert side["MinimumCoverage"] == need and side["NumberOfSubjects"] == len(masks)
    null = pd.read_csv(out1["null"], sep="\t")
    assert len(null) == 60 and null.permutation[0] == 0


def test_cluster_table_geometry():
    sig = np.zeros((10, 10, 10), bool)
    sig[1:3, 1:3, 1:3] = True      # 8 voxels
    sig[6:9, 6:9, 6:9] = True      # 27 voxels
    t = np.where(sig, 3.0, 0.0)
    t[7, 7, 8] = 5.0
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    table = cluster_table(sig, t, t * 10, np.where(sig, 0.01, 1.0), aff, connectivity=6,
                          to_mni_points=lambda p: p + 1.0)
    assert list(table.n_voxels) == [27, 8]
    assert table.volume_mm3[0] == pytest.approx(27 * 8)
    assert (table.peak_x_mm[0], table.peak_y_mm[0], table.peak_z_mm[0]) == (15.0, 15.0, 17.0)
    assert table.centre_x_mm[1] == pytest.approx(2 * 1.5 + 1)
    assert table.peak_label[0] == "n/a" and table.peak_t[0] == 5.0
    assert cluster_table(np.zeros((3, 3, 3), bool), t[:3, :3, :3], t[:3, :3, :3], t[:3, :3, :3],
                         aff).empty


def test_mismatched_grids_are_a_data_error():
    frame, chis, masks = _cohort()
    chis[3] = nib.Nifti1Image(np.zeros((5, 5, 5), np.float32), AFF)
    with pytest.raises(DataError, match="common grid"):
        voxelwise_inference(chis, masks, frame, _params(n_permutations=10))


def test_analysis_mask_restricts_the_tests_not_the_smoothing():
    """Each map is smoothed within its own mask whatever the analysis mask: inside the analysis mask the
    t values are those of the unrestricted run, outside it nothing is tested."""
    frame, chis, masks = _cohort(seed=2)
    p = _params(n_permutations=20)
    full = voxelwise_inference(chis, masks, frame, p, seed=0)
    keep = np.zeros(SHAPE, bool)
    keep[3:9, 4:10, 4:10] = True  # part of UP and its surroundings, where smoothing carries values in
    part = voxelwise_inference(chis, masks, frame, p, seed=0, analysis_mask=keep)
    np.testing.assert_array_equal(part.mask, full.mask & keep)
    np.testing.assert_allclose(part.contrasts["PDgtHC"]["t"][part.mask], full.contrasts["PDgtHC"]["t"][part.mask],
                               rtol=1e-5, atol=1e-6)
    assert (part.contrasts["PDgtHC"]["t"][~part.mask] == 0).all()
    assert (part.contrasts["PDgtHC"]["pfwe"][~part.mask] == 1).all()
    with pytest.raises(DataError, match="analysis mask shape"):
        voxelwise_inference(chis, masks, frame, p, analysis_mask=keep[:-1])
