"""Dipole inversion: nonlinear MEDI (paper), TKD and closed-form Tikhonov.

Units: the local field comes in ppm and chi goes out in ppm (field = D * chi).

MEDI (Liu et al. 2012; the MEDI toolbox's ``MEDI_L1``), reproduced on the
toolbox's scaling so that ``lambda = 1000`` means what it means there:

- the field is expressed in radians accumulated over ``delta_te``:
  ``f_rad = f_ppm * 1e-6 * 2 pi * CF * delta_te`` with ``CF = gamma B0`` (Hz);
  the toolbox's ``delta_te`` is the echo spacing for multi-echo data and the
  echo time for a single echo;
- data term ``lambda * || m (exp(i D x) - exp(i f_rad)) ||_2^2`` with
  ``m = mask / N_std`` normalised to mean 1 inside the mask;
- regulariser ``|| wG grad x ||_1`` (anisotropic, per direction), ``wG`` the
  gradient mask: 1 where the magnitude gradient is below a level chosen so
  that the voxels above it, counted over the three directions, are
  ``percentage`` (0.9) times the number of mask voxels;
- Gauss-Newton outer loop (at most ``max_iter`` = 10, stop when
  ``||dx|| / ||x|| < tol_norm_ratio`` = 0.1), each step solved by conjugate
  gradients (at most 100 iterations, relative residual 0.01), IRLS weights
  ``1 / sqrt(|wG grad x|^2 + beta)`` with ``beta = 1e-6``;
- ``chi_ppm = x / (2 pi delta_te CF) * 1e6`` inside the mask.

Because ``|w|^2 = m^2`` is real, the Gauss-Newton normal operator
``2 lambda D^T m^2 D`` is a real convolution: each CG iteration costs 2 real
FFT pairs (rfftn/irfftn), float32 throughout.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import fft
from ._ops import block_dot, diff_adjoint, diff_forward, grad, in_slabs, pad_to, smv, sphere_shells
from .dipole import GAMMA_HZ_PER_T, dipole_kernel

__all__ = ["GAMMA_HZ_PER_T", "tkd", "tikhonov", "medi", "gradient_mask", "data_weight", "circulant_symbol",
           "usable_rim_radii"]

logger = logging.getLogger(__name__)


def _half(D):
    return np.ascontiguousarray(D[:, :, : D.shape[2] // 2 + 1])


def _prepare(field, shape_pad):
    shape = fft.next_fast_shape(field.shape, shape_pad)
    sl = tuple(slice(0, n) for n in field.shape)
    return shape, sl


def tkd(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), threshold=0.19, pad=0):
    """Truncated k-space division (Shmueli et al. 2009; Wharton et al. 2010).

    ``1/D`` is replaced by ``sign(D)/threshold`` where ``|D| < threshold``;
    the result is scaled back by ... nothing: the plain truncated inverse, so
    the known underestimation of TKD is kept (no correction factor).
    """
    f = np.asarray(local_field_ppm, dtype=np.float32)
    shape, sl = _prepare(f, 2 * int(pad))
    D = _half(dipole_kernel(shape, voxel_size, b0_dir))
    inv = np.where(np.abs(D) >= threshold, 1.0 / np.where(D == 0, 1, D),
                   np.sign(D) / threshold).astype(np.float32)
    inv[0, 0, 0] = 0.0
    chi = fft.irfftn(fft.rfftn(pad_to(f * mask, shape)) * inv, shape)[sl]
    return np.ascontiguousarray(chi * mask, dtype=np.float32)


def tikhonov(local_field_ppm, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), lam=0.05, pad=0):
    """Closed-form L2 solution ``argmin ||D x - f||^2 + lam ||grad x||^2``.

    ``x = D f / (D^2 + lam |k_grad|^2)`` with the spectral symbol of the
    finite-difference gradient on the anisotropic grid.
    """
    f = np.asarray(local_field_ppm, dtype=np.float32)
    shape, sl = _prepare(f, 2 * int(pad))
    D = _half(dipole_kernel(shape, voxel_size, b0_dir))
    E2 = np.zeros_like(D)
    for axis in range(3):
        n = shape[axis]
        k = np.arange(n) if axis < 2 else np.arange(n // 2 + 1)
        e = (2.0 - 2.0 * np.cos(2 * np.pi * k / n)) / float(voxel_size[axis]) ** 2
        view = [1, 1, 1]
        view[axis] = len(k)
        E2 = E2 + e.reshape(view).astype(np.float32)
    den = D**2 + lam * E2
    with np.errstate(divide="ignore", invalid="ignore"):
        filt = np.where(den > 0, D / den, 0.0).astype(np.float32)
    chi = fft.irfftn(fft.rfftn(pad_to(f * mask, shape)) * filt, shape)[sl]
    return np.ascontiguousarray(chi * mask, dtype=np.float32)


def data_weight(noise_std, mask):
    """MEDI data weighting ``m = mask / N_std``, normalised to mean 1 in the mask."""
    mask = np.asarray(mask, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(mask, 1.0 / np.asarray(noise_std, dtype=np.float64), 0.0)
    w[~np.isfinite(w)] = 0.0
    mean = w[mask].mean() if mask.any() else 0.0
    if mean > 0:
        w /= mean
    return w.astype(np.float32)


def gradient_mask(magnitude, mask, voxel_size, percentage=0.9):
    """MEDI edge mask: 1 where the magnitude gradient is below the noise level.

    As the toolbox: gradients of ``magnitude * mask``; the level starts at 1 %
    of the maximum magnitude and moves by factors 1.05 / 0.95 until the count
    of gradient components above it (over the three directions) is
    ``percentage`` times the number of mask voxels.
    """
    mag = np.asarray(magnitude, dtype=np.float32) * np.asarray(mask, dtype=np.float32)
    g = np.abs(grad(mag, voxel_size))
    n_mask = float(np.count_nonzero(mask))
    level = 0.01 * float(np.max(magnitude))
    if n_mask == 0 or level <= 0:
        return np.ones_like(g)
    # the toolbox steps geometrically; use sorted values to find the same stopping level fast
    vals = np.sort(g[g > 0].ravel())

    def count(lv):
        return vals.size - np.searchsorted(vals, lv, side="right")

    num = count(level)
    if num / n_mask > percentage:
        while num / n_mask > percentage:
            level *= 1.05
            num = count(level)
    else:
        while num / n_mask < percentage and level > 1e-30:
            level *= 0.95
            num = count(level)
    return (g <= level).astype(np.float32)


def medi(local_field_ppm, magnitude, mask, voxel_size, b0_dir=(0.0, 0.0, 1.0), *,
         field_strength_t=3.0, delta_te_s=0.02, noise_std=None, lam=1000.0, percentage=0.9,
         max_iter=10, tol_norm_ratio=0.1, cg_max_iter=100, cg_tol=0.01, beta=1e-6,
         merit=False, smv_radius_mm=None, output_mask=None, pad=0, progress=None, stats=None,
         edge_radii_mm=None, cg_preconditioner=None, rim_data_weight=1.0, bregman_steps=0):
    """Nonlinear MEDI with L1 gradient regularisation (MEDI toolbox ``MEDI_L1``).

    Parameters
    ----------
    local_field_ppm : ndarray (x, y, z)
        Local field in ppm (zero outside ``mask``).
    magnitude : ndarray (x, y, z)
        Magnitude for the gradient mask.
    mask : ndarray of bool
        Where the field is trusted (e.g. the SHARP-eroded mask).
    voxel_size, b0_dir
        Grid and field direction (voxel axes).
    field_strength_t, delta_te_s : float
        Set the toolbox scaling of the field in radians (see module docstring).
    noise_std : ndarray or None
        Noise of the field (any unit; only relative values matter).
        Default: ``1 / magnitude`` (single-echo phase noise).
    lam, percentage, max_iter, tol_norm_ratio, cg_max_iter, cg_tol, beta
        The toolbox's parameters (defaults are its defaults, lambda 1000).
    merit : bool
        Model-error reduction (MERIT): after each outer iteration, down-weight
        voxels whose data residual exceeds 6 standard deviations.
    smv_radius_mm : float or None
        The toolbox's ``'smv'`` option: the field is high-pass filtered with
        the sphere and the kernel becomes ``(1 - S) D`` (use on a total field
        whose background is not yet removed, or skip).
    output_mask : ndarray of bool or None
        Where chi is returned (default: the data mask, eroded by the sphere
        with ``smv_radius_mm``). A larger output mask lets the regulariser
        fill voxels without trusted data (MEDI solves for chi everywhere).
    pad : int
        Zero padding (voxels per side) of the FFT grid.
    progress : callable or None
        Called as ``progress(iteration, max_iter)`` after each outer iteration.
    stats : dict or None
        Filled with ``outer_iterations``, ``cg_iterations``, ``res_norm_ratio`` and ``data_mask`` (where
        the data term constrains chi: the mask, SMV-eroded, plus the edge shells).
    edge_radii_mm : sequence of float or None
        With ``smv_radius_mm`` (the toolbox's SMV form): smaller spheres for
        the voxels that sphere erodes, e.g. ``(2, 1)``. Each voxel's data is
        the total field high-passed by the largest sphere that fits inside
        the mask there, and its model the same sphere's ``(1 - S_r) D x``
        (one consistent kernel per shell, no deconvolution), so the edge is
        measured rather than filled by the regulariser. ``N_std`` of each
        shell is combined as for the SMV form, and all shells share one
        normalisation of ``m`` (mean 1 over their union). Each extra radius
        costs 2 real FFTs per CG iteration. Radii up to the smallest voxel edge are skipped (such a
        sphere is the voxel and at most its 6 neighbours; the pipeline also widens radii under
        ``recon.medi_rim_min_radius_voxels`` voxel edges: :func:`usable_rim_radii`). Not with ``merit``.
    rim_data_weight : float in (0, 1]
        With ``edge_radii_mm``: the shells' data weight ``m`` is multiplied by this (the interior's
        stays). A small sphere takes out less of a steep background near the skull than the SMV
        sphere, and what it leaves, fitted as sources in the rim, reaches the deep nuclei; a weight
        below 1 trades rim accuracy for them, and brought back a false group cluster (README).
    bregman_steps : int
        Bregman iterations (Osher et al. 2005) after the first solution: the data residual of every
        data term (measured minus modelled field, wrapped: the data term compares phases) is added
        back to that term's data and MEDI is solved again from zero. The L1 gradient term under-reads
        compact high-contrast sources (the iron-rich nuclei); each step restores part of that
        contrast, adds noise and costs one more MEDI. Not with ``merit``.
    cg_preconditioner : None or "circulant"
        None: plain CG, as the toolbox. ``"circulant"``: CG preconditioned by the inverse of
        :func:`circulant_symbol`, run on half spectra (:func:`_cg_spectral`: the preconditioner
        costs no FFT, and each CG iteration 2 real FFTs fewer than the plain CG's image-space form
        needs with the same kernels); same stopping rule on the unpreconditioned residual, so the
        same problem solved to the same tolerance in fewer iterations (the toolbox's CG often stops
        at ``cg_max_iter`` instead).

    Returns
    -------
    chi_ppm : ndarray float32, zero outside ``mask``
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("MEDI: empty mask")
    if int(bregman_steps) < 0 or (bregman_steps and merit):
        raise ValueError(f"MEDI: bregman_steps must be >= 0 and not with merit, got {bregman_steps!r}")
    shape, sl = _prepare(mask, 2 * int(pad))
    cf = GAMMA_HZ_PER_T * float(field_strength_t)
    to_rad = 1e-6 * 2.0 * np.pi * cf * float(delta_te_s)
    rdf = pad_to((np.asarray(local_field_ppm, dtype=np.float32) * to_rad * mask).astype(np.float32), shape)
    maskp = pad_to(mask, shape)
    mag = pad_to(np.asarray(magnitude, dtype=np.float32), shape)
    if noise_std is None:
        with np.errstate(divide="ignore"):
            noise = np.where(mag > 0, 1.0 / np.maximum(mag, 1e-30), 0.0).astype(np.float32)
    else:
        noise = pad_to(np.asarray(noise_std, dtype=np.float32), shape)
    finite = np.isfinite(noise)
    if not finite.all():
        # no signal (outside the head): the largest finite noise, so the SMV stays finite
        noise = np.where(finite, noise, np.max(noise[finite]) if finite.any() else 1.0).astype(np.float32)
    Dh = _half(dipole_kernel(shape, voxel_size, b0_dir))
    noise_raw = noise
    rim_shells = []
    if smv_radius_mm:
        rim_radii = sorted(usable_rim_radii(edge_radii_mm, voxel_size, smv_radius_mm), reverse=True) \
            if edge_radii_mm else []
        # the interior (where the SMV sphere fits), then each rim shell of the data mask
        (_, S, maskp), *rim_shells = sphere_shells(maskp, voxel_size, (smv_radius_mm, *rim_radii))
        Dh = ((1.0 - S) * Dh).astype(np.float32)
        rdf = (rdf - smv(rdf, S)) * maskp
        noise = np.sqrt(np.maximum(smv(noise**2, S), 0) + noise**2)
    terms = None
    if edge_radii_mm:
        if not smv_radius_mm:
            raise ValueError("MEDI: edge_radii_mm needs smv_radius_mm (the interior's SMV form)")
        if merit:
            raise ValueError("MEDI: merit is not available with edge_radii_mm")
        if not 0 < rim_data_weight <= 1:
            raise ValueError(f"MEDI: rim_data_weight must lie in (0, 1], got {rim_data_weight!r}")
        # one data term per shell, largest sphere first; the interior's is the SMV form's
        rdf_raw = pad_to((np.asarray(local_field_ppm, dtype=np.float32) * to_rad * mask).astype(np.float32),
                         shape)
        Dplain = _half(dipole_kernel(shape, voxel_size, b0_dir))
        done = maskp.copy()
        shells = [(maskp, Dh, rdf, noise)]
        for _, Sr, shell in rim_shells:
            done |= shell
            if not shell.any():
                continue
            rdf_r = (rdf_raw - smv(rdf_raw, Sr)) * shell
            noise_r = np.sqrt(np.maximum(smv(noise_raw**2, Sr), 0) + noise_raw**2)
            shells.append((shell, ((1.0 - Sr) * Dplain).astype(np.float32), rdf_r, noise_r))
        noise_all = np.zeros(shape, np.float32)
        for shell, _, _, nz in shells:
            noise_all[shell] = nz[shell]
        m_all = data_weight(noise_all, done)
        terms = [(shell, K, r_, ((1.0 if k == 0 else rim_data_weight) * m_all * shell) ** 2)
                 for k, (shell, K, r_, _) in enumerate(shells)]
        m = m_all * maskp
        m2 = m * m
        wG = gradient_mask(mag, done, voxel_size, percentage)
    else:
        m = data_weight(noise, maskp)
        m2 = m * m
        wG = gradient_mask(mag, maskp, voxel_size, percentage)

    def dconv(x):
        X = fft.rfftn(x)
        X *= Dh
        return fft.irfftn(X, shape)

    def dconv_terms(x):
        # each shell's (1 - S_r) D x from one forward FFT
        X = fft.rfftn(x)
        return [fft.irfftn(X * K, shape) for _, K, _, _ in terms]

    def dconv_terms_adjoint(ys):
        acc = None
        for (_, K, _, _), y in zip(terms, ys):
            Y = fft.rfftn(y)
            Y *= K
            acc = Y if acc is None else acc + Y
        return fft.irfftn(acc, shape)

    # the regulariser G^T P G with G the scaled gradient is applied as the unscaled
    # differences with P / h^2 folded in (irls_weights; fewer passes over the volume, no temporaries)

    def reg(dx, P, gbuf, out):
        def weighted_diffs(a, b):
            diff_forward(dx, gbuf, a, b)
            gbuf[:, a:b] *= P[:, a:b]

        # two passes over slabs of planes: the adjoint reads the neighbouring slab's differences
        in_slabs(weighted_diffs, shape[0])
        in_slabs(lambda a, b: diff_adjoint(gbuf, out, a, b), shape[0])
        return out

    x = np.zeros(shape, dtype=np.float32)
    gbuf = np.zeros((3,) + shape, dtype=np.float32)
    two_lam = np.float32(2.0 * lam)
    if cg_preconditioner not in (None, "circulant"):
        raise ValueError(f"MEDI: unknown CG preconditioner {cg_preconditioner!r} (None or 'circulant')")
    # where the data terms measure, for the circulant preconditioner
    data_region = done if terms is not None else maskp
    spectral_kernels = None
    cg_total = 0
    it_total = 0
    badpoint_frac = 0.0
    for step in range(int(bregman_steps) + 1):
        if step:
            # Bregman: each term's data residual added back, solved again from zero
            if terms is None:
                rdf = (rdf + np.angle(np.exp(1j * (rdf - dconv(x)))) * maskp).astype(np.float32)
            else:
                terms = [(shell, K, (r_ + np.angle(np.exp(1j * (r_ - y))) * shell).astype(np.float32), w)
                         for y, (shell, K, r_, w) in zip(dconv_terms(x), terms)]
            logger.info("MEDI Bregman step %d/%d", step, int(bregman_steps))
            x[:] = 0
        res_norm_ratio = np.inf
        it = 0
        while res_norm_ratio > tol_norm_ratio and it < max_iter:
            t0 = time.perf_counter()
            it += 1
            P = irls_weights(x, wG, voxel_size, beta, gbuf)
            if terms is None:
                Dx = dconv(x)
                # b = reg(x) + 2 lam D^T Re(conj(w) conj(i) (w - b0)) = reg(x) - 2 lam D^T (m^2 sin(rdf - Dx))
                b = reg(x, P, gbuf, np.empty_like(x))
                np.subtract(rdf, Dx, out=Dx)
                np.sin(Dx, out=Dx)
                Dx *= m2
                Dx = dconv(Dx)
                Dx *= two_lam
                b -= Dx
                del Dx
                w2 = m2 * two_lam

                def A(dx, out):
                    reg(dx, P, gbuf, out)
                    t = dconv(dx)
                    t *= w2
                    out += dconv(t)
                    return out
            else:
                b = reg(x, P, gbuf, np.empty_like(x))
                ys = [np.sin(r_ - y) * w for y, (_, _, r_, w) in zip(dconv_terms(x), terms)]
                b -= two_lam * dconv_terms_adjoint(ys)
                del ys
                w2s = [w * two_lam for _, _, _, w in terms]

                def A(dx, out):
                    reg(dx, P, gbuf, out)
                    ts = dconv_terms(dx)
                    for t, w in zip(ts, w2s):
                        t *= w
                    out += dconv_terms_adjoint(ts)
                    return out

            b *= -1
            if cg_preconditioner == "circulant":
                if spectral_kernels is None:
                    # k-space products must keep half spectra Hermitian (what irfftn does implicitly)
                    spectral_kernels = [hermitian_even(K, shape[-1]) for K in
                                        ([K for _, K, _, _ in terms] if terms is not None else [Dh])]
                weights = [w for _, _, _, w in terms] if terms is not None else [m2]
                inv_symbol = circulant_symbol(P, [(two_lam * float(w[data_region].mean()), K)
                                                  for w, K in zip(weights, spectral_kernels)], shape)
                np.divide(np.float32(1.0), inv_symbol, out=inv_symbol)
                kernels = list(zip(spectral_kernels, w2s if terms is not None else [w2]))

                def A_hat(Ph, q=np.empty_like(x), kbuf=np.empty_like(spectral_kernels[0], np.complex64), P=P,
                          kernels=kernels):
                    # F A F^-1 on a half spectrum: the regulariser in image space (1 FFT each way), each
                    # data term's kernel applied in k-space (1 FFT each way), summed in k-space; the
                    # element-wise products run on slabs in threads (in_slabs), as the FFTs do
                    Qh = fft.rfftn(reg(fft.irfftn(Ph, shape), P, gbuf, q))
                    for K, w in kernels:
                        in_slabs(lambda a, b: np.multiply(Ph[a:b], K[a:b], out=kbuf[a:b]), K.shape[0])
                        t = fft.irfftn(kbuf, shape)
                        in_slabs(lambda a, b: np.multiply(t[a:b], w[a:b], out=t[a:b]), shape[0])
                        T = fft.rfftn(t)

                        def accumulate(a, b, T=T, K=K):
                            np.multiply(T[a:b], K[a:b], out=T[a:b])
                            Qh[a:b] += T[a:b]

                        in_slabs(accumulate, K.shape[0])
                    return Qh

                dx, n_cg = _cg_spectral(A_hat, b, inv_symbol, cg_tol, cg_max_iter)
            else:
                dx, n_cg = _cg(A, b, cg_tol, cg_max_iter)
            cg_total += n_cg
            xn = float(np.sqrt(block_dot(x, x)))
            res_norm_ratio = float(np.sqrt(block_dot(dx, dx))) / xn if xn > 0 else np.inf
            x += dx
            del dx, b, P
            if merit:
                wres = m * np.exp(1j * dconv(x)) - m * np.exp(1j * rdf)
                inm = maskp
                wres = wres - wres[inm].mean()
                factor = 6.0 * float(np.std(np.abs(wres[inm])))
                ratio = np.abs(wres) / factor
                ratio[ratio < 1] = 1.0
                badpoint_frac = float(np.mean(ratio[inm] > 1))
                noise = np.where(inm, noise * ratio**2, noise).astype(np.float32)
                m = data_weight(noise, maskp)
                m2 = m * m
                del wres, ratio
            logger.info("MEDI iteration %d/%d: %d CG iterations, res_norm_ratio %.4f (%.1f s)",
                        it, max_iter, n_cg, res_norm_ratio, time.perf_counter() - t0)
            if progress is not None:
                progress(step * max_iter + it, (int(bregman_steps) + 1) * max_iter)
        it_total += it
    if stats is not None:
        stats.update(outer_iterations=it_total, cg_iterations=cg_total, res_norm_ratio=res_norm_ratio,
                     merit_badpoint_fraction=badpoint_frac, delta_te_s=float(delta_te_s),
                     field_to_rad=float(to_rad))
        # where the data term measured chi (the SMV-eroded mask, plus the edge shells)
        stats["data_mask"] = np.ascontiguousarray((done if terms is not None else maskp)[sl])
    if output_mask is None:
        out_mask = done[sl] if terms is not None else maskp[sl]
    else:
        out_mask = np.asarray(output_mask, dtype=bool)
    chi = x[sl] / to_rad * out_mask
    return np.ascontiguousarray(chi, dtype=np.float32)


def usable_rim_radii(edge_radii_mm, voxel_size, smv_radius_mm, min_radius_voxels=1.0) -> tuple:
    """The rim-shell radii MEDI uses, in the given order: each raised to at least ``min_radius_voxels``
    of the smallest voxel edges, duplicates dropped, and kept only if smaller than the SMV sphere and
    larger than one voxel edge (such a sphere is the voxel and at most its 6 neighbours: on a 2 mm grid
    the 2 mm shell measured worse than none, README).

    What a floor above one edge is for (``recon.medi_rim_min_radius_voxels``; 1 by default): the brain
    mask's outermost voxel layer holds partial volumes of the skull and dura, so its field is not
    harmonic, and a sphere one and a half voxels wide averages few voxels of which that layer is a large
    share. On a 2 mm grid a field confined to that layer enters the first shell's data at up to 26 %
    through the 3 mm sphere and 5 % through the 4 mm one (``tests/test_background_edge.py``); MEDI fits
    it as rim sources whose fields reach the midbrain (README, issue 16: 2 helped the midbrain nuclei of
    a three-echo cohort and harmed a single-echo cohort's group maps)."""
    edge = min(float(v) for v in voxel_size)
    out = []
    for r in edge_radii_mm:
        r = max(float(r), float(min_radius_voxels) * edge)
        if edge < r < float(smv_radius_mm) and r not in out:
            out.append(r)
    return tuple(out)


def irls_weights(x, wG, voxel_size, beta, gbuf):
    """IRLS weights of MEDI's L1 gradient term, ``wG / sqrt(|wG grad x|^2 + beta)`` per axis, with
    ``1/h^2`` folded in so that ``diff_adjoint(P * diff_forward(.))`` is ``G^T P G`` for the scaled
    gradient ``G``. ``gbuf`` ((3, *shape) float32) is scratch; ``wG`` is binary (``wG Vr wG = wG Vr``).
    """
    grad(x, voxel_size, out=gbuf)
    gbuf *= wG
    np.multiply(gbuf, gbuf, out=gbuf)
    gbuf += np.float32(beta)
    np.sqrt(gbuf, out=gbuf)
    P = np.divide(wG, gbuf)
    P *= np.asarray([1.0 / float(h) ** 2 for h in voxel_size], dtype=np.float32).reshape(3, 1, 1, 1)
    return P


def hermitian_even(kernel_half, n_last):
    """A half-spectrum kernel made even (``K(k) = K(-k)``) on the planes that ``rfftn`` stores with their
    mirrors (last-axis frequency 0 and, for an even length ``n_last``, n/2), by averaging each entry with
    its mirror.

    ``irfftn(X * K)`` of a Hermitian ``X`` uses exactly this even part there (it keeps the real part of
    those planes' inverse); the dipole kernel of an oblique field is not even at the Nyquist frequency
    of the other axes. Products kept in k-space (:func:`_cg_spectral`) need the even form, or their
    iterates leave the half spectra of real arrays.
    """
    K = np.array(kernel_half, copy=True)
    planes = [0] + ([K.shape[-1] - 1] if n_last % 2 == 0 else [])
    for q in planes:
        plane = K[..., q]
        mirror = np.roll(np.flip(plane, axis=(0, 1)), 1, axis=(0, 1))
        K[..., q] = (plane + mirror) / 2
    return K


def circulant_symbol(P, data_terms, shape):
    """Spectrum of the shift-invariant operator nearest MEDI's Gauss-Newton normal operator.

    ``sum_a mean(P_a) |e_a(k)|^2 + sum_r c_r K_r(k)^2``: the IRLS-weighted differences with each
    axis' weight (``P``, (3, *shape), 1/h^2 folded in) replaced by its mean over the grid, and each
    data term ``(c_r, K_r)`` (weight ``2 lambda`` times its mean data weight over the measured voxels,
    half-spectrum kernel) as if its weight were that constant. Its inverse, two real FFTs per
    application, is the preconditioner (the operator's spread over frequencies, which sets the CG
    count, is what a circulant inverse removes; the spatial variation of the weights stays).
    """
    half = (shape[0], shape[1], shape[2] // 2 + 1)
    symbol = np.zeros(half, dtype=np.float32)
    for axis in range(3):
        n = shape[axis]
        k = np.arange(half[axis])
        e = (2.0 - 2.0 * np.cos(2.0 * np.pi * k / n)).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = half[axis]
        symbol += np.float32(P[axis].mean()) * e.reshape(view)
    for c, K in data_terms:
        symbol += np.float32(c) * K * K
    # the k = 0 term of the differences is 0; the dipole kernel's too: keep the inverse bounded
    np.maximum(symbol, np.float32(1e-6) * symbol.max(), out=symbol)
    return symbol


def _half_dot(A, B, n_last):
    """``<a, b>`` of two real arrays from their half spectra (``rfftn``; ``n_last`` the real length of the
    last axis), without the 1/N of Parseval's theorem: the planes k = 0 and, for an even length, k = n/2
    stand for themselves, every other plane for itself and its conjugate mirror. Summed over slabs of the
    first axis in threads (:func:`in_slabs`)."""
    return sum(in_slabs(lambda a, b: _half_dot_slab(A[a:b], B[a:b], n_last), A.shape[0]))


def _half_dot_slab(A, B, n_last):
    total = 2.0 * block_dot(A.view(np.float32), B.view(np.float32))
    total -= block_dot(A[..., 0].real, B[..., 0].real) + block_dot(A[..., 0].imag, B[..., 0].imag)
    if n_last % 2 == 0:
        last = A.shape[-1] - 1
        total -= block_dot(A[..., last].real, B[..., last].real) + block_dot(A[..., last].imag, B[..., last].imag)
    return total


def _cg(A, b, tol, max_iter, precond=None):
    """Conjugate gradients from 0, stopping at ||r|| <= tol ||b|| (toolbox cgsolve).

    ``A(p, out)`` writes the operator applied to ``p`` into ``out``. ``precond(r)`` returns the
    preconditioner's inverse applied to ``r`` (symmetric positive definite); the stopping rule stays
    on the unpreconditioned residual, so both reach the same accuracy.
    """
    x = np.zeros_like(b)
    r = b.copy()
    z = r if precond is None else precond(r)
    p = z.copy()
    Ap = np.empty_like(b)
    tmp = np.empty_like(b)
    rz = block_dot(r, z)
    bnorm = np.sqrt(block_dot(b, b))
    rnorm = bnorm
    it = 0
    while it < max_iter and bnorm > 0 and rnorm > tol * bnorm:
        A(p, Ap)
        pAp = block_dot(p, Ap)
        if pAp <= 0:
            break
        alpha = np.float32(rz / pAp)
        np.multiply(p, alpha, out=tmp)
        x += tmp
        np.multiply(Ap, alpha, out=tmp)
        r -= tmp
        if precond is None:
            z = r
            rz_new = block_dot(r, r)
            rnorm = np.sqrt(rz_new)
        else:
            z = precond(r)
            rz_new = block_dot(r, z)
            rnorm = np.sqrt(block_dot(r, r))
        p *= np.float32(rz_new / rz)
        p += z
        rz = rz_new
        it += 1
    return x, it


def _cg_spectral(A_hat, b, inv_symbol, tol, max_iter):
    """:func:`_cg` preconditioned by a circulant operator, carried out on half spectra.

    ``A_hat(P)`` returns the half spectrum of the operator applied to the real array whose half
    spectrum is ``P``; ``inv_symbol`` is the preconditioner's inverse symbol (real, on the half
    spectrum). The iterates are the same as :func:`_cg` with ``precond = F^-1 inv_symbol F`` (inner
    products by Parseval), but the residual, the search direction and the solution stay in k-space,
    so the preconditioner costs no FFT and the operator's own transforms are shared: for MEDI, 4 real
    FFTs per iteration with one data term instead of 6. Returns the solution in image space.
    """
    shape = b.shape
    n_last = shape[-1]
    B = fft.rfftn(b)
    X = np.zeros_like(B)
    R = B
    Z = R * inv_symbol
    Pk = Z.copy()
    tmp = np.empty_like(B)
    rz = _half_dot(R, Z, n_last)
    bnorm = np.sqrt(_half_dot(B, B, n_last))
    rnorm = bnorm
    it = 0
    n0 = B.shape[0]
    while it < max_iter and bnorm > 0 and rnorm > tol * bnorm:
        AP = A_hat(Pk)
        pAp = _half_dot(Pk, AP, n_last)
        if pAp <= 0:
            break
        alpha = np.float32(rz / pAp)

        def update(a, b, alpha=alpha, AP=AP):
            # x += alpha p, r -= alpha A p, z = M^-1 r, and the slab's <r, z>, <r, r>, in one pass
            np.multiply(Pk[a:b], alpha, out=tmp[a:b])
            X[a:b] += tmp[a:b]
            AP[a:b] *= alpha
            R[a:b] -= AP[a:b]
            np.multiply(R[a:b], inv_symbol[a:b], out=Z[a:b])
            return _half_dot_slab(R[a:b], Z[a:b], n_last), _half_dot_slab(R[a:b], R[a:b], n_last)

        parts = in_slabs(update, n0)
        rz_new = sum(v[0] for v in parts)
        rnorm = np.sqrt(sum(v[1] for v in parts))
        beta = np.float32(rz_new / rz)

        def direction(a, b, beta=beta):
            Pk[a:b] *= beta
            Pk[a:b] += Z[a:b]

        in_slabs(direction, n0)
        rz = rz_new
        it += 1
    return fft.irfftn(X, shape).astype(np.float32, copy=False), it
