"""End to end on a tiny simulated cohort: participant (two concurrent jobs), resume, group.

One module-scoped run keeps the suite fast: 4 subjects at the demo's 2 mm protocol, fast
registration, 2 subjects without a T1w (magnitude registered to the template
directly), a fifth subject with a truncated file that must fail alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from browser import NO_CHROMIUM, chromium, open_in_chromium

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
#: The structural settings of sub-01's runs: DiReCT thickness on a 3 mm grid, 10 iterations (test cost).
THICKNESS = {"structural": {"thickness": True, "thickness_resolution_mm": 3.0, "thickness_iterations": 10}}
#: The other job switches thickness off (on by default), so both settings are exercised.
NO_THICKNESS = {"structural": {"thickness": False}}


def _cli(*args, check=False):
    return subprocess.run([str(BIN / "qsm-bids"), *map(str, args)], capture_output=True, text=True,
                          check=check)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    bids = root / "bids"
    subprocess.run([str(BIN / "qsm-bids-simulate"), str(bids), "--n-patients", "2", "--n-controls", "2",
                    "--no-t1w", "03", "04", "--dwi", "01", "04",
                    "--effect-scale", "1", "--seed", "7", "--n-jobs", "2"], check=True, capture_output=True)
    # a fifth subject whose magnitude file is truncated: it must fail alone, with exit 65
    bad = bids / "sub-05" / "anat"
    bad.mkdir(parents=True)
    for f in (bids / "sub-01" / "anat").glob("sub-01_echo-1_*"):
        target = bad / f.name.replace("sub-01", "sub-05")
        data = f.read_bytes()
        target.write_bytes(data[: len(data) // 3] if f.name.endswith("part-mag_MEGRE.nii.gz") else data)
    with open(bids / "participants.tsv", "a") as fh:
        fh.write("sub-05\tALS\t60\tF\t40\tlimb\t12\n")
    before = {p: p.stat().st_mtime_ns for p in bids.rglob("*")}
    out = root / "out"
    common = ["participant", "--registration", "fast", "--n-cpus", "1", "--skip-bids-validation"]
    # sub-01's job measures cortical thickness on a coarse grid (test cost); the other job has it off
    thickness = root / "thickness.json"
    thickness.write_text(json.dumps(THICKNESS))
    no_thickness = root / "no_thickness.json"
    no_thickness.write_text(json.dumps(NO_THICKNESS))
    # two jobs of a job array writing into one OUTPUT_DIR at the same time
    jobs = [subprocess.Popen([str(BIN / "qsm-bids"), str(bids), str(out), *common, "--participant-label", *labels,
                              *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for labels, extra in ((["01", "03"], ["--config", str(thickness)]), (["02", "04", "05"], ["--config", str(no_thickness)]))]
    results = [(j.wait(), *j.communicate()) for j in jobs]
    return {"bids": bids, "out": out, "results": results, "before": before, "thickness": thickness}


def test_participant_jobs(cohort):
    (code_a, _, err_a), (code_b, _, err_b) = cohort["results"]
    assert code_a == 0, err_a[-3000:]
    assert code_b == 65, err_b[-3000:]
    # one clear line naming the truncated file, no traceback on the console
    assert "sub-05_echo-1_part-mag_MEGRE.nii.gz: cannot read" in err_b
    assert "Traceback" not in err_b


def test_input_dataset_untouched(cohort):
    bids = cohort["bids"]
    assert {p: p.stat().st_mtime_ns for p in bids.rglob("*")} == cohort["before"]


def test_participant_outputs(cohort):
    out = cohort["out"]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsm-bids"
    for label in ("01", "02", "03", "04"):
        anat = out / f"sub-{label}" / "anat"
        for name in ("desc-brain_mask.nii.gz", "desc-unwrapped_phase.nii.gz", "desc-local_fieldmap.nii.gz",
                     "Chimap.nii.gz", "Chimap.json", "space-MNI152NLin2009aSym_Chimap.nii.gz",
                     "from-GRE_to-T1w_mode-image_xfm.mat", "from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5"):
            assert (anat / f"sub-{label}_{name}").exists(), name
        side = json.loads((anat / f"sub-{label}_Chimap.json").read_text())
        assert side["Parameters"]["recon"]["medi_lambda"] == 1000.0 and side["Units"] == "ppm"
        # the brain mask comes from the T1w (template brain mask through the transforms) when there is one
        has_t1w = label in ("01", "02")
        mask_side = json.loads((anat / f"sub-{label}_desc-brain_mask.json").read_text())
        assert mask_side["Method"] == ("t1w" if has_t1w else "magnitude") == side["BrainMaskMethod"]
        assert (anat / f"sub-{label}_desc-templatebrain_probseg.nii.gz").exists() == has_t1w
        table = pd.read_csv(anat / f"sub-{label}_atlas-qsmbids_stat-median_Chimap.tsv", sep="\t")
        assert list(table.columns) == ["region", "hemisphere", "median_ppm", "n_voxels", "coverage"]
        cov = table.coverage.dropna()
        assert len(cov) and ((cov >= 0) & (cov <= 1)).all()
        assert len(table) == 26 and set(table.hemisphere) == {"L", "R"}
        assert (out / f"sub-{label}.html").exists()
        assert list((out / "logs").glob(f"sub-{label}_participant_*.log"))
    # the failed subject left nothing that looks finished
    assert not list((out / "sub-05").rglob("*.nii.gz")) if (out / "sub-05").exists() else True
    assert not list(out.rglob(".*.tmp*"))


def test_structural_outputs(cohort):
    """T1w subjects: tissues, volumes (+ ICV), modulated GM and the Jacobian; thickness where it was switched on
    (sub-01); nothing for the subjects without a T1w; every parameter in the sidecars."""
    out, tpl = cohort["out"], "MNI152NLin2009aSym"
    for label in ("01", "02"):
        anat = out / f"sub-{label}" / "anat"
        for name in ("label-CSF_probseg", "label-GM_probseg", "label-WM_probseg", "desc-tissue_dseg",
                     f"space-{tpl}_label-GM_desc-modulated_probseg", f"space-{tpl}_jacobian"):
            assert (anat / f"sub-{label}_{name}.nii.gz").exists(), name
            assert (anat / f"sub-{label}_{name}.json").exists(), name
        side = json.loads((anat / f"sub-{label}_label-GM_probseg.json").read_text())
        assert side["GeneratedBy"]["Step"] == "structural"
        assert side["Parameters"]["structural"]["prior_weight"] == 0.25
        seg = np.asarray(nib.load(str(anat / f"sub-{label}_desc-tissue_dseg.nii.gz")).dataobj)
        assert set(np.unique(seg)) == {0, 1, 2, 3}
        vols = pd.read_csv(anat / f"sub-{label}_atlas-qsmbids_desc-volumes_morph.tsv", sep="\t")
        v = vols[vols.measure == "volume_mm3"]
        assert sorted(set(v.region)) == sorted(["caudate", "putamen", "globus_pallidus", "thalamus", "hippocampus",
                                                "amygdala"]) and len(v) == 12
        assert (v.value > 100).all() and (v.value < 30000).all(), v  # mm3: a putamen is ~5 ml
        icv = vols.loc[vols.measure == "icv_mm3", "value"].iloc[0]
        assert 1.0e6 < icv < 2.2e6, icv
        # the modulated GM integrates (template voxels x GM x Jacobian) to about the native GM volume
        gm_img = nib.load(str(anat / f"sub-{label}_space-{tpl}_label-GM_desc-modulated_probseg.nii.gz"))
        gm_native = nib.load(str(anat / f"sub-{label}_label-GM_probseg.nii.gz"))
        integral = np.asarray(gm_img.dataobj).sum() * np.prod(gm_img.header.get_zooms()[:3])
        native = np.asarray(gm_native.dataobj).sum() * np.prod(gm_native.header.get_zooms()[:3])
        assert abs(integral / native - 1) < 0.15, (integral, native)
        has_thickness = label == "01"
        assert (anat / f"sub-{label}_thickness.nii.gz").exists() == has_thickness
        assert (anat / f"sub-{label}_space-{tpl}_thickness.nii.gz").exists() == has_thickness
        th = vols[vols.measure == "thickness_mm"]
        assert len(th) == (4 if has_thickness else 0)
        if has_thickness:
            assert ((th.value > 0.5) & (th.value < 6)).all(), th
    for label in ("03", "04"):
        anat = out / f"sub-{label}" / "anat"
        assert not list(anat.glob("*_label-*")) and not list(anat.glob("*_morph.tsv"))
        assert not list(anat.glob("*_thickness.nii.gz")) and not list(anat.glob("*_jacobian.nii.gz"))


def test_chimap_close_to_truth(cohort):
    """Deep grey medians of the whole chain near the truth, demeaned (the demo's 2 mm protocol)."""
    out, bids = cohort["out"], cohort["bids"]
    label = "01"
    truth = bids / "derivatives" / "groundtruth" / f"sub-{label}" / "anat"
    est = pd.read_csv(out / f"sub-{label}" / "anat" / f"sub-{label}_atlas-qsmbids_stat-median_Chimap.tsv", sep="\t")
    from qsm_bids.atlas import default_label_table, region_medians

    chi_true = np.asarray(nib.load(str(truth / f"sub-{label}_Chimap.nii.gz")).dataobj, dtype=np.float32)
    labels = np.asarray(nib.load(str(truth / f"sub-{label}_atlas-qsmbids_dseg.nii.gz")).dataobj).astype(np.int16)
    qmask = np.asarray(nib.load(str(out / f"sub-{label}" / "anat" / f"sub-{label}_desc-qsm_mask.nii.gz")
                                ).dataobj) > 0
    zooms = nib.load(str(truth / f"sub-{label}_Chimap.nii.gz")).header.get_zooms()[:3]
    ref, _ = region_medians(chi_true, qmask, labels, default_label_table(), zooms)
    chi = np.asarray(nib.load(str(out / f"sub-{label}" / "anat" / f"sub-{label}_Chimap.nii.gz")).dataobj)
    offset = chi[qmask].mean() - chi_true[qmask].mean()  # QSM is relative: compare demeaned values
    merged = est.merge(ref, on=["region", "hemisphere"], suffixes=("", "_true"))
    deep = merged[merged.region.isin(["caudate", "putamen", "globus_pallidus", "thalamus"])]
    err = (deep.median_ppm - offset - deep.median_ppm_true).abs()
    assert err.max() < 0.03, deep


def test_rerun_reuses_every_step(cohort):
    res = _cli(cohort["bids"], cohort["out"], "participant", "--registration", "fast", "--n-cpus", "1",
               "--skip-bids-validation", "--participant-label", "01", "03", "--config", cohort["thickness"])
    assert res.returncode == 0, res.stderr[-2000:]
    # sub-01 (T1w: register, qsm, normalise, regions, structural, dti) and sub-03 (no T1w: qsm, normalise,
    # regions)
    assert res.stderr.count("reused") == 9


def test_changed_parameter_reruns_only_what_depends_on_it(cohort, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"atlas": {"erosion_radius_mm": 2.0}, **THICKNESS}))
    res = _cli(cohort["bids"], cohort["out"], "participant", "--registration", "fast", "--n-cpus", "1",
               "--skip-bids-validation", "--participant-label", "01", "--config", cfg)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "step qsm          reused" in res.stderr and "step normalise    reused" in res.stderr
    assert "step regions      started" in res.stderr
    assert "step structural   reused" in res.stderr  # the region erosion is not one of its parameters


def test_group_level(cohort):
    res = _cli(cohort["bids"], cohort["out"], "group", "--n-permutations", "50", "--template", "mni",
               "--n-cpus", "1")
    assert res.returncode == 0, res.stderr[-3000:]
    group = cohort["out"] / "group"
    # sub-05 has no results: excluded with a warning naming it
    assert "sub-05" in res.stderr
    for name in ("contrast-ALSgtcontrol_stat-t_statmap.nii.gz", "contrast-ALSgtcontrol_stat-tfce_statmap.nii.gz",
                 "contrast-ALSgtcontrol_stat-pfwe_statmap.nii.gz", "contrast-controlgtALS_stat-pfwe_statmap.nii.gz",
                 "roi_stats.tsv", "demographics.tsv", "correlations.tsv", "report.html"):
        assert (group / name).exists(), name
    # the coverage map counts the participants' template-space QSM masks; the analysis mask keeps the voxels
    # covered by at least group.coverage_fraction of them
    summary = json.loads((group / "group.json").read_text())
    n = len(summary["Participants"])
    frac = summary["Parameters"]["group"]["coverage_fraction"]
    count = np.zeros(nib.load(str(group / "desc-coverage_map.nii.gz")).shape, int)
    for label in [s["participant_id"].removeprefix("sub-") for s in summary["Participants"]]:
        m = nib.load(str(cohort["out"] / f"sub-{label}" / "anat"
                         / f"sub-{label}_space-MNI152NLin2009aSym_desc-qsm_mask.nii.gz"))
        count += np.asarray(m.dataobj) > 0
    cov = np.asarray(nib.load(str(group / "desc-coverage_map.nii.gz")).dataobj)
    np.testing.assert_array_equal(cov, count)
    analysis = np.asarray(nib.load(str(group / "desc-analysis_mask.nii.gz")).dataobj) > 0
    np.testing.assert_array_equal(analysis, count >= int(np.ceil(frac * n - 1e-9)))
    assert (group / "desc-coverage_regions.tsv").exists()
    assert 'id="coverage"' in (group / "report.html").read_text()
    p = np.asarray(nib.load(str(group / "contrast-ALSgtcontrol_stat-pfwe_statmap.nii.gz")).dataobj)
    assert np.nanmin(p) >= 1 / 50 - 1e-9 and np.nanmax(p) <= 1
    stats = pd.read_csv(group / "roi_stats.tsv", sep="\t")
    assert {"region", "hemisphere", "z", "p", "p_bonferroni"} <= set(stats.columns)


def test_dti_outputs_near_truth_and_in_the_group_report(cohort):
    """DWI of sub-01 (T1w reference) and sub-04 (GRE magnitude reference): CST metrics near the simulator's
    truth (a tensor fit to the noise-free signal over the native CST labels); the group section."""
    out, bids = cohort["out"], cohort["bids"]
    for label in ("01", "04"):
        est = pd.read_csv(out / f"sub-{label}" / "dwi" / f"sub-{label}_atlas-qsmbids_stat-median_dwimap.tsv",
                          sep="\t")
        truth = pd.read_csv(bids / "derivatives" / "groundtruth" / f"sub-{label}" / "dwi"
                            / f"sub-{label}_atlas-qsmbids_desc-planted_dwimap.tsv", sep="\t")
        m = est.merge(truth, on=["region", "hemisphere", "metric"])
        assert len(m) == 8
        fa = m[m.metric == "FA"]
        assert (fa.value - fa.truth_median).abs().max() < 0.06, m
        md = m[m.metric == "MD"]
        assert ((md.value - md.truth_median).abs() / md.truth_median).max() < 0.1, m
        for metric in ("FA", "MD", "RD", "AD"):
            assert (out / f"sub-{label}" / "dwi" / f"sub-{label}_desc-{metric}_dwimap.nii.gz").exists()
    assert not (out / "sub-02" / "dwi").exists()
    group = out / "group"
    values = pd.read_csv(group / "desc-dti_values.tsv", sep="\t")
    assert sorted(values.participant_id.astype(str).str.zfill(2)) == ["01", "04"]
    # CST QSM over the atlas CST's centre line in the study template: white matter, so negative
    assert values.QSM.notna().all() and (values.QSM < 0).all(), values
    centreline = np.asarray(nib.load(group / "desc-cstcentreline_dseg.nii.gz").dataobj)
    assert set(np.unique(centreline)) == {0, 25, 26}
    corr = pd.read_csv(group / "desc-dti_correlations.tsv", sep="\t", keep_default_na=False)
    assert corr.y.tolist() == ["FA", "MD", "RD", "AD"]
    assert all(n.startswith("not computed") for n in corr.note)  # at most 2 patients have DTI here
    html = (group / "report.html").read_text()
    assert "Structural comparators" in html and "QSM-DTI in the corticospinal tract" in html
    assert "Cortical thickness (DiReCT)</b>: not computed" in html


def test_structural_group_says_why_not_computed(cohort):
    """Only sub-01 and sub-02 have a T1w: the structural step runs and says that the volumes, VBM and thickness
    need two participants per group (computed cases: tests/test_group_structural.py)."""
    group = cohort["out"] / "group"
    summary = json.loads((group / "structural.json").read_text())
    assert summary["n_with_structural"] == 2 and summary["n_participants"] == 4
    for key in ("volumes", "vbm", "thickness"):
        assert not summary[key]["computed"] and "at least 2 per group" in summary[key]["reason"], summary[key]
    html = (group / "report.html").read_text()
    assert "Subcortical volumes</b>: not computed" in html and "Voxel-based morphometry (modulated GM)</b>: not " \
        "computed" in html
    assert "2 participant(s) have no structural results" in json.dumps(json.loads(
        (group / "group.json").read_text())["Warnings"])


def test_group_with_too_few_participants_is_65(cohort):
    res = _cli(cohort["bids"], cohort["out"], "group", "--participant-label", "01", "02", "03",
               "--n-permutations", "10", "--template", "mni")
    assert res.returncode == 65 and "at least 2 per group" in res.stderr


@pytest.mark.skipif(chromium() is None, reason=NO_CHROMIUM)
def test_participant_page_opens_in_chromium(cohort, tmp_path):
    text = (cohort["out"] / "sub-01.html").read_text()
    result = open_in_chromium(text, tmp_path / "sub-01.html", tmp_path)
    # mask over magnitude, QSM in three planes, T1w and QSM over the template edges, FA with the atlas,
    # tissue segmentation and thickness over the T1w
    assert result.probe["images"] == 7 and result.probe["broken"] == [], result.probe
    assert result.probe["errors"] == [] and result.console == [], (result.probe, result.console)
    assert "caudate" in result.dom


def test_bad_gradient_table_fails_alone_with_65(cohort):
    """Last: a b-vector that is not unit length (sub-01's bvec rewritten): exit 65, one line naming the file,
    the DTI outputs removed, the QSM outputs kept."""
    bvec = cohort["bids"] / "sub-01" / "dwi" / "sub-01_dwi.bvec"
    rows = [line.split() for line in bvec.read_text().splitlines()]
    for r in rows:
        r[3] = f"{float(r[3]) * 0.5:.6f}"
    bvec.write_text("\n".join(" ".join(r) for r in rows) + "\n")
    res = _cli(cohort["bids"], cohort["out"], "participant", "--registration", "fast", "--n-cpus", "1",
               "--skip-bids-validation", "--participant-label", "01", "--config", cohort["thickness"])
    assert res.returncode == 65, res.stderr[-2000:]
    assert "step structural   reused" in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "sub-01_dwi.bvec" in ln and "ERROR" in ln]
    assert len(lines) == 1 and "volume 3" in lines[0] and "unit length" in lines[0], res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    dwi = cohort["out"] / "sub-01" / "dwi"
    assert not list(dwi.glob("*.nii.gz")) and not list(dwi.glob("*.tsv"))
    assert (cohort["out"] / "sub-01" / "anat" / "sub-01_Chimap.nii.gz").exists()
