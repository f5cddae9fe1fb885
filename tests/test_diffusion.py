"""Diffusion kernels against analytic cases (DIPY-style): tensor metrics, gradient tables, the WLS fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qsm_bids import diffusion as dti
from qsm_bids.errors import DataError


def _scheme(n=30, seed=0):
    from qsm_bids.simulate.dwi import gradient_scheme

    return gradient_scheme(n, 2, 1000.0, seed)


def test_metrics_of_known_eigenvalues():
    ev = np.array([1.7e-3, 0.3e-3, 0.2e-3])
    m = dti.tensor_metrics(ev)
    md = ev.mean()
    fa = np.sqrt(0.5) * np.sqrt(((ev[0] - ev[1]) ** 2 + (ev[1] - ev[2]) ** 2 + (ev[2] - ev[0]) ** 2)
                                / (ev ** 2).sum())
    assert m["MD"] == pytest.approx(md, rel=1e-12)
    assert m["AD"] == pytest.approx(1.7e-3, rel=1e-12)
    assert m["RD"] == pytest.approx(0.25e-3, rel=1e-12)
    assert m["FA"] == pytest.approx(fa, rel=1e-12)
    iso = dti.tensor_metrics(np.array([[1e-3] * 3, [0.0] * 3]))
    assert np.allclose(iso["FA"], 0.0)
    line = dti.tensor_metrics(np.array([1e-3, 0.0, 0.0]))
    assert line["FA"] == pytest.approx(1.0)


@pytest.mark.parametrize("fa", [0.0, 0.2, 0.45, 0.7, 0.9])
def test_radial_diffusivity_for_fa_inverts_fa(fa):
    a = 1.6e-3
    r = float(dti.radial_diffusivity_for_fa(a, fa))
    assert 0 <= r <= a
    assert dti.tensor_metrics(np.array([a, r, r]))["FA"] == pytest.approx(fa, abs=1e-12)


def test_wls_fit_recovers_a_rotated_tensor_exactly():
    bvals, bvecs = _scheme()
    rng = np.random.default_rng(3)
    dirs = rng.normal(size=(4, 5, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    axial, radial = 1.7e-3, float(dti.radial_diffusivity_for_fa(1.7e-3, 0.7))
    tensors = dti.tensor_from_direction(dirs, np.full((4, 5), axial), np.full((4, 5), radial))
    signal = dti.tensor_signal(np.full((4, 5), 500.0), tensors, bvals, bvecs)
    fit = dti.TensorModel(bvals, bvecs, fit_method="WLS").fit(signal)
    m = fit.metrics(np.float64)
    assert np.allclose(m["FA"], 0.7, atol=1e-6)
    assert np.allclose(m["AD"], axial, rtol=1e-6)
    assert np.allclose(m["RD"], radial, rtol=1e-6)
    assert np.allclose(m["MD"], (axial + 2 * radial) / 3, rtol=1e-6)
    # the principal direction is the planted one (up to sign)
    assert np.allclose(np.abs((fit.principal_direction * dirs).sum(-1)), 1.0, atol=1e-6)


def test_fit_mask_zeroes_outside():
    bvals, bvecs = _scheme()
    t = dti.tensor_from_direction(np.array([[1.0, 0, 0]] * 3), np.full(3, 1.5e-3), np.full(3, 0.4e-3))
    s = dti.tensor_signal(np.full(3, 100.0), t, bvals, bvecs)
    mask = np.array([True, False, True])
    m = dti.TensorModel(bvals, bvecs).fit(s, mask=mask).metrics()
    assert m["FA"][1] == 0 and m["FA"][0] > 0.5


def test_gradient_table_round_trip_undoes_the_fsl_flip(tmp_path):
    bvals, bvecs = _scheme()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])  # positive determinant: x stored flipped
    dti.write_gradient_table(tmp_path / "a.bval", tmp_path / "a.bvec", bvals, bvecs, aff)
    on_disk = np.loadtxt(tmp_path / "a.bvec")
    assert np.allclose(on_disk[0], -bvecs[:, 0], atol=1e-6)
    b, v = dti.read_gradient_table(tmp_path / "a.bval", tmp_path / "a.bvec", len(bvals), aff)
    assert np.allclose(b, bvals) and np.allclose(v, bvecs, atol=1e-6)
    idx = dti.check_gradient_table(b, v, name="a.bval")
    assert list(idx) == list(range(len(bvals)))


def _write(tmp_path, bval_text, bvec_text):
    (tmp_path / "x.bval").write_text(bval_text)
    (tmp_path / "x.bvec").write_text(bvec_text)
    return tmp_path / "x.bval", tmp_path / "x.bvec"


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert exc.value.exit_code == 65
    return msg


def test_gradient_table_count_mismatch(tmp_path):
    bvals, bvecs = _scheme()
    bval, bvec = _write(tmp_path, " ".join(map(str, bvals[:-1])),
                        "\n".join(" ".join(map(str, r)) for r in bvecs.T))
    with pytest.raises(DataError) as exc:
        dti.read_gradient_table(bval, bvec, len(bvals))
    assert "x.bval" in _one_line(exc) and "31 b-values" in str(exc.value)


def test_gradient_table_not_numbers_and_missing(tmp_path):
    bval, bvec = _write(tmp_path, "0 1000 abc", "0 1 0\n0 0 1\n0 0 0")
    with pytest.raises(DataError) as exc:
        dti.read_gradient_table(bval, bvec, 3)
    assert "x.bval" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        dti.read_gradient_table(tmp_path / "none.bval", bvec, 3)
    assert "none.bval" in _one_line(exc)


def test_gradient_table_not_unit_length():
    bvals, bvecs = _scheme()
    bvecs = bvecs.copy()
    bvecs[5] *= 0.5
    with pytest.raises(DataError) as exc:
        dti.check_gradient_table(bvals, bvecs, name="sub-01_dwi.bvec")
    msg = _one_line(exc)
    assert "sub-01_dwi.bvec" in msg and "volume 5" in msg and "unit length" in msg


def test_gradient_table_too_few_directions():
    bvals, bvecs = _scheme(5)
    with pytest.raises(DataError) as exc:
        dti.check_gradient_table(bvals, bvecs, name="sub-01_dwi.bval", min_directions=6)
    assert "5 distinct" in _one_line(exc)
    # antipodal repeats of 3 directions are 3 directions
    v = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 4, float)
    v[3:6] *= -1
    assert dti.count_directions(v) == 3


def test_gradient_table_no_b0_and_no_shell():
    bvals, bvecs = _scheme()
    with pytest.raises(DataError) as exc:
        dti.check_gradient_table(np.where(bvals == 0, 1000, bvals), bvecs, name="f.bval")
    assert "no b=0" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        dti.check_gradient_table(np.where(bvals > 0, 2000, 0), bvecs, name="f.bval")
    assert "shells present: [2000]" in _one_line(exc)


def test_multishell_keeps_b1000():
    bvals = np.array([0, 1000, 2000, 1000, 2000, 5, 990])
    assert list(dti.select_shell(bvals, 1000, 100, 50)) == [0, 1, 3, 5, 6]


def test_region_dti_medians():
    labels = np.array([[1, 1, 1, 2, 2, 0]])
    fa = np.array([[0.1, 0.5, 0.9, 0.4, 0.6, 0.7]])
    table = pd.DataFrame({"index": [1, 2], "region": ["corticospinal_tract"] * 2, "hemisphere": ["L", "R"]})
    out = dti.region_dti_medians({"FA": fa}, labels, table, ("corticospinal_tract",), min_voxels=2)
    assert out["value"].tolist() == pytest.approx([0.5, 0.5])
    assert out["n_voxels"].tolist() == [3, 2]
    out = dti.region_dti_medians({"FA": fa}, labels, table, ("corticospinal_tract",), min_voxels=3)
    assert np.isnan(out["value"].iloc[1])
