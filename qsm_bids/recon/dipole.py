"""The unit dipole kernel and the susceptibility -> field forward model.

Conventions used throughout qsm-bids:

- arrays are indexed (i, j, k) like the NIfTI voxel grid;
- ``voxel_size`` is in mm along (i, j, k);
- ``b0_dir`` is the unit vector of the main field expressed in voxel axes
  (see :func:`b0_direction_from_affine`), so oblique acquisitions are exact;
- the relative field ``delta_b / B0`` in ppm equals the convolution of
  ``chi_ppm`` with the dipole kernel ``D(k) = 1/3 - (k.b0)^2 / |k|^2``
  (SI units, Lorentz sphere corrected), with ``D(0) = 0``.
"""

from __future__ import annotations

import numpy as np

from . import fft

#: Proton gyromagnetic ratio / 2 pi (Hz/T): the one value used by the simulator and the recon.
GAMMA_HZ_PER_T = 42.577478e6

__all__ = [
    "GAMMA_HZ_PER_T",
    "kspace_coordinates",
    "dipole_kernel",
    "b0_direction_from_affine",
    "forward_field",
]


def kspace_coordinates(shape, voxel_size):
    """Spatial frequencies (cycles/mm) along each axis, as broadcastable arrays.

    Frequencies are in FFT order (zero first), so the result multiplies the
    output of :func:`qsm_bids.recon.fft.fftn` directly.
    """
    coords = []
    ndim = len(shape)
    for axis, (n, d) in enumerate(zip(shape, voxel_size)):
        k = np.fft.fftfreq(int(n), d=float(d))
        view = [1] * ndim
        view[axis] = int(n)
        coords.append(k.reshape(view))
    return coords


def dipole_kernel(shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), dtype=np.float32):
    """The unit dipole kernel in k-space, ``D = 1/3 - (k.b)^2/|k|^2``.

    Parameters
    ----------
    shape : tuple of 3 int
        Grid shape (the FFT size, including any zero padding).
    voxel_size : tuple of 3 float
        Voxel size in mm along each array axis.
    b0_dir : tuple of 3 float
        Direction of B0 in voxel axes; normalised here.
    dtype : numpy dtype
        Output precision (float32 keeps the whole inversion in single precision).

    Returns
    -------
    D : ndarray, shape ``shape``
        The kernel in FFT order with ``D[0, 0, 0] = 0``.
    """
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    kx, ky, kz = kspace_coordinates(shape, voxel_size)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        D = 1.0 / 3.0 - kb**2 / k2
    D[0, 0, 0] = 0.0
    return D.astype(dtype, copy=False)


def b0_direction_from_affine(affine) -> np.ndarray:
    """Unit B0 direction in voxel axes, with B0 along the scanner (world) z axis.

    The affine maps voxel indices to scanner coordinates; its column ``i``
    divided by its norm is the direction of voxel axis ``i`` in the scanner
    frame, so the component of scanner z along that axis is its z entry.
    """
    A = np.asarray(affine, dtype=float)[:3, :3]
    cosines = A / np.linalg.norm(A, axis=0, keepdims=True)
    b = cosines[2, :]
    return b / np.linalg.norm(b)


def forward_field(chi_ppm, voxel_size, b0_dir=(0.0, 0.0, 1.0), pad=0):
    """Relative field (ppm) of a susceptibility map (ppm) by k-space convolution.

    ``pad`` voxels of zeros are added on every side (rounded up to a fast FFT
    size) so the periodic convolution does not wrap the field of one side of
    the object onto the other; the result has the shape of ``chi_ppm``.
    """
    chi = np.asarray(chi_ppm)
    shape = fft.next_fast_shape(chi.shape, 2 * int(pad))
    work = np.zeros(shape, dtype=np.result_type(chi.dtype, np.float32))
    sl = tuple(slice(0, n) for n in chi.shape)
    work[sl] = chi
    D = dipole_kernel(shape, voxel_size, b0_dir, dtype=work.dtype)
    field = fft.ifftn(D * fft.fftn(work)).real
    return field[sl].astype(work.dtype, copy=False)
