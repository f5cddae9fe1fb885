"""Region medians: erosion by a sphere in mm, masking, and the NaN rule (analytic cases)."""

import numpy as np
import pandas as pd
import pytest

from qsm_bids.atlas import region_medians, sphere_structure


def test_sphere_structure_honours_anisotropy():
    assert sphere_structure(1.0, (1, 1, 1)).sum() == 7          # the 6-neighbour cross
    s = sphere_structure(1.0, (1, 1, 2))
    assert s.shape == (3, 3, 1) and s.sum() == 5                 # no reach through-plane
    assert sphere_structure(0.5, (1, 1, 1)).sum() == 1
    assert sphere_structure(2.0, (1, 1, 1)).sum() == 33          # integer points in a radius-2 ball


def _table(*rows):
    return pd.DataFrame(rows, columns=["index", "region", "hemisphere"])


@pytest.mark.parametrize("voxel, expected_shape", [((1, 1, 1), (8, 8, 8)), ((1, 1, 2), (8, 8, 10))])
def test_box_region_eroded_by_one_mm(voxel, expected_shape):
    shape = (20, 20, 20)
    labels = np.zeros(shape, np.int16)
    labels[5:15, 5:15, 5:15] = 3
    # chi increases along axis 0 only: the median of the eroded box is the mean of its x-range.
    chi = np.broadcast_to(np.arange(20, dtype=float)[:, None, None] * 0.01, shape).copy()
    mask = np.ones(shape, bool)
    df, warn = region_medians(chi, mask, labels, _table((3, "putamen", "L")), voxel)
    assert warn == []
    assert df.loc[0, "n_voxels"] == np.prod(expected_shape)
    assert df.loc[0, "median_ppm"] == pytest.approx(np.median(np.arange(6, 14)) * 0.01)
    assert list(df.columns) == ["region", "hemisphere", "median_ppm", "n_voxels", "coverage"]
    assert df.loc[0, "coverage"] == 1.0


def test_mask_intersection_and_no_erosion():
    labels = np.zeros((10, 10, 10), np.int16)
    labels[2:8, 2:8, 2:8] = 1
    chi = np.zeros(labels.shape)
    chi[:5] = 1.0
    chi[5:] = 3.0
    mask = np.zeros(labels.shape, bool)
    mask[5:] = True
    df, _ = region_medians(chi, mask, labels, _table((1, "thalamus", "R")), (1, 1, 1), erosion_radius_mm=0)
    assert df.loc[0, "n_voxels"] == 3 * 6 * 6 and df.loc[0, "median_ppm"] == 3.0
    # the median uses the covered voxels only, and the coverage says how many of the region's they are
    assert df.loc[0, "coverage"] == pytest.approx(0.5)


def test_small_and_absent_regions_get_nan_and_warning():
    labels = np.zeros((12, 12, 12), np.int16)
    labels[3:6, 3:6, 3:6] = 1            # 3x3x3 -> 1 voxel after 1 mm erosion
    labels[8:11, 8:11, 8:11] = 2
    chi = np.full(labels.shape, 0.1)
    chi[9, 9, 9] = np.nan                # non-finite values are excluded
    table = _table((1, "red_nucleus", "L"), (2, "red_nucleus", "R"), (5, "dentate_nucleus", "L"))
    df, warn = region_medians(chi, np.ones(labels.shape, bool), labels, table, (1, 1, 1), min_voxels=1)
    assert df["n_voxels"].tolist() == [1, 0, 0]
    assert df.loc[0, "median_ppm"] == pytest.approx(0.1)
    assert df["median_ppm"].isna().tolist() == [False, True, True]
    assert len(warn) == 2 and "red_nucleus R" in warn[0] and "dentate_nucleus L" in warn[1]
    # The default minimum of 5 voxels turns the single remaining voxel into NaN too.
    df, warn = region_medians(chi, np.ones(labels.shape, bool), labels, table, (1, 1, 1))
    assert df["median_ppm"].isna().all() and len(warn) == 3


def test_region_touching_the_edge_is_eroded_there():
    labels = np.zeros((6, 6, 6), np.int16)
    labels[:3] = 1                                # touches the array boundary at x = 0
    df, _ = region_medians(np.ones(labels.shape), np.ones(labels.shape, bool), labels,
                           _table((1, "caudate", "L")), (1, 1, 1))
    assert df.loc[0, "n_voxels"] == 1 * 4 * 4     # x: only index 1 survives; y, z: 1..4


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        region_medians(np.zeros((3, 3, 3)), np.zeros((3, 3, 2), bool), np.zeros((3, 3, 3)), _table(), (1, 1, 1))
