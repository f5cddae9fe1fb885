"""The per-subject QC page: one self-contained HTML file (figures as data URIs).

Sections: brain mask over the magnitude, QSM in three planes, registration
overlays (template edges over the warped T1w and QSM), the region table,
parameters and timings, warnings. Everything from the data is autoescaped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import figure_to_data_uri, new_figure, render_template

logger = logging.getLogger(__name__)

__all__ = ["render_participant_report", "figure_mask_over_magnitude", "figure_qsm_planes",
           "figure_registration_overlay", "figure_overlay_on_image"]

_PLANES = ("sagittal", "coronal", "axial")


def _load(path):
    """(RAS-oriented float32 array, voxel sizes) of a NIfTI file, or None if absent/unreadable."""
    import nibabel as nib

    if path is None or not Path(path).exists():
        return None
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim == 4:
            data = data[..., 0]
        return data, np.asarray(img.header.get_zooms()[:3], dtype=float)
    except Exception as exc:  # noqa: BLE001 - a broken image must not prevent the page
        logger.warning("QC page: cannot read %s (%s)", path, exc)
        return None


def _slice(vol, plane: str, index: int):
    """A 2D slice in display orientation (rows: up/down, columns: left/right, RAS input)."""
    if plane == "sagittal":
        s = vol[index, :, :]
    elif plane == "coronal":
        s = vol[:, index, :]
    else:
        s = vol[:, :, index]
    return s.T  # shown with origin="lower"


def _aspect(zooms, plane: str) -> float:
    ax = {"sagittal": (1, 2), "coronal": (0, 2), "axial": (0, 1)}[plane]
    return float(zooms[ax[1]] / zooms[ax[0]])


def _centre(mask_or_vol) -> tuple:
    idx = np.argwhere(mask_or_vol > 0)
    if idx.size == 0:
        return tuple(s // 2 for s in mask_or_vol.shape)
    return tuple(int(round(v)) for v in idx.mean(0))


def _plane_index(centre, plane):
    return centre[{"sagittal": 0, "coronal": 1, "axial": 2}[plane]]


def _robust(vol, mask=None):
    v = vol[mask > 0] if mask is not None and (mask > 0).any() else vol[vol != 0]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(v, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _grey_planes(fig, image, centre, zooms, draw_over=None) -> None:
    """``image`` in grey in three planes through ``centre``; ``draw_over(ax, plane, index)`` adds an overlay."""
    vmin, vmax = _robust(image)
    for k, plane in enumerate(_PLANES):
        ax = fig.add_subplot(1, 3, k + 1)
        i = _plane_index(centre, plane)
        ax.imshow(_slice(image, plane, i), cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                  aspect=_aspect(zooms, plane), interpolation="nearest")
        if draw_over is not None:
            draw_over(ax, plane, i)
        ax.set_title(plane, fontsize=9)
        ax.axis("off")


def figure_mask_over_magnitude(magnitude, mask, zooms) -> str:
    """Magnitude in grey with the brain mask outline, three planes through the mask centre."""
    fig = new_figure(figsize=(10, 3.6))

    def outline(ax, plane, i):
        m = _slice(mask, plane, i)
        if (m > 0).any() and (m == 0).any():
            ax.contour(m > 0, levels=[0.5], colors="red", linewidths=0.8)

    _grey_planes(fig, magnitude, _centre(mask), zooms, outline)
    fig.set_facecolor("white")
    return figure_to_data_uri(fig)


def figure_qsm_planes(chi, mask, zooms, window_ppm: float = 0.15) -> str:
    """QSM (ppm) in three planes and a row of axial slices, grey scale from -window to +window."""
    fig = new_figure(figsize=(10, 6.4))
    centre = _centre(mask if mask is not None else chi)
    im = None
    for k, plane in enumerate(_PLANES):
        ax = fig.add_subplot(2, 3, k + 1)
        im = ax.imshow(_slice(chi, plane, _plane_index(centre, plane)), cmap="gray", vmin=-window_ppm,
                       vmax=window_ppm, origin="lower", aspect=_aspect(zooms, plane), interpolation="nearest")
        ax.set_title(plane, fontsize=9)
        ax.axis("off")
    # Axial slices spread over the mask's extent (basal ganglia to vertex and down to the midbrain).
    zs = np.nonzero((mask if mask is not None else chi != 0).any(axis=(0, 1)))[0]
    if zs.size:
        picks = np.linspace(zs.min() + 0.2 * np.ptp(zs), zs.max() - 0.15 * np.ptp(zs), 3).astype(int)
        for k, z in enumerate(picks):
            ax = fig.add_subplot(2, 3, 4 + k)
            ax.imshow(_slice(chi, "axial", int(z)), cmap="gray", vmin=-window_ppm, vmax=window_ppm,
                      origin="lower", aspect=_aspect(zooms, "axial"), interpolation="nearest")
            ax.set_title(f"axial {int(z)}", fontsize=9)
            ax.axis("off")
    if im is not None:
        cb = fig.colorbar(im, ax=fig.axes, shrink=0.6, fraction=0.03)
        cb.set_label("ppm")
    fig.set_facecolor("white")
    return figure_to_data_uri(fig)


def figure_overlay_on_image(image, overlay, zooms, *, cmap: str, vmin: float, vmax: float,
                            colorbar: str | None = None) -> str:
    """An overlay (tissue labels, thickness) in colour over an image in grey, zero shown transparent,
    three planes through the overlay's centre."""
    fig = new_figure(figsize=(10, 3.6))
    drawn = []

    def colour(ax, plane, i):
        o = _slice(overlay, plane, i)
        drawn.append(ax.imshow(np.ma.masked_where(o <= 0, o), cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.6,
                               origin="lower", aspect=_aspect(zooms, plane), interpolation="nearest"))

    _grey_planes(fig, image, _centre(overlay), zooms, colour)
    if colorbar and drawn:
        cb = fig.colorbar(drawn[-1], ax=fig.axes, shrink=0.6, fraction=0.03)
        cb.set_label(colorbar)
    fig.set_facecolor("white")
    return figure_to_data_uri(fig)


def _template_edges(shape, zooms):
    """Edges of the template brain at the given grid (Sobel magnitude, top 15 % inside the brain)."""
    from scipy import ndimage

    from ..atlas import template_image

    tpl = np.asarray(template_image(float(zooms[0])).dataobj, dtype=np.float32)
    if tpl.shape != tuple(shape):
        return None
    tpl = ndimage.gaussian_filter(tpl, 0.7)
    mag = np.sqrt(sum(ndimage.sobel(tpl, axis=a) ** 2 for a in range(3)))
    thr = np.percentile(mag[tpl > 0], 85) if (tpl > 0).any() else np.inf
    return mag > thr


def figure_registration_overlay(warped, zooms, title: str, window=None) -> str:
    """Template edges (red) over an image warped to the template grid, three planes."""
    edges = _template_edges(warped.shape, zooms)
    fig = new_figure(figsize=(10, 3.6))
    centre = tuple(s // 2 for s in warped.shape)
    vmin, vmax = window if window is not None else _robust(warped)
    for k, plane in enumerate(_PLANES):
        ax = fig.add_subplot(1, 3, k + 1)
        i = _plane_index(centre, plane)
        ax.imshow(_slice(warped, plane, i), cmap="gray", vmin=vmin, vmax=vmax, origin="lower",
                  aspect=_aspect(zooms, plane), interpolation="nearest")
        if edges is not None:
            e = _slice(edges, plane, i).astype(float)
            ax.imshow(np.ma.masked_where(e == 0, e), cmap="autumn", alpha=0.8, origin="lower",
                      aspect=_aspect(zooms, plane), interpolation="nearest")
        ax.set_title(f"{title}: {plane}", fontsize=9)
        ax.axis("off")
    fig.set_facecolor("white")
    return figure_to_data_uri(fig)


def _region_rows(path):
    import pandas as pd

    if path is None or not Path(path).exists():
        return []
    frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    rows = []
    for r in frame.itertuples(index=False):
        median = getattr(r, "median_ppm", float("nan"))
        rows.append({"region": str(r.region), "hemisphere": str(r.hemisphere),
                     "median_ppm": "n/a" if pd.isna(median) else f"{float(median):.4f}",
                     "n_voxels": int(r.n_voxels) if not pd.isna(r.n_voxels) else 0,
                     "missing": bool(pd.isna(median))})
    return rows


def render_participant_report(label: str, paths: dict, parameters: dict | None = None,
                              timings: dict | None = None, warnings: list | None = None,
                              version: str = "", window_ppm: float = 0.15) -> str:
    """Render the participant QC page to an HTML string (the caller writes it atomically).

    Parameters
    ----------
    label : str
        Subject/session/run label shown as the title (e.g. ``sub-01_ses-1``).
    paths : dict
        Derivative paths; used keys (each optional, a missing file shows as
        "not available"): ``magnitude``, ``mask``, ``chi``, ``t1w_template``,
        ``chi_template``, ``regions`` (the median TSV), ``dti_fa`` and ``atlas_dwi`` (DTI),
        ``t1w`` (the input T1w) with ``tissue_dseg`` and ``thickness`` (structural).
    parameters : dict
        Every parameter used (shown as JSON).
    timings : dict
        Step name -> seconds.
    warnings : list of str
    version : str
        qsm-bids version.
    window_ppm : float
        Grey-scale window of the QSM figures (+-).
    """
    figures = []
    mag, mask, chi = _load(paths.get("magnitude")), _load(paths.get("mask")), _load(paths.get("chi"))
    if mag is not None and mask is not None and mag[0].shape == mask[0].shape:
        figures.append(("Brain mask over the magnitude",
                        figure_mask_over_magnitude(mag[0], mask[0], mag[1]),
                        "first-echo magnitude; red: brain mask outline"))
    else:
        figures.append(("Brain mask over the magnitude", None, "not available"))
    if chi is not None:
        m = mask[0] if mask is not None and mask[0].shape == chi[0].shape else None
        figures.append(("QSM (native GRE space)", figure_qsm_planes(chi[0], m, chi[1], window_ppm),
                        f"susceptibility in ppm, window +-{window_ppm:g} ppm"))
    else:
        figures.append(("QSM (native GRE space)", None, "not available"))
    t1t, chit = _load(paths.get("t1w_template")), _load(paths.get("chi_template"))
    if t1t is not None:
        figures.append(("Registration: T1w in template space", figure_registration_overlay(t1t[0], t1t[1], "T1w"),
                        "red: edges of the MNI152 2009 template; they should follow the warped anatomy"))
    else:
        figures.append(("Registration: T1w in template space", None, "not available"))
    if chit is not None:
        figures.append(("Registration: QSM in template space",
                        figure_registration_overlay(chit[0], chit[1], "QSM", (-window_ppm, window_ppm)),
                        "red: edges of the MNI152 2009 template over the warped QSM"))
    else:
        figures.append(("Registration: QSM in template space", None, "not available"))
    fa, atlas_dwi = _load(paths.get("dti_fa")), _load(paths.get("atlas_dwi"))
    if fa is not None and atlas_dwi is not None and fa[0].shape == atlas_dwi[0].shape:
        figures.append(("DTI: FA (native DWI space)", figure_mask_over_magnitude(fa[0], atlas_dwi[0], fa[1]),
                        "fractional anisotropy; red: atlas regions brought to the DWI (the CST medians of "
                        "FA, MD, RD, AD are in the dwi/ table)"))
    else:
        figures.append(("DTI: FA (native DWI space)", None, "not available (no DWI for this subject)"))
    t1w, dseg, thick = _load(paths.get("t1w")), _load(paths.get("tissue_dseg")), _load(paths.get("thickness"))
    if t1w is not None and dseg is not None and t1w[0].shape == dseg[0].shape:
        figures.append(("Tissue segmentation (native T1w space)",
                        figure_overlay_on_image(t1w[0], dseg[0], t1w[1], cmap="viridis", vmin=1, vmax=3),
                        "Atropos with template priors after N4: CSF (purple), GM (green), WM (yellow); the "
                        "volumes and the ICV are in the anat/ _desc-volumes_morph table"))
    else:
        figures.append(("Tissue segmentation (native T1w space)", None,
                        "not available (no T1w, or structural.enabled is false)"))
    if t1w is not None and thick is not None and t1w[0].shape == thick[0].shape:
        figures.append(("Cortical thickness (DiReCT, native T1w space)",
                        figure_overlay_on_image(t1w[0], thick[0], t1w[1], cmap="hot", vmin=0,
                                                vmax=max(float(np.percentile(thick[0][thick[0] > 0], 99))
                                                         if (thick[0] > 0).any() else 1.0, 1.0), colorbar="mm"),
                        "DiReCT thickness over the grey matter (mm)"))
    else:
        figures.append(("Cortical thickness (DiReCT, native T1w space)", None,
                        "not available (no T1w, or structural.thickness is false)"))
    timings = {str(k): (f"{float(v):.1f}" if isinstance(v, (int, float)) else str(v))
               for k, v in (timings or {}).items()}
    return render_template(
        "participant.html", label=label, version=version,
        figures=[{"title": t, "uri": u, "caption": c} for t, u, c in figures],
        regions=_region_rows(paths.get("regions")), timings=timings,
        warnings=[str(w) for w in (warnings or [])],
        parameters=json.dumps(parameters or {}, indent=2, default=str, sort_keys=True))
