"""Subgroup and exclusion analyses end to end, from participant derivative files.

A tiny cohort (16 ALS, 12 controls) is written directly as participant
derivatives (template-space maps on an 8 mm grid and region tables), so the
group level runs without the reconstruction. It carries a planted clinical
relationship (ALSFRS-R falls with motor-cortex susceptibility once onset and
sex are removed), a planted onset effect (bulbar > limb in the motor cortex)
and three C9orf72 carriers. The main analysis, the documented onset subgroup
command and the documented exclusion command run into their own folders; the
main results must be untouched by the other two.
"""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm_bids.cli import main
from qsm_bids.config import Config
from qsm_bids.derivatives import participant_paths

pg = pytest.importorskip("pingouin")

REGIONS = ("precentral_gyrus", "globus_pallidus", "corticospinal_tract", "substantia_nigra_dorsal")
SUBGROUP = "onset-bulbar-vs-limb_only-group-ALS"
EXCLUSION = "exclude-genetics-C9orf72"
COMMON = ["--template", "mni", "--n-permutations", "20", "--n-cpus", "1", "--skip-bids-validation"]


def _cohort(root):
    rng = np.random.default_rng(42)
    n_als, n_con = 16, 12
    n = n_als + n_con
    labels = [f"{i:02d}" for i in range(1, n + 1)]
    group = ["ALS"] * n_als + ["control"] * n_con
    onset = (["bulbar", "limb"] * 8)[:n_als] + [None] * n_con
    onset[15] = None  # a patient without onset: left out of the onset analysis, with the reason
    sex = list(rng.choice(["F", "M"], n))
    genetics = [None] * n
    for i in (1, 4, 9):
        genetics[i] = "C9orf72"
    age = rng.uniform(45, 75, n).round(1)
    latent = rng.normal(size=n)
    bulbar = np.array([o == "bulbar" for o in onset], float)
    male = np.array([s == "M" for s in sex], float)
    als = np.array([g == "ALS" for g in group], float)
    # planted: motor cortex QSM = age trend + ALS + onset (bulbar) + latent severity
    motor = 0.015 + 0.00005 * (age - 60) + 0.0015 * als + 0.004 * bulbar + 0.0012 * latent \
        + 0.0002 * rng.normal(size=n)
    alsfrs = 40 - 5 * latent - 8 * bulbar + 3 * male + rng.normal(0, 1.5, n)
    parts = pd.DataFrame({"participant_id": [f"sub-{x}" for x in labels], "group": group, "age": age,
                          "sex": sex, "onset": onset, "genetics": genetics,
                          "alsfrs_r": np.where(als > 0, alsfrs.round(), np.nan)})
    bids = root / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.10.0"}))
    parts.to_csv(bids / "participants.tsv", sep="\t", index=False, na_rep="n/a")

    cfg = Config()
    out = root / "out"
    shape = (25, 30, 23)
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = (-98.0, -134.0, -72.0)
    ijk = np.indices(shape).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    brain = ((x / 70) ** 2 + ((y + 18) / 95) ** 2 + ((z - 10) / 75) ** 2) <= 1
    for i, lab in enumerate(labels):
        paths = participant_paths(out, {"sub": lab}, cfg.registration.template, cfg.atlas.name)
        paths["regions"].parent.mkdir(parents=True, exist_ok=True)
        chi = np.where(brain, rng.normal(0, 0.01, shape) + 0.01 * als[i], 0).astype(np.float32)
        nib.save(nib.Nifti1Image(chi, affine), paths["chi_template"])
        nib.save(nib.Nifti1Image(brain.astype(np.uint8), affine), paths["mask_template"])
        nib.save(nib.Nifti1Image((brain * 500).astype(np.float32), affine), paths["t1w_template"])
        rows = []
        for region in REGIONS:
            base = {"precentral_gyrus": motor[i], "globus_pallidus": 0.08 + 0.006 * rng.normal(),
                    "corticospinal_tract": -0.045 - 0.003 * als[i] + 0.002 * rng.normal(),
                    "substantia_nigra_dorsal": 0.12 + 0.01 * als[i] + 0.006 * rng.normal()}[region]
            for h in "LR":
                rows.append((region, h, base + 0.0002 * rng.normal(), 100))
        pd.DataFrame(rows, columns=["region", "hemisphere", "median_ppm", "n_voxels"]).to_csv(
            paths["regions"], sep="\t", index=False)
    return bids, out, parts


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyses")
    bids, out, parts = _cohort(root)
    assert main([str(bids), str(out), "group", *COMMON]) == 0
    main_files = _digest(out / "group")
    assert main([str(bids), str(out), "group", *COMMON, "--group-column", "onset", "--groups", "bulbar",
                 "limb", "--restrict", "group=ALS"]) == 0
    assert main([str(bids), str(out), "group", *COMMON, "--exclude", "genetics=C9orf72"]) == 0
    return {"bids": bids, "out": out, "parts": parts, "main_before": main_files}


def _tsv(path):
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def test_analyses_land_in_their_own_folders_and_leave_the_main_one_alone(runs):
    group = runs["out"] / "group"
    assert _digest(group) == runs["main_before"]
    for name in (SUBGROUP, EXCLUSION):
        for f in ("roi_stats.tsv", "correlations.tsv", "demographics.tsv", "report.html",
                  "contrast-bulbargtlimb_stat-pfwe_statmap.nii.gz" if name == SUBGROUP
                  else "contrast-ALSgtcontrol_stat-pfwe_statmap.nii.gz"):
            assert (group / name / f).is_file(), (name, f)


def test_selection_is_recorded(runs):
    group = runs["out"] / "group"
    sub = _tsv(group / SUBGROUP / "selection.tsv")
    left = dict(zip(sub.loc[sub["included"] == "no", "participant_id"],
                    sub.loc[sub["included"] == "no", "reason"]))
    assert len(left) == 13  # 12 controls and the patient without onset
    assert left["sub-17"] == "group=control (restricted to group=ALS)"
    assert "onset" in left["sub-16"]
    exc = _tsv(group / EXCLUSION / "selection.tsv")
    assert sorted(exc.loc[exc["included"] == "no", "participant_id"]) == ["sub-02", "sub-05", "sub-10"]
    side = json.loads((group / EXCLUSION / "roi_stats.json").read_text())
    assert "genetics=C9orf72" in json.dumps(side)
    stats = _tsv(group / EXCLUSION / "roi_stats.tsv")
    assert set(stats["n_ALS"]) == {13}
    assert set(_tsv(group / "roi_stats.tsv")["n_ALS"]) == {16}
    page = (group / EXCLUSION / "report.html").read_text()
    assert "sub-05" in page and "excluded: genetics=C9orf72" in page


def test_onset_effect_and_effect_sizes(runs):
    stats = _tsv(runs["out"] / "group" / SUBGROUP / "roi_stats.tsv")
    motor = stats[stats["region"] == "precentral_gyrus"].iloc[0]
    assert motor["n_bulbar"] == 8 and motor["n_limb"] == 7
    assert motor["z"] > 2 and motor["p"] < 0.05
    assert motor["rank_biserial"] > 0.6
    assert motor["rank_biserial_ci_low"] <= motor["rank_biserial"] <= motor["rank_biserial_ci_high"]
    assert motor["cohens_d"] > 1 and motor["cohens_d_ci_low"] > 0


def test_partial_correlations_match_pingouin_and_recover_the_plant(runs):
    group = runs["out"] / "group"
    corr = _tsv(group / "correlations.tsv")
    row = corr[(corr["analysis"] == "clinical") & (corr["region"] == "precentral_gyrus")
               & (corr["variable"] == "alsfrs_r")].iloc[0]
    values = _tsv(group / "roi_values.tsv")
    v = values[(values["region"] == "precentral_gyrus") & (values["group"] == "ALS")]
    data = v.merge(runs["parts"], on="participant_id")
    data["bulbar"] = (data["onset"] == "bulbar").astype(float)
    data["male"] = (data["sex"] == "M").astype(float)
    data = data.dropna(subset=["onset"])
    ref = pg.partial_corr(data=data, x="adjusted_ppm", y="alsfrs_r", covar=["bulbar", "male"],
                          method="spearman")
    assert row["partial_n"] == 15 and row["partial_df"] == 11
    # the TSVs carry 6 significant digits
    assert row["partial_rho"] == pytest.approx(float(ref["r"].iloc[0]), abs=2e-6)
    assert row["partial_p"] == pytest.approx(float(ref["p_val"].iloc[0]), rel=1e-4)
    assert row["partial_rho_squared"] == pytest.approx(row["partial_rho"] ** 2)
    assert row["partial_covariates"] == "onset[limb], sex[M]"
    # the planted severity relation survives removing onset and sex; bulbar onset (higher QSM,
    # lower ALSFRS-R) inflates the plain correlation
    assert row["partial_rho"] < -0.6 and row["partial_p"] < 0.01
    assert row["rho"] < row["partial_rho"]


def test_leakage_check_and_report_tables(runs):
    group = runs["out"] / "group"
    corr = _tsv(group / "correlations.tsv")
    leak = corr[corr["analysis"] == "leakage"]
    assert set(zip(leak["region"], leak["variable"])) == {("corticospinal_tract", "globus_pallidus")}
    assert set(leak["group"]) == {"ALS"} and (leak["n"] == 16).all()
    assert leak["rho_squared"].between(0, 1).all()
    page = (group / "report.html").read_text()
    for text in ("Leakage check", "partial", "rank-biserial", "Cohen"):
        assert text in page, text


def test_bad_selections_exit_with_one_line(runs, capsys):
    bids, out = str(runs["bids"]), str(runs["out"])
    assert main([bids, out, "group", *COMMON, "--exclude", "genetics"]) == 64
    assert "is not COLUMN=VALUE" in capsys.readouterr().err
    assert main([bids, out, "group", *COMMON, "--exclude", "gene=C9orf72"]) == 65
    err = capsys.readouterr().err
    assert "participants.tsv: no column 'gene'" in err and "Traceback" not in err
    assert _digest(runs["out"] / "group") == runs["main_before"]
