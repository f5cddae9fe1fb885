"""Study template (ANTs) on a tiny 4 mm cohort: files, manifest, image/point warps agree."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("ants")

from qsm_bids.config import GroupConfig
from qsm_bids.group.template import (  # noqa: E402
    build_study_template,
    study_space_maps,
    subject_label,
)
from qsm_bids.registration import brain_template  # noqa: E402

RES = 4.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tpl")
    ref = brain_template(RES)
    d = ref.get_fdata()
    rng = np.random.default_rng(0)
    t1, chi, masks = [], [], []
    for i in range(4):
        s = ndimage.shift(d, rng.uniform(-0.7, 0.7, 3), order=1)
        brain = s > 0.2 * d.max()
        c = (ndimage.gaussian_filter(rng.standard_normal(d.shape), 1) * brain).astype(np.float32)
        for kind, arr, bucket in (("desc-preproc_T1w", s.astype(np.float32), t1), ("Chimap", c, chi),
                                  ("desc-brain_mask", brain.astype(np.uint8), masks)):
            p = tmp / f"sub-{i:02d}_space-MNI152NLin2009aSym_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(arr, ref.affine), p)
            bucket.append(p)
    group = tmp / "group"
    out = {"template_t1w": group / "tpl-study_T1w.nii.gz",
           "template_chi": group / "tpl-study_desc-mean_Chimap.nii.gz",
           "template_mask": group / "tpl-study_desc-brain_mask.nii.gz",
           "xfm_study_to_mni": group / "from-study_to-MNI152NLin2009aSym_mode-image_xfm.h5"}
    written = build_study_template(t1, chi, masks, out, iterations=2, resolution_mm=RES, n_threads=2,
                                   work_dir=tmp, reg_iterations=(20, 10, 0))
    return {"t1": t1, "chi": chi, "masks": masks, "out": out, "written": written, "ref": ref}


def test_template_files_and_manifest(cohort):
    out, written = cohort["out"], cohort["written"]
    for p in out.values():
        assert p.exists()
    manifest = json.loads(out["template_t1w"].with_name("tpl-study_T1w.json").read_text())
    assert [s["label"] for s in manifest["Participants"]] == ["sub-00", "sub-01", "sub-02", "sub-03"]
    assert manifest["Iterations"] == 2 and manifest["TimingsSeconds"]["total"] > 0
    tpl = nib.load(out["template_t1w"])
    assert tpl.shape == cohort["ref"].shape
    # the template looks like the brain it was built from
    r = np.corrcoef(tpl.get_fdata().ravel(), cohort["ref"].get_fdata().ravel())[0, 1]
    assert r > 0.9
    assert "template_t1w_mni" in written and "template_chi_mni" in written
    assert subject_label("/x/sub-07_ses-2_space-X_Chimap.nii.gz") == "sub-07_ses-2"


def test_study_space_maps_and_point_warp_agree_with_image_warp(cohort):
    chi_imgs, mask_imgs, warp = study_space_maps(cohort["out"], cohort["chi"], cohort["masks"])
    assert len(chi_imgs) == 4 and chi_imgs[0].shape == mask_imgs[0].shape
    # the study-space map is the MNI map carried through a near-identity warp
    src = nib.load(cohort["chi"][1]).get_fdata()
    r = np.corrcoef(chi_imgs[1].get_fdata().ravel(), src.ravel())[0, 1]
    assert r > 0.5
    # a blob at a study-space point lands, after the image warp, where points() says
    tpl = nib.load(cohort["out"]["template_t1w"])
    blob = np.zeros(tpl.shape, np.float32)
    ijk = np.array([25, 30, 26])
    blob[tuple(ijk)] = 1.0
    blob = ndimage.gaussian_filter(blob, 1.5)
    moved = warp.image(nib.Nifti1Image(blob, tpl.affine), "linear")
    com = np.array(ndimage.center_of_mass(moved.get_fdata()))
    com_mm = moved.affine[:3, :3] @ com + moved.affine[:3, 3]
    point_mm = tpl.affine[:3, :3] @ ijk + tpl.affine[:3, 3]
    mapped = warp.points(point_mm[None])[0]
    assert np.linalg.norm(mapped - com_mm) < 0.5 * RES
    assert cohort["written"]["timings_s"]["per_registration_mean"] > 0


def test_unknown_participant_is_a_data_error(cohort, tmp_path):
    from qsm_bids.errors import DataError

    with pytest.raises(DataError, match="not in the study template"):
        study_space_maps(cohort["out"], [tmp_path / "sub-99_Chimap.nii.gz"], [tmp_path / "m.nii.gz"])


def test_run_voxelwise_in_the_study_template_writes_mni_maps(cohort, tmp_path):
    import pandas as pd

    from qsm_bids.group.voxelwise import run_voxelwise

    design = pd.DataFrame({"dx": ["P", "P", "C", "C"], "age": [60.0, 70.0, 65.0, 55.0]})
    params = GroupConfig(group_column="dx", groups=("P", "C"), covariates=(), smoothing_sigma_mm=4.0,
                         n_permutations=12, permutation_chunk_size=5)
    out = run_voxelwise(cohort["chi"], cohort["masks"], design, params, tmp_path,
                        study_template=cohort["out"], seed=1, label_lookup=None)
    t_study = nib.load(out["PgtC_t"])
    t_mni = nib.load(out["PgtC_t_mni"])
    assert t_study.shape == nib.load(cohort["out"]["template_t1w"]).shape
    assert t_mni.shape == cohort["ref"].shape
    np.testing.assert_allclose(t_mni.affine, cohort["ref"].affine)
    assert np.isfinite(t_mni.get_fdata()).all() and np.abs(t_mni.get_fdata()).max() > 0
    p_mni = nib.load(out["PgtC_pfwe_mni"]).get_fdata()
    assert p_mni.min() > 0 and p_mni.max() == 1.0 and p_mni[0, 0, 0] == 1.0  # 1 outside the brain
    side = json.loads(open(out["PgtC_t_mni"].replace(".nii.gz", ".json")).read())
    assert side["Parameters"]["voxelwise"]["space"] == "study"


def test_chimap_channel_aligns_what_the_t1w_does_not_show(tmp_path):
    """Four participants with the same T1w and a susceptibility blob (a "nucleus" the T1w does not show)
    displaced differently in each: the T1w-only template leaves the blobs where they were, the
    multi-channel one (group.template_chi_weight) brings them together."""
    ref = brain_template(RES)
    d = ref.get_fdata().astype(np.float32)
    centre = np.array(d.shape) // 2
    offsets = [(-1.5, 0, 0), (1.5, 0, 0), (0, -1.5, 0), (0, 1.5, 0)]  # voxels
    t1, chi, masks = [], [], []
    g = np.indices(d.shape, dtype=np.float32)
    for i, off in enumerate(offsets):
        c = centre + np.array(off)
        blob = (0.2 * np.exp(-sum((g[a] - c[a]) ** 2 for a in range(3)) / (2 * 1.5**2))).astype(np.float32)
        for kind, arr, bucket in (("desc-preproc_T1w", d, t1), ("Chimap", blob, chi),
                                  ("desc-brain_mask", (d > 0.2 * d.max()).astype(np.uint8), masks)):
            p = tmp_path / f"sub-{i:02d}_space-MNI152NLin2009aSym_{kind}.nii.gz"
            nib.save(nib.Nifti1Image(arr, ref.affine), p)
            bucket.append(p)

    def spread(weight):
        group = tmp_path / f"group{weight:g}"
        out = {"template_t1w": group / "tpl-study_T1w.nii.gz",
               "template_chi": group / "tpl-study_desc-mean_Chimap.nii.gz",
               "template_mask": group / "tpl-study_desc-brain_mask.nii.gz",
               "xfm_study_to_mni": group / "from-study_to-MNI152NLin2009aSym_mode-image_xfm.h5"}
        written = build_study_template(t1, chi, masks, out, iterations=2, resolution_mm=RES, n_threads=2,
                                       work_dir=tmp_path, reg_iterations=(40, 20, 0), chi_weight=weight)
        coms = np.array([ndimage.center_of_mass(nib.load(s["chi_study"]).get_fdata())
                         for s in written["subjects"]])
        channels = json.loads(out["template_t1w"].with_name("tpl-study_T1w.json").read_text())["Channels"]
        return float(np.linalg.norm(coms - coms.mean(axis=0), axis=1).mean()), channels

    alone, ch1 = spread(0.0)
    both, ch2 = spread(1.0)
    assert alone > 1.2  # voxels: still about where they were put
    assert both < 0.6 * alone
    assert len(ch1) == 1 and len(ch2) == 2 and "Chimap" in ch2[1]
