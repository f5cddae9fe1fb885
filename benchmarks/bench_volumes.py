"""Subcortical volumes against the simulator's truth: whole-brain warp alone vs the local refinement.

Reads a simulated dataset (``qsm-bids-simulate``, optionally with ``--atrophy``) and its participant
derivatives (the registration step's transforms), and for each subject with a T1w measures every volume
region twice, side by side in one run: the atlas labels brought by the whole-brain template -> T1w
transform, and the same labels refined by :func:`qsm_bids.structural.refine_labels_locally` (what the
structural step writes with ``structural.volume_refinement``). Each is divided by the true native volume
(``derivatives/groundtruth/sub-X/anat/sub-X_atlas-qsmbids_desc-volumes_morph.tsv``).

Prints per region and group the mean and SD of measured / true, the mean absolute error, and for a region
with planted atrophy (``groundtruth/atrophy.json``) the share of the planted loss the measured volumes show:
``1 - (r_ALS / r_control - 1) / loss`` with r the mean measured / true ratio of a group.

    make demo DEMO_DIR=/tmp/atr DEMO_SIM_ARGS="--effect-scale 6 --atrophy putamen=0.15"
    .venv/bin/python benchmarks/bench_volumes.py /tmp/atr/bids /tmp/atr/derivatives [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bids_dir", type=Path)
    ap.add_argument("derivatives_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import ants

    from qsm_bids import atlas as atlas_mod
    from qsm_bids.config import StructuralConfig
    from qsm_bids.registration import brain_template, set_threads, to_ants
    from qsm_bids.structural import n4, refine_labels_locally

    set_threads(a.threads)
    st = StructuralConfig()
    atlas_img, table = atlas_mod.default_atlas()
    tpl = to_ants(brain_template(1.0))
    atl = to_ants(atlas_img, np.float32)
    regions = list(st.volume_regions)
    idx = table.loc[table["region"].isin(regions), "index"].astype(int).tolist()
    groups = pd.read_csv(a.bids_dir / "participants.tsv", sep="\t").set_index("participant_id")["group"]
    gt = a.bids_dir / "derivatives" / "groundtruth"
    rows = []
    for sub in groups.index:
        t1w_path = a.bids_dir / sub / "anat" / f"{sub}_T1w.nii.gz"
        xfm = a.derivatives_dir / sub / "anat" / f"{sub}_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5"
        truth_path = gt / sub / "anat" / f"{sub}_atlas-qsmbids_desc-volumes_morph.tsv"
        if not (t1w_path.exists() and xfm.exists() and truth_path.exists()):
            print(f"{sub}: no T1w, transform or true volumes; skipped")
            continue
        t1 = ants.image_read(str(t1w_path))
        lab = ants.apply_transforms(t1, atl, [str(xfm)], interpolator="genericLabel", defaultvalue=0)
        tpl_native = ants.apply_transforms(t1, tpl, [str(xfm)], interpolator="linear", defaultvalue=0)
        t1c = n4(t1, shrink_factor=st.n4_shrink)
        t0 = time.perf_counter()  # the refinement alone, as the structural step's timings report it
        refined, _ = refine_labels_locally(
            t1c, tpl_native, lab, idx, margin_mm=st.volume_refinement_margin_mm,
            iterations=st.volume_refinement_iterations, radius=st.volume_refinement_radius)
        seconds = time.perf_counter() - t0
        whole = np.rint(lab.numpy()).astype(np.int16)
        truth = pd.read_csv(truth_path, sep="\t")
        vox = float(np.prod(t1.spacing))
        for r in truth[truth["region"].isin(regions)].itertuples(index=False):
            rows.append({"participant": sub, "group": groups[sub], "region": r.region, "hemisphere": r.hemisphere,
                         "true_mm3": r.volume_mm3,
                         "whole_brain": (whole == r.index).sum() * vox / r.volume_mm3,
                         "refined": (refined == r.index).sum() * vox / r.volume_mm3, "seconds": seconds})
        print(f"{sub} ({groups[sub]}): refinement {seconds:.0f} s", flush=True)
    d = pd.DataFrame(rows)
    print("\nmeasured / true volume, per region and group (both hemispheres):")
    print(d.groupby(["region", "group"])[["whole_brain", "refined"]].agg(["mean", "std"]).round(3).to_string())
    print("\nmean absolute error (%):")
    err = d.assign(whole_brain=(d.whole_brain - 1).abs() * 100, refined=(d.refined - 1).abs() * 100)
    print(err.groupby("region")[["whole_brain", "refined"]].mean().round(1).to_string())
    planted = gt / "atrophy.json"
    if planted.exists() and {"ALS", "control"} <= set(d["group"]):
        import json

        loss = json.loads(planted.read_text())["VolumeLoss"]
        print("\nshare of the planted per-patient loss that the measured volumes show "
              "(1 - patients' over-estimate relative to the controls / loss):")
        for region, q in d[d["region"].isin(list(loss))].groupby("region"):
            for col in ("whole_brain", "refined"):
                m = q.groupby("group")[col].mean()
                bias = m["ALS"] / m["control"] - 1
                print(f"  {region:18s} {col:12s} planted -{100 * loss[region]:.0f} %, "
                      f"seen {100 * (1 - bias / loss[region]):.0f} %")
    print(f"\nrefinement time per subject: {d.groupby('participant').seconds.first().mean():.0f} s "
          f"({a.threads} threads)")


if __name__ == "__main__":
    main()
