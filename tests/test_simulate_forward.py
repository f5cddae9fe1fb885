"""Analytic checks of the simulator's forward-model kernels (no head model; a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.recon.dipole import dipole_kernel
from qsm_bids.simulate import forward as fw


def _sphere_field_analytic(x, y, z, radius, chi, b0):
    """Relative field of a uniformly magnetised sphere (Lorentz-corrected, SI, chi << 1).

    Inside: 0. Outside: chi/3 * R^3/r^3 * (3 cos^2(theta) - 1), theta from B0.
    """
    r2 = x * x + y * y + z * z
    r = np.sqrt(r2)
    cos = (x * b0[0] + y * b0[1] + z * b0[2]) / np.maximum(r, 1e-9)
    out = chi / 3.0 * radius**3 / np.maximum(r, 1e-9) ** 3 * (3 * cos**2 - 1)
    return np.where(r <= radius, 0.0, out)


@pytest.mark.parametrize("b0", [(0.0, 0.0, 1.0), (0.0, np.sin(0.4), np.cos(0.4))])
def test_sphere_field_inside_and_outside(b0):
    n, radius, chi = 96, 10.0, 1.0
    vox = (1.0, 1.0, 1.0)
    c = (n - 1) / 2
    g = np.arange(n) - c
    x, y, z = g.reshape(-1, 1, 1), g.reshape(1, -1, 1), g.reshape(1, 1, -1)
    # Partial-volume the sphere on a 4x supersampled grid so its edge is smooth.
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    frac = np.zeros((n, n, n), dtype=np.float32)
    for a in sub:
        for b in sub:
            for d in sub:
                frac += ((x + a) ** 2 + (y + b) ** 2 + (z + d) ** 2 <= radius**2)
    frac /= 64.0
    field = fw.field_from_chi(chi * frac, vox, b0, pad=64)
    truth = _sphere_field_analytic(x, y, z, radius, chi, np.asarray(b0) / np.linalg.norm(b0))
    r = np.sqrt(x * x + y * y + z * z)
    inside = r < radius - 2
    outside = (r > radius + 2) & (r < 3 * radius)
    peak = 2 * chi / 3
    # Discretisation (a 10-voxel sphere, k-space kernel sampled on the grid) leaves
    # errors near the surface that shrink with resolution; larger for oblique B0.
    assert np.mean(np.abs(field[inside])) < 0.01 * peak
    assert np.max(np.abs(field[inside])) < 0.05 * peak
    err = np.abs(field - truth)[outside]
    assert np.max(err) < 0.03 * peak
    assert np.mean(err) < 0.002 * peak
    # the pattern itself: on the B0 axis at 1.5 R the field is +2/3 chi (R/r)^3
    assert np.corrcoef(field[outside], truth[outside])[0, 1] > 0.999


def test_half_kernel_matches_dipole_kernel():
    shape, vox, b0 = (12, 10, 16), (1.0, 1.2, 2.0), (0.2, 0.3, 0.93)
    full = dipole_kernel(shape, vox, b0)
    half = fw.half_dipole_kernel(shape, vox, b0)
    # all frequencies except the Nyquist plane, where rfft takes +k and fftfreq -k
    np.testing.assert_allclose(half[..., : shape[2] // 2], full[..., : shape[2] // 2], atol=1e-6)


def test_field_of_uniform_object_is_zero_for_constant_shift():
    # a constant susceptibility everywhere (no boundary) makes no field
    field = fw.field_from_chi(np.full((16, 16, 16), 3.0, dtype=np.float32), (1, 1, 1), (0, 0, 1), pad=0)
    assert np.max(np.abs(field)) < 1e-5


def test_wrap_phase_range_and_congruence():
    rng = np.random.default_rng(0)
    phase = rng.uniform(-40, 40, size=10000).astype(np.float32)
    phase[:4] = [np.pi, -np.pi, 3 * np.pi, -5 * np.pi]
    w = fw.wrap_phase(phase)
    assert w.min() >= -np.pi and w.max() < np.pi
    k = (phase.astype(float) - w) / (2 * np.pi)
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)
    wd = fw.wrap_phase(phase.astype(np.float64))
    assert wd.min() >= -np.pi and wd.max() < np.pi


def test_integer_phase_range_and_resolution():
    phase = np.linspace(-np.pi, np.pi, 100001)[:-1]
    q = fw.phase_to_integer(phase)
    assert q.dtype == np.int16 and q.min() == -4096 and q.max() == 4095
    back = q * (np.pi / 4096)
    assert np.max(np.abs(fw.wrap_phase(back - phase))) <= np.pi / 4096 + 1e-12


def test_block_average_conserves_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 8, 6)).astype(np.float32)
    y = fw.block_average(x, (2, 2, 3))
    assert y.shape == (6, 4, 2)
    assert abs(y.mean() - x.mean()) < 1e-6
    np.testing.assert_allclose(y[1, 2, 1], x[2:4, 4:6, 3:6].mean(), rtol=1e-6)
    c = (x + 1j * x[::-1]).astype(np.complex64)
    yc = fw.block_average(c, (3, 2, 1))
    assert yc.dtype == np.complex64 and abs(yc.mean() - c.mean()) < 1e-6
    with pytest.raises(ValueError):
        fw.block_average(x, (5, 1, 1))


def test_gre_signal_phase_and_decay():
    field = np.array([0.0, 0.1, -0.05], dtype=np.float32)
    te, b0 = 0.02, 3.0
    s = fw.gre_signal(np.ones(3, np.float32), np.full(3, 25.0, np.float32), field, te, b0)
    np.testing.assert_allclose(np.abs(s), np.exp(-te * 25.0), rtol=1e-6)
    expected = fw.wrap_phase(2 * np.pi * fw.GAMMA_HZ_PER_T * b0 * te * field * 1e-6)
    np.testing.assert_allclose(np.angle(s), expected, atol=1e-5)


def test_complex_noise_level():
    rng = np.random.default_rng(2)
    s = fw.add_complex_noise(np.zeros(200000, np.complex64), 3.0, rng)
    assert abs(s.real.std() - 3.0) < 0.05 and abs(s.imag.std() - 3.0) < 0.05


def test_coil_sensitivities_smooth_and_distinct():
    rng = np.random.default_rng(3)
    g = np.mgrid[-80:81:8, -100:101:8, -60:81:8].astype(np.float32)
    sens = fw.coil_sensitivities(g, (0, 0, 0), 8, rng)
    assert sens.shape == g.shape[1:] + (8,)
    mag = np.abs(sens)
    assert mag.min() > 0
    # neighbouring points 8 mm apart differ little (smooth), coils see different parts of the head
    assert np.max(np.abs(np.diff(mag, axis=0))) < 0.35 * mag.max()
    flat = mag.reshape(-1, 8)
    corr = np.corrcoef(flat.T)
    assert corr[np.triu_indices(8, 1)].min() < 0.5
    peaks = {np.unravel_index(np.argmax(mag[..., k]), mag.shape[:3]) for k in range(8)}
    assert len(peaks) >= 6
    # per-coil phase offsets differ
    centre_phase = np.angle(sens[10, 12, 8])
    assert np.ptp(centre_phase) > 1.0


def test_rotation_matrix_is_proper():
    R = fw.rotation_matrix((10.0, -5.0, 3.0))
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert abs(np.linalg.det(R) - 1) < 1e-12
    # pitch rotates y towards z about x
    Rx = fw.rotation_matrix((90.0, 0.0, 0.0))
    np.testing.assert_allclose(Rx @ [0, 1, 0], [0, 0, 1], atol=1e-12)
