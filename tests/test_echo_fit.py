"""Multi-echo phase offset at TE = 0 when the field wraps between echoes (analytic cases).

The phantom: an ellipsoidal object at 2 mm whose field is a smooth polynomial
large enough that the echo-1-to-2 phase change wraps (up to about 3 pi) over
part of the object, plus a smooth receive phase offset at TE = 0. The offset
taken from the wrapped difference is wrong by ``2 pi TE1 / (TE2 - TE1)``
wherever it wraps; the unwrapped difference gives it back exactly.
"""

import numpy as np
import pytest

from qsm_bids.recon.coils import adaptive_combine
from qsm_bids.recon.echoes import (
    fit_field,
    remove_phase_offset,
    unwrap_echo_difference,
    unwrap_to_reference,
)
from qsm_bids.recon.unwrap import UNWRAP_METHODS, guided_unwrap, laplacian_unwrap, temporal_unwrap

VS = (2.0, 2.0, 2.0)
TE = np.array([0.006, 0.013, 0.020])
RAD_PER_PPM_S = 2 * np.pi * 42.577478 * 3.0  # omega (rad/s) per ppm at 3 T


def _phantom(shape=(48, 48, 40)):
    idx = [(np.arange(n) - (n - 1) / 2) * d for n, d in zip(shape, VS)]
    x, y, z = np.meshgrid(*idx, indexing="ij")
    obj = (x / 40) ** 2 + (y / 40) ** 2 + (z / 34) ** 2 <= 1
    # field in ppm: smooth, reaching ~1.5 ppm (3 pi over 7 ms at 3 T) at one side
    ppm = (0.5 * (x / 40) + 0.6 * (x / 40) ** 2 - 0.3 * (y / 40) * (z / 34) + 0.4 * (z / 34) ** 2).astype(np.float32)
    offset = (1.2 + 0.6 * np.sin(x / 25.0) + 0.4 * (y / 40)).astype(np.float32)
    return obj, ppm, offset, (x, y, z)


def _signal(obj, ppm, offset, r2s=25.0, noise=0.005, seed=0):
    """Echoes (x, y, z, echo); white complex noise everywhere (air is noise, as on a scanner)."""
    omega = RAD_PER_PPM_S * ppm
    mag = np.exp(-r2s * TE)[None, None, None, :] * obj[..., None]
    s = mag * np.exp(1j * (offset[..., None] + omega[..., None] * TE))
    rng = np.random.default_rng(seed)
    s = s + noise * (rng.standard_normal(s.shape) + 1j * rng.standard_normal(s.shape))
    return s.astype(np.complex64)


def _wrapping_fraction(obj, ppm):
    d = RAD_PER_PPM_S * ppm * (TE[1] - TE[0])
    return float(np.mean(np.abs(d[obj]) > np.pi))


def test_unwrap_to_reference_is_exact_within_pi():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-12, 12, 1000).astype(np.float32)
    wrapped = np.angle(np.exp(1j * truth)).astype(np.float32)
    ref = truth + rng.uniform(-3.0, 3.0, truth.shape).astype(np.float32)
    np.testing.assert_allclose(unwrap_to_reference(wrapped, ref), truth, atol=1e-4)


def test_echo_difference_unwrapped_exactly_where_it_wraps():
    obj, ppm, offset, _ = _phantom()
    assert _wrapping_fraction(obj, ppm) > 0.05  # the case needs real wraps
    s = _signal(obj, ppm, offset)
    d = unwrap_echo_difference(s[..., 0], s[..., 1], VS)
    truth = RAD_PER_PPM_S * ppm * (TE[1] - TE[0])
    err = d[obj] - truth[obj]
    # right up to one global multiple of 2 pi (the difference carries no offset)
    k = np.round(np.median(err) / (2 * np.pi))
    assert np.max(np.abs(err - 2 * np.pi * k)) < 0.1  # phase noise only (about 0.01 rad)
    # the Laplacian solution alone is off by a non-constant harmonic function
    lap = laplacian_unwrap(np.angle(s[..., 1] * np.conj(s[..., 0])), VS)
    assert np.ptp(lap[obj] - truth[obj]) > 0.1


def test_offset_from_unwrapped_difference_and_field_fit():
    obj, ppm, offset, (x, y, z) = _phantom()
    s = _signal(obj, ppm, offset)
    inner = (x / 34) ** 2 + (y / 34) ** 2 + (z / 28) ** 2 <= 1  # away from the smoothing's edge
    out_u, phi0_u = remove_phase_offset(s, TE, VS, 6.0, method="unwrapped")
    out_w, phi0_w = remove_phase_offset(s, TE, VS, 6.0, method="wrapped")
    err_u = np.angle(np.exp(1j * (phi0_u - offset)))[inner]
    err_w = np.angle(np.exp(1j * (phi0_w - offset)))[inner]
    assert np.max(np.abs(err_u)) < 0.02  # smoothing of a smooth offset: small curvature error only
    assert np.max(np.abs(err_w)) > 0.5  # 5.4 rad steps where the difference wraps, blurred by the smoothing
    # the default stays the toolbox-like wrapped estimate (output unchanged)
    np.testing.assert_array_equal(remove_phase_offset(s, TE, VS, 6.0)[1], phi0_w)
    # the field fitted through zero after each estimate, against the same fit after the true offset
    def field(c):
        uw = laplacian_unwrap(np.angle(c), VS) * obj[..., None]
        return fit_field(uw, np.abs(c), TE, 3.0)

    ref = field(s * np.exp(-1j * offset)[..., None])
    deep = (x / 30) ** 2 + (y / 30) ** 2 + (z / 24) ** 2 <= 1
    rms = {m: float(np.std((field(o) - ref)[deep])) for m, o in (("u", out_u), ("w", out_w))}
    # ppm, demeaned; the field spans about 1.5 ppm. What remains with "unwrapped" is the 6 mm smoothing
    # of a curved offset (max 0.02 rad above) and noise
    assert rms["u"] < 4e-3
    assert rms["w"] > 3 * rms["u"]


def test_offset_over_the_mask_robust_to_wrong_two_pi_voxels():
    """A smooth offset; scattered voxels whose field jumps by 0.6 ppm (as beside the skull base).

    There the echo-1-to-2 phase change exceeds pi (3.4 rad), so the wrapped difference is 2 pi off
    and each such voxel's own offset estimate is off by 2 pi TE1 / (TE2 - TE1) (0.9 rad after
    wrapping): the plain smoothing spreads that over its kernel, the robust passes leave the
    voxels out. Over the mask only, the tissue outside it (scalp fat) does not enter either.
    """
    obj, ppm, offset, (x, y, z) = _phantom()
    ppm = 0.3 * ppm  # no wraps but the planted ones
    r2 = (x / 40) ** 2 + (y / 40) ** 2 + (z / 34) ** 2
    bad = obj & (r2 > 0.6) & (x > 0) & (np.random.default_rng(5).random(obj.shape) < 0.3)
    assert np.all(RAD_PER_PPM_S * (ppm[bad] + 0.6) * (TE[1] - TE[0]) > np.pi)
    good = obj & ~bad
    errs = {}
    for name, field, passes in (("spikes", ppm + 0.6 * bad, 0), ("spikes_robust", ppm + 0.6 * bad, 2),
                                ("none", ppm, 0), ("none_robust", ppm, 2)):
        _, phi0 = remove_phase_offset(_signal(obj, field, offset), TE, VS, 12.0, "wrapped", mask=obj,
                                      robust_passes=passes)
        errs[name] = np.abs(np.angle(np.exp(1j * (phi0 - offset))))[good]
    p99 = {k: float(np.percentile(v, 99)) for k, v in errs.items()}
    # without spikes: the 12 mm kernel's curvature error only, the same with or without the passes
    assert p99["none"] < 0.08
    assert p99["none_robust"] == pytest.approx(p99["none"], rel=0.05)
    assert p99["spikes"] > 3 * p99["none"]
    assert p99["spikes_robust"] < 1.15 * p99["none"]
    # over the mask only: a scalp of fat (-3.4 ppm, its echo difference wrapped 3 times) around the
    # brain does not leak into the offset at the brain's edge
    scalp = (r2 > 1.05) & (r2 < 1.4)
    fat = _signal(obj | scalp, ppm - 3.4 * scalp, offset)
    edge = obj & (r2 > 0.8)
    e = {}
    for name, m in (("all", None), ("mask", obj)):
        _, phi0 = remove_phase_offset(fat, TE, VS, 12.0, "wrapped", mask=m)
        e[name] = float(np.abs(np.angle(np.exp(1j * (phi0 - offset))))[edge].mean())
    assert e["all"] > 0.1
    assert e["mask"] < 0.25 * e["all"]


def test_coil_offsets_unwrapped():
    obj, ppm, offset, (x, y, z) = _phantom()
    base = _signal(obj, ppm, np.zeros_like(offset), noise=0.0)
    rng = np.random.default_rng(3)
    n_coils = 4
    sens = []
    for c in range(n_coils):
        ph = rng.uniform(-np.pi, np.pi) + 0.02 * (x * rng.normal() + y * rng.normal())
        amp = 1.0 / (1.0 + ((x - 30 * np.cos(c)) ** 2 + (y - 30 * np.sin(c)) ** 2) / 60.0**2)
        sens.append(amp * np.exp(1j * ph))
    coil = base[..., None] * np.stack(sens, -1)[..., None, :]
    coil = coil + 0.003 * (rng.standard_normal(coil.shape) + 1j * rng.standard_normal(coil.shape))
    inner = (x / 30) ** 2 + (y / 30) ** 2 + (z / 24) ** 2 <= 1
    truth = RAD_PER_PPM_S * ppm[..., None] * TE  # combined phase should be omega TE (offset 0)
    errs = {}
    for method in ("wrapped", "unwrapped"):
        _, phase = adaptive_combine(coil, TE, VS, 6.0, offset_method=method)
        e = np.angle(np.exp(1j * (phase - truth)))
        errs[method] = np.abs(e[inner]).max()
    assert errs["unwrapped"] < 0.05
    assert errs["wrapped"] > 0.5
    with pytest.raises(ValueError, match="phase-offset method"):
        adaptive_combine(coil, TE, VS, 6.0, offset_method="bogus")


def _echo_phase(obj, ppm, noise_rad, seed=1):
    """Per-echo phase (offset removed) of the phantom: omega TE + Gaussian phase noise; noise in air."""
    rng = np.random.default_rng(seed)
    truth = (RAD_PER_PPM_S * ppm)[..., None] * TE + noise_rad * rng.standard_normal(obj.shape + (TE.size,))
    air = rng.uniform(-np.pi, np.pi, truth.shape)
    truth = np.where(obj[..., None], truth, air).astype(np.float32)
    return truth, np.angle(np.exp(1j * truth)).astype(np.float32), obj[..., None] * np.ones(TE.size, np.float32)


def test_guided_unwrap_restores_the_exact_phase():
    """Echo 3 spans about 12 rad, with 0.1 rad of noise: the result is the truth to float precision.

    The Laplacian solution alone is off by a non-constant harmonic function (the phase does not
    vanish at the object's edge) of several tenths of a radian.
    """
    obj, ppm, _, _ = _phantom()
    truth, wrapped, w = _echo_phase(obj, ppm, noise_rad=0.1)
    assert np.ptp(truth[..., 2][obj]) > 3 * np.pi
    for e in range(TE.size):
        out = guided_unwrap(wrapped[..., e], VS, w[..., e])
        err = (out - truth[..., e])[obj]
        k = np.round(np.median(err) / (2 * np.pi))
        np.testing.assert_allclose(err, 2 * np.pi * k, atol=2e-5)  # float32 of |phase| <= 15 rad
        lap = laplacian_unwrap(wrapped[..., e], VS)
        if e == 2:
            assert np.ptp((lap - truth[..., e])[obj]) > 0.3
    # the whole-echo method table gives the same, echo by echo
    out = UNWRAP_METHODS["guided"](wrapped, TE, VS, w)
    np.testing.assert_array_equal(out[..., 2], guided_unwrap(wrapped[..., 2], VS, w[..., 2]))


def test_temporal_unwrap_is_exact_and_consistent_over_echoes():
    """Echo 1 guided, later echoes from the earlier ones' frequency: every echo exact, one global k."""
    obj, ppm, _, _ = _phantom()
    truth, wrapped, w = _echo_phase(obj, ppm, noise_rad=0.1)
    out = temporal_unwrap(wrapped, TE, VS, w)
    assert out.shape == truth.shape
    err = (out - truth)[obj]
    np.testing.assert_allclose(err, 0.0, atol=2e-5)  # echo 1 needs no global 2 pi here (small field at centre)
    # the fitted field then equals the fit of the true phase
    np.testing.assert_allclose(fit_field(out, w, TE, 3.0)[obj], fit_field(truth, w, TE, 3.0)[obj], atol=1e-5)
    # wrapped values are kept: every voxel differs from its input by an integer multiple of 2 pi
    k = ((out - wrapped) / (2 * np.pi))[obj]
    np.testing.assert_allclose(k, np.round(k), atol=1e-5)
    assert not out[~obj].any()  # zero outside the mask


def test_laplacian_method_is_the_paper_solution():
    obj, ppm, _, _ = _phantom((24, 24, 20))
    _, wrapped, w = _echo_phase(obj, ppm, noise_rad=0.0)
    np.testing.assert_array_equal(UNWRAP_METHODS["laplacian"](wrapped, TE, VS, w), laplacian_unwrap(wrapped, VS))


def test_unwrap_methods_match_the_config_choices():
    import typing

    from qsm_bids.config import ReconConfig, literal_choices

    hint = typing.get_type_hints(ReconConfig)["unwrap_method"]
    assert list(UNWRAP_METHODS) == list(literal_choices(hint))
