"""Analytic checks of bench_error_budget.error_budget (run: .venv/bin/python -m pytest benchmarks/test_error_budget.py)."""

import numpy as np
import pytest

from bench_error_budget import error_budget


def test_a_missed_vein_carries_its_share_and_exact_veins_leave_the_rest():
    brain = np.zeros((40, 40, 40), bool)
    brain[5:35, 5:35, 5:35] = True
    truth = np.where(brain, 0.02, 0.0).astype(np.float32)
    truth[5:7, 18:22, 18:22] = 0.3  # a vein at the surface (depth <= 2 mm)
    chi = truth.copy()
    chi[truth == 0.3] = 0.0  # missed entirely
    chi[15:25, 15:25, 15:25] += 0.01  # an interior error
    b = error_budget(chi, truth, brain, (1.0, 1.0, 1.0), vein_ppm=0.15)
    vein_err, rest_err = 32 * 0.3**2, 1000 * 0.01**2
    assert b["vein_share"] == pytest.approx(vein_err / (vein_err + rest_err), rel=1e-4)
    assert b["vein_voxel_fraction"] == pytest.approx(32 / brain.sum())
    (lo, hi, n, share, t, r), = b["veins_by_depth"]
    assert (lo, hi, n) == (0.0, 2.0, 32) and t == pytest.approx(0.3) and r == 0.0
    norm = np.sum(truth[brain] ** 2)
    assert b["nrmse_veins_exact"] == pytest.approx(np.sqrt(rest_err / norm), rel=1e-4)
    assert b["interior_share"] + b["rim_share"] == pytest.approx(1.0)
    assert b["nrmse_rim_without_veins"] == 0.0  # the errors are in the vein and the interior only
