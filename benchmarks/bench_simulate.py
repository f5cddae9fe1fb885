"""Timing of the simulator, and the pictures of docs/simulator.md.

    .venv/bin/python benchmarks/bench_simulate.py                  # default protocol, one subject
    .venv/bin/python benchmarks/bench_simulate.py --paper-protocol # 256x224x80 at 1x1x2 mm
    .venv/bin/python benchmarks/bench_simulate.py --figures docs/images

Prints the head-model build time, the per-subject time of
:func:`qsm_bids.simulate.subject.simulate_subject` (second call, caches warm),
the forward-model grid and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def _figures(data, out_dir: Path):
    from qsm_bids.report import new_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    mag = data["magnitude"][..., 0]
    while mag.ndim > 3:
        mag = mag[..., 0]
    phase = data["phase"][..., 0]
    while phase.ndim > 3:
        phase = phase[..., 0]
    n = mag.shape
    te = data["echo_times"][0]
    # centre of the brain mask: the slices shown
    ci, cj, ck = (int(round(v)) for v in np.argwhere(data["brain_mask"]).mean(axis=0))

    def views(vol, centre):
        i, j, k = centre
        return [vol[:, :, k].T, vol[:, j, :].T, vol[i, :, :].T]

    def ratio_for(vox, a, b):
        return vox[b] / vox[a]

    vox = data["voxel_size"]
    panels = [
        ("sim_magnitude.png", "GRE magnitude (TE %.0f ms)" % (te * 1e3), views(mag, (ci, cj, ck)), vox,
         dict(cmap="gray", vmin=0, vmax=np.percentile(mag[data["brain_mask"]], 99.5))),
        ("sim_phase.png", "GRE phase, wrapped (TE %.0f ms, background field included)" % (te * 1e3),
         views(phase, (ci, cj, ck)), vox, dict(cmap="gray", vmin=-np.pi, vmax=np.pi)),
        ("sim_chi.png", "True susceptibility (ppm), native GRE grid", views(data["chi_ppm"], (ci, cj, ck)), vox,
         dict(cmap="gray", vmin=-0.08, vmax=0.15)),
    ]
    if "t1w" in data:
        t1 = data["t1w"].astype(np.float32)
        c1 = tuple(s // 2 for s in t1.shape)
        panels.append(("sim_t1w.png", "T1w (1 mm, bias field and noise)", views(t1, (c1[0], c1[1], c1[2] - 8)),
                       (1.0, 1.0, 1.0), dict(cmap="gray", vmin=0, vmax=np.percentile(t1, 99.7))))
    for name, title, imgs, vx, kw in panels:
        fig = new_figure(figsize=(10.5, 3.8))
        aspects = [ratio_for(vx, 0, 1), ratio_for(vx, 0, 2), ratio_for(vx, 1, 2)]
        for a, (img, asp) in enumerate(zip(imgs, aspects)):
            ax = fig.add_subplot(1, 3, a + 1)
            im = ax.imshow(img, origin="lower", interpolation="nearest", aspect=asp, **kw)
            ax.set_axis_off()
        fig.suptitle(title)
        if name in ("sim_phase.png", "sim_chi.png"):
            fig.colorbar(im, ax=fig.axes, shrink=0.7, label="rad" if "phase" in name else "ppm")
        fig.savefig(out_dir / name, dpi=80)
        print(f"wrote {out_dir / name}")
    del n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper-protocol", action="store_true")
    p.add_argument("--echo-times", type=float, nargs="+", default=[0.020])
    p.add_argument("--coils", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--oversample", type=int, nargs=3, default=None)
    p.add_argument("--figures", type=Path, default=None, help="write the docs pictures here")
    args = p.parse_args()

    from qsm_bids.recon import fft
    from qsm_bids.simulate import subject as S

    t = time.perf_counter()
    S.head_model()
    print(f"head model build: {time.perf_counter() - t:.1f} s")
    kw = dict(echo_times=args.echo_times, coils=args.coils, group="ALS", age=66, oversample=args.oversample)
    if args.paper_protocol:
        kw.update(voxel_size=S.PAPER_VOXEL_SIZE, matrix=S.PAPER_MATRIX)
    S.simulate_subject(args.seed + 1000, with_t1w=False, **kw)  # warm the caches
    t = time.perf_counter()
    with fft.counting_ffts() as n_fft:
        data = S.simulate_subject(args.seed, **kw)
    dt = time.perf_counter() - t
    prm = data["params"]
    print(f"protocol: voxel {prm['voxel_size_mm']} mm, matrix {prm['matrix']}, echoes {prm['echo_times_s']}, "
          f"coils {prm['coils']}, SNR {prm['snr']}")
    print(f"forward-model grid: {prm['fine_grid_shape']} (oversample {prm['oversample']}, pad {prm['pad_mm']} mm)")
    print(f"one subject (GRE + T1w + truth, in memory): {dt:.1f} s, {n_fft()} FFTs, "
          f"FFT workers {fft.get_workers()}")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GB")
    print(f"rotation (pitch, roll, yaw) deg: {np.round(data['pose']['rotation_deg'], 1).tolist()}, "
          f"B0 in voxel axes: {np.round(data['b0_dir'], 3).tolist()}")
    m = data["brain_mask"]
    bg = (data["total_field_ppm"] - data["local_field_ppm"])[m]
    print(f"background field in the brain (ppm, 1-99 %): {np.percentile(bg, 1):.2f} .. {np.percentile(bg, 99):.2f}; "
          f"local field (ppm, 1-99 %): {np.percentile(data['local_field_ppm'][m], 1):.4f} .. "
          f"{np.percentile(data['local_field_ppm'][m], 99):.4f}")
    if args.figures:
        _figures(data, args.figures)


if __name__ == "__main__":
    main()
