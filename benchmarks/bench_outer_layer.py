"""How much background each rim shell's sphere leaves, with and without the brain mask's outermost voxel layer.

    .venv/bin/python benchmarks/bench_outer_layer.py --protocol me2 --seed 1
    .venv/bin/python benchmarks/bench_outer_layer.py --protocol paper --seed 1
    .venv/bin/python benchmarks/bench_outer_layer.py --protocol me2 --seed 4 --field measured --snr 35
    .venv/bin/python benchmarks/bench_outer_layer.py --protocol me2 --seed 4 --field measured --outer-layer-every-echo

On a simulated head (``qsm_bids.simulate.simulate_subject``, no noise needed: the simulator's
true total and local fields, both averaged from a finer grid to the voxel as a scanner does), with
the true brain mask as the data mask, for the interior's SMV sphere (5 mm) and each rim shell
(the voxels where a sphere of radius r fits and no larger one of the list does), it prints by depth
below the surface

    rms((1 - S_r) background)  vs  rms((1 - S_r) local)      [ppm]

where background = total - local: what the sphere leaves of it is what MEDI's data term then
fits as sources. The second block repeats this with the mask's outermost voxel layer (6-connected
erosion by one voxel) left out of the data, which is where that leftover comes from (README, issue
16): its voxels hold partial volumes of the skull and dura, so their field is not harmonic.

``--field measured`` takes the total field the pipeline measures instead (``reconstruct`` at ``--snr``
with the true brain mask as the T1w mask; data mask = its trusted-phase voxels): a scanner measures the
phase of each voxel's summed complex signal, which weights its tissue part, not the mean field the
simulator also reports, so the measured outermost layer departs less from harmonic. What is left then
also holds the noise, so the deep rows give the floor. Each depth band is split at the plane through the
substantia nigra's centroid (voxel axis 3, the heads' inferior-superior axis to within their tilt): the
skull base's steep background is below it. ``--outer-layer-every-echo`` reconstructs with
``recon.mask_outer_layer_every_echo`` on (the trusted voxels then lack the outermost layer's voxels whose
phase is incoherent at a later echo).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy import ndimage

from qsm_bids.config import ReconConfig
from qsm_bids.recon._ops import smv, sphere_shells
from qsm_bids.recon.inversion import usable_rim_radii

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_nuclei import PROTOCOLS  # noqa: E402

DEPTH_BANDS_MM = ((0, 2), (2, 4), (4, 6), (6, 8))


def shell_leftovers(total, local, mask, voxel_size, radii, smv_radius):
    """Per shell (radius, voxels) the background and local field each sphere's high-pass leaves.

    Returns a list of ``(radius, shell_mask, leftover_background, kept_local)``, the interior's SMV
    sphere first, then ``radii`` largest first; each voxel belongs to the largest sphere that fits
    inside ``mask`` (``sphere_shells``, as MEDI splits its data)."""
    background = (total - local) * mask
    loc = local * mask
    return [(r, shell, background - smv(background, S), loc - smv(loc, S))
            for r, S, shell in sphere_shells(mask, voxel_size, (smv_radius,) + tuple(sorted(radii, reverse=True)))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=tuple(PROTOCOLS), default="me2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--field", choices=("simulator", "measured"), default="simulator",
                    help="simulator: its true total field (the voxel's mean field); measured: the pipeline's")
    ap.add_argument("--snr", type=float, default=35.0, help="with --field measured: the simulator's SNR")
    ap.add_argument("--outer-layer-every-echo", action="store_true",
                    help="with --field measured: recon.mask_outer_layer_every_echo on")
    ap.add_argument("--radii", type=float, nargs="+", default=None,
                    help="rim radii (default: the pipeline's, recon.medi_edge_radii_mm as usable_rim_radii "
                         "keeps them on this grid)")
    args = ap.parse_args(argv)
    from qsm_bids.simulate.subject import simulate_subject

    measured = args.field == "measured"
    s = simulate_subject(args.seed, snr=args.snr if measured else 1e6, with_t1w=False, **PROTOCOLS[args.protocol])
    vs = s["voxel_size"]
    p = ReconConfig(mask_outer_layer_every_echo=args.outer_layer_every_echo)
    radii = tuple(args.radii) if args.radii else usable_rim_radii(
        p.medi_edge_radii_mm, vs, p.sharp_radius_mm, p.medi_rim_min_radius_voxels)
    mask = s["brain_mask"]
    depth = ndimage.distance_transform_edt(mask, sampling=vs)
    local = s["local_field_ppm"].astype(np.float32)
    if measured:
        from qsm_bids.recon.pipeline import reconstruct

        r = reconstruct(s["magnitude"], s["phase"], s["echo_times"], vs, s["b0_dir"], s["field_strength"], p,
                        t1w_mask=mask)
        total, data = r.total_field_ppm.astype(np.float32), r.measured_mask
    else:
        total, data = s["total_field_ppm"].astype(np.float32), mask
    tab = s["label_table"]
    nigra = np.isin(s["labels"], tab[tab.region.str.startswith("substantia_nigra")]["index"].to_numpy())
    plane = np.nonzero(nigra)[2].mean()
    below = np.broadcast_to(np.arange(mask.shape[2]) < plane, mask.shape)
    for title, data_mask in (("the whole brain mask" if not measured else "its trusted voxels", data),
                             ("without its outermost voxel layer", ndimage.binary_erosion(data))):
        rows = shell_leftovers(total, local, data_mask, vs, radii, p.sharp_radius_mm)
        covered = np.logical_or.reduce([sh for _, sh, _, _ in rows])
        print(f"\n{args.protocol}, seed {args.seed}, {args.field} field, data mask = {title} (the spheres "
              f"cover {covered.sum() / mask.sum() * 100:.1f} % of the brain): rms background left / rms local "
              "kept, ppm, below / above the substantia nigra's plane")
        print("| sphere | " + " | ".join(f"{a}-{b} mm" for a, b in DEPTH_BANDS_MM) + " |")
        print("|---" * (len(DEPTH_BANDS_MM) + 1) + "|")
        for radius, shell, bg, loc in rows:
            cells = []
            for a, b in DEPTH_BANDS_MM:
                halves = []
                for side in (below, ~below):
                    sel = shell & (depth > a) & (depth <= b) & side
                    halves.append("-" if sel.sum() < 50 else
                                  f"{np.sqrt(np.mean(bg[sel] ** 2)):.4f} / {np.sqrt(np.mean(loc[sel] ** 2)):.4f}")
                cells.append(" ; ".join(halves))
            print(f"| {radius:g} mm | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
