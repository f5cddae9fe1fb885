"""Score the structural comparators and the CST diffusion of a simulated cohort against its ground truth.

    .venv/bin/python benchmarks/evaluate_structural.py BIDS_DIR DERIVATIVES_DIR

Reads a ``qsm-bids-simulate`` dataset (optionally with ``--atrophy`` and ``--dwi``) and the qsm-bids
participant and group derivatives, and prints:

1. volumes: the measured volume of each region over the true native volume (mean over subjects), the
   measured ALS / control ratio against the true one (``derivatives/groundtruth/atrophy.json`` names the
   planted loss), and the group level's ICV- and age-adjusted rank-sum (``group/desc-volumes_stats.tsv``);
2. VBM (and thickness when computed): the FWE-significant clusters of both contrasts
   (``group/vbm/contrast-*_desc-clusters_table.tsv``), with their peak label;
3. DTI: the CST medians of FA, MD, RD and AD against the simulator's truth (the median of the true map over
   the true CST, ``groundtruth/sub-X/dwi/*_desc-planted_dwimap.tsv``), worst absolute error and bias;
4. QSM-DTI: the group level's Spearman correlations in patients (``group/desc-dti_correlations.tsv``), and
   ``scipy.stats.spearmanr`` recomputed from its values table and from the planted values (the answer
   the simulator built in: planted CST susceptibility vs planted CST FA); how well the measured CST QSM
   (the group's centre-line values, and the participants' native region medians) ranks the planted one.

With ``--vbm-truth N``, the sample's own anatomy as the VBM reference: each head's true modulated GM (the
template's GM probability times the analytic Jacobian of the simulator's pose and shape modes,
``bench_registration_jacobian.true_jacobian``; the planted atrophy is not in it) through the group
level's VBM (same design, ICV, mask rule, smoothing, N permutations), its FWE-significant clusters, and
the truth's t and FWE p at each of the pipeline's cluster peaks. The heads' random shapes can differ
between the groups by chance (a 5 % FWE test flags such a sample 1 time in 20); a cluster the truth also
has is the sample's anatomy, one it lacks is the pipeline's error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, stats


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"])


def volumes(bids: Path, deriv: Path, part: pd.DataFrame) -> None:
    gt = bids / "derivatives" / "groundtruth"
    rows = []
    for pid, group in zip(part.participant_id, part.group):
        meas_path = deriv / pid / "anat" / f"{pid}_atlas-qsmbids_desc-volumes_morph.tsv"
        true_path = gt / pid / "anat" / f"{pid}_atlas-qsmbids_desc-volumes_morph.tsv"
        if not meas_path.exists() or not true_path.exists():
            continue
        m = _read(meas_path)
        m = m[m.measure == "volume_mm3"][["region", "hemisphere", "value"]]
        t = _read(true_path)[["region", "hemisphere", "volume_mm3"]]
        both = m.merge(t, on=["region", "hemisphere"])
        both["participant_id"], both["group"] = pid, group
        rows.append(both)
    if not rows:
        print("volumes: none measured")
        return
    v = pd.concat(rows)
    v["ratio"] = v.value / v.volume_mm3
    planted = {}
    if (gt / "atrophy.json").exists():
        planted = json.loads((gt / "atrophy.json").read_text()).get("VolumeLoss", {})
    print(f"volumes ({v.participant_id.nunique()} subjects): measured / true, and ALS / control of the means")
    print("| region | measured / true (mean, SD) | ALS / control measured | ALS / control true | planted loss |")
    print("|---|---|---:|---:|---:|")
    for region, r in v.groupby("region", sort=False):
        per = r.groupby(["participant_id", "group"])[["value", "volume_mm3"]].sum().reset_index()
        g = per.groupby("group")[["value", "volume_mm3"]].mean()
        meas = g.loc["ALS", "value"] / g.loc["control", "value"] if {"ALS", "control"} <= set(g.index) else np.nan
        true = g.loc["ALS", "volume_mm3"] / g.loc["control", "volume_mm3"] if {"ALS", "control"} <= set(g.index) \
            else np.nan
        print(f"| {region} | {r.ratio.mean():.3f} ({r.ratio.std():.3f}) | {meas:.3f} | {true:.3f} | "
              f"{planted.get(region, 0):g} |")
    stats_path = deriv / "group" / "desc-volumes_stats.tsv"
    if stats_path.exists():
        s = _read(stats_path)
        cols = [c for c in ("region", "hemisphere", "z", "p", "p_bonferroni") if c in s.columns]
        print("\ngroup level, volumes (ICV and age adjusted rank-sum, Bonferroni):")
        print(s[cols].to_string(index=False))


def clusters(deriv: Path) -> None:
    for sub in ("vbm", "thickness"):
        folder = deriv / "group" / sub
        tables = sorted(folder.glob("contrast-*_desc-clusters_table.tsv")) if folder.exists() else []
        if not tables:
            print(f"\n{sub}: not computed")
            continue
        for path in tables:
            t = _read(path)
            sig = t[t.peak_pfwe < 0.05] if "peak_pfwe" in t else t
            print(f"\n{sub} {path.name.split('_desc')[0]}: {len(sig)} FWE-significant cluster(s)")
            if len(sig):
                print(sig[["n_voxels", "peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_t", "peak_pfwe",
                           "peak_label"]].head(8).to_string(index=False))


def dti(bids: Path, deriv: Path, part: pd.DataFrame) -> None:
    gt = bids / "derivatives" / "groundtruth"
    rows = []
    for pid in part.participant_id:
        est_path = deriv / pid / "dwi" / f"{pid}_atlas-qsmbids_stat-median_dwimap.tsv"
        true_path = gt / pid / "dwi" / f"{pid}_atlas-qsmbids_desc-planted_dwimap.tsv"
        if est_path.exists() and true_path.exists():
            m = _read(est_path).merge(_read(true_path), on=["region", "hemisphere", "metric"])
            rows.append(m.assign(participant_id=pid))
    if not rows:
        print("\nDTI: none measured")
        return
    d = pd.concat(rows)
    d["error"] = d.value - d.truth_median
    print(f"\nDTI in the CST ({d.participant_id.nunique()} subjects, both hemispheres): measured median - true median")
    for metric, r in d.groupby("metric", sort=False):
        scale = 1e3 if metric != "FA" else 1.0
        unit = " (x1e-3 mm2/s)" if metric != "FA" else ""
        print(f"  {metric}{unit}: bias {r.error.mean() * scale:+.4f}, worst |error| {r.error.abs().max() * scale:.4f}, "
              f"worst relative {np.max(np.abs(r.error / r.truth_median)) * 100:.1f} %")
    corr_path = deriv / "group" / "desc-dti_correlations.tsv"
    values_path = deriv / "group" / "desc-dti_values.tsv"
    if corr_path.exists() and values_path.exists():
        corr = _read(corr_path)
        values = _read(values_path)
        pat = values[values.group.astype(str) == str(corr.group.iloc[0])]
        print(f"\nQSM-DTI in patients (n = {len(pat)}): the group level, and spearmanr recomputed from its values")
        for r in corr.itertuples():
            rho, p = stats.spearmanr(pat["QSM"], pat[r.y], nan_policy="omit")
            print(f"  QSM-{r.y}: rho {r.rho:+.3f} (recomputed {rho:+.3f}), rho^2 {r.rho2:.3f}, P {r.p:.4f} "
                  f"(recomputed {p:.4f})")
    # the planted relationship: planted CST susceptibility vs planted CST FA, patients, L/R averaged
    planted = []
    for pid, group in zip(part.participant_id, part.group):
        chi_path = gt / pid / "anat" / f"{pid}_atlas-qsmbids_desc-planted_Chimap.tsv"
        fa_path = gt / pid / "dwi" / f"{pid}_atlas-qsmbids_desc-planted_dwimap.tsv"
        if group != "ALS" or not fa_path.exists():
            continue
        chi = _read(chi_path)
        fa = _read(fa_path)
        planted.append((chi[chi.region == "corticospinal_tract"].planted_ppm.mean(),
                        fa[(fa.region == "corticospinal_tract") & (fa.metric == "FA")].planted.mean()))
    if len(planted) >= 3:
        x, y = np.array(planted).T
        rho, p = stats.spearmanr(x, y)
        print(f"  planted CST susceptibility vs planted CST FA in patients: rho {rho:+.3f}, P {p:.4f}")
    if values_path.exists():
        cst_qsm_against_planted(bids, deriv, part, _read(values_path))


def cst_qsm_against_planted(bids: Path, deriv: Path, part: pd.DataFrame, values: pd.DataFrame) -> None:
    """How well the measured CST QSM ranks the planted CST susceptibility in patients: the group level's
    (centre line in the study template) and the participants' native region medians (eroded atlas CST)."""
    gt = bids / "derivatives" / "groundtruth"
    rows = []
    for pid, group in zip(part.participant_id, part.group):
        label = pid.removeprefix("sub-")
        native = deriv / pid / "anat" / f"{pid}_atlas-qsmbids_stat-median_Chimap.tsv"
        chi_path = gt / pid / "anat" / f"{pid}_atlas-qsmbids_desc-planted_Chimap.tsv"
        v = values[values.participant_id.astype(str).str.removeprefix("sub-").str.zfill(len(label)) == label]
        if group != "ALS" or v.empty or not native.exists():
            continue
        nat, chi = _read(native), _read(chi_path)
        rows.append((chi[chi.region == "corticospinal_tract"].planted_ppm.mean(), float(v.QSM.iloc[0]),
                     nat[nat.region == "corticospinal_tract"].median_ppm.mean(), float(v.FA.iloc[0])))
    if len(rows) < 3:
        return
    planted, centre, region, fa = np.array(rows).T
    print(f"  measured CST QSM vs the planted CST susceptibility in patients (n = {len(rows)}), Spearman rho:")
    for name, x in (("group level (centre line, study template)", centre),
                    ("native eroded region medians", region)):
        r_fa = stats.spearmanr(x, fa)
        print(f"    {name}: rho {stats.spearmanr(x, planted).statistic:+.3f}; with the measured FA: rho "
              f"{r_fa.statistic:+.3f}, P {r_fa.pvalue:.4f}")


def true_modulated_gm(bids: Path, pid: str, gm_template, affine) -> np.ndarray:
    """Template GM probability x the head's analytic Jacobian (T1w volume per template volume)."""
    from bench_registration_jacobian import true_jacobian

    sidecar = bids / "derivatives" / "groundtruth" / pid / "anat" / f"{pid}_Chimap.json"
    pose = json.loads(sidecar.read_text())["Pose"]
    return (gm_template * true_jacobian(pose, gm_template.shape, affine)).astype(np.float32)


def vbm_truth(bids: Path, deriv: Path, part: pd.DataFrame, n_permutations: int) -> None:
    import dataclasses

    import nibabel as nib

    from nilearn.image import resample_to_img

    from qsm_bids.atlas import ATLAS_NAME
    from qsm_bids.config import Config
    from qsm_bids.derivatives import clusters_table_name, find_participant_derivatives
    from qsm_bids.group.structural import ICV_COLUMN, icv_ml, read_volume_tables, vbm_inputs
    from qsm_bids.group.voxelwise import voxelwise_inference
    from qsm_bids.templates import TEMPLATE_NAME, template_image

    tables, maps = {}, {}
    for pid in part.participant_id:
        found, _ = find_participant_derivatives(deriv, pid.removeprefix("sub-"), TEMPLATE_NAME, ATLAS_NAME,
                                                keys=("volumes", "gm_modulated_template"))
        if {"volumes", "gm_modulated_template"} <= set(found):
            tables[pid], maps[pid] = found["volumes"], found["gm_modulated_template"]
    if not tables:
        print("\nVBM truth: no participant has volumes and a modulated GM map")
        return
    ref = nib.load(str(next(iter(maps.values()))))
    gm_img = resample_to_img(template_image(2.0, "GM"), ref, interpolation="linear")
    gm = np.asarray(gm_img.dataobj, np.float64)
    gm /= gm.max()
    pids = list(tables)
    images = [nib.Nifti1Image(true_modulated_gm(bids, p, gm, ref.affine), ref.affine) for p in pids]
    icv = icv_ml(read_volume_tables(tables))
    design = part.set_index("participant_id").loc[pids].reset_index()
    design[ICV_COLUMN] = [float(icv[p]) for p in pids]
    cfg = Config()
    group = dataclasses.replace(cfg.group, n_permutations=int(n_permutations))
    mask, grids, g = vbm_inputs(images, group, cfg.structural.vbm_gm_threshold)
    res = voxelwise_inference(images, grids, design, g, seed=cfg.seed, n_jobs=2, analysis_mask=mask)
    inv = np.linalg.inv(ref.affine)
    print(f"\nVBM of the true modulated GM ({len(pids)} heads, {n_permutations} permutations, "
          f"covariates {', '.join(g.covariates)}):")
    for cname, maps in res.contrasts.items():
        sig = res.mask & (maps["pfwe"] < g.alpha)
        print(f"  {cname}: min FWE p {maps['pfwe'][res.mask].min():.4f}, {int(sig.sum())} significant voxels")
        labels, n = ndimage.label(sig, structure=np.ones((3, 3, 3)))
        for k in np.argsort(-np.bincount(labels.ravel())[1:])[:5] if n else []:
            cluster = labels == k + 1
            peak = np.unravel_index(np.argmax(np.where(cluster, maps["t"], -np.inf)), cluster.shape)
            xyz = (ref.affine @ [*peak, 1.0])[:3]
            print(f"    truth cluster {int(cluster.sum())} voxels at ({xyz[0]:g}, {xyz[1]:g}, {xyz[2]:g}), "
                  f"t {maps['t'][peak]:.1f}, FWE p {maps['pfwe'][peak]:.4f}")
        table = deriv / "group" / "vbm" / clusters_table_name(cname)
        if not table.exists():
            continue
        t = _read(table)
        for _, row in t[t.peak_pfwe < g.alpha].iterrows():
            ijk = tuple(np.rint(inv @ [row.peak_x_mm, row.peak_y_mm, row.peak_z_mm, 1.0])[:3].astype(int))
            print(f"    pipeline cluster {int(row.n_voxels)} voxels at ({row.peak_x_mm:g}, {row.peak_y_mm:g}, "
                  f"{row.peak_z_mm:g}), t {row.peak_t:.1f}, FWE p {row.peak_pfwe:.4f}: truth t "
                  f"{maps['t'][ijk]:.1f}, FWE p {maps['pfwe'][ijk]:.4f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bids", type=Path)
    ap.add_argument("derivatives", type=Path)
    ap.add_argument("--vbm-truth", type=int, metavar="N_PERMUTATIONS", default=0,
                    help="also run the VBM on the heads' true modulated GM with this many permutations")
    args = ap.parse_args(argv)
    part = _read(args.bids / "participants.tsv")
    volumes(args.bids, args.derivatives, part)
    clusters(args.derivatives)
    if args.vbm_truth:
        vbm_truth(args.bids, args.derivatives, part, args.vbm_truth)
    dti(args.bids, args.derivatives, part)


if __name__ == "__main__":
    main()
