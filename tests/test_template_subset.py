"""The study template's balanced participant subset (qsm_bids.group.subset)."""

from __future__ import annotations

import numpy as np
import pytest

from qsm_bids.group.subset import balanced_subset


def _cohort(n_a=300, n_b=500, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.array(["ALS"] * n_a + ["control"] * n_b)
    ages = np.r_[rng.uniform(40, 80, n_a), rng.uniform(30, 85, n_b)]
    return groups, ages


def test_equal_groups_and_the_age_range_covered():
    groups, ages = _cohort()
    idx = balanced_subset(groups, ages, 40, seed=3)
    assert idx.size == 40 and np.unique(idx).size == 40 and np.all(np.diff(idx) > 0)
    assert np.sum(groups[idx] == "ALS") == 20 and np.sum(groups[idx] == "control") == 20
    for g in ("ALS", "control"):
        full = np.sort(ages[groups == g])
        got = np.sort(ages[idx][groups[idx] == g])
        # one draw per age stratum: the k-th youngest chosen lies in the k-th twentieth of the group
        edges = [s[[0, -1]] for s in np.array_split(full, 20)]
        for a, (lo, hi) in zip(got, edges):
            assert lo <= a <= hi


def test_seeded_and_seed_dependent():
    groups, ages = _cohort()
    a = balanced_subset(groups, ages, 30, seed=1)
    np.testing.assert_array_equal(a, balanced_subset(groups, ages, 30, seed=1))
    assert not np.array_equal(a, balanced_subset(groups, ages, 30, seed=2))


def test_a_small_group_gives_its_share_to_the_other():
    groups, ages = _cohort(n_a=5, n_b=200)
    idx = balanced_subset(groups, ages, 30, seed=0)
    assert np.sum(groups[idx] == "ALS") == 5 and np.sum(groups[idx] == "control") == 25


def test_whole_cohort_and_bad_input():
    groups, ages = _cohort(n_a=4, n_b=4)
    np.testing.assert_array_equal(balanced_subset(groups, ages, 50), np.arange(8))
    with pytest.raises(ValueError, match="at least 1"):
        balanced_subset(groups, ages, 0)
    with pytest.raises(ValueError, match="one to one"):
        balanced_subset(groups, ages[:3], 2)
