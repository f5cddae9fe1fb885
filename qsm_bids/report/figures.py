"""Figures for the HTML reports (matplotlib without pyplot; no file I/O but image loading).

- :func:`cluster_slices_figure` - significant TFCE clusters over a template in
  axial slices labelled with MNI z (the paper's Figure 3);
- :func:`roi_bar_figure` - adjusted means +- SEM per group with the paper's
  significance marks (Figure 4);
- :func:`three_plane_figure` - one map in sagittal, coronal and axial planes (Figure 5);
- :func:`thumbnail_data_uri` - a small grey-scale PNG of one axial slice;
- :func:`scatter_grid_figure` - scatter plots of correlations.

Images are shown in neurological convention (left on the left, anterior up)
after reorienting to the closest RAS+ axes; slice positions are world (MNI) mm.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import new_figure

__all__ = [
    "load_image",
    "to_ras",
    "cluster_slices_figure",
    "roi_bar_figure",
    "three_plane_figure",
    "thumbnail_data_uri",
    "scatter_grid_figure",
    "GROUP_COLOURS",
]

#: Colours of the first (patient) and second (reference) group.
GROUP_COLOURS = ("#c0392b", "#2c7fb8")


def load_image(img):
    """A nibabel image from an image or a path (``None`` stays ``None``)."""
    if img is None:
        return None
    if isinstance(img, (str, Path)):
        import nibabel as nib

        return nib.load(str(img))
    return img


def to_ras(img) -> tuple[np.ndarray, np.ndarray]:
    """Data (float32, 3D) and affine of ``img`` reoriented to the closest RAS+ axes."""
    import nibabel as nib

    img = nib.as_closest_canonical(load_image(img))
    data = np.asanyarray(img.dataobj, dtype=np.float32)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3] + (-1,))[..., 0]
    return data, img.affine


def _resample_like(img, target, interpolation="continuous"):
    """``img`` on ``target``'s grid (nilearn), or unchanged when the grids match."""
    img, target = load_image(img), load_image(target)
    if img.shape[:3] == target.shape[:3] and np.allclose(img.affine, target.affine, atol=1e-3):
        return img
    from nilearn.image import resample_to_img

    return resample_to_img(img, target, interpolation=interpolation, force_resample=True,
                           copy_header=True)


def _world(affine, ijk) -> np.ndarray:
    return (affine @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]


def _index_of(affine, xyz) -> np.ndarray:
    return np.rint((np.linalg.inv(affine) @ np.r_[np.asarray(xyz, dtype=float), 1.0])[:3]).astype(int)


def _robust_range(data, mask=None) -> tuple[float, float]:
    vals = data[mask] if mask is not None else data[np.isfinite(data) & (data != 0)]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [2, 98])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _axial(data, k):
    # array axes are RAS: [x, y, z]; rows = y (anterior up with origin lower), columns = x
    return data[:, :, k].T


def cluster_slices_figure(template, stat, pfwe, *, alpha: float = 0.05, n_slices: int = 8,
                          ncols: int = 4, cmap: str = "autumn", title: str | None = None,
                          stat_label: str = "TFCE"):
    """Significant voxels (``pfwe < alpha``) coloured by ``stat`` over ``template``, axial slices.

    Parameters
    ----------
    template : image or path
        Background (the study template or MNI); resampled to the stat map's grid.
    stat : image or path
        The statistic shown in colour (TFCE or t).
    pfwe : image or path
        FWE-corrected p on the same grid as ``stat``.
    alpha : significance level.
    n_slices, ncols : number of axial slices and columns of the grid. Slices are
        spaced evenly over the z extent of the significant voxels, or over the
        brain when there are none.

    Returns
    -------
    (Figure, dict) - the figure and a summary: ``n_significant`` voxels and the
    slice positions ``z_mm``.
    """
    stat_img = load_image(stat)
    bg_img = _resample_like(template, stat_img)
    p_img = _resample_like(pfwe, stat_img, interpolation="nearest")
    stat_data, affine = to_ras(stat_img)
    bg, _ = to_ras(bg_img)
    p, _ = to_ras(p_img)
    sig = np.isfinite(p) & (p < alpha) & np.isfinite(stat_data)
    n_sig = int(sig.sum())
    extent = sig if n_sig else (np.isfinite(bg) & (bg > np.percentile(bg[np.isfinite(bg)], 60)))
    zs = np.nonzero(extent.any(axis=(0, 1)))[0]
    if zs.size == 0:
        zs = np.arange(bg.shape[2])
    if not n_sig:  # central 80 % of the brain
        lo, hi = zs[0], zs[-1]
        zs = np.arange(int(lo + 0.1 * (hi - lo)), int(hi - 0.1 * (hi - lo)) + 1)
    picks = np.unique(np.linspace(zs[0], zs[-1], min(n_slices, zs.size)).round().astype(int))
    nrows = int(np.ceil(len(picks) / ncols))
    fig = new_figure(figsize=(1.7 * ncols, 2.0 * nrows + (0.4 if title else 0)), facecolor="black")
    bg_lo, bg_hi = _robust_range(bg)
    shown = np.abs(stat_data[sig]) if n_sig else np.array([1.0])
    vmax = float(np.max(shown)) if shown.size else 1.0
    vmin = float(np.min(shown)) if n_sig else 0.0
    if not vmax - vmin > 1e-3 * abs(vmax):  # (nearly) constant statistic: scale from zero
        vmin = 0.0
        vmax = vmax if vmax > 0 else 1.0
    im = None
    for i, k in enumerate(picks):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(_axial(bg, k), cmap="gray", vmin=bg_lo, vmax=bg_hi, origin="lower",
                  interpolation="nearest")
        overlay = np.where(sig[:, :, k], np.abs(stat_data[:, :, k]), np.nan).T
        if np.isfinite(overlay).any():
            im = ax.imshow(overlay, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                           interpolation="nearest")
        z_mm = _world(affine, (0, 0, k))[2]
        ax.set_title(f"z = {z_mm:.0f}", color="white", fontsize=8, pad=2)
        ax.set_axis_off()
        if i == 0:
            ax.text(0.02, 0.02, "L", color="white", fontsize=7, transform=ax.transAxes)
            ax.text(0.92, 0.02, "R", color="white", fontsize=7, transform=ax.transAxes)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    if im is not None:
        cax = fig.add_axes([0.92, 0.15, 0.015, 0.7])
        cb = fig.colorbar(im, cax=cax)
        cb.set_label(stat_label, color="white", fontsize=8)
        cb.ax.tick_params(colors="white", labelsize=7)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.01, top=0.9 if title else 0.95,
                        wspace=0.02, hspace=0.15)
    z_mm = [float(_world(affine, (0, 0, k))[2]) for k in picks]
    return fig, {"n_significant": n_sig, "z_mm": z_mm}


def _unit_label(region: str, hemisphere: str) -> str:
    name = str(region).replace("_", " ")
    return name if hemisphere == "bilateral" else f"{name} ({hemisphere})"


def roi_bar_figure(roi_stats, groups: Sequence[str], *, colours=GROUP_COLOURS,
                   ylabel: str = "age-adjusted susceptibility (ppm)"):
    """Bar chart of adjusted means +- SEM per group with the paper's significance marks.

    ``roi_stats`` is the table of :func:`qsm_bids.group.roi_stats.compute_roi_stats`
    (columns region, hemisphere, mean_<g>, sem_<g>, p, p_bonferroni).
    """

    a, b = groups
    n = len(roi_stats)
    fig = new_figure(figsize=(max(6.0, 0.75 * n + 1.5), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    w = 0.38
    means = [roi_stats[f"mean_{g}"].to_numpy(dtype=float) for g in (a, b)]
    sems = [np.nan_to_num(roi_stats[f"sem_{g}"].to_numpy(dtype=float)) for g in (a, b)]
    for j, g in enumerate((a, b)):
        ax.bar(x + (j - 0.5) * w, means[j], w, yerr=sems[j], color=colours[j], label=g,
               capsize=2, error_kw={"elinewidth": 0.8})
    top = np.nanmax(np.abs(np.vstack([means[0] + np.sign(means[0]) * sems[0],
                                      means[1] + np.sign(means[1]) * sems[1]])), axis=0) \
        if n else np.array([])
    span = float(np.nanmax(top)) if n and np.isfinite(top).any() else 1.0
    for i, row in enumerate(roi_stats.itertuples(index=False)):
        mark = getattr(row, "significance", "")  # the marks column of roi_stats.tsv
        if not isinstance(mark, str) or not mark:
            continue
        sign = 1.0 if np.nansum([means[0][i], means[1][i]]) >= 0 else -1.0
        ax.text(i, sign * (top[i] + 0.04 * span), mark, ha="center",
                va="bottom" if sign > 0 else "top", fontsize=9)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([_unit_label(r, h) for r, h in zip(roi_stats["region"], roi_stats["hemisphere"])],
                       rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - (0.08 * span if lo < 0 else 0), hi + 0.08 * span)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.text(0.01, 0.01, "* P<.05  ** P<.01  *** Bonferroni P<.05  **** Bonferroni P<.01",
             fontsize=7, color="#444444")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _plane_slices(data, affine, cut_mm):
    i, j, k = np.clip(_index_of(affine, cut_mm), 0, np.array(data.shape) - 1)
    # sagittal: rows z, cols y; coronal: rows z, cols x; axial: rows y, cols x
    return [data[i, :, :].T, data[:, j, :].T, data[:, :, k].T], (i, j, k)


def three_plane_figure(img, *, cut_mm=(12.0, -18.0, -10.0), vmin: float = -0.1, vmax: float = 0.2,
                       title: str | None = None, cmap: str = "gray", label: str = "ppm"):
    """Sagittal, coronal and axial planes of one map through ``cut_mm`` (world mm)."""
    data, affine = to_ras(img)
    planes, ijk = _plane_slices(data, affine, cut_mm)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    aspects = [zooms[2] / zooms[1], zooms[2] / zooms[0], zooms[1] / zooms[0]]
    widths = [data.shape[1] * zooms[1], data.shape[0] * zooms[0], data.shape[0] * zooms[0]]
    fig = new_figure(figsize=(6.0, 2.3), facecolor="black")
    grid = fig.add_gridspec(1, 3, width_ratios=widths, wspace=0.02)
    names = ("x", "y", "z")
    im = None
    for n, (plane, asp) in enumerate(zip(planes, aspects)):
        ax = fig.add_subplot(grid[0, n])
        im = ax.imshow(np.nan_to_num(plane), cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                       aspect=asp, interpolation="nearest")
        pos = _world(affine, ijk)[n]
        ax.set_title(f"{names[n]} = {pos:.0f}", color="white", fontsize=7, pad=1)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, color="white", fontsize=9, y=0.99)
    cax = fig.add_axes([0.91, 0.2, 0.012, 0.6])
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(label, color="white", fontsize=7)
    cb.ax.tick_params(colors="white", labelsize=6)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.02, top=0.85)
    return fig


def thumbnail_data_uri(img, *, z_mm: float = -10.0, vmin: float = -0.1, vmax: float = 0.2,
                       max_size: int = 128) -> str:
    """A small 8-bit grey-scale PNG (data URI) of the axial slice nearest ``z_mm``.

    Written with Pillow directly (no matplotlib figure): one 8-bit channel,
    downsampled to at most ``max_size`` pixels, a few kB per subject.
    """
    from PIL import Image

    data, affine = to_ras(img)
    k = int(np.clip(_index_of(affine, (0.0, 0.0, z_mm))[2], 0, data.shape[2] - 1))
    sl = np.nan_to_num(data[:, :, k].T[::-1])  # rows top = anterior
    step = max(1, int(np.ceil(max(sl.shape) / max_size)))
    sl = sl[::step, ::step]
    scaled = np.clip((sl - vmin) / (vmax - vmin), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((scaled * 255).astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def scatter_grid_figure(panels: Sequence[Mapping], *, ncols: int = 3):
    """Small scatter plots, one panel per correlation.

    Each panel: ``{"series": [(x, y, label, colour), ...], "xlabel": str,
    "ylabel": str, "title": str}``; a least-squares line is drawn per series
    for orientation (the statistics shown are Spearman's, in the title).
    """
    n = max(1, len(panels))
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig = new_figure(figsize=(3.0 * ncols, 2.6 * nrows))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for x, y, label, colour in panel["series"]:
            x = np.asarray(x, dtype=float)
            y = np.asarray(y, dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            ax.scatter(x[ok], y[ok], s=10, color=colour, label=label, alpha=0.8, linewidths=0)
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
                slope, icpt = np.polyfit(x[ok], y[ok], 1)
                xs = np.array([x[ok].min(), x[ok].max()])
                ax.plot(xs, slope * xs + icpt, color=colour, linewidth=0.8)
        ax.set_xlabel(panel.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(panel.get("ylabel", ""), fontsize=8)
        ax.set_title(panel.get("title", ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        if len(panel["series"]) > 1:
            ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def coverage_figure(coverage, n_subjects: int, need: int, *, z_mm: Sequence[float] = (-30, -10, 10, 30, 50, 65),
                    ncols: int = 6):
    """Axial slices of the coverage map (participants covering each voxel, 0..n), with the analysis
    mask's edge (coverage >= ``need``) drawn in white; slices at MNI ``z_mm`` (the motor cortex at
    +50 and +65)."""
    img = load_image(coverage)
    data, affine = to_ras(img)
    data = np.nan_to_num(np.asarray(data, dtype=float))
    picks = []
    for z in z_mm:
        k = int(round(_index_of(affine, (0.0, 0.0, float(z)))[2]))
        if 0 <= k < data.shape[2] and k not in picks:
            picks.append(k)
    if not picks:
        picks = [data.shape[2] // 2]
    nrows = int(np.ceil(len(picks) / ncols))
    fig = new_figure(figsize=(1.7 * min(ncols, len(picks)), 2.0 * nrows + 0.4), facecolor="black")
    im = None
    for i, k in enumerate(picks):
        ax = fig.add_subplot(nrows, min(ncols, len(picks)), i + 1)
        sl = _axial(data, k)
        im = ax.imshow(np.where(sl > 0, sl, np.nan), cmap="viridis", vmin=0, vmax=max(n_subjects, 1),
                       origin="lower", interpolation="nearest")
        if (sl >= need).any() and (sl < need).any():
            ax.contour((sl >= need).astype(float), levels=[0.5], colors="white", linewidths=0.6)
        ax.set_title(f"z = {_world(affine, (0, 0, k))[2]:.0f}", color="white", fontsize=8, pad=2)
        ax.set_axis_off()
    fig.suptitle(f"participants covering each voxel (of {n_subjects}); white: analysis mask (>= {need})",
                 color="white", fontsize=9)
    if im is not None:
        cax = fig.add_axes([0.92, 0.15, 0.015, 0.7])
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(colors="white", labelsize=7)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.01, top=0.85, wspace=0.02, hspace=0.15)
    return fig
