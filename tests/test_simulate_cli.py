"""``qsm-bids-simulate`` end to end at a tiny size: files, validation, determinism, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from qsm_bids.simulate.cli import main

TINY = ["--n-patients", "1", "--n-controls", "1", "--voxel-size", "4", "4", "4", "--matrix", "48", "56", "40",
        "--oversample", "2", "2", "2", "--echo-times", "0.008", "0.016", "--coils", "3",
        "--phase-units", "arbitrary", "--no-t1w", "02", "--seed", "11"]


def _validator():
    exe = Path(sys.executable).parent / "bids-validator-deno"
    return str(exe) if exe.exists() else shutil.which("bids-validator-deno")


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "bids"
    assert main([str(out), *TINY, "--n-jobs", "1"]) == 0
    return out


def test_layout_and_sidecars(dataset):
    anat = dataset / "sub-01" / "anat"
    for e in (1, 2):
        for part in ("mag", "phase"):
            assert (anat / f"sub-01_echo-{e}_part-{part}_MEGRE.nii.gz").is_file()
    side = json.loads((anat / "sub-01_echo-2_part-phase_MEGRE.json").read_text())
    assert side["EchoTime"] == 0.016 and side["Units"] == "arbitrary" and side["MagneticFieldStrength"] == 3.0
    phase = nib.load(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz")
    assert phase.shape == (48, 56, 40, 3) and phase.get_data_dtype() == np.int16
    data = np.asarray(phase.dataobj)
    assert data.min() >= -4096 and data.max() <= 4095
    assert (anat / "sub-01_T1w.nii.gz").is_file()
    assert not (dataset / "sub-02" / "anat" / "sub-02_T1w.nii.gz").exists()
    p = pd.read_csv(dataset / "participants.tsv", sep="\t")
    assert list(p.participant_id) == ["sub-01", "sub-02"]
    assert json.loads((dataset / "participants.json").read_text())["age"]["Units"] == "year"
    gt = dataset / "derivatives" / "groundtruth"
    assert json.loads((gt / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    for name in ("sub-01_Chimap.nii.gz", "sub-01_space-MNI152NLin2009aSym_Chimap.nii.gz",
                 "sub-01_desc-brain_mask.nii.gz", "sub-01_atlas-qsmbids_dseg.nii.gz", "sub-01_atlas-qsmbids_dseg.tsv",
                 "sub-01_desc-local_fieldmap.nii.gz", "sub-01_desc-total_fieldmap.nii.gz",
                 "sub-01_atlas-qsmbids_desc-planted_Chimap.tsv"):
        assert (gt / "sub-01" / "anat" / name).is_file(), name
    effects = pd.read_csv(gt / "effects.tsv", sep="\t")
    assert len(effects) == 26
    chi = nib.load(gt / "sub-01" / "anat" / "sub-01_Chimap.nii.gz")
    np.testing.assert_allclose(chi.affine, phase.affine)
    tpl = nib.load(gt / "sub-01" / "anat" / "sub-01_space-MNI152NLin2009aSym_Chimap.nii.gz")
    assert tpl.shape == (197, 233, 189)


def test_validates(dataset):
    exe = _validator()
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    res = subprocess.run([exe, str(dataset), "--format", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(res.stdout)
    errors = [i for i in report["issues"]["issues"] if i["severity"] == "error"]
    assert errors == [], errors


def test_same_seed_same_bytes_whatever_the_jobs(dataset, tmp_path):
    again = tmp_path / "again"
    assert main([str(again), *TINY, "--n-jobs", "2"]) == 0
    assert _digest(again) == _digest(dataset)


def test_errors(tmp_path, capsys):
    assert main([str(tmp_path / "x"), "--coils", "0"]) == 64
    assert main([str(tmp_path / "x"), "--echo-times", "0.02", "0.01"]) == 64
    assert main([str(tmp_path / "x"), "--atrophy", "cerebellum=0.1"]) == 64
    assert "no atlas region 'cerebellum'" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--atrophy", "putamen=0.7"]) == 64
    assert "0 < LOSS < 0.5" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--effects", "red_nucleus:Q=0.04"]) == 64
    assert "--effects: hemisphere of 'red_nucleus:Q=0.04' must be L or R" in capsys.readouterr().err
    assert main([str(tmp_path / "x"), "--effects", "nucleus=0.04"]) == 64
    assert "no cohort region 'nucleus'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a bad request
    full = tmp_path / "full"
    full.mkdir()
    (full / "something.txt").write_text("x")
    assert main([str(full)]) == 73
    assert "not empty" in capsys.readouterr().err


def test_chosen_effects_reach_the_ground_truth(tmp_path):
    out = tmp_path / "held_out"
    assert main([str(out), "--n-patients", "1", "--n-controls", "0", "--voxel-size", "4", "4", "4",
                 "--matrix", "48", "56", "40", "--oversample", "2", "2", "2", "--no-t1w", "01",
                 "--effects", "putamen:L=0.03", "red_nucleus:R=0.04", "--n-jobs", "1"]) == 0
    effects = pd.read_csv(out / "derivatives" / "groundtruth" / "effects.tsv", sep="\t")
    planted = effects[effects.als_minus_control_ppm != 0]
    assert sorted(zip(planted.region, planted.hemisphere, planted.als_minus_control_ppm)) == [
        ("putamen", "L", 0.03), ("red_nucleus", "R", 0.04)]
    assert "putamen L +0.03 ppm, red_nucleus R +0.04 ppm" in (out / "README").read_text()
