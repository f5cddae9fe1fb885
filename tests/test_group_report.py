"""Group report: rendering from small synthetic inputs, escaping, size, headless Chromium.

The browser test needs Debian's chromium (test set-up:
``apt-get update && apt-get install -y --no-install-recommends chromium``);
it is skipped with that reason when /usr/bin/chromium is missing.
"""

from __future__ import annotations

import html
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from browser import NO_CHROMIUM, chromium, open_in_chromium

from qsm_bids.config import Config
from qsm_bids.group.demographics import compute_demographics
from qsm_bids.group.roi_stats import compute_roi_stats
from qsm_bids.report.group import (
    methods_paragraph,
    render_group_report,
    write_group_report,
)

EVIL = "<b>x</b>"


def _grid(voxel_mm=4.0, z_range=(-72.0, 110.0)):
    """A grid over the MNI bounding box (RAS, origin as nilearn's template)."""
    nz = int((z_range[1] - z_range[0]) / voxel_mm) + 1
    shape = (int(196 / voxel_mm) + 1, int(232 / voxel_mm) + 1, nz)
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = (-98.0, -134.0, z_range[0])
    return shape, affine


def _world_coords(shape, affine):
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return [c.reshape(shape) for c in xyz]


def _brain(shape, affine):
    x, y, z = _world_coords(shape, affine)
    return ((x / 70) ** 2 + ((y + 18) / 95) ** 2 + ((z - 10) / 75) ** 2) <= 1, (x, y, z)


def _chimap(shape, affine, rng):
    brain, (x, y, z) = _brain(shape, affine)
    chi = np.zeros(shape, np.float32)
    chi[brain] = rng.normal(0.0, 0.02, int(brain.sum()))
    for cx in (-20.0, 20.0):  # globus pallidus-like blobs
        chi[((x - cx) ** 2 + (y + 4) ** 2 + z ** 2) < 80] += 0.12
    for cx in (-10.0, 10.0):  # substantia nigra-like blobs
        chi[((x - cx) ** 2 + (y + 18) ** 2 + (z + 10) ** 2) < 30] += 0.15
    return nib.Nifti1Image(chi, affine)


def _inputs(tmp_path, n_per_group=3, voxel_mm=4.0, evil=True, with_files=True):
    rng = np.random.default_rng(0)
    shape, affine = _grid(voxel_mm)
    brain, (x, y, z) = _brain(shape, affine)
    template = nib.Nifti1Image((brain * (600 + 200 * np.cos(x / 9) * np.sin(y / 11))).astype(np.float32),
                               affine)
    blob = ((x - 30) ** 2 + (y + 10) ** 2 + (z - 40) ** 2) < 150
    tfce = np.where(brain, rng.uniform(0, 50, shape), 0).astype(np.float32)
    tfce[blob] = 900.0
    pfwe = np.where(blob, 0.01, 0.6).astype(np.float32)
    con_dir = tmp_path / "group"
    con_dir.mkdir(parents=True, exist_ok=True)
    contrasts = []
    for name, (t_img, p_img) in {"ALSgtcontrol": (tfce, pfwe),
                                 "controlgtALS": (tfce * 0.1, np.ones(shape, np.float32))}.items():
        tp, pp = con_dir / f"contrast-{name}_stat-tfce_statmap.nii.gz", \
            con_dir / f"contrast-{name}_stat-pfwe_statmap.nii.gz"
        nib.save(nib.Nifti1Image(t_img, affine), tp)
        nib.save(nib.Nifti1Image(p_img, affine), pp)
        clusters = pd.DataFrame(
            [(1, int(blob.sum()), 64.0 * blob.sum(), 30, -10, 40, 30, -10, 40, 5.1, 900.0, 0.01,
              f"precentral_gyrus {EVIL}")] if name == "ALSgtcontrol" else [],
            columns=["cluster", "n_voxels", "volume_mm3", "peak_x_mm", "peak_y_mm", "peak_z_mm",
                     "centre_x_mm", "centre_y_mm", "centre_z_mm", "peak_t", "peak_tfce", "peak_pfwe",
                     "peak_label"])
        cp = con_dir / f"contrast-{name}_desc-clusters_table.tsv"
        clusters.to_csv(cp, sep="\t", index=False)
        contrasts.append({"name": name, "stat": tp, "pfwe": pp, "clusters": cp})

    n = 2 * n_per_group
    labels = [f"{i:02d}" for i in range(n)]
    if evil:
        labels[0] = EVIL
    groups = ["ALS"] * n_per_group + ["control"] * n_per_group
    parts = pd.DataFrame({"participant_id": [f"sub-{lab}" for lab in labels], "group": groups,
                          "age": rng.uniform(40, 80, n).round(1), "sex": rng.choice(["M", "F"], n),
                          "alsfrs_r": [*rng.integers(20, 48, n_per_group), *[np.nan] * n_per_group],
                          "onset": [*(["limb", "bulbar"] * n)[:n_per_group], *[None] * n_per_group]})
    rows = []
    for i, lab in enumerate(labels):
        for region, shift in (("precentral_gyrus", 0.0015), ("substantia_nigra_dorsal", 0.014),
                              ("globus_pallidus", 0.011), ("corticospinal_tract", -0.004)):
            base = 0.05 + (shift if groups[i] == "ALS" else 0) + rng.normal(0, 0.004)
            for h in "LR":
                rows.append((f"sub-{lab}", region, h, base + rng.normal(0, 0.002)))
    vals = pd.DataFrame(rows, columns=["participant_id", "region", "hemisphere", "median_ppm"])
    roi = compute_roi_stats(vals, parts)
    demo = compute_demographics(parts)
    subjects = []
    for i, lab in enumerate(labels):
        img = _chimap(shape, affine, rng)
        if with_files:
            path = tmp_path / f"subj{i:02d}_space-MNI152NLin2009aSym_Chimap.nii.gz"
            nib.save(img, path)
            img = path
        subjects.append({"participant_id": f"sub-{lab}", "group": groups[i], "chimap": img})
    return dict(groups=("ALS", "control"), config=Config().to_dict(), roi_result=roi,
                demographics=demo, participants=parts, contrasts=contrasts, template=template,
                subjects=subjects, warnings=[f"sub-{EVIL}: step failed (test warning)"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    inputs = _inputs(tmp)
    path = write_group_report(tmp / "group" / "report.html", **inputs)
    return path, path.read_text()


def test_report_content_and_escaping(report):
    path, text = report
    # markup in a participant label, a cluster label and a warning is shown as text
    assert EVIL not in text
    assert html.escape(EVIL) in text or "&lt;b&gt;x&lt;/b&gt;" in text
    # every section is present
    for anchor in ("methods", "demographics", "voxelwise", "regions", "correlations", "individuals",
                   "warnings"):
        assert f'id="{anchor}"' in text
    for ref in ("Schofield", "Schweser", "Morphology enabled dipole inversion", "Avants",
                "Threshold-free cluster enhancement", "Freedman", "Winkler", "Acosta-Cabronero"):
        assert ref in text, ref
    assert "lambda = 1000" in text and "20,000" in text and "radius 5 mm" in text
    assert "ALSgtcontrol" in text and "controlgtALS" in text
    assert "No significant cluster" in text
    # figures: both contrasts, bar chart, scatter, 6 three-plane views, 6 thumbnails, all embedded
    srcs = re.findall(r'<img src="([^"]*)"', text)
    assert len(srcs) == 2 + 1 + 1 + 6 + 6
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    # self-contained: no external URL anywhere
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert "http://" not in text and "https://" not in text
    # thumbnails link to participant pages next to group/
    hrefs = re.findall(r'<a class="thumb[^"]*" href="([^"]*)"', text)
    assert "../sub-01.html" in hrefs and "../sub-%3Cb%3Ex%3C/b%3E.html" in hrefs
    # the MNI z of slices is labelled in the figure summary (voxelwise: significant voxels exist)
    assert "significant voxel(s)" in text


def test_methods_follow_config():
    cfg = Config()
    cfg.recon.background = "vsharp"
    cfg.recon.inversion = "tkd"
    cfg.group.n_permutations = 5000
    paras, refs = methods_paragraph(cfg.to_dict(), {"qsm-bids": "9.9", "antspyx": "0.6.3"})
    text = " ".join(paras)
    assert "V-SHARP" in text and "thresholded k-space division" in text and "5,000" in text
    assert "MEDI" not in text and "qsm-bids 9.9" in text
    assert "coherence at or below 0.5 on the first echo of multi-echo data, 0.35 for a single echo" in text
    assert any("Shmueli" in r for r in refs) and not any("Morphology" in r for r in refs)
    # citation numbers are consecutive in order of first use
    nums = [int(n) for group in re.findall(r"\[([\d, ]+)\]", text) for n in group.split(",")]
    assert max(nums) == len(refs) and sorted(set(nums)) == list(range(1, len(refs) + 1))


def test_report_size_for_67_subjects(tmp_path):
    """67 participants on a 2 mm grid (a slab around the thumbnail slice keeps the test fast)."""
    inputs = _inputs(tmp_path, n_per_group=3, voxel_mm=4.0, evil=False)
    rng = np.random.default_rng(1)
    shape, affine = _grid(2.0, z_range=(-30.0, 10.0))
    base = _chimap(shape, affine, rng)
    subjects = []
    for i in range(67):
        data = np.asarray(base.dataobj) + rng.normal(0, 0.01, shape).astype(np.float32)
        subjects.append({"participant_id": f"sub-{i:03d}", "group": "ALS" if i < 28 else "control",
                         "chimap": nib.Nifti1Image(data, affine)})
    inputs["subjects"] = subjects
    text = render_group_report(**inputs)
    size_mb = len(text.encode()) / 1e6
    assert text.count('<a class="thumb ') == 67
    assert size_mb < 20, size_mb
    print(f"report size for 67 subjects: {size_mb:.2f} MB")


@pytest.mark.skipif(chromium() is None, reason=NO_CHROMIUM)
def test_report_opens_in_headless_chromium(report, tmp_path):
    path, text = report
    page = tmp_path / "group" / "report.html"  # same depth, so ../sub-*.html links resolve alike
    result = open_in_chromium(text, page, tmp_path)
    assert result.probe["images"] == 16
    assert result.probe["broken"] == [], result.probe
    assert result.probe["errors"] == [], result.probe
    assert result.console == [], result.console
    # the escaped label is text in the rendered DOM, not a <b> element
    assert "<b>x</b>" not in result.dom


def test_report_from_files_matches_the_in_memory_report(report, tmp_path):
    """--report-only renders the same sections, tables and warnings from the files on disk."""
    import json
    import shutil

    from qsm_bids.cli import main
    from qsm_bids.derivatives import GROUP_OUTPUTS, clusters_table_name, statmap_name
    from qsm_bids.group.roi_stats import write_roi_outputs
    from qsm_bids.report.group import write_group_report_from_files

    inputs = _inputs(tmp_path, with_files=True)
    out = tmp_path / "out"
    group = out / "group"
    roi = inputs["roi_result"]
    write_roi_outputs(group, roi, demographics=inputs["demographics"])
    (group / GROUP_OUTPUTS["regions_summary"]).write_text(json.dumps(
        {"Groups": list(roi.groups), "Parameters": roi.parameters, "Warnings": roi.warnings}))
    tpl = Config().registration.template
    for con in inputs["contrasts"]:
        shutil.copy(con["stat"], group / statmap_name(con["name"], "tfce", space=tpl))
        shutil.copy(con["pfwe"], group / statmap_name(con["name"], "pfwe", space=tpl))
        shutil.copy(con["clusters"], group / clusters_table_name(con["name"]))
    subjects = [{**s, "chimap": str(s["chimap"])} for s in inputs["subjects"]]
    (group / GROUP_OUTPUTS["summary"]).write_text(json.dumps(
        {"Parameters": inputs["config"], "Contrasts": [c["name"] for c in inputs["contrasts"]],
         "Participants": subjects, "Warnings": inputs["warnings"], "Versions": {"qsm-bids": "9.9"}}))
    bids = tmp_path / "bids"
    bids.mkdir()
    inputs["participants"].to_csv(bids / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    from_files = write_group_report_from_files(out, bids).read_text()
    in_memory = write_group_report(tmp_path / "mem.html", **inputs).read_text()

    def tables(text):  # an empty cell reads back from a TSV as n/a
        return [t.replace("<td></td>", "<td>n/a</td>") for t in re.findall(r"<table.*?</table>", text, flags=re.S)]

    assert from_files.count('<img src="data:image/png;base64,') == in_memory.count('<img src="data:image/png;base64,')
    for anchor in ("methods", "demographics", "voxelwise", "regions", "correlations", "individuals", "warnings"):
        assert f'id="{anchor}"' in from_files
    # the tables read back from the TSVs show what the in-memory results showed (parameters table aside)
    for a, b in zip(tables(from_files)[1:], tables(in_memory)[1:]):
        assert a == b, "\n".join(x + "  !=  " + y for x, y in zip(a.split("<tr>"), b.split("<tr>")) if x != y)
    assert len(tables(from_files)) == len(tables(in_memory))
    assert html.escape(f"sub-{EVIL}: step failed (test warning)") in from_files
    # the command line: --report-only re-renders; without group results it is a "no input" error (66)
    (group / "report.html").unlink()
    assert main([str(bids), str(out), "group", "--report-only"]) == 0
    assert (group / "report.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(bids), str(empty), "group", "--report-only"]) == 66


def test_coverage_section_and_chain_in_the_methods(tmp_path):
    """The group report shows the coverage map written by the voxelwise step, the analysis-mask rule
    and the regions' coverage, all read from the files on disk; the methods say which mask and chain."""
    import json

    import nibabel as nib

    from qsm_bids.derivatives import GROUP_OUTPUTS
    from qsm_bids.group.workflow import write_region_coverage
    from qsm_bids.report.group import coverage_view

    shape, affine = _grid()
    count = np.zeros(shape, np.int16)
    count[4:-4, 4:-4, 4:-4] = 9
    count[6:-6, 6:-6, 6:-6] = 10
    group = tmp_path / "group"
    group.mkdir()
    nib.save(nib.Nifti1Image(count, affine), str(group / GROUP_OUTPUTS["coverage_map"]))
    (group / GROUP_OUTPUTS["coverage_map"].replace(".nii.gz", ".json")).write_text(
        json.dumps({"NumberOfSubjects": 10, "MinimumCoverage": 9}))
    values = pd.DataFrame({"participant_id": ["sub-01", "sub-02", "sub-01", "sub-02"],
                           "region": ["precentral_gyrus"] * 2 + ["putamen"] * 2, "hemisphere": ["L"] * 4,
                           "median_ppm": [0.01, 0.02, 0.05, 0.06], "n_voxels": [90, 40, 100, 100],
                           "coverage": [0.9, 0.4, 1.0, 1.0]})
    write_region_coverage(group / GROUP_OUTPUTS["region_coverage"], values)
    view = coverage_view(group)
    assert view["n"] == 10 and view["need"] == 9 and view["n_voxels"] == int((count >= 9).sum())
    assert view["figure"].startswith("data:image/png;base64,")
    text = render_group_report(coverage=view)
    assert 'id="coverage"' in text and "at least 9 of the 10 participants" in text
    rows = pd.read_csv(group / GROUP_OUTPUTS["region_coverage"], sep="\t")
    pre = rows[rows.region == "precentral_gyrus"].iloc[0]
    assert pre.coverage_median == pytest.approx(0.65) and pre.coverage_min == 0.4 and pre["n_below_0.5"] == 1
    assert text.index("precentral_gyrus") < text.index("putamen")  # lowest coverage first
    assert coverage_view(tmp_path) is None
    # methods: the T1w mask, the rim shells, the preset and the coverage rule
    cfg = Config()
    cfg.recon.medi_edge_radii_mm = (2.0, 1.0)
    cfg.group.coverage_fraction = 0.9
    text = " ".join(methods_paragraph(cfg.to_dict(), {})[0])
    assert "brain mask" in text and "T1w" in text and "2, 1 mm spheres" in text and "90 %" in text
    assert "outermost layer" not in text
    cfg.recon.mask_outer_layer_every_echo = True
    cfg.recon.medi_bregman_steps = 1
    text, refs = methods_paragraph(cfg.to_dict(), {})
    assert "outermost layer whose phase was incoherent" in " ".join(text)
    assert "1 Bregman step" in " ".join(text) and any("Osher" in r for r in refs)
    from qsm_bids.config import load_config

    text = " ".join(methods_paragraph(load_config(None, {"preset": "paper"}).to_dict(), {})[0])
    assert "'paper' preset" in text and "GRE magnitude (eroded by 1 mm)" in text and "intersection" in text
