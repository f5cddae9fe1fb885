"""Structural kernels against analytic cases: priors, modulation, volumes, ICV, regional thickness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qsm_bids import structural as st

TABLE = pd.DataFrame({"index": [1, 2, 3], "region": ["putamen", "putamen", "precentral_gyrus"],
                      "hemisphere": ["L", "R", "L"]})


def test_region_volumes_of_a_known_label_image():
    labels = np.zeros((10, 10, 10), np.int16)
    labels[:2, :3, :4] = 1  # 24 voxels
    labels[5:, 5:, 5:] = 2  # 125 voxels
    labels[0, 9, 9] = 3  # not a subcortical region
    gm = np.full(labels.shape, 0.5)
    out = st.region_volumes(labels, TABLE, 8.0, ("putamen",), gm_probability=gm)
    assert out["region"].tolist() == ["putamen", "putamen"]
    assert out["n_voxels"].tolist() == [24, 125]
    assert out["volume_mm3"].tolist() == pytest.approx([192.0, 1000.0])
    assert out["gm_volume_mm3"].tolist() == pytest.approx([96.0, 500.0])
    assert np.isnan(st.region_volumes(labels, TABLE, 1.0, ("putamen",))["gm_volume_mm3"]).all()


def test_modulation_preserves_native_volume():
    # a template GM probability of 1 over 100 voxels, whose native volume is 1.5 x larger
    gm = np.zeros((10, 10, 10), np.float32)
    gm[:4, :5, :5] = 1.0
    jac = np.full(gm.shape, 1.5, np.float32)
    jac[9, 9, 9] = -0.2  # a folded voxel never gives negative GM
    mod = st.modulate(gm, jac)
    assert mod.sum() == pytest.approx(150.0)
    assert mod.min() >= 0


def test_priors_and_icv():
    gm = np.array([0.6, 0.2, 0.0, 0.7])
    wm = np.array([0.3, 0.7, 0.0, 0.6])  # last voxel overshoots: rescaled to sum 1
    inside = np.array([True, True, False, True])
    p = st.tissue_priors(gm, wm, inside)
    assert p.shape == (3, 4)
    assert np.allclose(p.sum(axis=0), [1.0, 1.0, 0.0, 1.0])
    assert p[0, 0] == pytest.approx(0.1, abs=1e-6)
    assert st.intracranial_volume_mm3(p, inside, 2.0) == pytest.approx(6.0)


def test_region_mean_thickness():
    labels = np.array([3, 3, 3, 3, 1])
    thick = np.array([2.0, 3.0, 0.0, 4.0, 9.0])  # 0: no thickness measured
    out = st.region_mean_thickness(thick, labels, TABLE, ("precentral_gyrus",), min_voxels=3)
    assert out["thickness_mm"].tolist() == pytest.approx([3.0]) and out["n_voxels"].tolist() == [3]
    out = st.region_mean_thickness(thick, labels, TABLE, ("precentral_gyrus",), min_voxels=4)
    assert np.isnan(out["thickness_mm"].iloc[0])


def _slab_thickness(true_mm: float, n: int = 40) -> float:
    """Median DiReCT thickness of a flat GM slab of known thickness between WM and CSF (1 mm grid)."""
    ants = pytest.importorskip("ants")
    z = np.arange(n) + 0.5
    seg = np.ones((n, n, n), np.float32)
    seg[:, :, z < 15] = 3
    seg[:, :, (z >= 15) & (z < 15 + true_mm)] = 2

    def img(a):
        return ants.from_numpy(np.ascontiguousarray(a, dtype=np.float32), spacing=(1.0, 1.0, 1.0))

    th = st.thickness(img(seg), img(seg == 2), img(seg == 3), iterations=20).numpy()
    return float(np.median(th[seg == 2]))


def test_direct_thickness_of_flat_slabs():
    # DiReCT measures from the WM boundary to the GM/CSF boundary between voxel centres, so on a 1 mm grid it
    # reads up to one voxel short (measured: 2 mm -> 1.21, 3 mm -> 2.14, 4 mm -> 3.31), but a change of
    # thickness comes through one to one
    thin, thick = _slab_thickness(2.0), _slab_thickness(4.0)
    assert 1.0 <= thin <= 2.5 and 3.0 <= thick <= 4.5
    assert thick - thin == pytest.approx(2.0, abs=0.5)


def test_tissue_bounding_box_grows_by_the_margin_and_clips_at_the_grid():
    labels = np.ones((20, 30, 40), np.uint8)
    labels[5:8, 10:12, 0:4] = 2
    labels[8, 12, 30] = 3
    assert st.tissue_bounding_box(labels, margin=3) == ((2, 7, 0), (12, 16, 34))
    assert st.tissue_bounding_box(labels, margin=0) == ((5, 10, 0), (9, 13, 31))
    assert st.tissue_bounding_box(np.ones((4, 5, 6)), margin=2) == ((0, 0, 0), (4, 5, 6))


def test_direct_on_the_tissue_box_matches_the_whole_grid():
    """DiReCT on the box around GM and WM gives the thickness it gives on the whole grid, zero outside."""
    ants = pytest.importorskip("ants")
    n = 40
    z = np.arange(n) + 0.5
    seg = np.ones((n, n, n), np.float32)
    seg[8:32, 8:32, (z >= 8) & (z < 15)] = 3
    seg[8:32, 8:32, (z >= 15) & (z < 18)] = 2
    img = ants.from_numpy(seg, spacing=(1.0, 1.0, 1.0))
    gm, wm = img.new_image_like((seg == 2).astype(np.float32)), img.new_image_like((seg == 3).astype(np.float32))
    boxed = st.thickness(img, gm, wm, iterations=15).numpy()
    whole = ants.kelly_kapowski(s=img.clone("unsigned int"), g=gm, w=wm, its=15, r=0.025, m=1.5, gm_label=2,
                                wm_label=3).numpy()
    (lo, hi) = st.tissue_bounding_box(seg)
    outside = np.ones(seg.shape, bool)
    outside[tuple(slice(a, b) for a, b in zip(lo, hi))] = False
    assert outside.sum() > 0 and np.all(boxed[outside] == 0)
    core = seg == 2
    core[:10] = core[30:] = core[:, :10] = core[:, 30:] = False  # away from the slab's own rim
    assert np.median(boxed[core]) == pytest.approx(np.median(whole[core]), abs=0.1)
    assert np.median(boxed[core]) > 1.0


def _ball_image(radius, shape=(56, 56, 56), centre=(28, 28, 28)):
    import ants

    g = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(3)))
    # a bright nucleus with a soft edge in a mid-grey surround
    return ants.from_numpy((200.0 / (1.0 + np.exp((r - radius) / 0.7)) + 50.0).astype(np.float32)), r


def test_local_refinement_brings_a_label_to_the_smaller_nucleus():
    """The template's nucleus (radius 9 voxels) brought to a T1w whose nucleus has radius 7.5: the label,
    drawn on the template, refined by the local SyN, takes the T1w's volume ((7.5/9)^3 = 0.58 of it)."""
    import ants

    t1w, _ = _ball_image(7.5)
    template_native, r = _ball_image(9.0)
    lab = np.zeros(r.shape, np.float32)
    lab[r <= 9.0] = 2  # putamen R
    lab[2, 2, 2] = 3  # a label far outside the box: untouched
    labels = ants.from_numpy(lab)
    refined, box = st.refine_labels_locally(t1w, template_native, labels, [1, 2], margin_mm=6.0,
                                            iterations=(40, 20, 10), radius=2)
    assert box is not None and refined[2, 2, 2] == 3
    before, after, truth = (lab == 2).sum(), (refined == 2).sum(), (r <= 7.5).sum()
    assert after / truth == pytest.approx(1.0, abs=0.12), (before, after, truth)
    assert after / before < 0.7
    # none of the regions there: nothing to refine
    same, none = st.refine_labels_locally(t1w, template_native, labels, [7, 8])
    assert none is None and np.array_equal(same, np.rint(lab).astype(np.int16))
