"""Pure array kernels of the simulator's forward model (no file I/O).

- :func:`field_from_chi`: the relative field (ppm) of a susceptibility map by
  dipole convolution in k-space (real FFTs of :mod:`qsm_bids.recon.fft`, the
  kernel of :mod:`qsm_bids.recon.dipole`) on a zero-padded grid;
- :func:`block_average`: averaging a fine grid to the acquisition voxel;
- :func:`gre_signal`, :func:`wrap_phase`, :func:`phase_to_integer`,
  :func:`add_complex_noise`, :func:`coil_sensitivities`: the GRE signal chain;
- :func:`rotation_matrix`, :func:`smooth_displacement`, :func:`warp`: geometry.

Phase convention: ``phase = 2 pi gamma B0 TE * field_ppm * 1e-6`` (+ offsets),
gamma = 42.577478 MHz/T, so that ``field_ppm = phase / (2 pi gamma B0 TE) * 1e6``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..recon import fft
from ..recon.dipole import GAMMA_HZ_PER_T, kspace_coordinates

__all__ = [
    "GAMMA_HZ_PER_T",
    "half_dipole_kernel",
    "field_from_chi",
    "block_average",
    "wrap_phase",
    "phase_to_integer",
    "gre_signal",
    "add_complex_noise",
    "coil_sensitivities",
    "rotation_matrix",
    "smooth_displacement",
    "warp",
]


def half_dipole_kernel(shape, voxel_size, b0_dir):
    """``D = 1/3 - (k.b)^2/|k|^2`` on the half spectrum of :func:`qsm_bids.recon.fft.rfftn`.

    The same kernel as :func:`qsm_bids.recon.dipole.dipole_kernel` (its first
    ``n//2 + 1`` frequencies along the last axis, with the positive Nyquist
    frequency), computed in float32 without full-size temporaries so that
    the large padded grids of the simulator fit in memory.
    """
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    kx, ky, _ = kspace_coordinates(shape, voxel_size)
    nz = int(shape[2])
    kz = np.fft.rfftfreq(nz, d=float(voxel_size[2])).reshape(1, 1, -1)
    kx, ky, kz = (k.astype(np.float32) for k in (kx, ky, kz))
    k2 = kx * kx + ky * ky + kz * kz
    kb = kx * np.float32(b[0]) + ky * np.float32(b[1]) + kz * np.float32(b[2])
    k2[0, 0, 0] = 1.0
    D = np.float32(1.0 / 3.0) - kb * kb / k2
    D[0, 0, 0] = 0.0
    return D


def field_from_chi(chi_ppm, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad=(0, 0, 0)):
    """Relative field (ppm) of ``chi_ppm`` by k-space dipole convolution.

    Parameters
    ----------
    chi_ppm : ndarray, 3-D
        Susceptibility in ppm (any constant offset is irrelevant when the
        object is surrounded by its own zero level: express it relative to
        the medium outside, e.g. air).
    voxel_size : 3 floats, mm
    b0_dir : 3 floats
        B0 in voxel axes.
    pad : int or 3 ints
        Zeros added (at the end of each axis, rounded up to a fast FFT size)
        so that the periodic convolution does not fold the field of one side
        onto the other.

    Returns
    -------
    field_ppm : float32 ndarray, shape of ``chi_ppm``
    """
    chi = np.asarray(chi_ppm, dtype=np.float32)
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (3,))
    shape = list(fft.next_fast_shape(chi.shape, pad))
    # rfft needs an even last axis for the Nyquist plane to be a real frequency
    if shape[2] % 2:
        shape[2] = fft.next_fast_shape((shape[2] + 1,))[0]
    shape = tuple(shape)
    if shape == chi.shape:
        work = chi
    else:
        work = np.zeros(shape, dtype=np.float32)
        work[: chi.shape[0], : chi.shape[1], : chi.shape[2]] = chi
    spec = fft.rfftn(work)
    del work
    spec *= half_dipole_kernel(shape, voxel_size, b0_dir)
    field = fft.irfftn(spec, shape)
    del spec
    return np.ascontiguousarray(field[: chi.shape[0], : chi.shape[1], : chi.shape[2]], dtype=np.float32)


def block_average(x, factors):
    """Mean over non-overlapping blocks of ``factors`` voxels (fine grid -> acquisition voxel).

    The fine grid must be an integer multiple of the factors along each of
    the first three axes; the result keeps the dtype family (complex stays complex).
    """
    x = np.asarray(x)
    f = tuple(int(v) for v in factors)
    if any(n % k for n, k in zip(x.shape[:3], f)):
        raise ValueError(f"shape {x.shape[:3]} is not a multiple of the block {f}")
    if f == (1, 1, 1):
        return x.copy()
    n = [s // k for s, k in zip(x.shape[:3], f)]
    y = x.reshape(n[0], f[0], n[1], f[1], n[2], f[2], *x.shape[3:])
    if x.dtype.kind not in "fc":
        y = y.astype(np.float32)
    # Summing a few (<= 64) values in single precision loses nothing that matters here.
    return y.sum(axis=(1, 3, 5), dtype=y.dtype) / y.dtype.type(f[0] * f[1] * f[2])


def wrap_phase(phase):
    """Wrap phase (rad) into ``[-pi, pi)``."""
    p = np.asarray(phase)
    dt = p.dtype if p.dtype.kind == "f" else np.dtype(float)
    pi = dt.type(np.pi)
    out = np.mod(p + pi, dt.type(2 * np.pi)) - pi
    # rounding can land exactly on +pi (e.g. -pi - tiny): fold it back
    out[out >= pi] -= dt.type(2 * np.pi)
    return out


def phase_to_integer(phase, levels=4096):
    """Scanner-style integer phase: ``[-pi, pi)`` -> ``[-levels, levels - 1]`` (int16)."""
    q = np.floor(wrap_phase(phase) * (levels / np.pi))
    return np.clip(q, -levels, levels - 1).astype(np.int16)


def gre_signal(amplitude, r2star, field_ppm, echo_time, field_strength, phase0=0.0):
    """Complex spoiled-GRE signal at one echo time (complex64).

    ``amplitude * exp(-TE R2*) * exp(i (2 pi gamma B0 TE field_ppm 1e-6 + phase0))``.
    """
    omega = np.float32(2 * np.pi * GAMMA_HZ_PER_T * field_strength * 1e-6 * echo_time)
    mag = amplitude * np.exp(np.float32(-echo_time) * r2star)
    phase = omega * field_ppm + np.float32(phase0)
    out = np.empty(np.shape(field_ppm), dtype=np.complex64)
    out.real = mag * np.cos(phase)
    out.imag = mag * np.sin(phase)
    return out


def add_complex_noise(signal, sigma, rng):
    """Add white complex Gaussian noise (SD ``sigma`` per real/imaginary channel)."""
    noise = rng.standard_normal(signal.shape + (2,), dtype=np.float32)
    out = signal.astype(np.complex64, copy=True)
    out.real += np.float32(sigma) * noise[..., 0]
    out.imag += np.float32(sigma) * noise[..., 1]
    return out


def coil_sensitivities(world_xyz, centre, n_coils, rng, radius_mm=125.0, falloff_mm=90.0):
    """Smooth complex receive sensitivities of ``n_coils`` surface coils on a helmet.

    Coils sit on a sphere of ``radius_mm`` around ``centre`` (golden-spiral
    positions over the upper 3/4 of the sphere); each has a magnitude falling
    off with distance like a loop coil, ``(1 + (d/falloff)^2)^-1.5``, a random
    constant phase offset and a gentle linear phase across the head (<= ~1 rad),
    so the combined phase of each coil differs by a smooth map.

    Parameters
    ----------
    world_xyz : array (3, ...)
        Positions (mm) where the sensitivities are needed.
    centre : 3 floats
    n_coils : int
    rng : numpy Generator

    Returns
    -------
    sens : complex64 array (..., n_coils)
    """
    xyz = np.asarray(world_xyz, dtype=np.float32)
    c = np.asarray(centre, dtype=np.float32).reshape(3, *([1] * (xyz.ndim - 1)))
    rel = xyz - c
    out = np.empty(xyz.shape[1:] + (int(n_coils),), dtype=np.complex64)
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for k in range(int(n_coils)):
        zc = 1.0 - 1.5 * (k + 0.5) / n_coils  # from the top down to 3/4 of the sphere
        r = np.sqrt(max(0.0, 1.0 - zc * zc))
        pos = radius_mm * np.array([r * np.cos(golden * k), r * np.sin(golden * k), zc], dtype=np.float32)
        d2 = sum((rel[i] - pos[i]) ** 2 for i in range(3))
        mag = (1.0 + d2 / np.float32(falloff_mm**2)) ** np.float32(-1.5)
        grad = rng.normal(0.0, 1.0 / 150.0, size=3).astype(np.float32)  # rad per mm
        phase = np.float32(rng.uniform(-np.pi, np.pi)) + sum(grad[i] * rel[i] for i in range(3))
        out[..., k] = mag * np.exp(1j * phase)
    return out


def rotation_matrix(angles_deg):
    """Rotation ``Rz(yaw) @ Ry(roll) @ Rx(pitch)`` from (pitch, roll, yaw) in degrees.

    Pitch is about the left-right (x) axis (nodding), roll about the
    anterior-posterior (y) axis, yaw about the vertical (z) axis.
    """
    a, b, c = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_displacement(u_xyz, modes):
    """Smooth nonlinear displacement (mm) at points ``u_xyz`` from a few plane-wave modes.

    ``d(u) = sum_k a_k sin(2 pi w_k . u + phi_k)``, each mode a vector amplitude
    ``a_k`` (mm), a wave vector ``w_k`` (cycles/mm) and a phase. Long
    wavelengths (>= 60 mm) keep it smooth and invertible for amplitudes of a
    few mm.

    Parameters
    ----------
    u_xyz : tuple of 3 arrays (broadcastable), mm
    modes : sequence of (amplitude (3,), wave_vector (3,), phase)

    Returns
    -------
    list of 3 float32 arrays
    """
    shape = np.broadcast_shapes(*(np.shape(u) for u in u_xyz))
    d = [np.zeros(shape, dtype=np.float32) for _ in range(3)]
    for amp, wave, phi in modes:
        arg = np.float32(phi) + sum(np.float32(2 * np.pi * wave[i]) * u_xyz[i] for i in range(3))
        s = np.sin(arg, dtype=np.float32)
        for i in range(3):
            d[i] += np.float32(amp[i]) * s
    return d


def warp(volume, coords, order=1, cval=0.0):
    """Sample ``volume`` at voxel coordinates ``coords`` (3, ...) (linear by default, no prefilter)."""
    out_dtype = np.float32 if order > 0 else volume.dtype
    return ndi.map_coordinates(volume, coords, order=order, mode="constant", cval=cval,
                               prefilter=False, output=out_dtype)
