"""The participant QC page renders offline, embeds its figures and escapes data."""

import re

import nibabel as nib
import numpy as np
import pandas as pd

from qsm_bids.atlas import template_image
from qsm_bids.report.participant import render_participant_report


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def test_render_participant_report(tmp_path):
    aff = np.diag([2.0, 2.0, 4.0, 1.0])
    shape = (30, 34, 16)
    ii, jj, kk = np.indices(shape)
    r2 = ((ii - 15) / 12) ** 2 + ((jj - 17) / 14) ** 2 + ((kk - 8) / 6) ** 2
    mask = r2 < 1
    paths = {
        "magnitude": _save(tmp_path / "mag.nii.gz", np.where(r2 < 1.3, 100.0, 5.0), aff),
        "mask": _save(tmp_path / "mask.nii.gz", mask, aff),
        "chi": _save(tmp_path / "chi.nii.gz", np.where(mask, 0.05 * np.sin(ii / 3.0), 0), aff),
        "regions": tmp_path / "regions.tsv",
        "chi_template": tmp_path / "missing.nii.gz",   # absent: the page says so
    }
    tpl = template_image(4.0)
    paths["t1w_template"] = _save(tmp_path / "t1.nii.gz", np.asarray(tpl.dataobj), tpl.affine)
    pd.DataFrame({"region": ["putamen", "<script>alert(1)</script>"], "hemisphere": ["L", "R"],
                  "median_ppm": [0.0412, np.nan], "n_voxels": [120, 2]}).to_csv(
        paths["regions"], sep="\t", index=False, na_rep="n/a")
    html = render_participant_report(
        label="sub-<b>01</b>", paths=paths, parameters={"recon": {"medi_lambda": 1000}},
        timings={"qsm": 12.345, "normalise": 80}, warnings=["region <i>x</i> L: 0 voxels"], version="0.1")
    assert html.lstrip().startswith("<!DOCTYPE html>")
    # Data are text, never markup.
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "sub-<b>01</b>" not in html and "sub-&lt;b&gt;01&lt;/b&gt;" in html
    assert "<i>x</i>" not in html
    # Figures are embedded (mask, QSM, T1w overlay); the missing warped QSM is reported, not fatal.
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)) == 3
    assert "not available" in html
    assert "0.0412" in html and "n/a" in html and "12.3" in html and "medi_lambda" in html
    # Self-contained: no external resources.
    assert not re.search(r'(src|href)="(https?:)?//', html)


def test_render_with_nothing_available(tmp_path):
    html = render_participant_report("sub-02", {}, None, None, None)
    assert html.count("not available") >= 5


def test_segmentation_and_thickness_figures(tmp_path):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    shape = (20, 24, 18)
    ii, jj, kk = np.indices(shape)
    r = np.sqrt(((ii - 10) / 8) ** 2 + ((jj - 12) / 10) ** 2 + ((kk - 9) / 7) ** 2)
    seg = np.select([r < 0.6, r < 0.8, r < 1.0], [3, 2, 1], 0)
    paths = {"t1w": _save(tmp_path / "t1w.nii.gz", np.where(r < 1, 100.0 * seg, 5.0), aff),
             "tissue_dseg": _save(tmp_path / "dseg.nii.gz", seg, aff)}
    html = render_participant_report("sub-01", paths)
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)) == 1
    assert "Tissue segmentation" in html and "not available (no T1w, or structural.thickness is false)" in html
    paths["thickness"] = _save(tmp_path / "thickness.nii.gz", np.where(seg == 2, 2.5, 0.0), aff)
    html = render_participant_report("sub-01", paths)
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', html)) == 2
    assert "Cortical thickness (DiReCT" in html
