"""DiReCT cortical thickness against a planted cortical thinning, and the structural step's time.

One simulated patient is written twice by ``qsm-bids-simulate`` with the same seed: as is, and with
``--atrophy REGION=LOSS`` for a cortical region (the outer ``LOSS`` of each of its cortical columns
becomes CSF, the white-matter surface stays; the ground truth records each region's true grey-matter
volume). Both go through ``qsm-bids participant`` with ``structural.thickness`` on, and the mean DiReCT
thickness of the region (the participant's ``_desc-volumes_morph.tsv``, measure ``thickness_mm``) is
compared between the two: the measured ratio against the planted thickness factor ``1 - LOSS`` and
against the true ratio of the region's grey matter (which is below ``LOSS`` where the template's grey
matter lies in white-matter voxels, which a thinning keeps). The structural step's timings (N4,
Atropos, DiReCT, ...) come from the participant log.

Usage::

    .venv/bin/python benchmarks/bench_thickness.py WORKDIR [--loss 0.12] [--region precentral_gyrus]
                                                   [--seed 0] [--n-cpus 2]
                                                   [--structural '{"thickness_resolution_mm": 2.0}'
                                                    --derivatives res2]
    .venv/bin/python benchmarks/bench_thickness.py WORKDIR --time-direct 2.0 1.5 --n-cpus 1
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

BIN = Path(sys.executable).parent


def _run(cmd, log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t0


def _time_direct(work: Path, args) -> int:
    """DiReCT alone, timed at each grid spacing on one segmentation (the participant level's own function)."""
    import os

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.n_cpus)
    import ants

    from qsm_bids.structural import thickness

    anat = next((work / "none" / args.derivatives).glob("sub-*/anat"))
    stem = anat / anat.parent.name
    seg = ants.image_read(f"{stem}_desc-tissue_dseg.nii.gz")
    gm = ants.image_read(f"{stem}_label-GM_probseg.nii.gz")
    wm = ants.image_read(f"{stem}_label-WM_probseg.nii.gz")
    for mm in args.time_direct:
        t0 = time.perf_counter()
        thickness(seg, gm, wm, iterations=20, resolution_mm=mm)
        print(f"DiReCT on {seg.shape} at {mm:g} mm, {args.n_cpus} thread(s): {time.perf_counter() - t0:.1f} s",
              flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--loss", type=float, default=0.12)
    ap.add_argument("--region", default="precentral_gyrus")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-cpus", type=int, default=2)
    ap.add_argument("--structural", default="{}",
                    help='more structural settings as JSON, e.g. \'{"thickness_resolution_mm": 2.0}\'')
    ap.add_argument("--derivatives", default="derivatives", help="derivatives folder name (one per setting)")
    ap.add_argument("--time-direct", type=float, nargs="+", metavar="MM",
                    help="only time DiReCT (20 iterations, --n-cpus threads) at these grid spacings on the "
                         "segmentation of an earlier run's participant without atrophy, one after the other")
    args = ap.parse_args(argv)
    work = args.workdir
    if args.time_direct:
        return _time_direct(work, args)
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / f"{args.derivatives}.json"
    cfg.write_text(json.dumps({"structural": {"thickness": True, **json.loads(args.structural)}}))
    results = {}
    for variant in ("none", "atrophy"):
        bids, deriv = work / variant / "bids", work / variant / args.derivatives
        if not (bids / "participants.tsv").exists():
            extra = ["--atrophy", f"{args.region}={args.loss}"] if variant == "atrophy" else []
            _run([BIN / "qsm-bids-simulate", bids, "--n-patients", 1, "--n-controls", 1, "--seed", args.seed,
                  "--effect-scale", 0, *extra], work / f"{variant}_simulate.log")
        parts = pd.read_csv(bids / "participants.tsv", sep="\t")
        label = parts.loc[parts["group"] == "ALS", "participant_id"].iloc[0][4:]
        log = work / f"{variant}_{args.derivatives}_participant.log"
        wall = _run([BIN / "qsm-bids", bids, deriv, "participant", "--participant-label", label, "--n-cpus",
                     args.n_cpus, "--registration", "fast", "--config", cfg, "--skip-bids-validation"], log)
        text = log.read_text()
        m = re.search(r"structural: ICV [\d.]+ ml, (\{.*\})", text)
        timings = ast.literal_eval(m.group(1)) if m else {}
        vols = pd.read_csv(deriv / f"sub-{label}" / "anat" / f"sub-{label}_atlas-qsmbids_desc-volumes_morph.tsv",
                           sep="\t")
        thick = vols[(vols["measure"] == "thickness_mm") & (vols["region"] == args.region)]
        gt = pd.read_csv(bids / "derivatives" / "groundtruth" / f"sub-{label}" / "anat"
                         / f"sub-{label}_atlas-qsmbids_desc-volumes_morph.tsv", sep="\t")
        true_vol = gt[gt["region"] == args.region].set_index("hemisphere")["gm_volume_mm3"]
        results[variant] = {"label": label, "wall_s": wall, "timings": timings,
                            "thickness": thick.set_index("hemisphere")["value"], "true_volume": true_vol}
    planted = 1.0 - args.loss
    print(f"{args.region}, planted thinning {args.loss:g} (thickness factor {planted:.3f}); seed {args.seed}, "
          f"--n-cpus {args.n_cpus}, structural {cfg.read_text()}")
    print("| hemisphere | thickness, no atrophy (mm) | with atrophy (mm) | measured ratio | planted thickness factor "
          "| true grey-matter ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for hemi in results["none"]["thickness"].index:
        a, b = results["none"]["thickness"][hemi], results["atrophy"]["thickness"][hemi]
        vr = results["atrophy"]["true_volume"][hemi] / results["none"]["true_volume"][hemi]
        print(f"| {hemi} | {a:.3f} | {b:.3f} | {b / a:.3f} | {planted:.3f} | {vr:.3f} |")
    for variant, r in results.items():
        t = r["timings"]
        extra = sum(v for k, v in t.items())
        print(f"{variant}: participant wall {r['wall_s']:.0f} s; structural step {extra:.0f} s: {t}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
