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
    out = st.region_volumes(labels, TABLE, voxel_volume_mm3=8.0, gm_probability=gm)
    assert out["region"].tolist() == ["putamen", "putamen"]
    assert out["n_voxels"].tolist() == [24, 125]
    assert out["volume_mm3"].tolist() == pytest.approx([192.0, 1000.0])
    assert out["gm_volume_mm3"].tolist() == pytest.approx([96.0, 500.0])
    assert np.isnan(st.region_volumes(labels, TABLE, 1.0)["gm_volume_mm3"]).all()


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
