"""Command line: options, exit codes, and the one-line error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_gre_subject, write_image

from qsm_bids import __version__
from qsm_bids.bids import discover, load_gre, phase_to_radians, strip_prefix
from qsm_bids.cli import build_parser, main
from qsm_bids.config import Config, ConfigError, load_config
from qsm_bids.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_version_file_is_the_version():
    assert __version__ == (REPO / "version").read_text().strip()


@pytest.mark.parametrize("cmd", [[sys.executable, str(REPO / "run.py"), "--version"],
                                 [str(Path(sys.executable).parent / "qsm-bids"), "--version"]])
def test_version_commands(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == __version__


def test_help_documents_every_option():
    text = build_parser().format_help()
    for opt in ("--participant-label", "--session-label", "--work-dir", "--n-cpus", "--mem-gb", "--seed",
                "--config", "--skip-bids-validation", "--verbose", "--version", "--groups",
                "--n-permutations", "--template", "--registration", "--atlas-labels"):
        assert opt in text


def test_usage_errors_exit_64(tiny_bids, tmp_path, capsys):
    assert main([str(tiny_bids), str(tmp_path / "out"), "nonsense"]) == 17  # unknown level (execution spec)
    assert main([str(tiny_bids), str(tmp_path / "out"), "participant", "--n-cpus", "0"]) == 64
    err = capsys.readouterr().err
    assert "Traceback" not in err and "qsm-bids: error:" in err


def test_output_inside_bids_is_refused(tiny_bids, capsys):
    before = _snapshot(tiny_bids)
    for out in (tiny_bids, tiny_bids / "derivatives" / "qsm"):
        assert main([str(tiny_bids), str(out), "participant", "--skip-bids-validation"]) == 64
    assert "inside" in capsys.readouterr().err
    assert _snapshot(tiny_bids) == before


def test_missing_bids_dir_is_66(tmp_path):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == 66


def test_unwritable_output_is_73(tiny_bids, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([str(tiny_bids), str(blocker / "out"), "participant", "--skip-bids-validation"]) == 73


def test_unmatched_label_is_18(tiny_bids, tmp_path, capsys):
    code = main([str(tiny_bids), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                 "--participant-label", "sub-99"])
    assert code == 18
    assert "99" in capsys.readouterr().err


def test_labels_with_or_without_prefix(tiny_bids):
    a = discover(tiny_bids, ["sub-01"])
    b = discover(tiny_bids, ["01"])
    assert [s.subject for s in a] == [s.subject for s in b] == ["01"]
    assert strip_prefix("ses-pre", "ses") == "pre"


def test_config_file_overrides_and_unknown_keys(tmp_path, capsys, tiny_bids):
    good = tmp_path / "c.yaml"
    good.write_text("recon:\n  sharp_radius_mm: 4\n  inversion: tkd\ngroup:\n  groups: [PD, HC]\nseed: 3\n")
    cfg = load_config(good)
    assert cfg.recon.sharp_radius_mm == 4.0 and cfg.recon.inversion == "tkd"
    assert cfg.group.groups == ("PD", "HC") and cfg.seed == 3
    # command line wins over the file
    cfg = load_config(good, {"recon": {"inversion": "medi"}})
    assert cfg.recon.inversion == "medi"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"recon": {"sharp_radius": 5}}))
    with pytest.raises(ConfigError, match="recon.sharp_radius"):
        load_config(bad)
    assert main([str(tiny_bids), str(tmp_path / "o"), "participant", "--config", str(bad)]) == 64
    assert "recon.sharp_radius" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="must be"):
        load_config(None, {"recon": {"sharp_radius_mm": "big"}})
    with pytest.raises(ConfigError, match="not one of"):
        load_config(None, {"recon": {"inversion": "magic"}})
    for section, key, value in (("recon", "medi_rim_data_weight", 0.0), ("recon", "medi_rim_data_weight", 1.5),
                                ("group", "cst_centreline_tolerance_voxels", -1.0)):
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            load_config(None, {section: {key: value}})


def test_paper_defaults():
    cfg = Config()
    assert cfg.recon.sharp_radius_mm == 5.0
    assert cfg.recon.medi_lambda == 1000.0
    assert cfg.recon.medi_percentage == 0.9
    assert cfg.recon.reference == "none"
    assert cfg.group.smoothing_sigma_mm == 3.0
    assert cfg.group.n_permutations == 20000
    assert cfg.group.groups == ("ALS", "control") and cfg.group.covariates == ("age",)
    assert cfg.atlas.erosion_radius_mm == 1.0


# --- discovery and loading: each bad case is one clear DataError naming the file ----------------

def _run(bids, out, *extra):
    return main([str(bids), str(out), "participant", "--skip-bids-validation", *extra])


def test_missing_phase_names_the_file(tiny_bids, tmp_path):
    (tiny_bids / "sub-02/anat/sub-02_echo-2_part-phase_MEGRE.nii.gz").unlink()
    subj = discover(tiny_bids, ["02"])[0]
    assert subj.errors and subj.errors[0][0] == 65
    assert "sub-02_echo-2_part-mag_MEGRE.nii.gz" in subj.errors[0][1]
    assert "part-phase" in subj.errors[0][1]


def test_missing_echotime(tiny_bids):
    side = tiny_bids / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.json"
    side.write_text(json.dumps({"Units": "rad"}))
    subj = discover(tiny_bids, ["01"])[0]
    assert "EchoTime" in subj.errors[0][1] and "sub-01_echo-1_part-phase_MEGRE" in subj.errors[0][1]


def test_non_increasing_echo_times(tiny_bids):
    for part in ("mag", "phase"):
        side = tiny_bids / f"sub-01/anat/sub-01_echo-2_part-{part}_MEGRE.json"
        meta = json.loads(side.read_text())
        meta["EchoTime"] = 0.001
        side.write_text(json.dumps(meta))
    subj = discover(tiny_bids, ["01"])[0]
    assert "do not increase" in subj.errors[0][1]


def test_subject_without_gre_is_66(tiny_bids):
    (tiny_bids / "sub-03/anat").mkdir(parents=True)
    write_image(tiny_bids / "sub-03/anat/sub-03_T1w.nii.gz", np.ones((4, 4, 4), np.float32))
    subj = discover(tiny_bids, ["03"])[0]
    assert subj.errors[0][0] == 66 and "no GRE" in subj.errors[0][1]


def test_truncated_file(tiny_bids):
    path = tiny_bids / "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    run = discover(tiny_bids, ["01"])[0].gre_runs[0]
    with pytest.raises(DataError, match="sub-01_echo-1_part-mag_MEGRE.nii.gz: cannot read"):
        load_gre(run)


def test_shape_mismatch_nan_and_zero(tiny_bids):
    anat = tiny_bids / "sub-01/anat"
    meta = {"EchoTime": 0.015, "MagneticFieldStrength": 3.0, "Units": "rad"}
    write_image(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz", np.zeros((6, 6, 6), np.float32), sidecar=meta)
    with pytest.raises(DataError, match="shape"):
        load_gre(discover(tiny_bids, ["01"])[0].gre_runs[0])
    arr = np.ones((12, 12, 10), np.float32)
    arr[0, 0, 0] = np.nan
    write_image(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz", arr, sidecar=meta)
    with pytest.raises(DataError, match="NaN"):
        load_gre(discover(tiny_bids, ["01"])[0].gre_runs[0])
    write_image(anat / "sub-01_echo-1_part-mag_MEGRE.nii.gz", np.zeros((12, 12, 10), np.float32),
                sidecar=dict(meta))
    write_image(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz", np.ones((12, 12, 10), np.float32), sidecar=meta)
    with pytest.raises(DataError, match="all voxels are zero"):
        load_gre(discover(tiny_bids, ["01"])[0].gre_runs[0])


def test_affine_mismatch(tiny_bids):
    anat = tiny_bids / "sub-01/anat"
    meta = {"EchoTime": 0.015, "MagneticFieldStrength": 3.0, "Units": "rad"}
    write_image(anat / "sub-01_echo-1_part-phase_MEGRE.nii.gz", np.ones((12, 12, 10), np.float32),
                affine=np.diag([1.0, 1.0, 1.0, 1.0]), sidecar=meta)
    with pytest.raises(DataError, match="affine"):
        load_gre(discover(tiny_bids, ["01"])[0].gre_runs[0])


def test_five_d_and_stacked_echoes_rejected(tiny_bids):
    anat = tiny_bids / "sub-01/anat"
    side = anat / "sub-01_echo-1_part-mag_MEGRE.json"
    side.write_text(json.dumps({"EchoTime": [0.01, 0.02], "MagneticFieldStrength": 3.0}))
    subj = discover(tiny_bids, ["01"])[0]
    assert "stacked" in subj.errors[0][1]


def test_missing_field_strength_uses_option_or_fails(tiny_bids):
    for p in (tiny_bids / "sub-01/anat").glob("*.json"):
        meta = json.loads(p.read_text())
        meta.pop("MagneticFieldStrength")
        p.write_text(json.dumps(meta))
    run = discover(tiny_bids, ["01"])[0].gre_runs[0]
    with pytest.raises(DataError, match="MagneticFieldStrength.*--field-strength"):
        load_gre(run)
    assert load_gre(run, field_strength=7.0).field_strength == 7.0


def test_already_unwrapped_phase_rejected():
    with pytest.raises(DataError, match="already unwrapped"):
        phase_to_radians(np.linspace(-10, 10, 50).astype(np.float32), "rad", "x_phase.nii.gz")


def test_integer_phase_rescaled_and_inferred():
    raw = np.array([-4096, 0, 4095], dtype=np.float32)
    rad, note = phase_to_radians(raw, "arbitrary", "p.nii.gz")
    assert np.allclose(rad, [-np.pi, 0, 4095 / 4096 * np.pi], atol=1e-6)
    rad2, note2 = phase_to_radians(raw, None, "p.nii.gz")
    assert np.allclose(rad, rad2) and "inferred 'arbitrary'" in note2
    unsigned = np.array([0, 2048, 4095], dtype=np.float32)
    rad3, _ = phase_to_radians(unsigned, "arbitrary", "p.nii.gz")
    assert rad3.min() >= -np.pi and rad3.max() < np.pi


def test_integer_phase_dataset_loads(tmp_path):
    root = tmp_path / "b"
    make_gre_subject(root, "01", units="arbitrary")
    gre = load_gre(discover(root, ["01"])[0].gre_runs[0])
    assert gre.phase.dtype == np.float32 and np.abs(gre.phase).max() <= np.pi
    assert gre.magnitude.shape == (12, 12, 10, 2)


def test_coil_resolved_dataset_loads(tmp_path):
    root = tmp_path / "b"
    make_gre_subject(root, "01", coils=3)
    gre = load_gre(discover(root, ["01"])[0].gre_runs[0])
    assert gre.coil_resolved and gre.magnitude.shape == (12, 12, 10, 2, 3)


def test_b0_direction_from_oblique_affine(tmp_path):
    root = tmp_path / "b"
    anat = make_gre_subject(root, "01", n_echoes=1)
    theta = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([1.0, 1.0, 2.0])
    for p in anat.glob("*.nii.gz"):
        import nibabel as nib

        img = nib.load(str(p))
        nib.Nifti1Image(np.asarray(img.dataobj), affine).to_filename(str(p))
    gre = load_gre(discover(root, ["01"])[0].gre_runs[0])
    assert np.allclose(gre.b0_dir, [0, np.sin(theta), np.cos(theta)], atol=1e-6)
    assert gre.voxel_size == pytest.approx((1.0, 1.0, 2.0))


def test_validator_errors_exit_16(tmp_path, capsys):
    bad = tmp_path / "notbids"
    (bad / "sub-01" / "anat").mkdir(parents=True)
    (bad / "sub-01" / "anat" / "junk.txt").write_text("x")
    code = main([str(bad), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert code == 16, err
    assert "BIDS validation" in err and "Traceback" not in err


def test_every_parameter_is_documented():
    from qsm_bids.config import parameter_table_markdown

    table = parameter_table_markdown()
    rows = [r for r in table.splitlines()[2:]]
    assert len(rows) > 40
    assert all(not r.rstrip().endswith("|  |") for r in rows), [r for r in rows if r.rstrip().endswith("|  |")]


def test_empty_user_mask_is_65_and_leaves_no_chimap(tiny_bids, tmp_path, capsys):
    masks = tmp_path / "masks"
    write_image(masks / "sub-01_desc-brain_mask.nii.gz", np.zeros((12, 12, 10), np.uint8))
    out = tmp_path / "out"
    code = _run(tiny_bids, out, "--participant-label", "01", "--mask-dir", str(masks))
    err = capsys.readouterr().err
    assert code == 65, err
    assert "mask" in err and "Traceback" not in err
    assert not list(out.rglob("*Chimap*"))


def test_provenance_stamps_every_sidecar(tmp_path):
    import pandas as pd

    from qsm_bids.io import provenance, write_nifti, write_tsv

    with provenance(GeneratedBy={"Name": "qsm-bids"}, Parameters={"seed": 1}):
        write_tsv(tmp_path / "t.tsv", pd.DataFrame({"a": [1]}), sidecar={"a": {"Description": "x"}})
        write_nifti(tmp_path / "m.nii.gz", np.zeros((2, 2, 2)), np.eye(4), sidecar={"Parameters": {"own": 1}})
    write_tsv(tmp_path / "u.tsv", pd.DataFrame({"a": [1]}), sidecar={"a": {}})
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["GeneratedBy"]["Name"] == "qsm-bids" and t["Parameters"] == {"seed": 1} and "a" in t
    assert json.loads((tmp_path / "m.json").read_text())["Parameters"] == {"own": 1}  # the writer's own wins
    assert "GeneratedBy" not in json.loads((tmp_path / "u.json").read_text())  # outside the block


def test_sidecars_inherited_from_the_dataset_root(tiny_bids):
    """BIDS inheritance: fields in a top-level sidecar apply to every subject's files."""
    for p in (tiny_bids / "sub-01/anat").glob("*.json"):
        meta = json.loads(p.read_text())
        meta.pop("MagneticFieldStrength")
        p.write_text(json.dumps(meta))
    for part in ("mag", "phase"):
        (tiny_bids / f"part-{part}_MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 7.0}))
    gre = load_gre(discover(tiny_bids, ["01"])[0].gre_runs[0])
    assert gre.field_strength == 7.0
