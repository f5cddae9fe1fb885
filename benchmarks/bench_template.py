"""Time of the study template: a few synthetic subjects at 2 mm, extrapolated to 67.

Subjects are the MNI152 2 mm template under smooth random deformations (a few
voxels), as the participants' MNI-space T1w would differ. Runs
build_study_template (2 iterations, 2 ITK threads) and extrapolates from the
measured time per registration and per map warp.

    .venv/bin/python benchmarks/bench_template.py [--n 4]
"""
import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

logging.basicConfig(level=logging.INFO, format="%(message)s")
logging.getLogger("matplotlib").setLevel(logging.WARNING)
from scipy.ndimage import gaussian_filter, map_coordinates

from qsm_bids.group.template import build_study_template
from qsm_bids.registration import brain_template

ap = argparse.ArgumentParser(); ap.add_argument('--n', type=int, default=4); n = ap.parse_args().n
res = 2.0
ref = brain_template(res); d = ref.get_fdata()
tmp = Path(tempfile.mkdtemp())
t1, chi, mk = [], [], []
rng = np.random.default_rng(0)
grid = np.indices(d.shape).astype(float)
for i in range(n):
    disp = np.stack([gaussian_filter(rng.standard_normal(d.shape), 6) * 40 for _ in range(3)])
    s = map_coordinates(d, grid + disp, order=1)
    p = tmp / f"sub-{i:02d}_space-MNI152NLin2009aSym_desc-preproc_T1w.nii.gz"; nib.save(nib.Nifti1Image(s.astype(np.float32), ref.affine), p); t1.append(p)
    c = (gaussian_filter(rng.standard_normal(d.shape), 1) * (s > 0.2 * d.max())).astype(np.float32)
    p = tmp / f"sub-{i:02d}_space-MNI152NLin2009aSym_Chimap.nii.gz"; nib.save(nib.Nifti1Image(c, ref.affine), p); chi.append(p)
    p = tmp / f"sub-{i:02d}_space-MNI152NLin2009aSym_desc-brain_mask.nii.gz"; nib.save(nib.Nifti1Image((s > 0.2*d.max()).astype(np.uint8), ref.affine), p); mk.append(p)
    print("max displacement (voxels)", np.abs(disp).max())
out = {"template_t1w": tmp/"group/tpl-study_T1w.nii.gz", "template_chi": tmp/"group/tpl-study_desc-mean_Chimap.nii.gz",
       "template_mask": tmp/"group/tpl-study_desc-brain_mask.nii.gz", "xfm_study_to_mni": tmp/"group/from-study_to-MNI152NLin2009aSym_mode-image_xfm.h5"}
print("load", os.getloadavg())
t0 = time.time()
w = build_study_template(t1, chi, mk, out, iterations=2, resolution_mm=res, n_threads=2, work_dir=tmp)
tot = time.time() - t0
tm = w['timings_s']
print("total", round(tot, 1), tm)
per_reg = tm['per_registration_mean']; per_warp = tm['warp_maps_s'] / n
for iters in (2, 3):
    est = 67 * iters * per_reg + tm['to_mni_s'] + 67 * per_warp
    print(f"extrapolated for 67 subjects, {iters} iterations at 2 mm: {est/60:.1f} min (registration {per_reg:.1f} s each, map warps {per_warp:.2f} s each)")
print("load", os.getloadavg())
