"""Preconditioned total field inversion (TFI; Liu Z et al., MRM 2017;78:303-315): a prototype.

Not part of the package: measured by ``benchmarks/bench_tfi.py`` against the default chain
(SHARP 5 mm + MEDI's SMV form with rim shells) on the simulator, it did worse everywhere at
the paper protocol (seed 1, SNR 35: whole-brain NRMSE 70.6 % vs 61.4 %, interior 54.6 % vs
39.7 %, no gain in the rim; README, issue 17). Kept so the comparison can be rerun.

TFI replaces background field removal + local field inversion by one inversion
of the *total* field: the susceptibility is unknown everywhere (brain, the
tissue around it, air, bone, and by default the zero padding around the field
of view, where the sources outside the field of view go), the data term covers
every voxel with reliable phase (brain and non-brain tissue), and a spatial
preconditioner ``P`` (``chi = P y``; 1 in the brain, ``P_B`` ~ 30 outside)
balances the strong background sources against the weak brain sources so that
conjugate gradients converges on both.

What :func:`tfi` solves (field in radians accumulated over ``delta_te``, as
the MEDI toolbox, so that ``lam`` = 1000 means what it means there)::

    y* = argmin_y  lam || Q m (f - D P y) ||_2^2  +  || wG grad(P y) ||_1

- ``f = f_ppm * 1e-6 * 2 pi gamma B0 delta_te`` (rad), the total field;
- ``D`` the dipole convolution (k-space, zero padded by ``pad`` voxels per side
  so the field of sources near the border does not wrap around);
- ``m = data_mask / noise_std`` normalised to mean 1 over ``data_mask``
  (MEDI's data weighting, here over every voxel with reliable phase);
- ``Q`` removes the ``m``-weighted mean of the weighted residual: a constant
  field offset (B0 shim, the Laplacian unwrapping's free constant) is fitted
  as a free scalar ``c`` (``f ~ D P y + c``) instead of being explained by
  far away sources (``fit_offset=True``; ``Q = I`` otherwise);
- ``P = 1`` in ``brain_mask``, ``precond_outside`` elsewhere in ``support``,
  0 outside ``support`` (chi is zero there);
- ``wG`` MEDI's binary edge mask (:func:`qsm_bids.recon.inversion.gradient_mask`
  on the magnitude in the brain mask), restricted to differences whose two
  voxels are both in the brain: the L1 gradient prior acts only in the brain;
  outside, chi is set by the data and by the minimum-norm bias of CG from 0;
- the L1 norm by IRLS (weights ``1 / sqrt(|wG grad x|^2 + beta)``),
  Gauss-Newton outer loop (at most ``max_iter``, stop when
  ``||dy|| / ||y|| < tol_norm_ratio``), each step by CG (toolbox defaults:
  10 outer, 100 CG, relative residual 0.01).

The data term is the linear (unwrapped) one, not MEDI's ``exp(i D x)`` form:
the total field reaches tens of radians near the sinuses, where the
complex-exponential form has many local minima.

Convergence (measured): the toolbox's stopping rule (``tol_norm_ratio`` 0.1)
stops TFI far from the minimiser. On the analytic phantom of
``benchmarks/test_tfi_prototype.py`` (0.1 ppm sphere in a brain beside -9 ppm air) it stops
after 3 Gauss-Newton steps with the sphere at ~60 % of its value; with
``tol_norm_ratio=0.01`` (~20 steps, ~1900 CG iterations) it is within 10 %.
The split between the brain's sources and the background sources is made by
the slow components of CG, so TFI costs several times MEDI.

Returns chi in ppm (``P y / to_rad``) inside ``brain_mask``; the map over the
whole support (the background sources) goes to ``stats["chi_support"]``.
Cost: 4 real FFTs (rfftn/irfftn, float32) per CG iteration plus 4 per outer
iteration, on the padded grid.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from qsm_bids.recon import fft
from qsm_bids.recon._ops import diff_adjoint, diff_forward
from qsm_bids.recon.dipole import GAMMA_HZ_PER_T, dipole_kernel
from qsm_bids.recon.inversion import _cg, data_weight, gradient_mask, irls_weights

__all__ = ["tfi"]

logger = logging.getLogger(__name__)


def _half(D):
    return np.ascontiguousarray(D[:, :, : D.shape[2] // 2 + 1])


def tfi(total_field_ppm, magnitude, brain_mask, data_mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *,
        field_strength_t, delta_te_s, noise_std=None, lam=1000.0, precond_outside=30.0,
        support=None, pad_support=True, prior_mask=None, fit_offset=True, max_iter=10, tol_norm_ratio=0.1,
        cg_max_iter=100, cg_tol=0.01, beta=1e-6, percentage=0.9, pad=16, stats=None):
    """Preconditioned total field inversion with MEDI's L1 gradient prior.

    Solves ``argmin_y lam ||Q m (f - D P y)||^2 + ||wG grad(P y)||_1`` and
    returns ``chi = P y`` in the brain (see the module docstring for every
    term and the units).

    Parameters
    ----------
    total_field_ppm : ndarray (x, y, z)
        Total field in ppm (unwrapped, background *not* removed). Only its
        values in ``data_mask`` are used.
    magnitude : ndarray (x, y, z)
        Magnitude (gradient mask; and the noise when ``noise_std`` is None).
    brain_mask : ndarray of bool
        The region of interest: ``P = 1``, the L1 prior, and where chi is
        returned.
    data_mask : ndarray of bool
        Voxels whose field is trusted (brain and non-brain tissue with signal
        and coherent phase; not air, bone or aliased voxels).
    voxel_size, b0_dir
        Grid (mm) and field direction (voxel axes).
    field_strength_t, delta_te_s : float
        The toolbox scaling of the field in radians (``delta_te`` is the echo
        time for one echo, the echo spacing for several).
    noise_std : ndarray or None
        Field noise (any unit, only relative values matter); default
        ``1 / magnitude``. Non-finite values get zero weight.
    lam : float
        Weight of the data term (toolbox scaling).
    precond_outside : float
        ``P_B``, the preconditioner outside the brain (the paper uses 30).
    prior_mask : ndarray of bool or None
        Where the L1 gradient prior acts (differences with both voxels
        inside); default the brain mask. Outside the brain the prior has no
        edges except across the brain and data-mask boundaries.
    support : ndarray of bool or None
        Where chi may be non-zero on the input grid (default: everywhere).
        Must contain ``brain_mask``.
    pad_support : bool
        Whether the zero padding around the grid is also in the support
        (with ``P = P_B``): sources outside the field of view (neck,
        shoulders, the rest of the head) are represented there.
    fit_offset : bool
        Fit a constant field offset (see module docstring).
    max_iter, tol_norm_ratio, cg_max_iter, cg_tol, beta, percentage
        As MEDI (toolbox defaults).
    pad : int
        Zero padding (voxels) on each side of every axis; the FFT grid is the
        input shape + ``2 pad``, rounded up to a fast size.
    stats : dict or None
        Filled with ``outer_iterations``, ``cg_iterations``,
        ``res_norm_ratio``, ``offset_ppm``, ``grid_shape``,
        ``data_rms_ppm`` (weighted rms of the data residual in the data mask)
        and ``chi_support`` (chi in ppm over the input grid, background
        sources included).

    Returns
    -------
    chi_ppm : ndarray float32, input shape, zero outside ``brain_mask``
    """
    f_in = np.asarray(total_field_ppm, dtype=np.float32)
    if f_in.ndim != 3:
        raise ValueError(f"TFI: the total field must be 3-D, got shape {f_in.shape}")
    brain = np.asarray(brain_mask, dtype=bool)
    dmask = np.asarray(data_mask, dtype=bool)
    mag_in = np.asarray(magnitude, dtype=np.float32)
    for name, a in (("brain_mask", brain), ("data_mask", dmask), ("magnitude", mag_in)):
        if a.shape != f_in.shape:
            raise ValueError(f"TFI: {name} shape {a.shape} differs from the field {f_in.shape}")
    if not brain.any():
        raise ValueError("TFI: empty brain mask")
    if not dmask.any():
        raise ValueError("TFI: empty data mask")
    if len(voxel_size) != 3 or min(float(v) for v in voxel_size) <= 0:
        raise ValueError(f"TFI: bad voxel size {voxel_size}")
    if not precond_outside > 0 or not lam > 0:
        raise ValueError("TFI: precond_outside and lam must be > 0")
    if not np.isfinite(f_in[dmask]).all():
        raise ValueError("TFI: non-finite total field in the data mask")
    if support is None:
        supp = np.ones(f_in.shape, bool)
    else:
        supp = np.asarray(support, dtype=bool)
        if supp.shape != f_in.shape:
            raise ValueError(f"TFI: support shape {supp.shape} differs from the field {f_in.shape}")
        if (brain & ~supp).any():
            raise ValueError("TFI: the support must contain the brain mask")
    pad = int(pad)
    if pad < 0:
        raise ValueError("TFI: pad must be >= 0")

    shape = fft.next_fast_shape(f_in.shape, 2 * pad)
    # the input sits at offset `pad` inside the padded grid (padding on both sides)
    off = tuple(min(pad, (n - s) // 2) for n, s in zip(shape, f_in.shape))
    sl = tuple(slice(o, o + s) for o, s in zip(off, f_in.shape))

    def embed(a, dtype=np.float32, fill=0):
        out = np.full(shape, fill, dtype=dtype)
        out[sl] = a
        return out

    cf = GAMMA_HZ_PER_T * float(field_strength_t)
    to_rad = 1e-6 * 2.0 * np.pi * cf * float(delta_te_s)
    dm = embed(dmask, bool)
    f = embed(np.where(dmask, f_in, 0.0) * np.float32(to_rad))
    brainp = embed(brain, bool)
    mag = embed(mag_in)
    if noise_std is None:
        with np.errstate(divide="ignore"):
            noise = np.where(mag_in > 0, 1.0 / np.maximum(mag_in, 1e-30), np.inf)
    else:
        noise = np.asarray(noise_std, dtype=np.float32)
        if noise.shape != f_in.shape:
            raise ValueError(f"TFI: noise_std shape {noise.shape} differs from the field {f_in.shape}")
    noise = embed(noise, np.float32, np.inf)
    ok = dm & np.isfinite(noise) & (noise > 0)
    m = data_weight(np.where(ok, noise, 1.0), ok)
    mm = float(np.dot(m.ravel(), m.ravel()))

    # preconditioner / support
    if pad_support:
        suppp = embed(supp, bool, True)
    else:
        suppp = embed(supp, bool, False)
    P = np.where(brainp, 1.0, np.where(suppp, float(precond_outside), 0.0)).astype(np.float32)

    # L1 prior only on differences with both voxels in the prior mask (default: the brain)
    if prior_mask is None:
        priorp = brainp
    else:
        pm = np.asarray(prior_mask, dtype=bool)
        if pm.shape != f_in.shape:
            raise ValueError(f"TFI: prior_mask shape {pm.shape} differs from the field {f_in.shape}")
        priorp = embed(pm, bool, bool(pad_support) and bool(pm.all()))
    wG = gradient_mask(mag, brainp, voxel_size, percentage)
    if prior_mask is not None:
        # outside the brain: no edges except across the brain and the data-mask boundaries
        # (air / bone / tissue interfaces are where the background chi may jump)
        cross = np.zeros((3,) + shape, np.float32)
        edge = np.zeros((3,) + shape, np.float32)
        diff_forward(dm.astype(np.float32), cross)
        diff_forward(brainp.astype(np.float32), edge)
        wG = np.where(brainp[None], wG, ((cross == 0) & (edge == 0)).astype(np.float32))
        del cross, edge
    inb = np.zeros((3,) + shape, np.float32)
    diff_forward(priorp.astype(np.float32), inb)  # -1, 0, +1 where the prior mask changes
    for a in range(3):
        both = priorp.copy()
        both &= (inb[a] == 0)
        # the last plane has no forward neighbour: diff_forward already zeroes it
        wG[a] *= both
    del inb

    Dh = _half(dipole_kernel(shape, voxel_size, b0_dir))

    def dconv(x):
        X = fft.rfftn(x)
        X *= Dh
        return fft.irfftn(X, shape)

    def project(u):
        # Q u = u - m <m, u> / <m, m>
        if fit_offset and mm > 0:
            u -= m * np.float32(float(np.dot(m.ravel(), u.ravel())) / mm)
        return u

    def data_normal(dy):
        # P D^T m Q m D P dy
        u = dconv(P * dy)
        u *= m
        project(u)
        u *= m
        u = dconv(u)
        u *= P
        return u

    gbuf = np.zeros((3,) + shape, dtype=np.float32)

    def reg(dy, W, out):
        # P G^T W G P dy with G the scaled forward differences
        g = diff_forward(P * dy, gbuf)
        np.multiply(g, W, out=g)
        diff_adjoint(g, out)
        out *= P
        return out

    y = np.zeros(shape, np.float32)
    two_lam = np.float32(2.0 * lam)
    it = 0
    cg_total = 0
    res_norm_ratio = np.inf
    while res_norm_ratio > tol_norm_ratio and it < max_iter:
        t0 = time.perf_counter()
        it += 1
        x = P * y
        W = irls_weights(x, wG, voxel_size, beta, gbuf)
        # gradient: reg(y) - 2 lam P D^T m Q m (f - D P y)
        b = reg(y, W, np.empty_like(y))
        r = dconv(x)
        np.subtract(f, r, out=r)
        r *= m
        project(r)
        r *= m
        r = dconv(r)
        r *= P
        r *= two_lam
        b -= r
        del r, x
        b *= -1

        def A(dy, out):
            reg(dy, W, out)
            t = data_normal(dy)
            t *= two_lam
            out += t
            return out

        dy, n_cg = _cg(A, b, cg_tol, cg_max_iter)
        cg_total += n_cg
        yn = float(np.linalg.norm(y))
        res_norm_ratio = float(np.linalg.norm(dy)) / yn if yn > 0 else np.inf
        y += dy
        del dy, b, W
        logger.info("TFI iteration %d/%d: %d CG iterations, res_norm_ratio %.4f (%.1f s)",
                    it, max_iter, n_cg, res_norm_ratio, time.perf_counter() - t0)
    x = P * y
    chi_all = x / np.float32(to_rad)
    if stats is not None:
        r = f - dconv(x)
        w2 = m * m
        c = float(np.sum(w2 * r) / np.sum(w2)) if fit_offset and mm > 0 else 0.0
        rr = (r - c) * dm
        stats.update(outer_iterations=it, cg_iterations=cg_total, res_norm_ratio=res_norm_ratio,
                     offset_ppm=c / to_rad, grid_shape=shape, field_to_rad=float(to_rad),
                     data_rms_ppm=float(np.sqrt(np.sum(w2 * rr * rr) / max(np.sum(w2), 1e-30))) / to_rad)
        stats["chi_support"] = np.ascontiguousarray(chi_all[sl], dtype=np.float32)
    chi = chi_all[sl] * brain
    return np.ascontiguousarray(chi, dtype=np.float32)
