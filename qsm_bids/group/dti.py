"""QSM-DTI in the corticospinal tract: Spearman correlations in patients (Acosta-Cabronero et al. 2018).

Each participant contributes the median QSM over the centre line of the atlas CST
in the study template (:func:`tract_centreline`: the centre of each axial
cross-section, standing in for the paper's "same skeletonized CST mask", where the
neighbouring tissue's partial volume is least) and the medians of FA, MD, RD and
AD over the atlas CST in native DWI space (``dwi/..._stat-median_dwimap.tsv``).
Left and right are averaged (the paper reports one CST value per participant); a
participant without both hemispheres of a measure has none. In the patient group,
Spearman's rho between CST QSM and each metric is reported with rho^2 and the
two-sided P of :func:`scipy.stats.spearmanr`; fewer than 3 patients with both
measures is "not computed" with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..diffusion import METRICS
from .roi_stats import read_participant_tables

__all__ = ["CORRELATION_COLUMNS", "MIN_N", "centreline_labels", "centreline_medians", "cst_values",
           "dti_correlations", "read_dti_tables", "scatter_figure", "tract_centreline", "write_dti_outputs"]

MIN_N = 3
CORRELATION_COLUMNS = ["region", "x", "y", "group", "n", "rho", "rho2", "p", "note"]


def tract_centreline(mask, tolerance_voxels: float = 0.5, axis: int = 2) -> np.ndarray:
    """The centre of each cross-section of a tract that runs along ``axis``.

    In every slice normal to ``axis``, the voxels of ``mask`` whose in-plane
    Euclidean distance to the nearest voxel outside the mask is within
    ``tolerance_voxels`` of that slice's largest such distance: one or a few voxels
    per slice on the tract's medial line.

    Parameters
    ----------
    mask : ndarray of bool, 3D
    tolerance_voxels : float
        0 keeps only each slice's deepest voxels; 0.5 also keeps ties broken by
        the grid (a centre that falls between voxels).
    axis : int
        The tract's main direction (2: superior-inferior for the CST on an RAS grid).

    Returns
    -------
    ndarray of bool, the shape of ``mask``.
    """
    from scipy import ndimage

    m = np.moveaxis(np.asarray(mask, dtype=bool), axis, -1)
    out = np.zeros_like(m)
    for k in np.flatnonzero(m.any(axis=(0, 1))):
        depth = ndimage.distance_transform_edt(m[..., k])
        out[..., k] = m[..., k] & (depth >= depth.max() - tolerance_voxels)
    return np.moveaxis(out, -1, axis)


def centreline_labels(labels, label_table: pd.DataFrame, region: str = "corticospinal_tract",
                      tolerance_voxels: float = 0.5, axis: int = 2) -> np.ndarray:
    """``labels`` kept only on the centre line (:func:`tract_centreline`) of each label of ``region``
    (one per hemisphere), 0 elsewhere."""
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.int16)
    for idx in label_table.loc[label_table["region"] == region, "index"].astype(int):
        out[tract_centreline(labels == idx, tolerance_voxels, axis)] = idx
    return out


def centreline_medians(chi_images, mask_images, participant_ids, centreline, label_table: pd.DataFrame,
                       region: str = "corticospinal_tract", min_voxels: int = 5) -> pd.DataFrame:
    """Median QSM of each participant over each hemisphere's centre line inside its QSM mask.

    ``chi_images`` / ``mask_images``: images (or arrays) on the grid of ``centreline``
    (:func:`centreline_labels`), in ``participant_ids`` order. Fewer than
    ``min_voxels`` covered voxels give NaN. Returns the long region-table form read
    by :func:`cst_values`: participant_id, region, hemisphere, median_ppm, n_voxels.
    """
    centreline = np.asarray(centreline)
    rows = label_table.loc[label_table["region"] == region, ["index", "hemisphere"]]
    out = []
    for pid, chi_img, mask_img in zip(participant_ids, chi_images, mask_images):
        chi = np.asarray(getattr(chi_img, "dataobj", chi_img), dtype=np.float32)
        covered = np.asarray(getattr(mask_img, "dataobj", mask_img)) > 0.5
        if chi.shape != centreline.shape or covered.shape != centreline.shape:
            raise ValueError(f"participant {pid}: map {chi.shape} / mask {covered.shape} not on the centre "
                             f"line's grid {centreline.shape}")
        for idx, hemi in rows.itertuples(index=False):
            sel = (centreline == int(idx)) & covered & np.isfinite(chi)
            n = int(sel.sum())
            out.append({"participant_id": str(pid), "region": region, "hemisphere": hemi,
                        "median_ppm": float(np.median(chi[sel])) if n >= min_voxels else np.nan, "n_voxels": n})
    return pd.DataFrame(out, columns=["participant_id", "region", "hemisphere", "median_ppm", "n_voxels"])


def read_dti_tables(paths: Mapping[str, str | Path]) -> pd.DataFrame:
    """Participants' ``_stat-median_dwimap.tsv`` as one long table (participant_id with ``sub-``,
    region, hemisphere, metric, value, n_voxels); read as the region tables are
    (:func:`.roi_stats.read_participant_tables`)."""
    return read_participant_tables(paths, ("region", "hemisphere", "metric", "value"), name="DTI region table",
                                   expected=("region", "hemisphere", "metric", "value", "n_voxels"))


def cst_values(qsm_values: pd.DataFrame, dti_values: pd.DataFrame, participants: pd.DataFrame, group_column: str,
               region: str = "corticospinal_tract") -> pd.DataFrame:
    """One row per participant with DTI: participant_id, group, QSM (ppm), FA, MD, RD, AD (L/R means).

    ``qsm_values``: long table of CST QSM medians (participant_id with or without ``sub-``, region,
    hemisphere, median_ppm), e.g. :func:`centreline_medians`; ``dti_values``: :func:`read_dti_tables`.
    """
    q = qsm_values[qsm_values["region"] == region].assign(
        participant_id=lambda f: f["participant_id"].astype(str).str.removeprefix("sub-"))
    qsm = q.groupby("participant_id")["median_ppm"].agg(lambda v: v.mean() if v.notna().sum() == 2 else np.nan)
    d = dti_values[dti_values["region"] == region].assign(
        participant_id=lambda f: f["participant_id"].astype(str).str.removeprefix("sub-"))
    wide = (d.groupby(["participant_id", "metric"])["value"]
            .agg(lambda v: v.mean() if v.notna().sum() == 2 else np.nan).unstack("metric"))
    wide = wide.reindex(columns=list(METRICS))
    groups = participants.assign(participant_id=participants["participant_id"].astype(str).str.removeprefix("sub-"))
    groups = groups.set_index("participant_id")[group_column].astype(str)
    out = wide.reset_index()
    out.insert(1, "group", out["participant_id"].map(groups))
    out.insert(2, "QSM", out["participant_id"].map(qsm))
    return out.sort_values("participant_id").reset_index(drop=True)


def dti_correlations(values: pd.DataFrame, group: str, region: str = "corticospinal_tract",
                     metrics=METRICS) -> pd.DataFrame:
    """Spearman rho of QSM with each metric in ``group`` (rho, rho^2, two-sided P as scipy.stats.spearmanr)."""
    from scipy import stats

    sub = values[values["group"] == group]
    rows = []
    for m in metrics:
        pair = sub[["QSM", m]].dropna() if m in sub else pd.DataFrame(columns=["QSM", m])
        n = len(pair)
        row = {"region": region, "x": "QSM", "y": m, "group": group, "n": n, "rho": np.nan, "rho2": np.nan,
               "p": np.nan, "note": ""}
        if n < MIN_N:
            row["note"] = f"not computed: {n} {group} participant(s) with both CST QSM and {m} (at least {MIN_N})"
        elif pair["QSM"].nunique() < 2 or pair[m].nunique() < 2:
            row["note"] = f"not computed: constant CST QSM or {m} in {group}"
        else:
            res = stats.spearmanr(pair["QSM"].to_numpy(float), pair[m].to_numpy(float))
            row.update(rho=float(res.statistic), rho2=float(res.statistic) ** 2, p=float(res.pvalue))
        rows.append(row)
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def scatter_figure(values: pd.DataFrame, correlations: pd.DataFrame, groups, path) -> Path:
    """CST QSM against FA, MD, RD, AD (patients filled, controls open), rho and P of the patients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS), 3.0), constrained_layout=True)
    for ax, m in zip(np.atleast_1d(axes), METRICS):
        for g, style in zip(groups, ({"color": "C3"}, {"facecolors": "none", "edgecolors": "C0"})):
            s = values[values["group"] == g]
            ax.scatter(s["QSM"], s[m], s=18, label=g, **style)
        c = correlations[correlations["y"] == m]
        if len(c) and np.isfinite(c["rho"].iloc[0]):
            ax.set_title(f"{groups[0]}: rho={c['rho'].iloc[0]:.2f}, P={c['p'].iloc[0]:.3g}", fontsize=9)
        else:
            ax.set_title(f"{groups[0]}: not computed", fontsize=9)
        ax.set_xlabel("CST QSM (ppm)")
        ax.set_ylabel(f"CST {m}" + ("" if m == "FA" else " (mm$^2$/s)"))
    np.atleast_1d(axes)[0].legend(fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def write_dti_outputs(values: pd.DataFrame, correlations: pd.DataFrame, outputs: dict, groups, sidecar: dict) -> None:
    """``desc-dti_values.tsv``, ``desc-dti_correlations.tsv`` (with sidecars) and the scatter plot."""
    from ..io import write_tsv

    write_tsv(outputs["dti_values"], values, sidecar={
        **sidecar,
        "participant_id": {"Description": "participant with DTI"},
        "QSM": {"Description": "median QSM over the centre line of the atlas CST in the analysis space (the "
                "study template, or MNI with group.template mni): the centre of each axial cross-section, "
                "desc-cstcentreline_dseg; mean of L and R",
                "Units": "ppm"},
        **{m: {"Description": f"median {m} over the atlas CST in native DWI space, mean of L and R",
               **({} if m == "FA" else {"Units": "mm^2/s"})} for m in METRICS}})
    write_tsv(outputs["dti_correlations"], correlations, sidecar={
        **sidecar,
        "rho": {"Description": "Spearman's rank correlation of x and y in the group (scipy.stats.spearmanr)"},
        "rho2": {"Description": "rho squared"},
        "p": {"Description": "two-sided P of rho (scipy.stats.spearmanr)"},
        "n": {"Description": "participants of the group with both values"},
        "note": {"Description": "why a correlation was not computed (empty when it was)"}})
    scatter_figure(values, correlations, list(groups), outputs["dti_scatter"])
