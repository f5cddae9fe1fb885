"""The cohort: participants, planted regional susceptibilities and group effects.

Control values (ppm, unreferenced, at the reference age) and ALS effects are
those of Acosta-Cabronero et al., Radiology 2018 for the regions it reports
(motor cortex = precentral gyrus, substantia nigra left/right, globus
pallidus, red nucleus, corticospinal tract); the other regions take typical
adult values from the QSM literature (e.g. Li et al. 2014 NeuroImage 94:
caudate, putamen, thalamus, dentate; Acosta-Cabronero et al. 2016 J Neurosci
lifespan atlas: hippocampus, amygdala, cortex). The between-subject SD of a
paper region is its SEM x sqrt(n) (n = 39 controls, 28 patients), from which
the variance explained by age is removed; other regions get 15 % of the
value + 0.003 ppm. Deep grey matter iron rises with age (slopes in ppm/year,
approximations of the lifespan curves between 40 and 80 years).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "REFERENCE_AGE",
    "AGE_RANGE",
    "N_PAPER",
    "region_table",
    "group_effects",
    "sample_participants",
    "sample_region_values",
    "parse_effects",
]

REFERENCE_AGE = 60.0
AGE_RANGE = (39, 77)
#: Group sizes of the paper (controls, ALS) behind its SEMs.
N_PAPER = {"control": 39, "ALS": 28}

# region: (control_L, control_R, effect_L, effect_R, sem_control, sem_als_L, sem_als_R, age_slope)
# sem None: no paper value (literature SD rule).
_REGIONS = {
    "caudate": (0.055, 0.055, 0.0, 0.0, None, None, None, 0.0004),
    "putamen": (0.045, 0.045, 0.0, 0.0, None, None, None, 0.0008),
    "globus_pallidus": (0.075, 0.075, 0.011, 0.011, 0.002, 0.003, 0.003, 0.0005),
    "thalamus": (0.008, 0.008, 0.0, 0.0, None, None, None, 0.0),
    "hippocampus": (0.004, 0.004, 0.0, 0.0, None, None, None, 0.0),
    "amygdala": (0.006, 0.006, 0.0, 0.0, None, None, None, 0.0),
    "red_nucleus": (0.098, 0.098, 0.017, 0.017, 0.003, 0.004, 0.004, 0.0004),
    "substantia_nigra_dorsal": (0.113, 0.120, 0.014, 0.021, 0.003, 0.004, 0.005, 0.0004),
    "substantia_nigra_ventral": (0.113, 0.120, 0.014, 0.021, 0.003, 0.004, 0.005, 0.0004),
    "dentate_nucleus": (0.095, 0.095, 0.0, 0.0, None, None, None, 0.0003),
    "precentral_gyrus": (0.0173, 0.0173, 0.0015, 0.0015, 0.0003, 0.0003, 0.0003, 0.0),
    "pars_opercularis": (0.014, 0.014, 0.0, 0.0, None, None, None, 0.0),
    "corticospinal_tract": (-0.043, -0.043, -0.004, -0.004, 0.001, 0.001, 0.001, 0.0),
}
# SD of the ages around the reference (used to take age out of the paper's spread).
_AGE_SD = 10.0
# Correlation of a subject's deviations between left and right of a region.
_HEMISPHERE_CORRELATION = 0.7


def parse_effects(items) -> dict:
    """``{(region, hemisphere): ppm}`` from ``REGION[:L|R]=PPM`` strings (no hemisphere: both).

    Raises ValueError naming the bad item (unknown region, hemisphere or number).
    """
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        region, _, hemi = key.partition(":")
        try:
            ppm = float(value)
        except ValueError:
            ppm = None
        if not sep or ppm is None or not np.isfinite(ppm):
            raise ValueError(f"expected REGION[:L|R]=PPM, got {item!r}")
        if region not in _REGIONS:
            raise ValueError(f"no cohort region {region!r} (regions: {', '.join(_REGIONS)})")
        if hemi not in ("", "L", "R"):
            raise ValueError(f"hemisphere of {item!r} must be L or R")
        for h in (hemi,) if hemi else ("L", "R"):
            out[(region, h)] = ppm
    return out


def region_table(effect_scale: float = 1.0, effects: dict | None = None) -> pd.DataFrame:
    """One row per region and hemisphere with the planted cohort parameters.

    Columns: ``region``, ``hemisphere``, ``control_ppm`` (at the reference
    age), ``als_minus_control_ppm`` (times ``effect_scale``), ``sd_control_ppm``
    and ``sd_als_ppm`` (biological between-subject SD, age excluded),
    ``age_slope_ppm_per_year``, ``source`` (paper or literature).

    ``effects`` (``{(region, hemisphere): ppm}``, see :func:`parse_effects`)
    replaces the paper's ALS - control differences: the regions it names get
    those, every other region none (a held-out cohort with effects of one's
    choosing); ``effect_scale`` still multiplies them.
    """
    rows = []
    for region, (cl, cr, el, er, sem_c, sem_l, sem_r, slope) in _REGIONS.items():
        for hemi, ctrl, eff, sem_a in (("L", cl, el, sem_l), ("R", cr, er, sem_r)):
            if effects is not None:
                eff = float(effects.get((region, hemi), 0.0))
            if sem_c is None:
                sd_c = sd_a = 0.15 * abs(ctrl) + 0.003
                source = "literature"
            else:
                sd_c = sem_c * np.sqrt(N_PAPER["control"])
                sd_a = sem_a * np.sqrt(N_PAPER["ALS"])
                source = "Acosta-Cabronero 2018"
            age_var = (slope * _AGE_SD) ** 2
            sd_c = float(np.sqrt(max(sd_c**2 - age_var, (0.5 * sd_c) ** 2)))
            sd_a = float(np.sqrt(max(sd_a**2 - age_var, (0.5 * sd_a) ** 2)))
            rows.append({"region": region, "hemisphere": hemi, "control_ppm": ctrl,
                         "als_minus_control_ppm": eff * float(effect_scale),
                         "sd_control_ppm": sd_c, "sd_als_ppm": sd_a,
                         "age_slope_ppm_per_year": slope, "source": source})
    return pd.DataFrame(rows)


def group_effects(effect_scale: float = 1.0, effects: dict | None = None) -> pd.DataFrame:
    """The planted effects table written to ``derivatives/groundtruth/effects.tsv``."""
    t = region_table(effect_scale, effects)
    t.insert(2, "reference_age", REFERENCE_AGE)
    t["effect_scale"] = float(effect_scale)
    return t


def sample_participants(n_patients: int, n_controls: int, rng) -> pd.DataFrame:
    """Demographics and clinical scores of a cohort (labels ``01``..; groups interleaved).

    Ages ~ N(60, 10) clipped to 39-77 (the paper's range); sex: 60 % male
    among patients, 45 % among controls; ALSFRS-R ~ N(38, 6) in 12-47;
    onset bulbar with probability 0.3; disease duration log-normal with a
    median of 24 months (4-120). Controls have ``n/a`` clinical fields.
    """
    n = int(n_patients) + int(n_controls)
    groups = np.array(["ALS"] * int(n_patients) + ["control"] * int(n_controls))
    groups = groups[rng.permutation(n)]
    width = max(2, len(str(n)))
    rows = []
    for i, g in enumerate(groups):
        age = int(np.clip(np.round(rng.normal(REFERENCE_AGE, 10.0)), *AGE_RANGE))
        male = rng.random() < (0.6 if g == "ALS" else 0.45)
        row = {"participant_id": f"sub-{i + 1:0{width}d}", "group": str(g), "age": age,
               "sex": "M" if male else "F"}
        if g == "ALS":
            row["alsfrs_r"] = int(np.clip(np.round(rng.normal(38.0, 6.0)), 12, 47))
            row["onset"] = "bulbar" if rng.random() < 0.3 else "limb"
            row["disease_duration_months"] = int(np.clip(np.round(np.exp(rng.normal(np.log(24.0), 0.6))), 4, 120))
        else:
            row["alsfrs_r"] = None
            row["onset"] = None
            row["disease_duration_months"] = None
        rows.append(row)
    return pd.DataFrame(rows, columns=["participant_id", "group", "age", "sex", "alsfrs_r", "onset",
                                       "disease_duration_months"])


def sample_region_values(group: str, age: float, rng, effect_scale: float = 1.0,
                         effects: dict | None = None) -> pd.DataFrame:
    """Planted susceptibility of each region and hemisphere for one subject.

    ``control_ppm + slope (age - 60) + [ALS] effect + SD z``, with z
    correlated 0.7 between hemispheres; the dorsal and ventral substantia
    nigra share one draw (the paper reports the whole nucleus). ``effects``:
    as :func:`region_table`.

    Returns
    -------
    DataFrame with ``region``, ``hemisphere``, ``planted_ppm``.
    """
    table = region_table(effect_scale, effects)
    draws = {}
    rho = _HEMISPHERE_CORRELATION
    for region in _REGIONS:
        key = "substantia_nigra" if region.startswith("substantia_nigra") else region
        if key not in draws:
            a, b = rng.standard_normal(2)
            draws[key] = (a, rho * a + np.sqrt(1 - rho * rho) * b)
    values = []
    for row in table.itertuples(index=False):
        key = "substantia_nigra" if row.region.startswith("substantia_nigra") else row.region
        z = draws[key][0 if row.hemisphere == "L" else 1]
        is_als = group == "ALS"
        v = row.control_ppm + row.age_slope_ppm_per_year * (float(age) - REFERENCE_AGE)
        v += row.als_minus_control_ppm if is_als else 0.0
        v += (row.sd_als_ppm if is_als else row.sd_control_ppm) * z
        values.append(v)
    return pd.DataFrame({"region": table["region"], "hemisphere": table["hemisphere"],
                         "planted_ppm": np.asarray(values, dtype=float)})
