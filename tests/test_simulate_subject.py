"""The simulated subject and cohort sampling, at a small size (4 mm voxels, 2 mm forward grid)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
import pytest

from qsm_bids.simulate import cohort
from qsm_bids.simulate import forward as fw
from qsm_bids.simulate.subject import (
    Pose,
    _template_coords,
    sample_pose,
    simulate_subject,
)

SMALL = dict(voxel_size=(4.0, 4.0, 4.0), matrix=(48, 56, 40), oversample=(2, 2, 2), t1w_matrix=(96, 112, 96))


@pytest.fixture(scope="module")
def subject():
    return simulate_subject(5, group="ALS", age=70, echo_times=(0.01, 0.02), **SMALL)


def test_deterministic_for_a_seed(subject):
    again = simulate_subject(5, group="ALS", age=70, echo_times=(0.01, 0.02), **SMALL)
    for key in ("magnitude", "phase", "chi_ppm", "local_field_ppm", "labels", "t1w"):
        assert again[key].tobytes() == subject[key].tobytes(), key
    other = simulate_subject(6, group="ALS", age=70, echo_times=(0.01, 0.02), with_t1w=False, **SMALL)
    assert other["phase"].tobytes() != subject["phase"].tobytes()


def test_shapes_ranges_and_truth(subject):
    s = subject
    assert s["magnitude"].shape == (48, 56, 40, 2) and s["phase"].shape == (48, 56, 40, 2)
    assert s["phase"].min() >= -np.pi and s["phase"].max() < np.pi
    assert s["magnitude"].min() >= 0
    mask = s["brain_mask"]
    volume_ml = mask.sum() * 64 / 1000
    assert 1200 < volume_ml < 2300  # intracranial volume of an adult
    # the brain is brighter than the outside air (mostly noise)
    assert s["magnitude"][..., 0][mask].mean() > 8 * s["noise_sigma"]
    np.testing.assert_allclose(np.linalg.norm(s["b0_dir"]), 1.0)
    assert abs(s["b0_dir"][2]) < 0.9999 or s["pose"]["rotation_deg"][0] == 0  # oblique slab
    assert s["chi_ppm"][~mask].max() == 0
    # region truths follow the planted values for the large regions
    rv = s["region_values"].set_index(["region", "hemisphere"])
    for region in ("putamen", "thalamus", "caudate", "precentral_gyrus"):
        for hemi in "LR":
            row = rv.loc[(region, hemi)]
            assert row.n_voxels > 5
            assert abs(row.truth_median_ppm - row.planted_ppm) < 0.012, (region, hemi)
    assert set(np.unique(s["labels"])) - {0} <= set(s["label_table"]["index"])
    assert s["t1w"].dtype == np.int16 and s["t1w"].shape == (96, 112, 96)


def test_phase_follows_the_field(subject):
    """Noise aside, phase = 2 pi gamma B0 TE field (+ a constant), in the brain's interior."""
    from scipy import ndimage as ndi

    s = subject
    inner = ndi.binary_erosion(s["brain_mask"], iterations=2)
    te = np.asarray(s["echo_times"])
    omega = 2 * np.pi * fw.GAMMA_HZ_PER_T * s["field_strength"] * 1e-6
    # echo difference removes the receiver offset
    dphi = fw.wrap_phase(s["phase"][..., 1] - s["phase"][..., 0])
    expected = fw.wrap_phase(omega * (te[1] - te[0]) * s["total_field_ppm"])
    err = np.abs(fw.wrap_phase(dphi - expected))[inner]
    assert np.median(err) < 0.1  # noise of a phase difference at SNR 35 is ~0.04 rad
    # the background field of the head is strong and the local field is weak
    bg = (s["total_field_ppm"] - s["local_field_ppm"])[inner]
    assert np.ptp(bg) > 0.3
    assert np.percentile(np.abs(s["local_field_ppm"][inner]), 99) < 0.1


def test_coil_resolved_and_noise_free():
    s = simulate_subject(7, coils=4, snr=float("inf"), with_t1w=False, **SMALL)
    assert s["magnitude"].shape == (48, 56, 40, 1, 4)
    assert s["noise_sigma"] == 0
    # coils see the object with different smooth phases
    mask = s["brain_mask"]
    p = s["phase"][..., 0, :]
    diff = fw.wrap_phase(p[..., 0] - p[..., 1])[mask]
    assert np.std(diff) > 0.05
    rss = np.sqrt((s["magnitude"][..., 0, :] ** 2).sum(-1))
    assert rss[mask].mean() > 5 * rss[~mask].mean()


def test_template_coords_use_the_displacement():
    rng = np.random.default_rng(0)
    pose = sample_pose(rng)
    A = np.eye(4)
    A[:3, :3] = np.diag([3.0, 3.0, 3.0])
    A[:3, 3] = [-40, -50, -30]
    head_affine = np.eye(4)
    head_affine[:3, 3] = [-98, -134, -120]
    c = _template_coords(A, (4, 5, 6), pose, head_affine)
    # direct evaluation at one point
    ijk = np.array([2, 3, 4])
    w = A[:3, :3] @ ijk + A[:3, 3]
    R = fw.rotation_matrix(pose.rotation_deg)
    rel = np.diag(1 / np.asarray(pose.scale)) @ R.T @ (w - np.asarray(pose.translation_mm))
    d = fw.smooth_displacement([np.array([v]) for v in rel], pose.modes)
    mm = rel + np.array([v[0] for v in d]) + np.array([0.0, -17.0, 8.0])
    np.testing.assert_allclose(c[:, 2, 3, 4], mm - head_affine[:3, 3], atol=1e-3)
    ident = _template_coords(A, (2, 2, 2), Pose(), head_affine)
    np.testing.assert_allclose(ident[:, 1, 0, 0] - ident[:, 0, 0, 0], [3, 0, 0], atol=1e-9)


def test_group_effects_and_spread():
    rng = np.random.default_rng(1)
    als = np.array([cohort.sample_region_values("ALS", 60, rng)["planted_ppm"] for _ in range(600)])
    ctl = np.array([cohort.sample_region_values("control", 60, rng)["planted_ppm"] for _ in range(600)])
    table = cohort.region_table()
    diff = als.mean(0) - ctl.mean(0)
    se = np.sqrt(als.var(0) / 600 + ctl.var(0) / 600)
    assert np.all(np.abs(diff - table["als_minus_control_ppm"].to_numpy()) < 5 * se)
    rsn = table.index[(table.region == "substantia_nigra_dorsal") & (table.hemisphere == "R")][0]
    assert abs(table.loc[rsn, "als_minus_control_ppm"] - 0.021) < 1e-12
    # the paper's SEM at n=39 implies a control SD of SEM*sqrt(39) (age part removed)
    gp = table.index[(table.region == "globus_pallidus") & (table.hemisphere == "L")][0]
    assert 0.009 < ctl[:, gp].std() < 0.0135
    scaled = cohort.region_table(effect_scale=2.0)
    np.testing.assert_allclose(scaled["als_minus_control_ppm"], 2 * table["als_minus_control_ppm"])
    # iron rises with age in deep grey matter
    old = cohort.sample_region_values("control", 77, np.random.default_rng(3))
    young = cohort.sample_region_values("control", 39, np.random.default_rng(3))
    put = (old.region == "putamen")
    assert np.all(old.planted_ppm[put].to_numpy() > young.planted_ppm[put].to_numpy())


def test_participants_table():
    p = cohort.sample_participants(5, 7, np.random.default_rng(0))
    assert list(p.columns) == ["participant_id", "group", "age", "sex", "alsfrs_r", "onset",
                               "disease_duration_months"]
    assert (p.group == "ALS").sum() == 5 and (p.group == "control").sum() == 7
    assert p.age.between(39, 77).all()
    assert p.loc[p.group == "control", "alsfrs_r"].isna().all()
    assert p.loc[p.group == "ALS", "onset"].isin(["limb", "bulbar"]).all()


def test_planted_atrophy_shrinks_the_region_and_nothing_far_away():
    """The putamen loses its planted fraction of volume; regions far from it keep theirs (within 0.1 %);
    without atrophy the subject is bit-identical to one simulated with a zero loss."""
    kw = dict(echo_times=(0.02,), pose="identity", **SMALL)
    base = simulate_subject(3, group="ALS", **kw)
    none = simulate_subject(3, group="ALS", atrophy={"putamen": 0.0}, **kw)
    assert none["t1w"].tobytes() == base["t1w"].tobytes()
    assert none["phase"].tobytes() == base["phase"].tobytes()
    shrunk = simulate_subject(3, group="ALS", atrophy={"putamen": 0.15}, **kw)
    v0 = base["t1w_region_volumes"].set_index(["region", "hemisphere"])["volume_mm3"]
    v1 = shrunk["t1w_region_volumes"].set_index(["region", "hemisphere"])["volume_mm3"]
    change = v1 / v0 - 1
    for hemi in "LR":
        assert -0.18 < change[("putamen", hemi)] < -0.11, change[("putamen", hemi)]
        for far in ("dentate_nucleus", "red_nucleus", "precentral_gyrus"):
            assert abs(v1[(far, hemi)] / v0[(far, hemi)] - 1) < 1e-3, far
    assert shrunk["pose"]["atrophy"][0]["volume_loss"] == 0.15
    assert Pose.from_dict(shrunk["pose"]).atrophy[0][2] == 0.15


def test_atrophy_weight_is_one_inside_the_region_and_falls_off_outside():
    """The shrinkage is a uniform scaling over the whole region (so it loses what was planted) and fades
    out as a Gaussian of the distance (sigma _ATROPHY_EDGE_MM), zero beyond 3 sigma."""

    from qsm_bids.simulate.phantom import head_model
    from qsm_bids.simulate.subject import _ATROPHY_EDGE_MM, _atrophy_weight

    h = head_model()
    idx = int(h.label_table.loc[(h.label_table["region"] == "putamen") & (h.label_table["hemisphere"] == "L"),
                                "index"].iloc[0])
    w = _atrophy_weight(idx)
    inside = h.labels == idx
    assert np.all(w[inside] == 1)
    ring = ndimage.binary_dilation(inside) & ~inside  # 1 to sqrt(3) voxels (1 mm) out
    assert np.exp(-0.5 * 3 / _ATROPHY_EDGE_MM**2) - 1e-6 <= w[ring].min() and w[ring].max() < 1
    far = ~ndimage.binary_dilation(inside, np.ones((3, 3, 3), bool), iterations=int(3 * _ATROPHY_EDGE_MM) + 1)
    assert np.all(w[far] == 0)


def test_cortical_atrophy_thins_the_cortex_and_keeps_the_white_matter():
    """A cortical region's planted loss turns the outer part of its cortical columns into CSF: the
    region's grey matter off the white-matter voxels drops by about the planted fraction (in proportion
    to it), the white matter and the labels do not change, GM + CSF is conserved, the T1w darkens where
    GM went, and regions away from it keep everything."""
    from qsm_bids.simulate.phantom import head_model
    from qsm_bids.simulate.subject import _head, atrophy_sites, thinning_sites

    h = head_model()
    idx = h.label_table.loc[h.label_table["region"] == "precentral_gyrus", "index"].tolist()
    sites = thinning_sites({"precentral_gyrus": 0.12, "putamen": 0.1})
    assert [i for i, _ in sites] == idx and all(f == 0.12 for _, f in sites)
    assert all(s[0] not in idx for s in atrophy_sites({"precentral_gyrus": 0.12, "putamen": 0.1}))

    thin = _head(sites)
    assert thin.wm is h.wm and thin.labels is h.labels
    np.testing.assert_allclose(thin.gm + thin.csf, h.gm + h.csf, atol=1e-6)
    region = np.isin(h.labels, idx)
    cortex = region & (h.wm <= 0.5)
    lost = 1 - thin.gm[cortex].sum() / h.gm[cortex].sum()
    assert 0.06 < lost < 0.13, lost
    removed = h.gm - thin.gm
    assert np.all(removed >= 0) and np.all(removed[h.wm > 0.5] == 0)
    assert np.all(thin.t1w_brain[removed > 0.05] < h.t1w_brain[removed > 0.05])
    far = np.isin(h.labels, h.label_table.loc[~h.label_table["region"].isin(
        ["precentral_gyrus", "pars_opercularis", "corticospinal_tract"]), "index"])
    assert np.all(removed[far] == 0)  # the pars opercularis touches the gyrus: it thins a little too
    double = _head(thinning_sites({"precentral_gyrus": 0.24}))
    assert 1 - double.gm[cortex].sum() / h.gm[cortex].sum() == pytest.approx(2 * lost, rel=0.15)


def test_atrophy_sites_reject_bad_requests():
    from qsm_bids.simulate.subject import atrophy_sites

    with pytest.raises(ValueError, match="no atlas region"):
        atrophy_sites({"cerebellar_cortex": 0.1})
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        atrophy_sites({"putamen": 0.6})
    sites = atrophy_sites({"caudate": 0.1})
    assert [s[0] for s in sites] == [1, 2]  # both hemispheres, by label index
    assert sites[0][1][0] < 0 < sites[1][1][0]  # left centroid at negative x (RAS)


def test_chosen_effects_replace_the_papers():
    effects = cohort.parse_effects(["putamen:L=0.03", "red_nucleus:R=0.04", "dentate_nucleus=0.01"])
    assert effects == {("putamen", "L"): 0.03, ("red_nucleus", "R"): 0.04,
                       ("dentate_nucleus", "L"): 0.01, ("dentate_nucleus", "R"): 0.01}
    table = cohort.region_table(effects=effects).set_index(["region", "hemisphere"])
    diff = table["als_minus_control_ppm"]
    assert diff[("putamen", "L")] == 0.03 and diff[("putamen", "R")] == 0.0
    assert diff[("red_nucleus", "R")] == 0.04 and diff[("red_nucleus", "L")] == 0.0
    # a paper region not named gets no effect, and the scale still applies
    assert diff[("precentral_gyrus", "L")] == 0.0
    assert cohort.region_table(2.0, effects).set_index(["region", "hemisphere"]).loc[
        ("putamen", "L"), "als_minus_control_ppm"] == 0.06
    # same draws as without effects: only the planted difference moves a patient's values
    a = cohort.sample_region_values("ALS", 60, np.random.default_rng(5), effects=effects)
    b = cohort.sample_region_values("ALS", 60, np.random.default_rng(5), effects={})
    moved = (a.planted_ppm - b.planted_ppm).abs() > 1e-12
    assert set(zip(a.region[moved], a.hemisphere[moved])) == set(effects)
    for bad in ("putamen=x", "cerebellum=0.1", "putamen:X=0.1", "putamen"):
        with pytest.raises(ValueError, match="putamen|cerebellum|REGION"):
            cohort.parse_effects([bad])
