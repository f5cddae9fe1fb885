"""TFCE, Freedman-Lane permutations and FWE control, against slow direct versions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from qsm_bids.group import _tfce_kernel
from qsm_bids.group.glm import design_matrix, ols_t
from qsm_bids.group.permutation import (
    NullChunk,
    chunk_ranges,
    fwe_p,
    merge_chunks,
    permutation_for,
    permutation_test,
    tfce_max,
    tfce_values,
    voxel_adjacency,
)

_STRUCT = {6: 1, 18: 2, 26: 3}


def brute_force_tfce(stat, mask, E=0.5, H=2.0, connectivity=26, steps=4000):
    """Midpoint-rule integral of extent^E h^H over a fine grid of heights, both signs."""
    structure = ndimage.generate_binary_structure(3, _STRUCT[connectivity])
    out = np.zeros(stat.shape)
    for sign in (1.0, -1.0):
        s = np.where(mask, sign * stat, 0.0)
        top = s.max()
        if top <= 0:
            continue
        dh = top / steps
        for h in (np.arange(steps) + 0.5) * dh:
            labels, n = ndimage.label(s > h, structure=structure)
            if n == 0:
                continue
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            out += sign * sizes[labels] ** E * h**H * dh
    return out


def _smooth_field(shape, seed, sigma=1.0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) * 3


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_tfce_matches_brute_force_integration(connectivity):
    stat = _smooth_field((9, 10, 8), seed=connectivity)
    mask = np.ones(stat.shape, bool)
    mask[0, :, :] = False
    mask[4, 2:8, :] = False  # a wall: clusters must not connect through it
    adj = voxel_adjacency(mask, connectivity)
    exact = tfce_values(stat[mask], adj, E=0.5, H=2.0)
    ref = brute_force_tfce(stat, mask, connectivity=connectivity, steps=3000)[mask]
    np.testing.assert_allclose(exact, ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())
    # the max-only kernel (or its fallback) gives the same maxima
    mp, mn = tfce_max(stat[mask][:, None], adj)
    assert mp[0] == pytest.approx(exact.max(), rel=1e-5)
    assert mn[0] == pytest.approx(-exact.min(), rel=1e-5)


def test_tfce_other_E_H_and_analytic_single_voxel():
    # one isolated voxel of height t: int_0^t 1^E h^H dh = t^(H+1)/(H+1)
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 2, 2] = True
    adj = voxel_adjacency(mask, 26)
    assert tfce_values(np.array([3.0]), adj, E=1.0, H=1.5)[0] == pytest.approx(3.0**2.5 / 2.5, rel=1e-5)
    stat = _smooth_field((7, 7, 7), seed=9)
    full = np.ones(stat.shape, bool)
    adj = voxel_adjacency(full, 6)
    exact = tfce_values(stat.ravel(), adj, E=1.0, H=1.0)
    ref = brute_force_tfce(stat, full, E=1.0, H=1.0, connectivity=6, steps=3000).ravel()
    np.testing.assert_allclose(exact, ref, rtol=2e-3, atol=1e-3 * np.abs(ref).max())
    mp, mn = tfce_max(stat.ravel()[:, None], adj, E=1.0, H=1.0)
    assert mp[0] == pytest.approx(exact.max(), rel=1e-5)


def test_compiled_kernel_equals_package_on_many_maps():
    if not _tfce_kernel.available():
        pytest.skip("no C compiler: the tfce package fallback is what runs")
    mask = np.ones((12, 11, 10), bool)
    adj = voxel_adjacency(mask, 26)
    maps = np.stack([_smooth_field(mask.shape, s).ravel() for s in range(20)], axis=1)
    maps[:, 3] = 0.0           # an empty map
    maps[:, 4] = np.round(maps[:, 4])  # many ties
    mp, mn = _tfce_kernel.tfce_max(maps, adj, 0.5, 2.0)
    ref = tfce_values(maps, adj)
    np.testing.assert_allclose(mp, np.maximum(ref.max(axis=0), 0), rtol=1e-5)
    np.testing.assert_allclose(mn, np.maximum(-ref.min(axis=0), 0), rtol=1e-5)


def test_voxel_adjacency_counts():
    mask = np.ones((3, 3, 3), bool)
    for conn in (6, 18, 26):
        indptr, _ = voxel_adjacency(mask, conn)
        assert np.diff(indptr)[13] == conn  # the centre voxel
    indptr, _ = voxel_adjacency(mask, 6)
    assert np.diff(indptr)[0] == 3          # a corner


def _small_study(seed, n_a=8, n_b=8, shape=(8, 8, 6), effect=0.0, where=None):
    rng = np.random.default_rng(seed)
    n = n_a + n_b
    frame = pd.DataFrame({"g": ["A"] * n_a + ["B"] * n_b, "age": rng.uniform(20, 80, n)})
    data = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), 1.0) for _ in range(n)])
    data += 0.01 * frame.age.to_numpy()[:, None, None, None]
    if effect:
        data[:n_a][(slice(None),) + where] += effect
    return frame, data


def test_freedman_lane_p_values_match_a_direct_implementation():
    frame, data = _small_study(1, effect=0.4, where=(slice(1, 4), slice(1, 4), slice(1, 4)))
    mask = np.ones(data.shape[1:], bool)
    adj = voxel_adjacency(mask, 26)
    Y = data.reshape(len(frame), -1)
    des = design_matrix(frame, "g", ("A", "B"), ("age",))
    c = des.contrasts["AgtB"]
    n_perm, seed = 60, 5
    res = permutation_test(Y, des.X, c, adj, n_permutations=n_perm, chunk_size=25, seed=seed)
    # direct: form Y* = P Rz Y + Hz Y, refit with lstsq, TFCE, max, count
    Z = np.column_stack([np.ones(len(frame)), frame.age - frame.age.mean()])
    Hz = Z @ np.linalg.pinv(Z)
    resid = Y - Hz @ Y
    maxima = {"t": [], "nt": [], "tfce": [], "ntfce": []}
    for k in range(n_perm):
        perm = permutation_for(seed, k, len(frame))
        y_star = (resid if perm is None else resid[perm]) + Hz @ Y
        t = ols_t(y_star, des.X, c)
        tf = brute_force_tfce(t.reshape(mask.shape), mask, steps=400).ravel() if k < 3 else \
            tfce_values(t, adj)
        maxima["t"].append(t.max())
        maxima["nt"].append(-t.min())
        maxima["tfce"].append(max(tf.max(), 0))
        maxima["ntfce"].append(max(-tf.min(), 0))
        if k == 0:
            t_obs = t
    np.testing.assert_allclose(res["t"], t_obs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res["null"].max_t, maxima["t"], rtol=1e-4)
    np.testing.assert_allclose(res["null"].max_neg_tfce[3:], maxima["ntfce"][3:], rtol=1e-4)
    np.testing.assert_allclose(res["null"].max_tfce[:3], maxima["tfce"][:3], rtol=2e-2)

    def direct_p(obs, null):
        return np.array([(np.asarray(null) >= v - 1e-6 * abs(v)).mean() for v in obs])

    np.testing.assert_allclose(res["p_t"], direct_p(t_obs, maxima["t"]), atol=1.01 / n_perm)
    np.testing.assert_allclose(res["p_t_neg"], direct_p(-t_obs, maxima["nt"]), atol=1.01 / n_perm)
    np.testing.assert_allclose(res["p_tfce"], direct_p(res["tfce"], maxima["tfce"]), atol=1.01 / n_perm)
    assert res["p_tfce"].min() == pytest.approx(1 / n_perm)  # the planted effect, observed counted once
    assert res["p_tfce"].max() == 1.0


def test_fwe_p_counts_the_observed_labelling():
    null = np.array([5.0, 1.0, 7.0, 2.0])  # [0] is the observed maximum
    np.testing.assert_allclose(fwe_p(np.array([5.0, 1.5, 0.0, 8.0]), null), [0.5, 0.75, 1.0, 0.25])


def test_chunked_runs_merge_exactly_and_seed_is_reproducible():
    frame, data = _small_study(2)
    mask = np.ones(data.shape[1:], bool)
    adj = voxel_adjacency(mask, 26)
    Y = data.reshape(len(frame), -1)
    des = design_matrix(frame, "g", ("A", "B"), ("age",))
    c = des.contrasts["AgtB"]
    one = permutation_test(Y, des.X, c, adj, n_permutations=90, chunk_size=90, seed=7)
    many = permutation_test(Y, des.X, c, adj, n_permutations=90, chunk_size=13, seed=7)
    procs = permutation_test(Y, des.X, c, adj, n_permutations=90, chunk_size=20, seed=7, n_jobs=2)
    # separate "jobs" over explicit chunks, merged afterwards
    parts = [permutation_test(Y, des.X, c, adj, seed=7, chunks=[r])["chunks"][0]
             for r in reversed(chunk_ranges(90, 30))]
    merged = merge_chunks([NullChunk.from_dict(p.to_dict()) for p in parts])
    for other in (many["null"], procs["null"], merged):
        for name in ("max_t", "max_neg_t", "max_tfce", "max_neg_tfce"):
            np.testing.assert_array_equal(getattr(one["null"], name), getattr(other, name))
    for key in ("p_t", "p_tfce", "p_tfce_neg", "tfce", "t"):
        np.testing.assert_array_equal(one[key], many[key])
        np.testing.assert_array_equal(one[key], procs[key])
    other_seed = permutation_test(Y, des.X, c, adj, n_permutations=90, chunk_size=90, seed=8)
    assert not np.array_equal(one["null"].max_tfce, other_seed["null"].max_tfce)
    assert one["null"].max_tfce[0] == other_seed["null"].max_tfce[0]  # permutation 0 is observed


def test_fwe_false_positive_rate_on_null_studies():
    """>= 200 pure-noise studies: P(any voxel pfwe < .05) must be near .05 (TFCE and t)."""
    n_studies, n_perm = 400, 200
    mask = np.ones((7, 7, 5), bool)
    adj = voxel_adjacency(mask, 26)
    hits = {"tfce": 0, "t": 0}
    for s in range(n_studies):
        frame, data = _small_study(1000 + s, n_a=6, n_b=7, shape=mask.shape)
        des = design_matrix(frame, "g", ("A", "B"), ("age",))
        Y = data.reshape(len(frame), -1)
        res = permutation_test(Y, des.X, des.contrasts["AgtB"], adj, n_permutations=n_perm,
                               chunk_size=n_perm, seed=s)
        # both contrasts are family-wise tests of their own
        hits["tfce"] += int(res["p_tfce"].min() < 0.05) + int(res["p_tfce_neg"].min() < 0.05)
        hits["t"] += int(res["p_t"].min() < 0.05) + int(res["p_t_neg"].min() < 0.05)
    for name, count in hits.items():
        rate = count / (2 * n_studies)
        print(f"FWE rate of {name}: {rate:.3f} over {2 * n_studies} family-wise tests")
        assert 0.03 <= rate <= 0.07, f"FWE rate of {name}: {rate:.3f}"
