"""The study template's balanced participant subset (qsm_bids.group.subset)."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.group.subset import balanced_subset


def _cohort(n_a=300, n_b=500, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.array(["ALS"] * n_a + ["control"] * n_b)
    ages = np.r_[rng.uniform(40, 80, n_a), rng.uniform(30, 85, n_b)]
    return groups, ages


def test_equal_groups_and_the_age_range_covered():
    groups, ages = _cohort()
    idx = balanced_subset(groups, ages, 40, seed=3)
    assert idx.size == 40 and np.unique(idx).size == 40 and np.all(np.diff(idx) > 0)
    assert np.sum(groups[idx] == "ALS") == 20 and np.sum(groups[idx] == "control") == 20
    for g in ("ALS", "control"):
        full = np.sort(ages[groups == g])
        got = np.sort(ages[idx][groups[idx] == g])
        # one draw per age stratum: the k-th youngest chosen lies in the k-th twentieth of the group
        edges = [s[[0, -1]] for s in np.array_split(full, 20)]
        for a, (lo, hi) in zip(got, edges):
            assert lo <= a <= hi


def test_seeded_and_seed_dependent():
    groups, ages = _cohort()
    a = balanced_subset(groups, ages, 30, seed=1)
    np.testing.assert_array_equal(a, balanced_subset(groups, ages, 30, seed=1))
    assert not np.array_equal(a, balanced_subset(groups, ages, 30, seed=2))


def test_a_small_group_gives_its_share_to_the_other():
    groups, ages = _cohort(n_a=5, n_b=200)
    idx = balanced_subset(groups, ages, 30, seed=0)
    assert np.sum(groups[idx] == "ALS") == 5 and np.sum(groups[idx] == "control") == 25


def test_whole_cohort_and_bad_input():
    groups, ages = _cohort(n_a=4, n_b=4)
    np.testing.assert_array_equal(balanced_subset(groups, ages, 50), np.arange(8))
    with pytest.raises(ValueError, match="at least 1"):
        balanced_subset(groups, ages, 0)
    with pytest.raises(ValueError, match="one to one"):
        balanced_subset(groups, ages[:3], 2)


def test_study_template_from_a_subset_brings_everyone_in(tmp_path):
    """Template from 2 of 4 participants (one per group), recorded in the sidecar; all 4 are in it."""
    import json

    import nibabel as nib
    from scipy import ndimage

    from qsm_bids.group.template import build_study_template
    from qsm_bids.registration import brain_template

    ref = brain_template(4.0)
    d = ref.get_fdata()
    rng = np.random.default_rng(0)
    t1, chi, masks = [], [], []
    for i in range(4):
        s = ndimage.shift(d, rng.uniform(-0.7, 0.7, 3), order=1)
        brain = s > 0.2 * d.max()
        c = (ndimage.gaussian_filter(rng.standard_normal(d.shape), 1) * brain).astype(np.float32)
        for kind, arr, bucket in (("desc-preproc_T1w", s.astype(np.float32), t1), ("Chimap", c, chi),
                                  ("desc-brain_mask", brain.astype(np.uint8), masks)):
            p = tmp_path / f"sub-{i:02d}_space-MNI152NLin2009aSym_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(arr, ref.affine), p)
            bucket.append(p)
    group = tmp_path / "group"
    out = {"template_t1w": group / "tpl-study_T1w.nii.gz",
           "template_chi": group / "tpl-study_desc-mean_Chimap.nii.gz",
           "template_mask": group / "tpl-study_desc-brain_mask.nii.gz",
           "xfm_study_to_mni": group / "from-study_to-MNI152NLin2009aSym_mode-image_xfm.h5"}
    groups, ages = ["ALS", "ALS", "control", "control"], [50, 70, 55, 65]
    written = build_study_template(t1, chi, masks, out, iterations=1, resolution_mm=4.0, n_threads=1,
                                   work_dir=tmp_path, reg_iterations=(10, 0, 0), subset_size=2,
                                   groups=groups, ages=ages, seed=4)
    side = json.loads((group / "tpl-study_T1w.json").read_text())
    subset = side["TemplateSubset"]
    chosen = [int(lbl[4:]) for lbl in subset["Participants"]]
    assert subset["Size"] == 2 and subset["Of"] == 4 and subset["Seed"] == 4
    assert sorted(groups[k] for k in chosen) == ["ALS", "control"]
    np.testing.assert_array_equal(chosen, balanced_subset(groups, ages, 2, seed=4))
    assert len(written["subjects"]) == 4
    for s in written["subjects"]:
        data = np.asarray(nib.load(s["chi_study"]).dataobj)
        assert data.shape == nib.load(out["template_t1w"]).shape and np.any(data != 0)
