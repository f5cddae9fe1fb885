"""Registration and region-value accuracy at the paper's protocol size, with timings.

A synthetic subject is the shipped template under a known affine + smooth warp
(T1w at 1 mm, GRE magnitude 256 x 224 x 80 at 1 x 1 x 2 mm). A ground-truth chi
is painted from the true native labels. For each preset this prints the wall
and CPU time of the registrations on 2 ITK threads, the Dice between the atlas
brought to native space and the true labels, and the error of the region
medians against the truth medians (region pipeline alone).

    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2 .venv/bin/python benchmarks/bench_registration.py [fast standard]
"""

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "2")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from qsm_bids import registration as R  # noqa: E402
from qsm_bids.atlas import default_atlas, region_medians  # noqa: E402
from qsm_bids.simulate.registration_subject import DEEP, dice, synthetic_subject  # noqa: E402


def cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(presets):
    atlas, table = default_atlas()
    aff_t1, t1, _ = synthetic_subject((176, 224, 192), (1.0, 1.0, 1.0))
    aff_g, mag, lab = synthetic_subject((256, 224, 80), (1.0, 1.0, 2.0))
    mask = (mag > 20).astype(np.float32)
    chi = np.zeros(mag.shape, np.float32)
    chi[mask > 0] = -0.02
    rng = np.random.default_rng(0)
    for r in table.itertuples():
        if r.region in DEEP:
            sel = lab == r.index
            chi[sel] = DEEP[r.region] + (0.01 if r.hemisphere == "R" else 0) + rng.normal(0, 0.01, sel.sum())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {}
        for name, data, aff in (("mag", mag, aff_g), ("t1w", t1, aff_t1), ("mask", mask, aff_g), ("chi", chi, aff_g)):
            files[name] = tmp / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(data, aff), str(files[name]))
        truth, _ = region_medians(chi, mask > 0, lab, table, (1.0, 1.0, 2.0))
        for preset in presets:
            out = {k: tmp / f"{preset}_{k}{ext}" for k, ext in (
                ("xfm_gre_t1w", ".mat"), ("xfm_t1w_template", ".h5"), ("xfm_template_t1w", ".h5"),
                ("chi_template", ".nii.gz"), ("t1w_template", ".nii.gz"), ("mask_template", ".nii.gz"))}
            t0, c0 = time.perf_counter(), cpu_s()
            info = R.normalise_participant(files["mag"], files["t1w"], files["chi"], files["mask"], out,
                                           preset=preset, seed=0, n_threads=2, work_dir=tmp)
            wall, cpu = time.perf_counter() - t0, cpu_s() - c0
            nat = np.asarray(R.atlas_to_native(atlas, nib.load(str(files["chi"])), out["xfm_gre_t1w"],
                                               out["xfm_template_t1w"]).dataobj)
            got, _ = region_medians(chi, mask > 0, nat, table, (1.0, 1.0, 2.0))
            print(f"\n== preset {preset}: normalise_participant wall {wall:.1f} s, CPU {cpu:.1f} s "
                  f"(load avg {os.getloadavg()[0]:.1f}); steps {info['timings']}")
            print(f"{'region':26s} {'hemi':4s} {'dice':>6s} {'truth':>8s} {'median':>8s} {'error':>8s}")
            for k, r in enumerate(table.itertuples()):
                d = dice(nat == r.index, lab == r.index)
                print(f"{r.region:26s} {r.hemisphere:4s} {d:6.3f} {truth.median_ppm[k]:8.4f} "
                      f"{got.median_ppm[k]:8.4f} {got.median_ppm[k] - truth.median_ppm[k]:8.4f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["fast", "standard"])
