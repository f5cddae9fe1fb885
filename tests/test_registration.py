"""ANTs normalisation on a synthetic subject: the template under a known affine + smooth warp.

The subject's T1w and GRE magnitude are the template resampled through a known
mapping, so the true native labels are the atlas through the same mapping.
Small grids and the ``fast`` preset keep this under ~30 s.
"""

import json
import os

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from qsm_bids import registration as R  # noqa: E402
from qsm_bids.atlas import default_atlas, region_medians  # noqa: E402
from qsm_bids.simulate.registration_subject import (  # noqa: E402
    DEEP,
    dice,
    rotation,
    synthetic_subject,
)
from qsm_bids.templates import template_image  # noqa: E402


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    out = tmp_path_factory.mktemp("reg")
    aff_t1, t1, _ = synthetic_subject((80, 96, 80), (2.0, 2.0, 2.0))
    aff_g, mag, lab = synthetic_subject((80, 96, 40), (2.0, 2.0, 4.0))
    mask = (mag > 20).astype(np.float32)
    _, table = default_atlas()
    chi = np.zeros(mag.shape, np.float32)
    chi[mask > 0] = -0.02
    for r in table.itertuples():
        if r.region in DEEP:
            chi[lab == r.index] = DEEP[r.region] + (0.01 if r.hemisphere == "R" else 0.0)
    files = {}
    for name, data, aff in (("mag", mag, aff_g), ("t1w", t1, aff_t1), ("mask", mask, aff_g), ("chi", chi, aff_g)):
        files[name] = out / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, aff), str(files[name]))
    outputs = {
        "xfm_gre_t1w": out / "sub-x_from-GRE_to-T1w_mode-image_xfm.mat",
        "xfm_t1w_template": out / "sub-x_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
        "xfm_template_t1w": out / "sub-x_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5",
        "chi_template": out / "sub-x_space-MNI152NLin2009aSym_Chimap.nii.gz",
        "t1w_template": out / "sub-x_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz",
        "mask_template": out / "sub-x_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz",
    }
    info = R.normalise_participant(files["mag"], files["t1w"], files["chi"], files["mask"], outputs,
                                   resolution_mm=2.0, preset="fast", seed=7, n_threads=2, work_dir=out,
                                   sidecar={"GeneratedBy": {"Name": "test"}})
    return {"files": files, "outputs": outputs, "info": info, "labels": lab, "table": table,
            "chi": chi, "mask": mask > 0, "affine": aff_g}


def test_outputs_written(subject):
    import ants

    out = subject["outputs"]
    for p in out.values():
        assert p.exists(), p
    assert not subject["info"]["direct_to_template"]
    assert set(subject["info"]["timings"]) >= {"gre_to_t1w", "t1w_to_template", "resample"}
    assert ants.read_transform(str(out["xfm_gre_t1w"])).type == "AffineTransform"
    assert out["xfm_t1w_template"].read_bytes()[:4] == b"\x89HDF"
    chi_t = nib.load(str(out["chi_template"]))
    assert chi_t.shape == template_image(2.0).shape and np.allclose(chi_t.affine, template_image(2.0).affine)
    sidecar = json.loads((out["chi_template"].parent / "sub-x_space-MNI152NLin2009aSym_Chimap.json").read_text())
    # the rigid start kept, with every start's cost (an unpitched head keeps the centre-of-mass start)
    start = sidecar["RigidStart"]
    assert start["PitchDeg"] == 0 and set(start["MutualInformationCost"]) == {"+0", "-20", "+20"}
    # The warped QSM mask overlaps the template brain.
    tpl_brain = np.asarray(template_image(2.0).dataobj) > 0
    assert dice(np.asarray(nib.load(str(out["mask_template"])).dataobj) > 0, tpl_brain) > 0.85


def test_atlas_to_native_dice_and_region_medians(subject):
    out, table, lab = subject["outputs"], subject["table"], subject["labels"]
    chi_img = nib.load(str(subject["files"]["chi"]))
    atlas, _ = default_atlas()
    native = R.atlas_to_native(atlas, chi_img, out["xfm_gre_t1w"], out["xfm_template_t1w"])
    nat = np.asarray(native.dataobj)
    assert nat.shape == lab.shape and nat.dtype == np.int16
    for region in ("putamen", "globus_pallidus", "thalamus", "caudate"):
        for r in table[table.region == region].itertuples():
            assert dice(nat == r.index, lab == r.index) >= 0.7, (region, r.hemisphere)
    # Region pipeline alone on the true chi: medians within 0.01 ppm of the truth for the deep grey nuclei.
    vs = chi_img.header.get_zooms()[:3]
    got, _ = region_medians(subject["chi"], subject["mask"], nat, table, vs)
    truth, _ = region_medians(subject["chi"], subject["mask"], lab, table, vs)
    deep = got.region.isin(["caudate", "putamen", "globus_pallidus", "thalamus"])
    assert np.all(np.abs(got.median_ppm[deep] - truth.median_ppm[deep]) <= 0.01)


def test_to_ants_matches_file_reader(tmp_path):
    import ants

    aff = np.eye(4)
    aff[:3, :3] = rotation(0, 10) @ rotation(2, 25) @ np.diag([-1.5, 1.5, 3.0])
    aff[:3, 3] = [80, -100, -50]
    data = np.random.default_rng(0).random((7, 8, 9)).astype(np.float32)
    img = nib.Nifti1Image(data, aff)
    nib.save(img, str(tmp_path / "a.nii.gz"))
    ref = ants.image_read(str(tmp_path / "a.nii.gz"))
    mine = R.to_ants(img)
    assert np.allclose(mine.origin, ref.origin, atol=1e-4)
    assert np.allclose(mine.spacing, ref.spacing, atol=1e-5)
    assert np.allclose(mine.direction, ref.direction, atol=1e-5)
    assert np.allclose(mine.numpy(), ref.numpy())
    back = R.to_nibabel(mine)
    assert np.allclose(back.affine, aff, atol=1e-4)


def test_unknown_template_is_a_usage_error(tmp_path):
    from qsm_bids.errors import UsageError

    with pytest.raises(UsageError, match="MNI152NLin6Asym"):
        R.normalise_participant("m", None, "c", "k", {}, template="MNI152NLin6Asym")


def test_pitched_head_reaches_the_vertex(tmp_path):
    # A 25-degree pitch: an affine started from the image centres alone left the precentral gyrus
    # at Dice 0.05-0.32 and the CST at 0.2 (deep nuclei fine); a rigid stage first brings both to ~0.9.
    aff_t1, t1, _ = synthetic_subject((80, 96, 80), (2.0, 2.0, 2.0), pitch_deg=25.0)
    aff_g, mag, lab = synthetic_subject((80, 96, 40), (2.0, 2.0, 4.0), pitch_deg=25.0)
    mask = nib.Nifti1Image((mag > 20).astype(np.float32), aff_g)
    mag_img = nib.Nifti1Image(mag, aff_g)
    R.set_threads(2)
    R.register_subject(mag_img, nib.Nifti1Image(t1, aff_t1), tmp_path / "to.h5", tmp_path / "from.h5",
                       tmp_path / "rigid.mat", preset="fast", seed=7, gre_mask=mask, work_dir=tmp_path)
    atlas, table = default_atlas()
    nat = np.asarray(R.atlas_to_native(atlas, mag_img, tmp_path / "rigid.mat", tmp_path / "from.h5").dataobj)
    for region in ("precentral_gyrus", "corticospinal_tract", "putamen"):
        for r in table[table.region == region].itertuples():
            assert dice(nat == r.index, lab == r.index) >= 0.8, (region, r.hemisphere)


def test_pitch_start_aligns_the_centres_of_mass_and_turns_about_the_left_right_axis(tmp_path):
    import ants

    fixed_arr = np.zeros((30, 30, 30), np.float32)
    fixed_arr[10:20, 10:20, 10:20] = 1.0
    moving_arr = np.zeros((30, 30, 30), np.float32)
    moving_arr[4:14, 12:22, 15:25] = 1.0
    fixed, moving = ants.from_numpy(fixed_arr), ants.from_numpy(moving_arr)
    c_f = np.asarray(ants.get_center_of_mass(fixed))
    c_m = np.asarray(ants.get_center_of_mass(moving))
    tx = ants.read_transform(R._pitch_start(fixed, moving, 20.0, str(tmp_path / "start.mat")))
    assert np.allclose(tx.apply_to_point(tuple(c_f)), c_m, atol=1e-4)
    a = np.deg2rad(20.0)
    step = np.asarray(tx.apply_to_point(tuple(c_f + [0.0, 5.0, 0.0]))) - c_m
    assert np.allclose(step, [0.0, 5 * np.cos(a), 5 * np.sin(a)], atol=1e-4)  # x (left-right) stays
    rot = R.pitch_start_matrix(-35.0)
    assert np.allclose(rot @ rot.T, np.eye(3)) and np.isclose(np.linalg.det(rot), 1.0)


def test_steep_pitch_is_found_from_the_pitched_starts(tmp_path):
    # A 35-degree pitch: ANTs' centre-of-mass start alone can converge to a wrong pitch in the rigid stage
    # (mutual information cost -0.085 against -0.446 from the +20-degree start, on some CPUs; below); the
    # shipped starts reach the vertex (precentral Dice 0.94 / 0.91). The control is the rigid stage's own cost, not a second
    # registration's Dice: the cc SyN after a wrong rigid pose sometimes recovers the vertex (Dice 0.93 in
    # one run, < 0.5 in another), the Mattes SyN never did.
    aff_t1, t1, _ = synthetic_subject((80, 96, 80), (2.0, 2.0, 2.0), pitch_deg=35.0)
    aff_g, mag, lab = synthetic_subject((80, 96, 40), (2.0, 2.0, 4.0), pitch_deg=35.0)
    mask = nib.Nifti1Image((mag > 20).astype(np.float32), aff_g)
    mag_img = nib.Nifti1Image(mag, aff_g)
    atlas, table = default_atlas()
    R.set_threads(1)  # one ANTs thread is bitwise reproducible; with two the starts' costs varied run to run
    reg = R.register_subject(mag_img, nib.Nifti1Image(t1, aff_t1), tmp_path / "to.h5", tmp_path / "from.h5",
                             tmp_path / "rigid.mat", preset="fast", seed=7, gre_mask=mask, work_dir=tmp_path)
    nat = np.asarray(R.atlas_to_native(atlas, mag_img, tmp_path / "rigid.mat", tmp_path / "from.h5").dataobj)
    precentral = [dice(nat == r.index, lab == r.index) for r in table[table.region == "precentral_gyrus"].itertuples()]
    assert min(precentral) >= 0.85
    # The 0-degree start alone converged to a wrong pitch in the runs this was written from (-0.085 against
    # -0.446), but to the right one (-0.4456 / -0.4472) in three runs on 2026-12-07 (an AMD EPYC, one ANTs
    # thread), one of them in the full suite an hour after a run where it had not: whether this case needs
    # the pitched starts is not reproducible across machines. What must hold either way: the +20-degree
    # start reaches the right pose, and the start kept is the one the rule picks from the recorded costs
    # (0 degrees unless a pitched start fits better by more than init_pitch_min_gain).
    costs = reg.rigid_start["MutualInformationCost"]
    gain = R.PRESETS["fast"]["init_pitch_min_gain"]
    assert costs["+20"] - min(costs.values()) < 0.01 and costs["+20"] < -0.3, reg.rigid_start
    best_pitched = min((c, k) for k, c in costs.items() if k != "+0")
    expected = float(best_pitched[1]) if best_pitched[0] < costs["+0"] - gain else 0.0
    assert reg.rigid_start["PitchDeg"] == expected, reg.rigid_start


def test_syn_metric_cc_reaches_the_syn_stage_and_the_sidecar(tmp_path, monkeypatch):
    import ants

    aff_t1, t1, _ = synthetic_subject((80, 96, 80), (2.0, 2.0, 2.0))
    aff_g, mag, lab = synthetic_subject((80, 96, 40), (2.0, 2.0, 4.0))
    mag_img = nib.Nifti1Image(mag, aff_g)
    mask = nib.Nifti1Image((mag > 20).astype(np.float32), aff_g)
    with pytest.raises(ValueError, match="syn_metric must be one of"):
        R.register_subject(mag_img, nib.Nifti1Image(t1, aff_t1), tmp_path / "to.h5", tmp_path / "from.h5",
                           tmp_path / "rigid.mat", preset="fast", syn_metric="ncc")
    calls = []
    real = ants.registration

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ants, "registration", spy)
    # the wiring, not the accuracy (benchmarks/bench_registration_jacobian.py): one rigid start, a short SyN
    monkeypatch.setitem(R.PRESETS["fast"], "init_pitches_deg", (0.0,))
    monkeypatch.setitem(R.PRESETS["fast"], "reg_iterations", (10, 0, 0))
    R.set_threads(2)
    reg = R.register_subject(mag_img, nib.Nifti1Image(t1, aff_t1), tmp_path / "to.h5", tmp_path / "from.h5",
                             tmp_path / "rigid.mat", preset="fast", seed=7, gre_mask=mask, work_dir=tmp_path,
                             syn_metric="cc")
    syn = [k for k in calls if k.get("type_of_transform") == "SyNOnly"]
    assert len(syn) == 1 and syn[0]["syn_metric"] == "CC" and syn[0]["syn_sampling"] == 2
    # the rigid and affine stages keep Mattes (antspyx's default: no syn_metric given to them)
    assert all("syn_metric" not in k for k in calls if k.get("type_of_transform") != "SyNOnly")
    assert reg.sidecar()["SyNMetric"] == {"name": "cc", "syn_metric": "CC", "syn_sampling": 2}
    # without a T1w the GRE magnitude (T2*-weighted) meets the T1w template: mutual information stays
    calls.clear()
    reg = R.register_subject(mag_img, None, tmp_path / "g2t.h5", tmp_path / "t2g.h5", preset="fast", seed=7,
                             gre_mask=mask, work_dir=tmp_path, syn_metric="cc")
    syn = [k for k in calls if k.get("type_of_transform") == "SyNOnly"]
    assert len(syn) == 1 and syn[0]["syn_metric"] == "mattes" and reg.syn_metric == "mattes"
