"""From per-echo phase to one field map in ppm.

Choice for multi-echo data: a weighted least-squares fit of the unwrapped
phase over echo time through zero, with weights ``|S_n|^2`` (the inverse
phase-noise variance, phase noise being ``sigma / |S_n|``):

    omega = sum_n |S_n|^2 TE_n phi_n / sum_n |S_n|^2 TE_n^2      (rad/s)

It is the maximum-likelihood frequency for Gaussian phase noise, it weights
late, noisy echoes down automatically, and it equals the average of the
per-echo fields ``phi_n / TE_n`` with weights ``|S_n|^2 TE_n^2``; its noise
``1 / sqrt(sum_n |S_n|^2 TE_n^2)`` (relative) is MEDI's ``N_std``. The fit
goes through zero, so the phase offset at TE = 0 must be removed first
(:func:`remove_phase_offset`, or the coil combination which removes it). The
``"average"`` option averages ``phi_n / TE_n`` with magnitude weights
``|S_n|`` (more robust to a bad late echo, less efficient).

Single echo: ``omega = phi / TE`` as in the paper.

ppm = omega / (2 pi gamma B0) * 1e6, gamma = 42.577478 MHz/T.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._ops import fwhm_to_sigma_voxels, gaussian_smooth_complex
from .dipole import GAMMA_HZ_PER_T
from .unwrap import laplacian_unwrap, unwrap_to_reference

__all__ = [
    "OFFSET_METHODS",
    "field_noise_std",
    "fit_field",
    "phase_to_ppm_factor",
    "remove_phase_offset",
    "unwrap_echo_difference",
    "unwrap_to_reference",
]

#: How :func:`remove_phase_offset` gets the phase change between the first two echoes:
#: "wrapped" uses ``angle(S2 conj(S1))`` as it is (wrong by 2 pi wherever the field moves the
#: phase by more than pi between the echoes); "unwrapped" unwraps it first
#: (:func:`unwrap_echo_difference`).
OFFSET_METHODS = ("wrapped", "unwrapped")
# FWHM (mm) of the smoothing that follows the Laplacian solution's harmonic error (a few cm scale).
_HARMONIC_SMOOTHING_MM = 10.0
# Smallest deviation (rad) from the smoothed TE = 0 offset that counts as an outlier; a wrong 2 pi in the
# echo difference is 2 pi TE1/dTE off (0.9 rad at 6/13 ms), the per-voxel noise at SNR 35 about 0.06 rad.
_OFFSET_OUTLIER_FLOOR_RAD = 0.2


def phase_to_ppm_factor(echo_time_s, field_strength_t):
    """ppm per radian at echo time ``echo_time_s``: ``1e6 / (2 pi gamma B0 TE)``."""
    return 1e6 / (2.0 * np.pi * GAMMA_HZ_PER_T * float(field_strength_t) * float(echo_time_s))


def fit_field(unwrapped_phase, magnitude, echo_times_s, field_strength_t, method="weighted_fit"):
    """Field map in ppm from unwrapped phase (x, y, z, echo) and magnitude.

    Parameters
    ----------
    unwrapped_phase : ndarray (x, y, z) or (x, y, z, echo)
        Unwrapped phase in rad (offset at TE = 0 removed).
    magnitude : ndarray, same shape
        Echo magnitudes (weights).
    echo_times_s : sequence of float
        Echo times in seconds.
    field_strength_t : float
        B0 in tesla.
    method : {"weighted_fit", "average"}

    Returns
    -------
    field_ppm : ndarray (x, y, z) float32
    """
    te = np.asarray(echo_times_s, dtype=np.float64).ravel()
    phase = np.asarray(unwrapped_phase, dtype=np.float32)
    mag = np.asarray(magnitude, dtype=np.float32)
    if phase.ndim == 3:
        phase = phase[..., None]
        mag = mag[..., None]
    scale = 1e6 / (2.0 * np.pi * GAMMA_HZ_PER_T * float(field_strength_t))
    if phase.shape[-1] == 1:
        return (phase[..., 0] * np.float32(scale / te[0])).astype(np.float32)
    if method == "weighted_fit":
        num = np.zeros(phase.shape[:3], dtype=np.float64)
        den = np.zeros(phase.shape[:3], dtype=np.float64)
        for n, t in enumerate(te):
            w = mag[..., n].astype(np.float64) ** 2
            num += w * t * phase[..., n]
            den += w * t * t
    elif method == "average":
        num = np.zeros(phase.shape[:3], dtype=np.float64)
        den = np.zeros(phase.shape[:3], dtype=np.float64)
        for n, t in enumerate(te):
            w = mag[..., n].astype(np.float64)
            num += w * phase[..., n] / t
            den += w
    else:
        raise ValueError(f"unknown echo combination {method!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        omega = np.where(den > 0, num / den, 0.0)
    return (omega * scale).astype(np.float32)


def field_noise_std(magnitude, echo_times_s):
    """Relative noise of the fitted field: ``1 / sqrt(sum_n |S_n|^2 TE_n^2)``."""
    te = np.asarray(echo_times_s, dtype=np.float64).ravel()
    mag = np.asarray(magnitude, dtype=np.float64)
    if mag.ndim == 3:
        mag = mag[..., None]
    s = np.zeros(mag.shape[:3])
    for n, t in enumerate(te):
        s += (mag[..., n] * t) ** 2
    with np.errstate(divide="ignore"):
        out = np.where(s > 0, 1.0 / np.sqrt(s), np.inf)
    return out.astype(np.float32)


def unwrap_echo_difference(s1, s2, voxel_size):
    """Phase of ``s2 conj(s1)`` (rad), unwrapped to the wrapped value plus ``2 pi k`` per voxel.

    ``angle(s2 conj(s1)) = omega (TE2 - TE1)`` carries no phase offset, but it
    wraps where the field moves the phase by more than pi between the echoes
    (near the sinuses and temporal bones: 0.56 ppm at 3 T for 7 ms). The
    Laplacian unwrapping gives a smooth estimate up to a harmonic function; its
    free constant is aligned to the data (the magnitude-weighted circular mean
    of wrapped - estimate, i.e. where most voxels need no wrap), and each voxel
    takes the ``2 pi`` multiple that brings its wrapped value closest to the
    estimate: exact wherever the estimate is within pi of the truth, so the
    result, unlike the Laplacian solution itself, has no harmonic error.
    ``s1``, ``s2`` may carry trailing axes (e.g. coils): each is unwrapped.
    """
    s1 = np.asarray(s1)
    s2 = np.asarray(s2)
    if s1.ndim > 3:
        flat1 = s1.reshape(s1.shape[:3] + (-1,))
        flat2 = s2.reshape(s2.shape[:3] + (-1,))
        out = np.stack([unwrap_echo_difference(flat1[..., j], flat2[..., j], voxel_size)
                        for j in range(flat1.shape[-1])], axis=-1)
        return out.reshape(s1.shape)
    z = s2 * np.conj(s1)
    d = np.angle(z).astype(np.float32)
    w = np.abs(z).astype(np.float32)
    est = laplacian_unwrap(d, voxel_size)
    est += np.float32(np.angle(np.sum(w * np.exp(1j * (d - est)))))
    out = unwrap_to_reference(d, est)
    # The Laplacian solution misses a smooth harmonic function, largest near the object's edge
    # (the phase jumps to noise there); where it exceeds pi the rounding is off by 2 pi. That
    # function is what separates the solution from the (mostly right) result: estimate it by
    # magnitude-weighted smoothing (normalised, so it extends to the edge) and round again.
    sigma = fwhm_to_sigma_voxels(_HARMONIC_SMOOTHING_MM, voxel_size)
    norm = ndimage.gaussian_filter(w, sigma)
    for _ in range(2):
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(norm > 0, ndimage.gaussian_filter(w * (out - est), sigma) / norm, 0.0)
        out = unwrap_to_reference(d, est + h.astype(np.float32))
    return out


def remove_phase_offset(complex_echoes, echo_times_s, voxel_size, smoothing_mm=6.0, method="wrapped", *,
                        mask=None, robust_passes=0):
    """Remove the phase at TE = 0 from multi-echo complex data (x, y, z, echo).

    The offset is extrapolated from the first two echoes,
    ``phi0 = angle(S1) - TE1 / (TE2 - TE1) * angle(S2 conj(S1))``, then smoothed
    as the complex field ``|S1| exp(i phi0)`` (Gaussian, FWHM ``smoothing_mm``)
    because receive phase offsets are smooth while the estimate is noisy.
    ``method`` (:data:`OFFSET_METHODS`): "wrapped" takes ``angle(S2 conj(S1))``
    as it is, so wherever it wraps (field change above pi over the echo
    spacing) the offset is wrong by ``2 pi TE1 / (TE2 - TE1)``, a non-2-pi
    step that every echo then carries and the smoothing spreads into the
    brain; "unwrapped" unwraps it first (:func:`unwrap_echo_difference`,
    2 real FFTs).

    ``mask`` (bool, x, y, z) restricts the estimate to the brain: the smoothing
    is a normalised convolution over the mask's voxels, so noise and signal
    voids outside it do not leak in, and it extends the smooth estimate past
    the mask's edge. ``robust_passes`` re-smooths that many times without the
    voxels whose own estimate is further from the smoothed one than 3 robust SDs
    (1.4826 x the median absolute deviation, over the mask), and than
    :data:`_OFFSET_OUTLIER_FLOOR_RAD` (so that at high SNR an offset curving
    faster than the kernel does not count as an outlier): the voxels where
    the echo difference was unwrapped by the wrong 2 pi (a 0.9 rad error at
    TE1/dTE = 6/7), and other voxels whose phase does not evolve linearly.
    Measured on simulated heads, the outliers sit mostly in the brain's outer
    4 mm and do not average out over heads; left in, they are a smooth offset
    error that the fit through TE = 0 turns into a field error (a false
    cluster that followed head size, README, issue 16).

    Returns the data multiplied by ``exp(-i phi0)`` and ``phi0``.
    With one echo nothing can be separated: the data are returned unchanged.
    """
    s = np.asarray(complex_echoes)
    te = np.asarray(echo_times_s, dtype=np.float64).ravel()
    if s.ndim == 3 or s.shape[-1] < 2:
        return s, np.zeros(s.shape[:3], dtype=np.float32)
    if method not in OFFSET_METHODS:
        raise ValueError(f"unknown phase-offset method {method!r}; choose from {OFFSET_METHODS}")
    s1, s2 = s[..., 0], s[..., 1]
    if method == "unwrapped":
        dphi = unwrap_echo_difference(s1, s2, voxel_size)
    else:
        dphi = np.angle(s2 * np.conj(s1))
    per_voxel = np.exp(1j * (np.angle(s1) - te[0] / (te[1] - te[0]) * dphi)).astype(np.complex64)
    weight = np.abs(s1).astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        weight = weight * mask
    sigma = fwhm_to_sigma_voxels(smoothing_mm, voxel_size)

    def smooth(w):
        return gaussian_smooth_complex(per_voxel * w, sigma)

    zs = smooth(weight)
    region = mask if mask is not None else weight > 0
    for _ in range(int(robust_passes)):
        residual = np.abs(np.angle(per_voxel * np.conj(zs)))
        spread = 1.4826 * float(np.median(residual[region])) if region.any() else 0.0
        if not spread > 0:
            break
        zs = smooth(weight * (residual <= max(3.0 * spread, _OFFSET_OUTLIER_FLOOR_RAD)))
    phi0 = np.angle(zs).astype(np.float32)
    out = s * np.exp(-1j * phi0)[..., None].astype(np.complex64)
    return out.astype(np.complex64), phi0
