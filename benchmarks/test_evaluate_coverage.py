"""Analytic checks of evaluate_coverage.coverage_errors (run: .venv/bin/python -m pytest benchmarks/test_evaluate_coverage.py)."""

import numpy as np
import pytest

from evaluate_coverage import coverage_errors


def test_zero_filled_left_out_voxels_score_their_own_true_rms_and_the_offset_is_removed():
    rng = np.random.default_rng(0)
    brain = np.zeros((30, 30, 30), bool)
    brain[3:27, 3:27, 3:27] = True
    truth = np.where(brain, rng.normal(0.0, 0.05, brain.shape), 0.0).astype(np.float32)
    measured = brain.copy()
    measured[3, 10:20, 10:20] = False  # the outermost layer: 100 voxels left out
    measured[15, 15, 15] = False  # one deep voxel left out
    chi = np.where(brain, truth + 0.1, 0.0).astype(np.float32)  # an offset, exact otherwise
    chi[~measured & brain] = 1e-9  # "returned" but carrying nothing (zero after the offset is removed)
    chi[~measured & brain] += 0.1
    cov_q, cov_c, rows = coverage_errors(chi, measured, truth, brain, (2.0, 2.0, 2.0))
    assert cov_q == pytest.approx(1 - 101 / brain.sum())
    assert cov_c == 1.0
    (_, n_m, e_m, n_x, e_x, t_x), _, (_, _, e_deep_m, n_deep_x, e_deep_x, t_deep_x) = rows
    assert n_x == 100 and n_deep_x == 1
    assert e_m == pytest.approx(0.0, abs=1e-6) and e_deep_m == pytest.approx(0.0, abs=1e-6)
    assert e_x == pytest.approx(t_x, rel=1e-4) and e_deep_x == pytest.approx(t_deep_x, rel=1e-3)
