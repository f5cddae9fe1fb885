"""Diffusion tensor imaging: gradient tables, the tensor fit and its scalar maps.

Pure parts (arrays in, arrays out): :func:`check_gradient_table`,
:func:`select_shell`, :func:`tensor_metrics`, :func:`radial_diffusivity_for_fa`,
:func:`tensor_signal`, :class:`TensorModel` / :class:`TensorFit` (DIPY's
weighted least squares fit, Basser et al. 1994, behind a model/fit pair in the
style of ``dipy.reconst.dti``) and :func:`region_dti_medians`. File I/O is in
:func:`read_gradient_table` and :func:`process_dwi` (the participant step).

Conventions. Diffusivities are in mm^2/s, b-values in s/mm^2. BIDS ``.bvec``
files follow FSL: the vectors are in the image's voxel axes, with the first
axis flipped when the voxel-to-world affine has a positive determinant
(neurological storage). :func:`read_gradient_table` undoes that flip, so the
vectors returned, and everything here, are in the axes of the data array.
FA, MD, RD and AD do not depend on the flip; only the eigenvectors do.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import RegistrationConfig
from .errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "METRICS",
    "TensorFit",
    "TensorModel",
    "b0_brain_mask",
    "dwi_files",
    "load_dwi",
    "process_dwi",
    "register_b0",
    "check_gradient_table",
    "count_directions",
    "radial_diffusivity_for_fa",
    "read_gradient_table",
    "region_dti_medians",
    "select_shell",
    "tensor_from_direction",
    "tensor_metrics",
    "tensor_signal",
    "write_gradient_table",
]

#: The tensor metrics written and correlated, in this order.
METRICS = ("FA", "MD", "RD", "AD")


# ---------------------------------------------------------------------------
# Gradient tables
# ---------------------------------------------------------------------------

def _read_numbers(path: Path, what: str) -> np.ndarray:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the {what} file ({exc.strerror or exc}); "
                        "BIDS DWI needs a .bval and a .bvec beside the image") from None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    try:
        values = [[float(v) for v in row] for row in rows]
    except ValueError:
        raise DataError(f"{path}: the {what} file holds something that is not a number") from None
    if not values or len({len(r) for r in values}) != 1:
        raise DataError(f"{path}: the {what} file must hold rows of equal length")
    arr = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: the {what} file holds non-finite values")
    return arr


def _fsl_flip(affine) -> bool:
    return affine is not None and np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0


def read_gradient_table(bval_path, bvec_path, n_volumes: int, affine=None, dwi_name: str = "the DWI"):
    """Read a BIDS ``.bval``/``.bvec`` pair and check it against the image.

    Parameters
    ----------
    bval_path, bvec_path : path
    n_volumes : int
        Volumes in the DWI image (its 4th dimension).
    affine : (4, 4) array or None
        The image's voxel-to-world affine; with a positive determinant the
        first component is flipped back (FSL convention, see module notes).
    dwi_name : str
        How to name the image in messages.

    Returns
    -------
    bvals : (N,) float array
    bvecs : (N, 3) float array, in the data array's axes

    Raises
    ------
    DataError
        Unreadable files, wrong shapes, or counts that do not match the image.
    """
    bval_path, bvec_path = Path(bval_path), Path(bvec_path)
    bvals = _read_numbers(bval_path, "b-value")
    if bvals.shape[0] != 1:
        bvals = bvals.T if bvals.shape[1] == 1 else bvals
    if bvals.shape[0] != 1:
        raise DataError(f"{bval_path}: expected one row of b-values, found {bvals.shape[0]} rows")
    bvals = bvals[0]
    bvecs = _read_numbers(bvec_path, "b-vector")
    if bvecs.shape[0] != 3:
        raise DataError(f"{bvec_path}: expected 3 rows (x, y, z) of b-vectors, found {bvecs.shape[0]}")
    bvecs = bvecs.T.copy()
    if len(bvals) != n_volumes:
        raise DataError(f"{bval_path}: {len(bvals)} b-values but {dwi_name} has {n_volumes} volumes")
    if len(bvecs) != n_volumes:
        raise DataError(f"{bvec_path}: {len(bvecs)} b-vectors but {dwi_name} has {n_volumes} volumes")
    if np.any(bvals < 0):
        raise DataError(f"{bval_path}: negative b-values")
    if _fsl_flip(affine):
        bvecs[:, 0] = -bvecs[:, 0]
    return bvals, bvecs


def write_gradient_table(bval_path, bvec_path, bvals, bvecs, affine=None) -> None:
    """Write ``.bval``/``.bvec`` (vectors given in the data array's axes; FSL flip applied)."""
    from .io import write_text

    bvecs = np.array(bvecs, dtype=float)
    if _fsl_flip(affine):
        bvecs[:, 0] = -bvecs[:, 0]
    bvecs = bvecs + 0.0  # no "-0"
    write_text(bval_path, " ".join(f"{b:g}" for b in np.asarray(bvals, dtype=float)) + "\n")
    write_text(bvec_path, "\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")


def count_directions(bvecs, angle_tolerance_deg: float = 1.0) -> int:
    """Distinct diffusion directions (antipodal vectors count once)."""
    v = np.asarray(bvecs, dtype=float)
    if len(v) == 0:
        return 0
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    cos_tol = np.cos(np.deg2rad(angle_tolerance_deg))
    kept: list[np.ndarray] = []
    for u in v:
        if not any(abs(float(u @ w)) >= cos_tol for w in kept):
            kept.append(u)
    return len(kept)


def select_shell(bvals, shell_b: float, shell_tolerance: float, b0_threshold: float) -> np.ndarray:
    """Indices of the b=0 volumes and of the shell nearest ``shell_b`` (within ``shell_tolerance``).

    Multi-shell data keep one shell for the tensor (the tensor model is a
    low-b approximation; mixing shells biases MD). Returns an empty array
    when no volume lies in the shell.
    """
    b = np.asarray(bvals, dtype=float)
    b0 = b <= b0_threshold
    shell = (~b0) & (np.abs(b - shell_b) <= shell_tolerance)
    if not shell.any():
        return np.zeros(0, dtype=int)
    return np.flatnonzero(b0 | shell)


def check_gradient_table(bvals, bvecs, *, name: str, shell_b: float = 1000.0, shell_tolerance: float = 100.0,
                         b0_threshold: float = 50.0, unit_tolerance: float = 0.05,
                         min_directions: int = 6) -> np.ndarray:
    """Check a gradient table and choose the volumes of the tensor fit.

    Returns the indices of the b=0 volumes and of the ``shell_b`` shell.

    Raises
    ------
    DataError
        No b=0 volume; no volume in the shell; a diffusion-weighted b-vector
        that is not unit length (within ``unit_tolerance``); fewer than
        ``min_directions`` distinct directions in the shell. The one-line
        message names ``name`` (the .bval/.bvec file).
    """
    b = np.asarray(bvals, dtype=float)
    v = np.asarray(bvecs, dtype=float)
    if v.shape != (len(b), 3):
        raise DataError(f"{name}: b-vectors have shape {v.shape}, expected ({len(b)}, 3)")
    if not np.any(b <= b0_threshold):
        raise DataError(f"{name}: no b=0 volume (b <= {b0_threshold:g} s/mm2); the tensor fit needs one")
    dw = b > b0_threshold
    norms = np.linalg.norm(v[dw], axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > unit_tolerance)
    if bad.size:
        k = int(np.flatnonzero(dw)[bad[0]])
        raise DataError(f"{name}: b-vector of volume {k} has length {norms[bad[0]]:.3f}, not 1 "
                        f"({bad.size} such vector(s)); b-vectors of diffusion-weighted volumes must be unit length")
    idx = select_shell(b, shell_b, shell_tolerance, b0_threshold)
    if idx.size == 0:
        shells = sorted({int(round(x, -2)) for x in b[dw]})
        raise DataError(f"{name}: no volume with b = {shell_b:g} +- {shell_tolerance:g} s/mm2 "
                        f"(shells present: {shells}); set diffusion.shell_b")
    n_dir = count_directions(v[idx][b[idx] > b0_threshold])
    if n_dir < min_directions:
        raise DataError(f"{name}: {n_dir} distinct diffusion direction(s) in the b={shell_b:g} shell; "
                        f"the tensor needs at least {min_directions}")
    return idx


# ---------------------------------------------------------------------------
# Tensor algebra (pure)
# ---------------------------------------------------------------------------

def tensor_metrics(evals) -> dict:
    """FA, MD, RD, AD from eigenvalues sorted in decreasing order (last axis of length 3).

    ``FA = sqrt(3/2) |lambda - MD| / |lambda|`` (0 where all eigenvalues are 0),
    ``MD`` = mean, ``AD = lambda_1``, ``RD = (lambda_2 + lambda_3) / 2``.
    """
    ev = np.asarray(evals, dtype=np.float64)
    md = ev.mean(axis=-1)
    dev = np.sqrt(((ev - md[..., None]) ** 2).sum(axis=-1))
    norm = np.sqrt((ev ** 2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        fa = np.where(norm > 0, np.sqrt(1.5) * dev / np.where(norm > 0, norm, 1.0), 0.0)
    return {"FA": np.clip(fa, 0.0, 1.0), "MD": md, "RD": 0.5 * (ev[..., 1] + ev[..., 2]), "AD": ev[..., 0]}


def radial_diffusivity_for_fa(axial_diffusivity, fa):
    """Radial diffusivity of a cylindrically symmetric tensor with the given AD and FA.

    Solves ``FA = (a - r) / sqrt(a^2 + 2 r^2)`` for ``0 <= r <= a``:
    ``r = a (1 - FA^2) / (1 + sqrt(1 - (1 - 2 FA^2)(1 - FA^2)))``.
    """
    a = np.asarray(axial_diffusivity, dtype=float)
    f = np.clip(np.asarray(fa, dtype=float), 0.0, 1.0)
    return a * (1 - f * f) / (1 + np.sqrt(1 - (1 - 2 * f * f) * (1 - f * f)))


def tensor_from_direction(direction, axial, radial):
    """Cylindrically symmetric tensors ``D = r I + (a - r) v v^T`` (..., 3, 3) from unit directions."""
    v = np.asarray(direction, dtype=float)
    a = np.asarray(axial, dtype=float)[..., None, None]
    r = np.asarray(radial, dtype=float)[..., None, None]
    return r * np.eye(3) + (a - r) * v[..., :, None] * v[..., None, :]


def tensor_signal(s0, tensor, bvals, bvecs):
    """Noise-free signal ``S0 exp(-b g^T D g)`` (..., N) of tensors (..., 3, 3)."""
    g = np.asarray(bvecs, dtype=float)
    q = np.einsum("ni,...ij,nj->...n", g, np.asarray(tensor, dtype=float), g)
    return np.asarray(s0, dtype=float)[..., None] * np.exp(-np.asarray(bvals, dtype=float) * q)


# ---------------------------------------------------------------------------
# Model and fit
# ---------------------------------------------------------------------------

@dataclass
class TensorFit:
    """A fitted tensor field: eigenvalues (..., 3, decreasing) and eigenvectors (..., 3, 3; columns)."""

    evals: np.ndarray
    evecs: np.ndarray
    mask: np.ndarray | None = None

    def metrics(self, dtype=np.float32) -> dict:
        """``FA``, ``MD``, ``RD``, ``AD`` maps (0 outside the mask)."""
        out = {k: v.astype(dtype) for k, v in tensor_metrics(self.evals).items()}
        if self.mask is not None:
            for v in out.values():
                v[~self.mask] = 0
        return out

    @property
    def fa(self):
        return self.metrics()["FA"]

    @property
    def md(self):
        return self.metrics()["MD"]

    @property
    def principal_direction(self) -> np.ndarray:
        return self.evecs[..., :, 0]


class TensorModel:
    """Diffusion tensor model of one shell (DIPY, weighted least squares by default).

    Parameters
    ----------
    bvals, bvecs : (N,), (N, 3)
        In the data array's axes (see :func:`read_gradient_table`).
    fit_method : str
        DIPY's ``fit_method`` ("WLS", "OLS", "NLLS", "RESTORE").
    b0_threshold : float
        b-values at or below this are b=0 volumes.
    min_signal : float
        Signals below this are raised to it before the log (DIPY's rule).
    """

    def __init__(self, bvals, bvecs, fit_method: str = "WLS", b0_threshold: float = 50.0,
                 min_signal: float = 1e-6):
        from dipy.core.gradients import gradient_table
        from dipy.reconst.dti import TensorModel as _DipyTensor

        self.bvals = np.asarray(bvals, dtype=float)
        bvecs = np.array(bvecs, dtype=float)
        b0 = self.bvals <= b0_threshold
        bvecs[b0] = 0.0  # DIPY rejects b0 volumes with non-zero vectors of arbitrary length
        self.bvecs = bvecs
        self.fit_method = fit_method
        self.gtab = gradient_table(self.bvals, bvecs=bvecs, b0_threshold=b0_threshold)
        self._model = _DipyTensor(self.gtab, fit_method=fit_method, min_signal=min_signal)

    def fit(self, data, mask=None) -> TensorFit:
        """Fit every voxel of ``data`` (..., N) inside ``mask``."""
        data = np.asarray(data)
        if data.shape[-1] != len(self.bvals):
            raise ValueError(f"data has {data.shape[-1]} volumes, the gradient table {len(self.bvals)}")
        mask = None if mask is None else np.asarray(mask, dtype=bool)
        f = self._model.fit(data, mask=mask)
        evals = np.asarray(f.evals, dtype=np.float64)
        evecs = np.asarray(f.evecs, dtype=np.float64)
        # Noise can make a WLS tensor slightly non-positive; a negative diffusivity has no meaning.
        evals = np.clip(np.nan_to_num(evals), 0.0, None)
        return TensorFit(evals=evals, evecs=np.nan_to_num(evecs), mask=mask)


def b0_brain_mask(dwi, bvals, b0_threshold: float = 50.0, median_radius: int = 2, numpass: int = 2) -> np.ndarray:
    """Brain mask from the mean b=0 image (DIPY's median Otsu), largest component, holes filled."""
    from dipy.segment.mask import median_otsu
    from scipy import ndimage as ndi

    b0 = np.asarray(dwi, dtype=np.float32)[..., np.asarray(bvals) <= b0_threshold].mean(axis=-1)
    _, mask = median_otsu(b0, median_radius=median_radius, numpass=numpass)
    lab, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        mask = lab == int(np.argmax(sizes))
    return ndi.binary_fill_holes(mask)


def region_dti_medians(maps: dict, labels, label_table: pd.DataFrame, regions, mask=None,
                       min_voxels: int = 5) -> pd.DataFrame:
    """Median of each tensor metric over atlas regions (long table).

    Returns columns ``region``, ``hemisphere``, ``metric``, ``value``,
    ``n_voxels``; a region with fewer than ``min_voxels`` voxels gets NaN.
    """
    labels = np.asarray(labels)
    inside = np.ones(labels.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    rows = []
    for r in label_table.itertuples(index=False):
        if r.region not in regions:
            continue
        sel = (labels == int(r.index)) & inside
        n = int(sel.sum())
        for metric in METRICS:
            if metric not in maps:
                continue
            vals = np.asarray(maps[metric])[sel]
            vals = vals[np.isfinite(vals)]
            value = float(np.median(vals)) if n >= min_voxels and vals.size else float("nan")
            rows.append({"region": r.region, "hemisphere": r.hemisphere, "metric": metric,
                         "value": value, "n_voxels": n})
    return pd.DataFrame(rows, columns=["region", "hemisphere", "metric", "value", "n_voxels"])


# ---------------------------------------------------------------------------
# The participant step (file I/O)
# ---------------------------------------------------------------------------

def dwi_files(path) -> tuple[Path, Path, Path]:
    """``(image, .bval, .bvec)`` of a BIDS DWI series from any of its files (image, bval, bvec, json).

    Raises DataError naming the image when the image or a gradient file is missing.
    """
    path = Path(path)
    name = path.name
    for ext in (".nii.gz", ".nii", ".bval", ".bvec", ".json"):
        if name.endswith(ext):
            stem = name[: -len(ext)]
            break
    else:
        stem = name
    image = next((path.with_name(stem + e) for e in (".nii.gz", ".nii") if path.with_name(stem + e).exists()), None)
    if image is None:
        raise DataError(f"{path.with_name(stem + '.nii.gz')}: the DWI image is missing")
    bval, bvec = path.with_name(stem + ".bval"), path.with_name(stem + ".bvec")
    for p in (bval, bvec):
        if not p.exists():
            raise DataError(f"{p}: missing; BIDS DWI needs a .bval and a .bvec beside {image.name}")
    return image, bval, bvec


def load_dwi(dwi_path, params):
    """Read and check a DWI series: ``(image, data (X, Y, Z, N) float32 of the shell, bvals, bvecs, notes)``.

    ``params``: the ``diffusion`` config section. Every failure is a DataError naming the file.
    """
    import nibabel as nib

    image, bval, bvec = dwi_files(dwi_path)
    try:
        img = nib.load(str(image))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - any reader error is the file's fault: name it
        raise DataError(f"{image}: cannot read the DWI ({exc})") from None
    if data.ndim != 4 or data.shape[3] < 7:
        raise DataError(f"{image}: DWI must be 4D with at least 7 volumes, got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise DataError(f"{image}: the DWI holds non-finite values")
    bvals, bvecs = read_gradient_table(bval, bvec, data.shape[3], img.affine, dwi_name=image.name)
    idx = check_gradient_table(bvals, bvecs, name=f"{bval} / {bvec.name}", shell_b=params.shell_b,
                               shell_tolerance=params.shell_tolerance, b0_threshold=params.b0_threshold,
                               unit_tolerance=params.unit_tolerance, min_directions=params.min_directions)
    notes = []
    if len(idx) < len(bvals):
        notes.append(f"{image.name}: {len(idx)} of {len(bvals)} volumes used (b=0 and the b={params.shell_b:g} "
                     "shell)")
    return img, data[..., idx], bvals[idx], bvecs[idx], notes


def register_b0(b0_img, mask, reference_img, out_mat, *, preset: str, seed: int, work_dir=None) -> float:
    """Rigid ANTs registration (mutual information) of the mean b=0 to the anatomical reference.

    Writes the ANTs ``.mat`` (DWI -> reference) to ``out_mat``; returns the seconds taken.
    """
    import tempfile
    import time as _time

    import ants
    import nibabel as nib

    from .registration import PRESETS, _ants_rigid, _copy_atomic, _normalise_intensity, to_ants

    t0 = _time.perf_counter()
    moving_mask = ants.iMath(to_ants(nib.Nifti1Image(mask.astype(np.float32), b0_img.affine)), "MD", 2)
    moving = _normalise_intensity(to_ants(b0_img), moving_mask)
    fixed = _normalise_intensity(to_ants(reference_img))
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="qsmbids-dwi-") as tmp:
        reg = _ants_rigid(fixed, moving, str(Path(tmp) / "dwi2t1_"), PRESETS[preset], seed, moving_mask=moving_mask)
        _copy_atomic(reg["fwdtransforms"][0], Path(out_mat))
    return _time.perf_counter() - t0


def process_dwi(dwi_path, reference_path, xfm_template_t1w, outputs: dict, *, params, atlas_img, label_table,
                preset: str = RegistrationConfig.preset, seed: int = 0, min_voxels: int = 5, work_dir=None,
                sidecar: dict | None = None) -> dict:
    """The participant's DTI: checks, mask, tensor fit, maps, b0 -> T1w, atlas regions in DWI space, medians.

    Parameters
    ----------
    dwi_path : path
        Any file of the BIDS DWI series (image, .bval, .bvec or .json).
    reference_path : path
        The anatomical image the template transforms start from (the T1w, or the GRE magnitude
        when the subject has no T1w).
    xfm_template_t1w : path
        The normalise step's template -> T1w composite transform.
    outputs : dict
        ``dwi_mask``, ``dwi_b0``, ``dti_fa``, ``dti_md``, ``dti_rd``, ``dti_ad``, ``xfm_dwi_t1w``,
        ``atlas_dwi``, ``dti_regions`` (paths).
    params : the ``diffusion`` config section.

    Returns
    -------
    dict with ``timings`` (s), ``notes``, ``warnings`` and ``n_mask_voxels``.
    """
    import time as _time

    import nibabel as nib

    from .io import write_nifti, write_sidecar, write_tsv
    from .registration import atlas_to_native

    out = {k: Path(v) for k, v in outputs.items()}
    info = dict(sidecar or {})
    timings = {}
    t0 = _time.perf_counter()
    img, data, bvals, bvecs, notes = load_dwi(dwi_path, params)
    try:
        ref = nib.load(str(reference_path))
        ref.get_fdata(dtype=np.float32)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{reference_path}: cannot read the anatomical reference of the DWI ({exc})") from None
    aff = img.affine
    b0 = data[..., bvals <= params.b0_threshold].mean(axis=-1)
    mask = b0_brain_mask(data, bvals, params.b0_threshold)
    if mask.sum() < 100:
        raise DataError(f"{dwi_files(dwi_path)[0]}: the b=0 brain mask has {int(mask.sum())} voxels; "
                        "check the image")
    timings["read_mask"] = round(_time.perf_counter() - t0, 2)
    t0 = _time.perf_counter()
    fit = TensorModel(bvals, bvecs, fit_method=params.fit_method, b0_threshold=params.b0_threshold).fit(data, mask)
    maps = fit.metrics()
    timings["tensor_fit"] = round(_time.perf_counter() - t0, 2)
    b0_img = nib.Nifti1Image(b0.astype(np.float32), aff)
    timings["b0_to_t1w"] = round(register_b0(b0_img, mask, ref, out["xfm_dwi_t1w"], preset=preset, seed=seed,
                                             work_dir=work_dir), 2)
    t0 = _time.perf_counter()
    labels = np.asarray(atlas_to_native(atlas_img, b0_img, out["xfm_dwi_t1w"], xfm_template_t1w).dataobj)
    labels = np.where(mask, labels, 0).astype(np.int16)
    table = region_dti_medians(maps, labels, label_table, tuple(params.regions), mask=mask, min_voxels=min_voxels)
    timings["regions"] = round(_time.perf_counter() - t0, 2)
    warnings = [f"{r.region} {r.hemisphere}: {r.n_voxels} voxel(s) in DWI space, fewer than {min_voxels}; "
                f"no {r.metric}" for r in table.itertuples() if not np.isfinite(r.value) and r.metric == "FA"]
    common = {**info, "Sources": [str(p) for p in dwi_files(dwi_path)],
              "Shell": {"b": params.shell_b, "volumes": int(len(bvals)),
                        "directions": int(count_directions(bvecs[bvals > params.b0_threshold]))}}
    model = {"Model": "diffusion tensor", "FitMethod": params.fit_method,
             "Software": "DIPY dipy.reconst.dti.TensorModel"}
    write_nifti(out["dwi_mask"], mask, aff, dtype=np.uint8,
                sidecar={**common, "Type": "Brain", "Method": "median Otsu of the mean b=0 (DIPY), largest "
                         "component, holes filled"})
    write_nifti(out["dwi_b0"], b0, aff, sidecar={**common, "Description": "mean of the b=0 volumes"})
    units = {"FA": None, "MD": "mm^2/s", "RD": "mm^2/s", "AD": "mm^2/s"}
    desc = {"FA": "fractional anisotropy", "MD": "mean diffusivity", "RD": "radial diffusivity (l2+l3)/2",
            "AD": "axial diffusivity l1"}
    for metric in METRICS:
        side = {**common, **model, "Description": desc[metric]}
        if units[metric]:
            side["Units"] = units[metric]
        write_nifti(out[f"dti_{metric.lower()}"], maps[metric], aff, sidecar=side)
    write_sidecar(out["xfm_dwi_t1w"], {**common, "Transform": "rigid, ANTs affine (mean b=0 -> anatomical "
                                       "reference, mutual information)", "Reference": str(reference_path)})
    write_nifti(out["atlas_dwi"], labels, aff, dtype=np.int16,
                sidecar={**common, "Description": "atlas in native DWI space (nearest neighbour through "
                         "from-template_to-T1w and the inverse of from-dwi_to-T1w), inside the DWI mask"})
    write_tsv(out["dti_regions"], table, sidecar={
        **common, **model,
        "region": {"Description": "atlas region"},
        "hemisphere": {"Description": "L or R"},
        "metric": {"Description": "tensor metric", "Levels": desc},
        "value": {"Description": "median of the metric over the region in native DWI space (FA unitless; "
                                 "MD, RD, AD in mm^2/s)"},
        "n_voxels": {"Description": "voxels of the region inside the DWI brain mask"},
    })
    return {"timings": timings, "notes": notes, "warnings": warnings, "n_mask_voxels": int(mask.sum())}
