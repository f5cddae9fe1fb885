"""Column descriptions (BIDS TSV sidecars) of the region-statistics tables in ``OUTPUT_DIR/group``."""

from __future__ import annotations

from typing import Sequence

__all__ = ["roi_stats_sidecar", "correlations_sidecar", "subgroups_sidecar", "values_sidecar"]


def roi_stats_sidecar(groups: Sequence[str], covariates: Sequence[str], laterality_alpha: float = 0.05,
                      continuity: bool = True) -> dict:
    """Column descriptions of roi_stats.tsv (BIDS TSV sidecar)."""
    a, b = groups
    cov = ", ".join(covariates) or "no covariate"
    sc = {
        "region": {"Description": "Region name (qsm-bids atlas, snake_case)."},
        "hemisphere": {"Description": "L, R, or bilateral (mean of L and R per participant when "
                                      f"the laterality test in {a} had p >= {laterality_alpha})."},
    }
    for g in (a, b):
        sc[f"n_{g}"] = {"Description": f"Number of {g} participants with a value for this region."}
        sc[f"mean_{g}"] = {"Description": f"Mean over {g} of the participants' regional median "
                                          f"susceptibility, adjusted for {cov} (covariance method).",
                           "Units": "ppm"}
        sc[f"sem_{g}"] = {"Description": f"Standard error of the mean of {g} (SD with ddof=1 / sqrt(n)).",
                          "Units": "ppm"}
    for g in (a, b):
        sc[f"raw_mean_{g}"] = {"Description": f"Mean over {g} of the unadjusted regional medians.",
                               "Units": "ppm"}
        sc[f"raw_sem_{g}"] = {"Description": f"Standard error of the unadjusted mean of {g}.",
                              "Units": "ppm"}
    sc.update({
        "u": {"Description": f"Mann-Whitney U of {a} (rank sum of {a} minus n(n+1)/2)."},
        "z": {"Description": f"Two-tailed Wilcoxon rank-sum Z, {a} vs {b}, normal approximation with "
                             "tie correction" + (" and 0.5 continuity correction" if continuity else "")
                             + f"; positive when {a} ranks higher."},
        "p": {"Description": "Two-tailed p value of the rank-sum test (uncorrected)."},
        "p_bonferroni": {"Description": "p multiplied by the number of regions tested (rows with a "
                                        "p value), capped at 1."},
        "significance": {"Description": "* p<.05, ** p<.01, *** Bonferroni p<.05, **** Bonferroni p<.01."},
        "laterality_n": {"Description": f"Number of {a} participants with both L and R values."},
        "laterality_stat": {"Description": f"Wilcoxon signed-rank statistic (smaller signed-rank sum) "
                                           f"of L vs R in {a} (scipy.stats.wilcoxon, two-sided)."},
        "laterality_p": {"Description": f"Two-sided p of the L vs R signed-rank test in {a}."},
        "laterality": {"Description": f"separate: L and R kept apart (laterality p < {laterality_alpha}); "
                                      "averaged: hemispheres averaged; not tested: no L/R pair.",
                       "Levels": {"separate": "hemispheres kept apart", "averaged": "mean of L and R",
                                  "not tested": "region without an L/R pair"}},
    })
    for c in covariates:
        sc[f"slope_{c}"] = {"Description": f"Covariance-method slope of the region value on {c}, "
                                           f"fitted by ordinary least squares in {b} (jointly with the "
                                           "other covariates); values were adjusted to the mean of "
                                           f"{c} in {b}.", "Units": f"ppm per unit of {c}"}
    return sc


def correlations_sidecar(groups: Sequence[str]) -> dict:
    """Column descriptions of correlations.tsv."""
    a, _ = groups
    return {
        "analysis": {"Description": "Kind of correlation.",
                     "Levels": {"clinical": f"adjusted QSM vs a clinical column, within {a}",
                                "sn_gp": "substantia nigra vs globus pallidus adjusted QSM, within each group",
                                "leakage": f"leakage check: adjusted QSM of one region vs another "
                                           f"(roi_stats.leakage_pairs, e.g. CST vs globus pallidus), within {a}"}},
        "group": {"Description": "Group within which the correlation was computed."},
        "region": {"Description": "QSM region."},
        "hemisphere": {"Description": "QSM region hemisphere (L, R, bilateral)."},
        "variable": {"Description": "Other variable: clinical column or region."},
        "variable_hemisphere": {"Description": "Hemisphere of the other variable when it is a region; "
                                               "empty for clinical columns."},
        "n": {"Description": "Number of participants with both values."},
        "rho": {"Description": "Spearman rank correlation coefficient (scipy.stats.spearmanr)."},
        "rho_squared": {"Description": "rho squared."},
        "p": {"Description": "Two-sided p value of rho (uncorrected)."},
    }


def subgroups_sidecar() -> dict:
    """Column descriptions of roi_subgroups.tsv."""
    return {
        "subgroup_column": {"Description": "participants.tsv column defining the subgroups."},
        "group_1": {"Description": "First compared set of participants."},
        "group_2": {"Description": "Second compared set of participants."},
        "region": {"Description": "Region name."},
        "hemisphere": {"Description": "L, R or bilateral (as in roi_stats.tsv)."},
        "n_1": {"Description": "Participants in group_1 with a value."},
        "mean_1": {"Description": "Mean adjusted value of group_1.", "Units": "ppm"},
        "sem_1": {"Description": "Standard error of the mean of group_1.", "Units": "ppm"},
        "n_2": {"Description": "Participants in group_2 with a value."},
        "mean_2": {"Description": "Mean adjusted value of group_2.", "Units": "ppm"},
        "sem_2": {"Description": "Standard error of the mean of group_2.", "Units": "ppm"},
        "u": {"Description": "Mann-Whitney U of group_1."},
        "z": {"Description": "Rank-sum Z (tie- and continuity-corrected), positive when group_1 ranks higher."},
        "p": {"Description": "Two-tailed p value."},
        "p_bonferroni": {"Description": "Bonferroni over the regions of this comparison."},
    }


def values_sidecar(covariates: Sequence[str]) -> dict:
    """Column descriptions of roi_values.tsv (each participant's values per region unit)."""
    return {
        "participant_id": {"Description": "Participant."},
        "group": {"Description": "Group level."},
        "region": {"Description": "Region name."},
        "hemisphere": {"Description": "L, R or bilateral (as in roi_stats.tsv)."},
        "value_ppm": {"Description": "Regional median susceptibility (mean of L and R when bilateral).",
                      "Units": "ppm"},
        "adjusted_ppm": {"Description": "value_ppm adjusted by the covariance method for "
                                        f"{', '.join(covariates) or 'no covariate'}.", "Units": "ppm"},
    }
