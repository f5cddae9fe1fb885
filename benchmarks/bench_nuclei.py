"""Per-subject error of the small deep nuclei, native space, true labels, demeaned (issue 16).

    python benchmarks/bench_nuclei.py --protocol me2 --seeds 1 2 3 4 5 --snr 35 \\
        --variants offset_wrapped+unwrap_laplacian unwrap_laplacian oracle_total
    python benchmarks/bench_nuclei.py --protocol me2 --seeds 1 2 3 4 --snr 35 \\
        --variants unwrap_laplacian unwrap_temporal unwrap_guided unwrap_oracle oracle_total
    python benchmarks/bench_nuclei.py --protocol paper --seeds 1 3 --variants unwrap_laplacian unwrap_temporal

For each simulated head (``qsm_bids.simulate.simulate_subject``; "me2": 2 mm
isotropic, TE 6/13/20 ms; "paper": 1 x 1 x 2 mm, TE 20 ms; oblique heads) it
runs steps 1-5 on the arrays (``qsm_bids.recon.pipeline.reconstruct``, no
registration) and prints, per nucleus and hemisphere,

    error = (mean chi in the true label - mean chi in the QSM mask)
            - (the same for the true chi)              [ppm]

inside the QSM mask (``chi_mask``), as ``benchmarks/evaluate_demo.py`` does.
Variants isolate one factor each:

- ``base``: the defaults (``recon.phase_offset_method = "unwrapped"``, ``recon.unwrap_method =
  "auto"``: temporal for multi-echo data, Laplacian for one echo);
- ``offset_wrapped``: the TE = 0 offset from the wrapped echo-1-to-2 phase
  change (the behaviour before issue 16); ``offset_unwrapped``: the default;
- ``no_offset``: no TE = 0 phase-offset removal (the simulator's offset is a
  constant, which the Laplacian unwrapping drops: this is the ideal offset);
- ``unwrap_laplacian`` / ``unwrap_guided`` / ``unwrap_temporal``: ``recon.unwrap_method``
  (the Laplacian solution itself; each echo the wrapped phase + 2 pi k nearest a least-squares
  guide inside the mask; echo 1 so, later echoes from the earlier ones' frequency);
- ``unwrap_oracle``: each echo's wrapped phase + 2 pi k nearest the true field x TE (the ideal
  exact unwrapping; what is left of the echo stage: offset removal, noise, the fit);
- ``echo_average``: ``recon.echo_combination = "average"``; ``offsmN``: the TE = 0 offset's
  smoothing (``recon.phase_offset_smoothing_mm``) N mm; ``offrobN``: its robust passes
  (``recon.phase_offset_robust_passes``; ``offsm6+offrob0`` is the estimate before issue 16's fix);
- ``oracle_total``: the echo stage replaced by the simulator's voxel-averaged
  total field (what is left is mask, background removal and inversion);
- ``shell15``: the mask's phase-coherence refinement only within 15 mm of the
  mask edge (a proposal for ``recon/mask.py``: deep incoherent voxels in the
  dark SN are kept); ``lam2000``/``lam4000``: MEDI lambda; ``nosmv``: MEDI on SHARP's local field
  instead of its SMV form; ``pctNN``: MEDI's gradient-mask percentage NN %; ``noedge``: no MEDI rim shells (the default
  before issue 17's change), ``edgeR1_R2``: rim shells R1, R2 mm; ``rimwW``: the rim shells' data weighted W
  (``recon.medi_rim_data_weight``); ``rimminK``: rim radii widened to K voxel edges
  (``recon.medi_rim_min_radius_voxels``; ``rimmin2`` makes the 2 mm grids' 3 mm shell a 4 mm one);
  ``outer_every_echo``: ``recon.mask_outer_layer_every_echo``; ``bregN``: ``recon.medi_bregman_steps`` N;
  ``nuclei``: ``--preset nuclei`` (the two together); ``pqQ``: the phase-coherence threshold Q whatever the
  echo count (``recon.mask_phase_quality`` and ``mask_phase_quality_single_echo``);
  ``t1wmask``: the simulator's
  brain mask given as the T1w brain mask (a perfect T1w mask: the chain with the rim shells, as
  ``reconstruct`` runs with a T1w; without it the magnitude mask and no shells); combinations with
  ``+`` (e.g. ``offset_unwrapped+lam2000``).

Simulations and results are cached under ``--cache`` (the machine is shared:
keep to a few heads); a result's file name carries a digest of the ``ReconConfig`` defaults, since each
variant is defined against them and a changed default must not be served an old result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from qsm_bids.config import PRESETS, ReconConfig
from qsm_bids.recon import mask as recon_mask
from qsm_bids.recon import pipeline
from qsm_bids.recon._ops import crop_box
from qsm_bids.recon.echoes import phase_to_ppm_factor
from qsm_bids.recon.unwrap import unwrap_to_reference

NUCLEI = ("red_nucleus", "substantia_nigra_dorsal", "substantia_nigra_ventral", "globus_pallidus",
          "dentate_nucleus")
SHORT = {"red_nucleus": "RN", "substantia_nigra_dorsal": "SNd", "substantia_nigra_ventral": "SNv",
         "globus_pallidus": "GP", "dentate_nucleus": "DN"}
PROTOCOLS = {
    "me2": dict(echo_times=(0.006, 0.013, 0.020)),
    "paper": dict(voxel_size=(1.0, 1.0, 2.0), matrix=(256, 224, 80), echo_times=(0.020,)),
}


def simulate(protocol, seed, snr, cache: Path):
    from qsm_bids.simulate.subject import simulate_subject

    path = cache / f"sim_{protocol}_s{seed}_snr{snr:g}.pkl"
    if path.exists():
        s = pickle.loads(path.read_bytes())
        if "brain_mask" in s:  # older caches lack it
            return s
    s = simulate_subject(seed, snr=snr, with_t1w=False, **PROTOCOLS[protocol])
    keep = {k: s[k] for k in ("magnitude", "phase", "voxel_size", "echo_times", "field_strength", "b0_dir",
                              "chi_ppm", "total_field_ppm", "labels", "label_table", "pose", "brain_mask")}
    path.write_bytes(pickle.dumps(keep, protocol=4))
    return keep


def nucleus_errors(chi, qmask, s):
    """Demeaned error (ppm) and demeaned truth per nucleus and hemisphere."""
    truth, lab, tab = s["chi_ppm"], s["labels"], s["label_table"]
    cm, tm = chi[qmask].mean(), truth[qmask].mean()
    out = {}
    for region in NUCLEI:
        for hemi in "LR":
            idx = int(tab[(tab.region == region) & (tab.hemisphere == hemi)]["index"].iloc[0])
            sel = (lab == idx) & qmask
            if sel.any():
                out[f"{SHORT[region]}_{hemi}"] = float((chi[sel].mean() - cm) - (truth[sel].mean() - tm))
                out[f"{SHORT[region]}_{hemi}_true"] = float(truth[sel].mean() - tm)
    return out


def refine_shell(mask, phase, voxel_size, phase_quality=0.5, shell_mm=15.0):
    """Phase-coherence refinement only within ``shell_mm`` of the mask edge (proposal for mask.py)."""
    if not phase_quality or phase_quality <= 0:
        return mask
    ph = np.asarray(phase)
    ph = ph[..., 0] if ph.ndim == 4 else ph
    good = recon_mask.phase_coherence(ph, voxel_size) > phase_quality
    good |= ndimage.distance_transform_edt(mask, sampling=voxel_size) > shell_mm
    return recon_mask.largest_component(mask & good)


def _box(s, p):
    """The pipeline's crop box for this head (mask from the RSS magnitude, as ``reconstruct``)."""
    vs = s["voxel_size"]
    m4 = s["magnitude"].reshape(s["magnitude"].shape[:3] + (-1,))
    brain = pipeline.brain_mask(np.sqrt((m4**2).sum(-1)), vs, threshold=p.mask_threshold,
                                erode_mm=p.mask_erode_mm)
    margin = max(10.0, p.sharp_radius_mm + 2 * max(vs),
                 pipeline.BACKGROUND_METHODS[p.background].margin_mm(p) + 2 * max(vs))
    return crop_box(brain, [int(np.ceil(margin / d)) for d in vs])


def run_variant(s, variant):
    parts = variant.split("+")
    p = ReconConfig()
    mag, phase = s["magnitude"], s["phase"]
    oracle = shell = oracle_unwrap = t1w = False
    for part in parts:
        if part == "base":
            pass
        elif part == "no_offset":
            p = replace(p, remove_phase_offset_multiecho=False)
        elif part in ("offset_wrapped", "offset_unwrapped"):
            p = replace(p, phase_offset_method=part.split("_")[1])
        elif part in ("unwrap_laplacian", "unwrap_guided", "unwrap_temporal"):
            p = replace(p, unwrap_method=part.split("_")[1])
        elif part == "unwrap_oracle":
            oracle_unwrap = True
        elif part == "echo_average":
            p = replace(p, echo_combination="average")
        elif part.startswith("offsm"):
            p = replace(p, phase_offset_smoothing_mm=float(part[5:]))
        elif part.startswith("offrob"):
            p = replace(p, phase_offset_robust_passes=int(part[6:]))
        elif part == "oracle_total":
            oracle = True
        elif part == "t1wmask":
            t1w = True
        elif part == "shell15":
            shell = True
        elif part.startswith("lam"):
            p = replace(p, medi_lambda=float(part[3:]))
        elif part == "nosmv":
            p = replace(p, medi_smv=False)
        elif part == "noedge":
            p = replace(p, medi_edge_radii_mm=())
        elif part.startswith("edge"):
            p = replace(p, medi_edge_radii_mm=tuple(float(r) for r in part[4:].split("_") if r))
        elif part.startswith("rimmin"):
            p = replace(p, medi_rim_min_radius_voxels=float(part[6:]))
        elif part.startswith("rimw"):
            p = replace(p, medi_rim_data_weight=float(part[4:]))
        elif part.startswith("pq"):
            q = float(part[2:])
            p = replace(p, mask_phase_quality=q, mask_phase_quality_single_echo=q)
        elif part.startswith("pct"):
            p = replace(p, medi_percentage=float(part[3:]) / 100)
        elif part == "outer_every_echo":
            p = replace(p, mask_outer_layer_every_echo=True)
        elif part.startswith("breg"):
            p = replace(p, medi_bregman_steps=int(part[4:]))
        elif part == "nuclei":
            p = replace(p, **PRESETS["nuclei"]["recon"])
        else:
            raise SystemExit(f"unknown variant part {part!r}")
    saved_fit, saved_refine = pipeline.fit_field, pipeline.refine_with_phase
    try:
        if shell:
            pipeline.refine_with_phase = refine_shell
        if oracle:
            # the echo stage's output replaced by the true total field on the pipeline's crop box
            box = _box(s, p)
            truth = s["total_field_ppm"]
            pipeline.fit_field = lambda *a, **k: truth[box].astype(np.float32)
        if oracle_unwrap:
            # each echo's (offset-removed) wrapped phase + 2 pi k nearest the true field x TE: the ideal
            # exact unwrapping (what is left: offset removal, noise, intravoxel dephasing, the fit)
            box = _box(s, p)
            truth = s["total_field_ppm"][box].astype(np.float64)
            te = np.asarray(s["echo_times"], float)
            ref = np.stack([truth / phase_to_ppm_factor(t, s["field_strength"]) for t in te], axis=-1)
            pipeline.UNWRAP_METHODS["oracle"] = lambda ph, *a: unwrap_to_reference(ph, ref)
            p = replace(p, unwrap_method="oracle")
        r = pipeline.reconstruct(mag, phase, s["echo_times"], s["voxel_size"], s["b0_dir"],
                                 s["field_strength"], p, t1w_mask=s["brain_mask"] if t1w else None)
    finally:
        pipeline.fit_field, pipeline.refine_with_phase = saved_fit, saved_refine
        pipeline.UNWRAP_METHODS.pop("oracle", None)
    return nucleus_errors(r.chi_ppm, r.chi_mask, s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=tuple(PROTOCOLS), default="me2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--snr", type=float, default=35.0)
    ap.add_argument("--variants", nargs="+", default=["unwrap_laplacian", "base", "oracle_total"])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qsm-bids-bench-nuclei"))
    args = ap.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    defaults = hashlib.sha1(json.dumps(asdict(ReconConfig()), sort_keys=True, default=str).encode()).hexdigest()[:8]
    rows = {}
    for seed in args.seeds:
        s = simulate(args.protocol, seed, args.snr, args.cache)
        for v in args.variants:
            path = args.cache / f"res_{args.protocol}_s{seed}_snr{args.snr:g}_{v}_{defaults}.json"
            if path.exists():
                e = json.loads(path.read_text())
            else:
                t0 = time.perf_counter()
                e = run_variant(s, v)
                e["seconds"] = time.perf_counter() - t0
                path.write_text(json.dumps(e))
            rows[(v, seed)] = e
            print(f"seed {seed} {v:28s} " + " ".join(f"{k} {e[k]:+.4f}" for k in e
                                                        if "_true" not in k and k != "seconds"), flush=True)
    keys = [k for k in next(iter(rows.values())) if "_true" not in k and k != "seconds"]
    print(f"\nmax |error| (ppm) over seeds {args.seeds}, {args.protocol}, SNR {args.snr:g}:")
    print(f"{'variant':28s} " + " ".join(f"{k:>7s}" for k in keys))
    for v in args.variants:
        errs = np.array([[rows[(v, sd)][k] for k in keys] for sd in args.seeds])
        print(f"{v:28s} " + " ".join(f"{x:7.4f}" for x in np.abs(errs).max(axis=0)))
    print("\nspread over seeds (max - min of the error, ppm) and mean seconds per run:")
    for v in args.variants:
        errs = np.array([[rows[(v, sd)][k] for k in keys] for sd in args.seeds])
        secs = np.mean([rows[(v, sd)].get("seconds", np.nan) for sd in args.seeds])
        print(f"{v:28s} " + " ".join(f"{x:7.4f}" for x in np.ptp(errs, axis=0)) + f"  {secs:6.1f} s")


if __name__ == "__main__":
    main()
