"""The default atlas, its cache, and user-atlas validation."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm_bids import atlas as A
from qsm_bids.errors import DataError, UsageError


def test_default_atlas_grid_labels_and_sides():
    img, table = A.default_atlas()
    tpl = nib.load(str(A.template_path("T1w")))
    assert img.shape == tpl.shape == (197, 233, 189)
    assert np.allclose(img.affine, tpl.affine)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16
    assert list(table.columns) == ["index", "region", "hemisphere"]
    assert len(table) == 26 and set(table["region"]) == set(A.REGIONS)
    assert all(sorted(g) == ["L", "R"] for _, g in table.groupby("region")["hemisphere"])
    counts = np.bincount(data.ravel(), minlength=27)
    assert set(np.unique(data)) == set(range(27))
    # Left labels lie at x < 0 (RAS), right at x > 0; the template is symmetric, so sizes are close.
    x0 = int(round(np.linalg.inv(img.affine)[0, 3]))
    for r in table.itertuples():
        ii = np.nonzero(data == r.index)[0]
        assert (ii < x0).all() if r.hemisphere == "L" else (ii >= x0).all()
    left, right = counts[1::2], counts[2::2]
    assert np.all(np.abs(left - right) / np.maximum(left, right) < 0.35)
    # Deep grey nuclei in the template's grey matter (GM probability high on average).
    gm = np.asarray(nib.load(str(A.template_path("GM"))).dataobj, dtype=float)
    gm /= gm.max()
    for region in ("caudate", "putamen", "thalamus", "hippocampus"):
        idx = table.loc[table.region == region, "index"]
        assert gm[np.isin(data, idx)].mean() > 0.5, region
    # The corticospinal tract is white matter.
    wm = np.asarray(nib.load(str(A.template_path("WM"))).dataobj, dtype=float)
    wm /= wm.max()
    cst = table.loc[table.region == "corticospinal_tract", "index"]
    assert wm[np.isin(data, cst)].mean() > 0.7


def test_default_atlas_returns_copies():
    img1, t1 = A.default_atlas()
    np.asarray(img1.dataobj)[:] = 0
    t1.loc[0, "region"] = "x"
    img2, t2 = A.default_atlas()
    assert np.asarray(img2.dataobj).max() == 26 and t2.loc[0, "region"] == "caudate"


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("QSM_BIDS_CACHE", str(tmp_path / "a"))
    assert A.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("QSM_BIDS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert A.cache_dir() == tmp_path / "x" / "qsm-bids"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "t").mkdir()
    assert A.cache_dir() == tmp_path / "t" / "qsm-bids-cache"


def _tiny_build():
    data = np.zeros((4, 5, 6), np.int16)
    data[1, 1, 1] = 3
    return nib.Nifti1Image(data, np.eye(4)), A.default_label_table()


def test_cache_written_once_then_read(monkeypatch, tmp_path):
    monkeypatch.setenv("QSM_BIDS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(A, "build_default_atlas", _tiny_build)
    A._default_atlas_cached.cache_clear()
    try:
        img, _ = A.default_atlas()
        files = list((tmp_path / "cache").glob("atlas-qsmbids_*_dseg.nii.gz"))
        assert len(files) == 1 and not list((tmp_path / "cache").glob(".*tmp*"))
        assert oct(files[0].stat().st_mode & 0o777) == "0o644"

        def boom():
            raise AssertionError("rebuilt although cached")

        monkeypatch.setattr(A, "build_default_atlas", boom)
        A._default_atlas_cached.cache_clear()
        img2, _ = A.default_atlas()
        assert np.array_equal(np.asarray(img2.dataobj), np.asarray(img.dataobj))
        # A corrupt cache file is rebuilt, not trusted.
        files[0].write_bytes(b"not a nifti")
        monkeypatch.setattr(A, "build_default_atlas", _tiny_build)
        A._default_atlas_cached.cache_clear()
        img3, _ = A.default_atlas()
        assert np.asarray(img3.dataobj)[1, 1, 1] == 3
    finally:
        A._default_atlas_cached.cache_clear()


def test_unwritable_cache_still_returns_atlas(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("QSM_BIDS_CACHE", str(blocker / "sub"))  # cannot mkdir under a file
    monkeypatch.setattr(A, "build_default_atlas", _tiny_build)
    A._default_atlas_cached.cache_clear()
    try:
        img, table = A.default_atlas()
        assert img.shape == (4, 5, 6) and len(table) == 26
    finally:
        A._default_atlas_cached.cache_clear()


def _write_user(tmp_path, data, rows, name="atlas.nii.gz"):
    f = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4)), str(f))
    t = tmp_path / "labels.tsv"
    pd.DataFrame(rows).to_csv(t, sep="\t", index=False)
    return f, t


def test_load_user_atlas_ok(tmp_path):
    data = np.zeros((5, 5, 5), np.int32)
    data[1, 1, 1], data[3, 3, 3] = 1, 7
    f, t = _write_user(tmp_path, data, {"index": [1, 7], "region": ["a", "b"], "hemisphere": ["l", "R"]})
    img, table = A.load_user_atlas(f, t)
    assert np.asarray(img.dataobj).dtype == np.int16
    assert table["hemisphere"].tolist() == ["L", "R"] and table["index"].tolist() == [1, 7]


@pytest.mark.parametrize("case, exc, needle", [
    ("missing_image", UsageError, "atlas.nii.gz"),
    ("bad_columns", DataError, "labels.tsv"),
    ("bad_hemisphere", DataError, "hemisphere"),
    ("unknown_label", DataError, "atlas.nii.gz"),
    ("float_labels", DataError, "integer"),
    ("duplicate", DataError, "duplicate"),
    ("not_nifti", DataError, "atlas.nii.gz"),
])
def test_load_user_atlas_errors(tmp_path, case, exc, needle):
    data = np.zeros((5, 5, 5), np.int32)
    data[1, 1, 1] = 1
    rows = {"index": [1], "region": ["a"], "hemisphere": ["L"]}
    if case == "bad_columns":
        rows = {"idx": [1], "name": ["a"], "hemisphere": ["L"]}
    if case == "bad_hemisphere":
        rows["hemisphere"] = ["left"]
    if case == "unknown_label":
        data[2, 2, 2] = 9
    if case == "float_labels":
        data = data.astype(np.float32)
        data[2, 2, 2] = 0.5
    if case == "duplicate":
        rows = {"index": [1, 1], "region": ["a", "b"], "hemisphere": ["L", "R"]}
    f, t = _write_user(tmp_path, data, rows)
    if case == "missing_image":
        f.unlink()
    if case == "not_nifti":
        f.write_bytes(b"garbage")
    with pytest.raises(exc, match=needle):
        A.load_user_atlas(f, t)
