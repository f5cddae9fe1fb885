"""A balanced, seeded subset of participants (by group and age) for the study template.

Building the template from every participant stops making sense at hundreds
of subjects: its cost grows with the cohort (one registration per subject and
iteration) while its shape stops changing. :func:`balanced_subset` picks
``size`` participants with the groups in equal numbers (as far as each
group's size allows) and, within each group, spread over the group's age
range: the group is sorted by age, cut into as many consecutive strata as
participants wanted from it, and one participant is drawn from each stratum.
The draw is seeded, so the same cohort and seed give the same subset.
"""

from __future__ import annotations

import numpy as np

__all__ = ["balanced_subset"]


def _quotas(sizes: dict, total: int) -> dict:
    """Equal shares per group, capped at the group's size; what a small group cannot use goes to the others."""
    quota = dict.fromkeys(sizes, 0)
    left = min(int(total), sum(sizes.values()))
    while left > 0:
        open_groups = [g for g in sizes if quota[g] < sizes[g]]
        share, extra = divmod(left, len(open_groups))
        for i, g in enumerate(open_groups):
            add = min(share + (1 if i < extra else 0), sizes[g] - quota[g])
            quota[g] += add
            left -= add
    return quota


def balanced_subset(groups, ages, size: int, seed: int = 0) -> np.ndarray:
    """Indices (sorted) of ``size`` participants balanced by group and spread over age.

    Parameters
    ----------
    groups : sequence of group labels, one per participant
    ages : sequence of numbers, one per participant (NaN: sorted last within the group)
    size : participants wanted (all of them when ``size`` >= the cohort)
    seed : seed of the draw within the age strata

    Returns
    -------
    ndarray of int, sorted
    """
    groups = np.asarray([str(g) for g in groups])
    ages = np.asarray(ages, dtype=float)
    if groups.shape != ages.shape:
        raise ValueError(f"{groups.size} group labels and {ages.size} ages; they must match one to one")
    n = groups.size
    if size < 1:
        raise ValueError(f"template subset size must be at least 1, got {size}")
    if size >= n:
        return np.arange(n)
    levels = sorted(set(groups.tolist()))
    quota = _quotas({g: int(np.sum(groups == g)) for g in levels}, size)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))
    chosen = []
    for g in levels:
        members = np.flatnonzero(groups == g)
        # stable sort: equal ages keep the participants' order, so the draw does not depend on the sort
        by_age = members[np.argsort(ages[members], kind="stable")]
        for stratum in np.array_split(by_age, quota[g]) if quota[g] else []:
            chosen.append(int(stratum[rng.integers(stratum.size)]))
    return np.sort(np.asarray(chosen, dtype=int))
