"""Coil combination, mask, referencing and the pipeline's input checks."""

import numpy as np
import pytest
from scipy import ndimage

from qsm_bids.config import ReconConfig
from qsm_bids.errors import DataError
from qsm_bids.recon.coils import adaptive_combine
from qsm_bids.recon.mask import brain_mask, drop_outer_incoherent, phase_coherence
from qsm_bids.recon.pipeline import reconstruct
from qsm_bids.recon.reference import apply_reference
from qsm_bids.simulate.head_phantom import head_phantom


def _grid(shape, vs):
    return np.meshgrid(*[(np.arange(n) - n / 2) * d for n, d in zip(shape, vs)], indexing="ij")


def test_adaptive_combination_phase_consistent_across_echoes():
    """Coil phase offsets removed: combined phase = omega * TE (extrapolates to 0 at TE = 0)."""
    shape, vs = (40, 36, 20), (1.0, 1.0, 2.0)
    te = np.array([0.005, 0.010, 0.015])
    x, y, z = _grid(shape, vs)
    field_hz = 20 * np.exp(-(x**2 + y**2) / (2 * 10**2))
    rng = np.random.default_rng(1)
    sens = []
    for c in range(8):
        ang = 2 * np.pi * c / 8
        cx, cy = 30 * np.cos(ang), 30 * np.sin(ang)
        sens.append(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 25**2))
                    * np.exp(1j * (0.05 * (x * np.cos(ang) + y * np.sin(ang)) + rng.uniform(-np.pi, np.pi))))
    sens = np.stack(sens, -1)
    data = np.stack([sens * np.exp(1j * 2 * np.pi * field_hz * t)[..., None] for t in te], 3)
    data = data + 0.01 * (rng.standard_normal(data.shape) + 1j * rng.standard_normal(data.shape))
    mag, ph = adaptive_combine(data.astype(np.complex64), te, vs, 6.0)
    assert mag.shape == ph.shape == shape + (3,)
    err = np.angle(np.exp(1j * (ph - 2 * np.pi * field_hz[..., None] * te)))
    assert np.mean(np.abs(err)) < 0.05 and np.max(np.abs(err)) < 0.3
    # magnitude close to the root-sum-of-squares (SNR-optimal for these sensitivities)
    rss = np.sqrt(np.sum(np.abs(data[..., 0, :]) ** 2, axis=-1))
    assert np.median(np.abs(mag[..., 0] / rss - 1)) < 0.05


@pytest.fixture(scope="module")
def phantom():
    return head_phantom((96, 96, 64), (2.0, 2.0, 2.0), echo_times_s=(0.01, 0.02), snr=60,
                        oblique_deg=(12.0, 0.0), seed=3)


def test_brain_mask_excludes_scalp_and_keeps_brain(phantom):
    m = brain_mask(phantom.magnitude, phantom.voxel_size)
    truth = phantom.brain
    # intracranial: the brain and its CSF rim (the phantom's skull starts at 1.07 x the brain)
    assert np.sum(m & truth) > 0.97 * truth.sum()
    assert m.sum() < 1.12**3 * truth.sum()  # never beyond the outer skull surface (1.12)
    x, y, z = _grid(truth.shape, phantom.voxel_size)
    far = np.sqrt((x / 1.3) ** 2 + (y / 1.3) ** 2 + (z / 1.3) ** 2) > 100  # scalp/air
    assert not np.any(m & far)
    # the dark, iron-rich nuclei stay in (holes filled)
    assert np.all(m[phantom.labels["globus_pallidus_L"]])


def test_phase_coherence_flags_noise():
    rng = np.random.default_rng(0)
    ph = np.zeros((20, 20, 20), np.float32)
    ph[10:, :, :] = rng.uniform(-np.pi, np.pi, (10, 20, 20))
    c = phase_coherence(ph)
    assert c[2:8, 2:18, 2:18].min() > 0.99 and np.median(c[12:18]) < 0.6


def test_outer_layer_voxels_incoherent_at_a_later_echo_are_dropped_and_deeper_ones_kept():
    z, y, x = np.mgrid[:24, :24, :24]
    mask = (x - 12) ** 2 + (y - 12) ** 2 + (z - 12) ** 2 <= 81
    outer = mask & ~ndimage.binary_erosion(mask)
    ph = np.zeros((24, 24, 24, 3), np.float32)
    # the last echo dephased near the low-x pole (neighbour differences of pi/2, pi and 3 pi/2 along the
    # three axes: coherence 1/3): its outer voxels go, every deeper voxel stays
    patch = x <= 5
    ph[..., 2] = np.where(patch, np.pi / 2 * (x + 2 * y + 3 * z), 0.0)
    kept = drop_outer_incoherent(mask, ph, 0.5)
    assert np.all(kept[mask & ~outer])
    assert np.all(kept[mask & (x >= 7)])
    assert not np.any(kept[outer & (x <= 4)])
    # coherent at every echo: nothing goes; one echo (3-D phase) judged alone
    assert np.array_equal(drop_outer_incoherent(mask, np.zeros((24, 24, 24, 3), np.float32)), mask)
    assert np.array_equal(drop_outer_incoherent(mask, ph[..., 0]), mask)


def test_reference_options():
    chi = np.zeros((30, 30, 30), np.float32)
    mask = np.zeros_like(chi, bool)
    mask[5:25, 5:25, 5:25] = True
    chi[mask] = 0.05
    out, ref = apply_reference(chi, mask, "none")
    assert ref == 0 and np.array_equal(out, chi)
    out, ref = apply_reference(chi, mask, "brain")
    assert np.isclose(ref, 0.05) and np.allclose(out[mask], 0)


def _ok_inputs():
    rng = np.random.default_rng(0)
    mag = np.ones((24, 24, 16, 2), np.float32)
    ph = rng.uniform(-np.pi, np.pi, mag.shape).astype(np.float32)
    return mag, ph


@pytest.mark.parametrize("case,match", [
    ("zero_mag", "all zero"),
    ("unwrapped", "already unwrapped"),
    ("te_order", "do not increase"),
    ("no_field", "MagneticFieldStrength"),
    ("empty_mask", "too little signal or the given mask is empty"),
    ("small_mask", "too small for the kernel"),
])
def test_bad_input_raises_one_line_data_error(case, match):
    mag, ph = _ok_inputs()
    kw = dict(echo_times_s=[0.01, 0.02], voxel_size_mm=(1, 1, 1), b0_dir=(0, 0, 1), field_strength_t=3.0)
    if case == "zero_mag":
        mag = np.zeros_like(mag)
    elif case == "unwrapped":
        ph = ph * 4
    elif case == "te_order":
        kw["echo_times_s"] = [0.02, 0.01]
    elif case == "no_field":
        kw["field_strength_t"] = None
    elif case == "empty_mask":
        kw["mask"] = np.zeros(mag.shape[:3], bool)
    elif case == "small_mask":
        m = np.zeros(mag.shape[:3], bool)
        m[4:12, 4:12, 4:10] = True  # 384 voxels, nothing left after a 5 mm erosion
        kw["mask"] = m
    with pytest.raises(DataError, match=match) as exc:
        reconstruct(mag, ph, **kw)
    assert exc.value.exit_code == 65 and "\n" not in str(exc.value)


@pytest.mark.parametrize("n_echoes", [1, 2])
def test_one_echo_keeps_voxels_of_middling_phase_coherence_that_multi_echo_data_drop(n_echoes):
    # a block whose first-echo phase steps 2.4 rad per voxel along x: coherence (4 + 2 cos 2.4) / 6 = 0.42,
    # between the single-echo threshold (0.35) and the multi-echo one (0.5)
    z, y, x = np.mgrid[:40, :40, :40]
    ball = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 15**2
    block = (abs(x - 20) <= 3) & (abs(y - 20) <= 3) & (abs(z - 20) <= 3)
    mag = np.where(ball, 1.0, 0.0).astype(np.float32)[..., None].repeat(n_echoes, axis=3)
    first = np.where(block, np.angle(np.exp(2.4j * x)), 0.0).astype(np.float32)
    ph = np.angle(np.exp(1j * np.stack([first * (e + 1) for e in range(n_echoes)], axis=-1))).astype(np.float32)
    cfg = ReconConfig()
    assert cfg.mask_phase_quality_single_echo < 0.42 < cfg.mask_phase_quality
    r = reconstruct(mag, ph, echo_times_s=[0.01 * (e + 1) for e in range(n_echoes)], voxel_size_mm=(1, 1, 1),
                    b0_dir=(0, 0, 1), field_strength_t=3.0, params=cfg, t1w_mask=ball.astype(np.float32))
    inner = block & ndimage.binary_erosion(block)
    kept = r.measured_mask[inner]
    assert kept.all() if n_echoes == 1 else not kept.any()
    assert r.measured_mask[ball & ~ndimage.binary_dilation(block, iterations=2)].mean() > 0.97
