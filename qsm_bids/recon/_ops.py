"""Small operators shared by the reconstruction steps (private).

Finite differences follow the MEDI toolbox (``cgrad``/``cdiv``): forward
differences divided by the voxel size, zero on the last plane of each axis
(Neumann), and ``grad_adjoint`` the exact adjoint, so ``G^T W G`` is
symmetric positive semi-definite for the conjugate-gradient solves.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
from scipy import ndimage

from . import fft

__all__ = [
    "sphere_kernel_rfft",
    "sphere_shells",
    "sphere_weights",
    "smv",
    "grad",
    "grad_adjoint",
    "ball",
    "crop_box",
    "pad_to",
    "in_slabs",
    "block_dot",
    "fwhm_to_sigma_voxels",
    "gaussian_smooth_complex",
]

# Elements summed in float32 by block_dot before the float64 sum across blocks.
_DOT_BLOCK = 1024

#: FWHM of a Gaussian in units of its sigma, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = float(2.0 * np.sqrt(2.0 * np.log(2.0)))

_pool_lock = threading.Lock()
_pool: dict = {"executor": None, "workers": 0}


def in_slabs(fn, n0, workers=None) -> list:
    """Run ``fn(a, b)`` on contiguous slabs ``[a, b)`` of a first axis of length ``n0``, in threads.

    NumPy releases the GIL inside its loops, so element-wise work on large arrays (MEDI's CG) runs on
    ``workers`` cores (default: the FFT's thread count, ``--n-cpus``) the way the FFTs do. Returns the
    slabs' results in order; one worker (or a short axis) runs ``fn(0, n0)`` in the caller's thread.
    ``fn`` must not call :func:`in_slabs` itself (the pool's threads would wait on each other).
    """
    w = fft.get_workers() if workers is None else max(1, int(workers))
    w = min(w, n0 // 8)  # slabs thinner than a few planes cost more to schedule than they save
    if w <= 1:
        return [fn(0, n0)]
    with _pool_lock:
        if _pool["workers"] < w:
            if _pool["executor"] is not None:
                _pool["executor"].shutdown(wait=False)
            _pool["executor"] = concurrent.futures.ThreadPoolExecutor(max_workers=w,
                                                                      thread_name_prefix="qsm-slab")
            _pool["workers"] = w
        ex = _pool["executor"]
    bounds = np.linspace(0, n0, w + 1).astype(int)
    futures = [ex.submit(fn, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
    return [f.result() for f in futures]


def block_dot(a, b) -> float:
    """Inner product of two real arrays: float32 sums over blocks of 1024 elements, float64 across them.

    The conjugate-gradient solves keep their vectors in float32. A BLAS dot (``sdot``) rounds
    differently with each CPU kernel OpenBLAS picks (``OPENBLAS_CORETYPE``), and CG carries that into
    the solution: MEDI's map moved by a constant 1.6e-5 ppm between the Haswell and SkylakeX kernels on
    one CPU (the image against the pip install). NumPy's own loops (``einsum``, no BLAS) give one result
    for one CPU, as fast as ``sdot`` and more accurate (no float32 sum runs longer than a block).
    """
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"block_dot: sizes differ ({a.size} and {b.size})")
    n = a.size - a.size % _DOT_BLOCK
    total = 0.0
    if n:
        blocks = np.einsum("ij,ij->i", a[:n].reshape(-1, _DOT_BLOCK), b[:n].reshape(-1, _DOT_BLOCK))
        total = float(blocks.sum(dtype=np.float64))
    if n < a.size:
        total += float(np.sum(a[n:].astype(np.float64) * b[n:].astype(np.float64)))
    return total


def ball(radius_mm, voxel_size):
    """Boolean ball of ``radius_mm`` on the (anisotropic) voxel grid."""
    half = [int(np.floor(radius_mm / float(d))) for d in voxel_size]
    axes = [np.arange(-h, h + 1) * float(d) for h, d in zip(half, voxel_size)]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return r2 <= radius_mm**2 + 1e-9


def sphere_weights(radius_mm, voxel_size, oversample=5):
    """Partial-volume weights of a sphere of ``radius_mm`` on the voxel grid (sum 1).

    Each voxel's weight is the fraction of its ``oversample^3`` sub-voxel
    points inside the sphere. Unlike the binary ball, the weights have nearly
    isotropic second moments on anisotropic grids, so the discrete mean value
    of a harmonic field equals its centre value to second order.
    """
    half = [int(np.ceil(radius_mm / float(d) + 0.5)) for d in voxel_size]
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    axes = []
    for h, d in zip(half, voxel_size):
        c = np.arange(-h, h + 1)[:, None] + sub[None, :]
        axes.append((c * float(d)).ravel())
    r2 = (axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    inside = (r2 <= radius_mm**2).astype(np.float64)
    n = [2 * h + 1 for h in half]
    w = inside.reshape(n[0], oversample, n[1], oversample, n[2], oversample).sum(axis=(1, 3, 5))
    return w / w.sum()


def sphere_kernel_rfft(shape, voxel_size, radius_mm, dtype=np.float32):
    """Spectrum (half, as from :func:`fft.rfftn`) of the normalised spherical mean kernel.

    The kernel is the partial-volume sphere of :func:`sphere_weights` (an
    ellipsoid in voxels on an anisotropic grid), centred on voxel 0 (wrapped),
    so its spectrum is real.
    """
    w = sphere_weights(radius_mm, voxel_size)
    if any(s > n for s, n in zip(w.shape, shape)):
        raise ValueError(f"sphere of radius {radius_mm} mm does not fit in a {shape} grid")
    k = np.zeros(shape, dtype=np.float64)
    centre = [s // 2 for s in w.shape]
    idx = np.nonzero(w)
    k[tuple((i - c) % n for i, c, n in zip(idx, centre, shape))] = w[idx]
    return fft.rfftn(k.astype(dtype)).real.astype(dtype, copy=False)


def sphere_shells(mask, voxel_size, radii_mm):
    """``mask`` split by the largest sphere that fits inside it, for MEDI's SMV form and rim shells.

    ``radii_mm`` largest first. Returns ``[(radius, kernel, shell)]`` in that order: ``kernel`` the
    sphere's half spectrum (:func:`sphere_kernel_rfft` on ``mask``'s grid), ``shell`` the voxels where
    that sphere fits inside ``mask`` (its spherical mean of the mask is 1) and no earlier one does.
    Shells can be empty.
    """
    m = np.asarray(mask, dtype=np.float32)
    taken = np.zeros(m.shape, dtype=bool)
    out = []
    for r in radii_mm:
        kernel = sphere_kernel_rfft(m.shape, voxel_size, r)
        shell = (smv(m, kernel) > 0.999) & ~taken
        taken |= shell
        out.append((r, kernel, shell))
    return out


def smv(x, kernel_rfft):
    """Spherical mean value of a real array (periodic convolution with the kernel)."""
    return fft.irfftn(fft.rfftn(x) * kernel_rfft, x.shape).astype(x.dtype, copy=False)


def grad(x, voxel_size, out=None):
    """Forward differences along the 3 axes, (3, *shape), zero on the last plane."""
    if out is None:
        out = np.zeros((3,) + x.shape, dtype=x.dtype)
    for axis in range(3):
        g = out[axis]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        np.subtract(x[tuple(hi)], x[tuple(lo)], out=g[tuple(lo)])
        last = [slice(None)] * 3
        last[axis] = slice(-1, None)
        g[tuple(last)] = 0
        g *= 1.0 / float(voxel_size[axis])
    return out


def grad_adjoint(g, voxel_size, out=None):
    """Adjoint of :func:`grad` (``-div``): maps (3, *shape) to ``shape``."""
    shape = g.shape[1:]
    if out is None:
        out = np.zeros(shape, dtype=g.dtype)
    else:
        out[...] = 0
    for axis in range(3):
        s = 1.0 / float(voxel_size[axis])
        ga = g[axis]
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        # (G^T g)_i = (g_{i-1} - g_i)/h with g_{-1} = 0 and g_{n-1} ignored (it is 0 by construction)
        out[tuple(lo)] -= s * ga[tuple(lo)]
        out[tuple(hi)] += s * ga[tuple(lo)]
    return out


def diff_forward(x, out, a=0, b=None):
    """Unscaled forward differences (3, *shape), zero on the last plane; no temporaries.

    ``a``, ``b``: only planes ``[a, b)`` of the first axis are written (they read ``x`` up to plane
    ``b``), so slabs can run in parallel (:func:`in_slabs`).
    """
    n0 = x.shape[0]
    b = n0 if b is None else b
    top = min(b, n0 - 1)
    if top > a:
        np.subtract(x[a + 1:top + 1], x[a:top], out=out[0, a:top])
    if b == n0:
        out[0, n0 - 1] = 0
    xs = x[a:b]
    for axis in (1, 2):
        g = np.moveaxis(out[axis, a:b], axis, 0)
        xa = np.moveaxis(xs, axis, 0)
        np.subtract(xa[1:], xa[:-1], out=g[:-1])
        g[-1] = 0
    return out


def diff_adjoint(g, out, a=0, b=None):
    """Adjoint of :func:`diff_forward` into ``out``: ``(D^T g)_i = g_{i-1} - g_i`` per axis, the last
    plane of each ``g[a]`` ignored (it is no difference); 6 passes over contiguous slabs, no temporaries.

    ``a``, ``b``: only planes ``[a, b)`` of ``out`` are written (they read ``g[0]`` from plane ``a - 1``).
    """
    n0 = g.shape[1]
    b = n0 if b is None else b
    o = out[a:b]
    np.add(g[0, a:b], g[1, a:b], out=o)
    o += g[2, a:b]
    # the last plane of each axis' differences is not a difference: take it back out
    if b == n0:
        out[n0 - 1] -= g[0, n0 - 1]
    o[:, -1] -= g[1, a:b, -1]
    o[:, :, -1] -= g[2, a:b, :, -1]
    np.negative(o, out=o)
    lo = max(a, 1)
    if b > lo:
        out[lo:b] += g[0, lo - 1:b - 1]
    o[:, 1:] += g[1, a:b, :-1]
    o[:, :, 1:] += g[2, a:b, :, :-1]
    return out


def crop_box(mask, margin):
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels per axis."""
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        return tuple(slice(0, n) for n in mask.shape)
    if np.isscalar(margin):
        margin = [margin] * mask.ndim
    return tuple(slice(max(0, int(i.min()) - m), min(n, int(i.max()) + 1 + m))
                 for i, m, n in zip(idx, margin, mask.shape))


def pad_to(x, shape):
    """Zero-pad ``x`` at the high end of each axis to ``shape``."""
    if tuple(x.shape) == tuple(shape):
        return x
    out = np.zeros(shape, dtype=x.dtype)
    out[tuple(slice(0, n) for n in x.shape)] = x
    return out


def binary_erode_mm(mask, radius_mm, voxel_size):
    """Erosion by a ball of ``radius_mm`` (mm, anisotropic grid)."""
    return ndimage.binary_erosion(mask, structure=ball(radius_mm, voxel_size))


def binary_dilate_mm(mask, radius_mm, voxel_size):
    """Dilation by a ball of ``radius_mm``."""
    return ndimage.binary_dilation(mask, structure=ball(radius_mm, voxel_size))


def fwhm_to_sigma_voxels(fwhm_mm, voxel_size) -> list:
    """Gaussian sigma in voxels along each axis for a kernel of FWHM ``fwhm_mm`` (mm)."""
    return [float(fwhm_mm) / FWHM_PER_SIGMA / float(d) for d in voxel_size]


def gaussian_smooth_complex(z, sigma):
    """Gaussian smoothing of a complex array (``sigma`` in voxels per axis, as ``ndimage``),
    real and imaginary parts alike, so phases average as unit vectors weighted by magnitude."""
    return ndimage.gaussian_filter(z.real, sigma) + 1j * ndimage.gaussian_filter(z.imag, sigma)
