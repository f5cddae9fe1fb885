"""Cluster table of significant voxels: size, peak, centre of mass, atlas label."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = ["CLUSTER_COLUMNS", "cluster_table", "atlas_lookup", "default_atlas_lookup"]

logger = logging.getLogger(__name__)

CLUSTER_COLUMNS = ["cluster", "n_voxels", "volume_mm3", "peak_x_mm", "peak_y_mm", "peak_z_mm",
                   "centre_x_mm", "centre_y_mm", "centre_z_mm", "peak_t", "peak_tfce", "peak_pfwe",
                   "peak_label"]

_STRUCTURES = {6: 1, 18: 2, 26: 3}


def atlas_lookup(labels_img, table: pd.DataFrame):
    """A function mapping MNI mm points (n, 3) to atlas names (``region_hemisphere``).

    Points outside the atlas grid or on label 0 get ``"n/a"``.
    """
    data = np.asarray(labels_img.dataobj).astype(np.int64)
    inv = np.linalg.inv(np.asarray(labels_img.affine, dtype=float))
    names = {int(r["index"]): f"{r['region']}_{r['hemisphere']}" if "hemisphere" in table.columns
             and isinstance(r["hemisphere"], str) else str(r["region"])
             for _, r in table.iterrows()}

    def lookup(points_mm):
        pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
        ijk = np.rint(pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)
        out = []
        for v in ijk:
            if np.all(v >= 0) and np.all(v < data.shape[:3]):
                out.append(names.get(int(data[tuple(v)]), "n/a"))
            else:
                out.append("n/a")
        return out

    return lookup


def default_atlas_lookup():
    """Lookup on the package's default atlas, or None when it cannot be loaded."""
    try:
        from ..atlas import default_atlas

        img, table = default_atlas()
    except Exception as exc:  # noqa: BLE001 - the table is still useful without labels
        logger.warning("default atlas unavailable for cluster labels (%s); labels are n/a", exc)
        return None
    return atlas_lookup(img, table)


def cluster_table(significant, t_map, tfce_map, pfwe_map, affine, *, connectivity: int = 26,
                  to_mni_points=None, label_lookup=None) -> pd.DataFrame:
    """One row per cluster of significant voxels, largest first.

    Parameters
    ----------
    significant : ndarray of bool, 3D
        Voxels to cluster (e.g. TFCE pfwe < alpha of one contrast).
    t_map, tfce_map, pfwe_map : ndarray, 3D
        The contrast's maps (t signed for this contrast).
    affine : ndarray (4, 4)
        Voxel -> mm of the analysis grid.
    connectivity : {6, 18, 26}
    to_mni_points : callable, optional
        Maps analysis-space mm points (n, 3) to MNI mm; identity when omitted
        (the analysis space is MNI).
    label_lookup : callable, optional
        MNI mm points -> names (see :func:`atlas_lookup`); "n/a" when omitted.

    Returns
    -------
    pandas.DataFrame with :data:`CLUSTER_COLUMNS`.
    """
    significant = np.asarray(significant, dtype=bool)
    structure = ndimage.generate_binary_structure(3, _STRUCTURES[int(connectivity)])
    labels, n = ndimage.label(significant, structure=structure)
    if n == 0:
        return pd.DataFrame(columns=CLUSTER_COLUMNS)
    affine = np.asarray(affine, dtype=float)
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    index = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index).astype(int)
    # peak: highest TFCE, then highest t
    key = np.asarray(tfce_map, dtype=np.float64) + 1e-9 * np.asarray(t_map, dtype=np.float64)
    peaks = ndimage.maximum_position(key, labels, index)
    centres = ndimage.center_of_mass(significant.astype(float), labels, index)
    to_mm = lambda ijk: np.asarray(ijk, dtype=float) @ affine[:3, :3].T + affine[:3, 3]  # noqa: E731
    peak_mm = to_mm(np.array(peaks))
    centre_mm = to_mm(np.array(centres))
    if to_mni_points is not None:
        peak_mm = np.asarray(to_mni_points(peak_mm), dtype=float)
        centre_mm = np.asarray(to_mni_points(centre_mm), dtype=float)
    labels_at_peak = label_lookup(peak_mm) if label_lookup is not None else ["n/a"] * n
    rows = []
    for k in range(n):
        p = tuple(int(v) for v in peaks[k])
        rows.append({
            "n_voxels": int(sizes[k]), "volume_mm3": float(sizes[k] * voxel_volume),
            "peak_x_mm": peak_mm[k, 0], "peak_y_mm": peak_mm[k, 1], "peak_z_mm": peak_mm[k, 2],
            "centre_x_mm": centre_mm[k, 0], "centre_y_mm": centre_mm[k, 1], "centre_z_mm": centre_mm[k, 2],
            "peak_t": float(t_map[p]), "peak_tfce": float(tfce_map[p]), "peak_pfwe": float(pfwe_map[p]),
            "peak_label": labels_at_peak[k],
        })
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["n_voxels", "peak_tfce"], ascending=[False, False], kind="stable")
    frame.insert(0, "cluster", np.arange(1, n + 1))
    return frame[CLUSTER_COLUMNS].reset_index(drop=True)
