"""The group report: one self-contained ``OUTPUT_DIR/group/report.html``.

Sections: methods (generated from the parameters and versions used, with
citations), demographics, voxelwise results (the paper's Figure 3), region
results (Figure 4), individual views (Figure 5) with a thumbnail of every
participant linking to its participant page (``../sub-<l>.html``),
correlations, warnings. Rendered with jinja2 (autoescape on); every figure is
a base64 PNG data URI, so the page opens offline and needs nothing else.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Mapping, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from ..bids import read_participants, with_prefix
from ..config import Config
from ..derivatives import GROUP_OUTPUTS, clusters_table_name, statmap_name
from ..errors import NoInputError
from . import figure_to_data_uri, render_template
from .figures import (
    GROUP_COLOURS,
    cluster_slices_figure,
    coverage_figure,
    load_image,
    roi_bar_figure,
    scatter_grid_figure,
    three_plane_figure,
    thumbnail_data_uri,
)

__all__ = ["render_group_report", "write_group_report", "methods_paragraph", "package_versions",
           "REFERENCES"]

logger = logging.getLogger(__name__)

REFERENCES = {
    "acosta2018": "Acosta-Cabronero J, Machts J, Schreiber S, et al. Quantitative susceptibility MRI to "
                  "detect brain iron in amyotrophic lateral sclerosis. Radiology 2018;289(1):195-203.",
    "eckstein2018": "Eckstein K, Dymerska B, Bachrata B, et al. Computationally efficient combination of multi-channel "
                    "phase data from multi-echo acquisitions (ASPIRE). Magn Reson Med 2018;79:2996-3006.",
    "walsh2000": "Walsh DO, Gmitro AF, Marcellin MW. Adaptive reconstruction of phased array MR imagery. "
                 "Magn Reson Med 2000;43(5):682-690.",
    "schofield2003": "Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric "
                     "applications. Opt Lett 2003;28(14):1194-1196.",
    "ghiglia1994": "Ghiglia DC, Romero LA. Robust two-dimensional weighted and unweighted phase "
                   "unwrapping that uses fast transforms and iterative methods. J Opt Soc Am A "
                   "1994;11(1):107-117.",
    "schweser2011": "Schweser F, Deistung A, Lehr BW, Reichenbach JR. Quantitative imaging of intrinsic "
                    "magnetic tissue properties using MRI signal phase: an approach to in vivo brain iron "
                    "metabolism? NeuroImage 2011;54(4):2789-2807.",
    "wu2012": "Wu B, Li W, Guidon A, Liu C. Whole brain susceptibility mapping using compressed sensing. "
              "Magn Reson Med 2012;67(1):137-147.",
    "liu2011pdf": "Liu T, Khalidov I, de Rochefort L, et al. A novel background field removal method for "
                  "MRI using projection onto dipole fields (PDF). NMR Biomed 2011;24(9):1129-1136.",
    "liu2012": "Liu J, Liu T, de Rochefort L, et al. Morphology enabled dipole inversion for quantitative "
               "susceptibility mapping using structural consistency between the magnitude image and the "
               "susceptibility map. NeuroImage 2012;59(3):2560-2568.",
    "osher2005": "Osher S, Burger M, Goldfarb D, Xu J, Yin W. An iterative regularization method for total "
                 "variation-based image restoration. Multiscale Model Simul. 2005;4(2):460-489.",
    "liu2013": "Liu T, Wisnieff C, Lou M, et al. Nonlinear formulation of the magnetic field to source "
               "relationship for robust quantitative susceptibility mapping. Magn Reson Med "
               "2013;69(2):467-476.",
    "shmueli2009": "Shmueli K, de Zwart JA, van Gelderen P, et al. Magnetic susceptibility mapping of brain "
                   "tissue in vivo using MRI phase data. Magn Reson Med 2009;62(6):1510-1522.",
    "avants2008": "Avants BB, Epstein CL, Grossman M, Gee JC. Symmetric diffeomorphic image registration "
                  "with cross-correlation: evaluating automated labeling of elderly and neurodegenerative "
                  "brain. Med Image Anal 2008;12(1):26-41.",
    "avants2011": "Avants BB, Tustison NJ, Song G, et al. A reproducible evaluation of ANTs similarity "
                  "metric performance in brain image registration. NeuroImage 2011;54(3):2033-2044.",
    "smith2009": "Smith SM, Nichols TE. Threshold-free cluster enhancement: addressing problems of "
                 "smoothing, threshold dependence and localisation in cluster inference. NeuroImage "
                 "2009;44(1):83-98.",
    "freedman1983": "Freedman D, Lane D. A nonstochastic interpretation of reported significance levels. "
                    "J Bus Econ Stat 1983;1(4):292-298.",
    "winkler2014": "Winkler AM, Ridgway GR, Webster MA, Smith SM, Nichols TE. Permutation inference for "
                   "the general linear model. NeuroImage 2014;92:381-397.",
}

_PACKAGES = ("qsm-bids", "numpy", "scipy", "nibabel", "antspyx", "nilearn", "pandas", "matplotlib",
             "jinja2", "pybids")


def package_versions(names: Sequence[str] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that produced the results."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "qsm-bids" not in out:
        from .. import __version__

        out["qsm-bids"] = __version__
    return out


def as_config(config) -> Config:
    """A :class:`Config` from a Config, its ``to_dict()`` (possibly partial) or None (the defaults)."""
    if isinstance(config, Config):
        return config
    # keys of an older qsm-bids (read back from group.json) that this version no longer has are ignored
    known = Config().to_dict()
    kept = {k: ({kk: vv for kk, vv in v.items() if kk in known[k]} if isinstance(v, dict) else v)
            for k, v in dict(config or {}).items() if k in known}
    return Config().update(kept, source="report configuration")


class _Citer:
    """Numbers references in order of first use."""

    def __init__(self):
        self.keys: list[str] = []

    def __call__(self, *keys: str) -> str:
        nums = []
        for k in keys:
            if k not in self.keys:
                self.keys.append(k)
            nums.append(str(self.keys.index(k) + 1))
        return "[" + ", ".join(nums) + "]"

    def references(self) -> list[str]:
        return [REFERENCES[k] for k in self.keys]


def _unwrapping_sentence(method, cite):
    guided = (f"the wrapped phase plus the multiple of 2\u03c0 nearest a masked weighted least-squares "
              f"unwrapping {cite('ghiglia1994')}")
    temporal = (f"in time over the echoes: the first echo as {guided}, each later echo as the wrapped phase "
                f"plus the multiple of 2\u03c0 nearest the phase predicted by the frequency of the earlier "
                f"echoes")
    laplacian = f"with the Laplacian method {cite('schofield2003')}"
    text = {"auto": f"the phase was unwrapped {temporal} (single-echo data {laplacian}).",
            "temporal": f"the phase was unwrapped {temporal}.",
            "guided": f"each echo's phase was unwrapped as {guided}.",
            "laplacian": f"the phase was unwrapped {laplacian}."}
    return text[method]


def methods_paragraph(config: Mapping | None, versions: Mapping[str, str],
                      roi_parameters: Mapping | None = None) -> tuple[list[str], list[str]]:
    """Methods text generated from the configuration actually used.

    Parameters
    ----------
    config : the run's :class:`qsm_bids.config.Config`, or its ``to_dict()`` (e.g. read back
        from a sidecar); missing keys take the paper's defaults.
    versions : package -> version.
    roi_parameters : ``RoiStatsResult.parameters`` (what the region analysis did).

    Returns
    -------
    (paragraphs, references) - plain text; the template escapes it.
    """
    cfg = as_config(config)
    cite = _Citer()
    paras = []
    recon = [f"Quantitative susceptibility maps were computed with qsm-bids {versions.get('qsm-bids', '')}, "
             f"following Acosta-Cabronero et al. {cite('acosta2018')}. Coil-resolved complex data were "
             f"combined with an adaptive (Walsh-type) combination {cite('walsh2000')} "
             f"(smoothing {cfg.recon.coil_smoothing_mm:g} mm); " + _unwrapping_sentence(cfg.recon.unwrap_method, cite)]
    if cfg.recon.remove_phase_offset_multiecho:
        robust = (f", re-estimated {cfg.recon.phase_offset_robust_passes} times without the voxels far from it"
                  if cfg.recon.phase_offset_robust_passes else "")
        recon.append(f"In combined multi-echo data the phase at TE = 0 was extrapolated from the first two "
                     f"echoes and smoothed over the brain mask (FWHM {cfg.recon.phase_offset_smoothing_mm:g} mm"
                     f"{robust}), as in MCPC-3D-S {cite('eckstein2018')}, and removed before the field was "
                     f"fitted over echo time.")
    bg = cfg.recon.background
    if bg == "sharp":
        recon.append(f"Background fields were removed with SHARP {cite('schweser2011')} (spherical kernel "
                     f"radius {cfg.recon.sharp_radius_mm:g} mm, truncation threshold "
                     f"{cfg.recon.sharp_threshold:g}).")
    elif bg == "vsharp":
        radii = ", ".join(f"{r:g}" for r in cfg.recon.vsharp_radii_mm)
        recon.append(f"Background fields were removed with V-SHARP {cite('schweser2011', 'wu2012')} "
                     f"(radii {radii} mm).")
    else:
        recon.append(f"Background fields were removed with PDF {cite('liu2011pdf')}.")
    inv = cfg.recon.inversion
    if inv == "medi":
        recon.append(f"Susceptibility was estimated by nonlinear morphology-enabled dipole inversion (MEDI) "
                     f"{cite('liu2012', 'liu2013')} with lambda = {cfg.recon.medi_lambda:g} "
                     f"(gradient-mask percentage {cfg.recon.medi_percentage:g}, at most "
                     f"{cfg.recon.medi_max_iter} Gauss-Newton and "
                     f"{cfg.recon.medi_cg_max_iter} conjugate-gradient iterations"
                     + (", the conjugate gradients preconditioned by the inverse of the nearest "
                        "shift-invariant operator" if cfg.recon.medi_cg_preconditioner == "circulant" else "")
                     + ").")
        if cfg.recon.medi_bregman_steps:
            n = cfg.recon.medi_bregman_steps
            recon.append(f"{n} Bregman step{'s' if n > 1 else ''} {cite('osher2005')} followed (the data residual "
                         "added back and MEDI solved again), restoring contrast the L1 term takes from compact "
                         "iron-rich nuclei.")
    elif inv == "tkd":
        recon.append(f"Susceptibility was estimated by thresholded k-space division {cite('shmueli2009')} "
                     f"(threshold {cfg.recon.tkd_threshold:g}).")
    else:
        recon.append(f"Susceptibility was estimated by closed-form Tikhonov-regularised inversion "
                     f"(lambda {cfg.recon.tikhonov_lambda:g}).")
    if cfg.recon.mask_method == "auto":
        recon.insert(1, "The brain mask was the template's (MNI152) brain mask brought onto the GRE grid through "
                        "the inverse T1w-to-template and GRE-to-T1w transforms and intersected with the "
                        "magnitude's support (no erosion) where a T1w was available, and otherwise from the "
                        f"GRE magnitude (eroded by {cfg.recon.mask_erode_mm:g} mm).")
    else:
        recon.insert(1, f"The brain mask was made from the GRE magnitude (eroded by {cfg.recon.mask_erode_mm:g} mm).")
    if cfg.recon.mask_outer_layer_every_echo:
        recon.insert(2, "In multi-echo data, voxels of the brain mask's outermost layer whose phase was incoherent "
                        "at any echo were left out (partial volumes of the skull base).")
    # inserted second, so it reads before the outer-layer rule
    if cfg.recon.mask_phase_quality or cfg.recon.mask_phase_quality_single_echo:
        recon.insert(2, "Voxels whose phase disagreed with their six neighbours (coherence at or below "
                        f"{cfg.recon.mask_phase_quality:g} on the first echo of multi-echo data, "
                        f"{cfg.recon.mask_phase_quality_single_echo:g} for a single echo) were left out of the "
                        "data.")
    edges = [r for r in cfg.recon.medi_edge_radii_mm if r < cfg.recon.sharp_radius_mm]
    if inv == "medi" and bg == "sharp" and cfg.recon.medi_smv and edges:
        recon.append("MEDI inverted the total field high-passed by the SHARP sphere in the interior and, in "
                     "the rim that sphere erodes, by the largest of "
                     + ", ".join(f"{r:g}" for r in sorted(edges, reverse=True))
                     + " mm spheres that fits ("
                     + (f"radii under {cfg.recon.medi_rim_min_radius_voxels:g} voxel edges widened to that; "
                        if cfg.recon.medi_rim_min_radius_voxels > 1 else "")
                     + "one consistent kernel per shell), so the cortex is measured; "
                       "this applied where the brain mask came from the T1w (a mask from the magnitude "
                       "alone stops at its thresholded edge, and its rim was not returned).")
    elif inv == "medi" and bg == "sharp" and cfg.recon.medi_smv:
        recon.append("MEDI inverted the SMV-filtered total field (the MEDI toolbox's 'smv' form).")
    if cfg.preset:
        recon.append(f"Parameters followed the '{cfg.preset}' preset"
                     + (" (the paper's chain exactly)." if cfg.preset == "paper" else "."))
    ref = cfg.recon.reference
    recon.append("Susceptibility values were not referenced." if ref == "none" else
                 f"Susceptibility values were referenced to the mean of the {ref}.")
    paras.append(" ".join(recon))

    tmpl = cfg.group.template
    paras.append(
        f"Images were normalised with ANTs {cite('avants2008', 'avants2011')} (antspyx "
        f"{versions.get('antspyx', 'n/a')}; preset '{cfg.registration.preset}'): GRE "
        f"magnitude to T1w (rigid) and T1w to {cfg.registration.template} "
        f"(rigid, then affine, then SyN), and susceptibility maps were carried through the composed transforms "
        f"({cfg.registration.template_resolution_mm:g} mm). "
        + (("A study-wise template was built from the participants' T1w images "
            f"({cfg.group.template_iterations} iterations). " if cfg.group.template_chi_weight <= 0 else
            "A study-wise template was built from the participants' T1w images and susceptibility maps "
            f"together ({cfg.group.template_iterations} iterations; multi-channel SyN, cross-correlation of "
            f"the susceptibility maps with weight {cfg.group.template_chi_weight:g} beside the T1w's "
            "mutual information), so that the iron-rich nuclei steer the registration. ") if tmpl == "study" else "")
        + f"Regional medians were taken in atlas regions ('{cfg.atlas.name}') eroded by a "
        f"{cfg.atlas.erosion_radius_mm:g} mm sphere (regions with fewer than "
        f"{cfg.atlas.min_voxels} voxels left out).")

    covs = list(cfg.group.covariates)
    groups = list(cfg.group.groups)
    paras.append(
        f"Voxelwise, absolute susceptibility maps were smoothed with a Gaussian kernel (sigma "
        f"{cfg.group.smoothing_sigma_mm:g} mm) compensated at the brain boundary, and a general "
        f"linear model with group ({groups[0]} vs {groups[1]})"
        + (f" and {', '.join(covs)} as nuisance" if covs else "")
        + f" was tested in both directions with threshold-free cluster enhancement {cite('smith2009')} "
        f"(E = {cfg.group.tfce_E:g}, H = {cfg.group.tfce_H:g}, "
        f"{cfg.group.tfce_connectivity}-connectivity) and "
        f"{int(cfg.group.n_permutations):,} Freedman-Lane permutations "
        f"{cite('freedman1983', 'winkler2014')}; family-wise error corrected p < "
        f"{cfg.group.alpha:g} was considered significant. The analysis mask held the voxels covered by at "
        f"least {100 * cfg.group.coverage_fraction:g} % of the participants' QSM masks"
        + (" (their intersection)" if cfg.group.coverage_fraction >= 1 else "")
        + "; region medians used only the voxels of each region inside a participant's QSM mask, and "
        "the region coverage is reported.")
    rp = roi_parameters or {}
    lat_alpha = rp.get("laterality_alpha", cfg.roi_stats.laterality_alpha)
    paras.append(
        f"Regional values were tested for laterality with the Wilcoxon signed-rank test in {groups[0]}; "
        f"regions with p < {lat_alpha:g} kept left and right apart and the others were averaged across "
        f"hemispheres. Values were corrected for {', '.join(covs) or 'no covariate'} by the covariance "
        f"method (slopes fitted in {groups[1]}, values adjusted to {groups[1]}'s mean) and compared with "
        f"the two-tailed Wilcoxon rank-sum test (normal approximation with tie correction), with "
        f"Bonferroni correction over the "
        + (f"{rp['multiple_comparisons'].split(' over ')[-1]}" if "multiple_comparisons" in rp
           else "regions tested")
        + f"; Spearman's rho was used for correlations {cite('acosta2018')}."
        + (f" Partial Spearman correlations controlled for {', '.join(rp['partial_covariates'])} within "
           "each group (ranks regressed out, residuals correlated, p from t with n - 2 - k degrees of "
           "freedom)." if rp.get("partial_covariates") else "")
        + (" The leakage check correlated " + "; ".join(" with ".join(pr) for pr in rp["leakage_pairs"])
           + f" in {groups[0]} on the adjusted values." if rp.get("leakage_pairs") else "")
        + (f" Effect sizes are the rank-biserial correlation and Cohen's d with "
           f"{100 * rp['bootstrap_confidence']:g} % percentile-bootstrap intervals "
           f"({int(rp['n_bootstrap']):,} replicates, seed {rp.get('seed')})." if rp.get("n_bootstrap") else ""))
    soft = ", ".join(f"{k} {v}" for k, v in versions.items())
    paras.append(f"Software: {soft}.")
    return paras, cite.references()


def _table(frame: pd.DataFrame | None, float_format: str = "{:.4g}") -> dict | None:
    """Columns and rows of strings for the template (NaN shown as 'n/a')."""
    if frame is None or len(frame.columns) == 0:
        return None

    def fmt(v):
        if v is None or v is pd.NA:
            return "n/a"
        if isinstance(v, (float, np.floating)):
            # rounded as the TSVs store it first, so a page rendered from memory and one read back
            # from the files show the same digits (no double rounding at a ...5 boundary)
            return "n/a" if not math.isfinite(v) else float_format.format(float(f"{v:.6g}"))
        return str(v)

    return {"columns": [str(c) for c in frame.columns],
            "rows": [[fmt(v) for v in row] for row in frame.itertuples(index=False)]}


def _read_table(table) -> pd.DataFrame | None:
    if table is None:
        return None
    if isinstance(table, pd.DataFrame):
        return table
    return pd.read_csv(table, sep="\t", na_values=["n/a"])


def _label(participant_id: str) -> str:
    pid = str(participant_id)
    return pid[4:] if pid.startswith("sub-") else pid


def _correlation_panels(roi_result, participants, max_clinical: int = 6) -> list[dict]:
    a, b = roi_result.groups
    vals = roi_result.values
    corr = roi_result.correlations
    panels = []
    if participants is not None and len(corr):
        parts = participants.copy()
        parts["participant_id"] = parts["participant_id"].map(with_prefix)
        parts = parts.set_index("participant_id")
        clin = corr[(corr.analysis == "clinical") & corr.p.notna()].sort_values("p").head(max_clinical)
        for row in clin.itertuples(index=False):
            v = vals[(vals.region == row.region) & (vals.hemisphere == row.hemisphere) & (vals.group == a)]
            x = pd.to_numeric(parts[row.variable].reindex(v.participant_id), errors="coerce")
            panels.append({"series": [(x.to_numpy(), v.adjusted_ppm.to_numpy(), a, GROUP_COLOURS[0])],
                           "xlabel": row.variable, "ylabel": f"{row.region} ({row.hemisphere}) ppm",
                           "title": f"rho = {row.rho:.2f}, p = {row.p:.3g}"})
    sub = corr[corr.analysis == "sn_gp"]
    for (region, hemi, var, vh), rows in sub.groupby(
            ["region", "hemisphere", "variable", "variable_hemisphere"], sort=False):
        series = []
        for gi, g in enumerate((a, b)):
            v = vals[(vals.region == region) & (vals.hemisphere == hemi) & (vals.group == g)]
            w = vals[(vals.region == var) & (vals.hemisphere == vh) & (vals.group == g)]
            x = w.set_index("participant_id").adjusted_ppm.reindex(v.participant_id)
            series.append((x.to_numpy(), v.adjusted_ppm.to_numpy(), g, GROUP_COLOURS[gi]))
        stats_txt = "; ".join(f"{r.group}: rho={r.rho:.2f}, p={r.p:.3g}" for r in rows.itertuples()
                              if np.isfinite(r.rho))
        panels.append({"series": series, "xlabel": f"{var} ({vh}) ppm",
                       "ylabel": f"{region} ({hemi}) ppm", "title": stats_txt})
    return panels


def render_group_report(
    *,
    groups: Sequence[str] = ("ALS", "control"),
    config: Mapping | None = None,
    versions: Mapping[str, str] | None = None,
    roi_result=None,
    demographics: pd.DataFrame | None = None,
    participants: pd.DataFrame | None = None,
    contrasts: Sequence[Mapping] = (),
    template=None,
    subjects: Sequence[Mapping] = (),
    warnings: Sequence[str] = (),
    alpha: float | None = None,
    n_views_per_group: int = 3,
    cut_mm: Sequence[float] = (12.0, -18.0, -10.0),
    display_range_ppm: tuple[float, float] = (-0.1, 0.2),
    title: str = "qsm-bids group report",
    selection: pd.DataFrame | None = None,
    analysis: str = "",
    participant_pages: str = "../",
    structural: Mapping | None = None,
    coverage: Mapping | None = None,
) -> str:
    """Render the group report to an HTML string.

    Parameters
    ----------
    groups : the two compared levels (first = patient side).
    config : ``Config.to_dict()`` of the run (methods text and parameters table).
    versions : package versions; default :func:`package_versions`.
    roi_result : :class:`qsm_bids.group.roi_stats.RoiStatsResult` (region results,
        correlations and its warnings).
    demographics : table of :func:`qsm_bids.group.demographics.compute_demographics`.
    participants : participants.tsv (x values of the clinical scatter plots).
    contrasts : one mapping per contrast: ``name`` (e.g. ``ALSgtcontrol``), ``stat``
        (TFCE map, image or path), ``pfwe`` (FWE p map), ``clusters`` (cluster
        table DataFrame or TSV path; optional), ``stat_label`` (default "TFCE").
    template : background of the voxelwise figures (image or path); default
        nilearn's shipped MNI152 2009 template at 2 mm.
    subjects : one mapping per participant: ``participant_id``, ``group``,
        ``chimap`` (template-space susceptibility map, image or path; optional).
    warnings : extra warnings (excluded subjects, failed steps, ...).
    alpha : FWE level of the cluster figures (default config group.alpha or 0.05).
    n_views_per_group : participants per group shown in three planes.
    cut_mm : world position of the three-plane views (default through SN and red nucleus).
    display_range_ppm : grey-scale window of the individual maps.
    selection : ``selection.tsv`` (participant_id, included, reason): who entered and why others did not.
    analysis : name of a subgroup/exclusion analysis ("" for the main one), shown in the title.
    participant_pages : relative folder of the participant pages (``../``, or ``../../`` from group/<analysis>/).
    structural : :func:`structural_view` (the "Structural comparators" section); None: nothing computed.
    coverage : :func:`coverage_view` (the coverage map, the analysis-mask rule and the region coverage).
    """
    groups = tuple(str(g) for g in groups)
    versions = dict(versions) if versions is not None else package_versions()
    alpha = float(alpha if alpha is not None else as_config(config).group.alpha)
    all_warnings = list(warnings)
    if roi_result is not None:
        all_warnings.extend(roi_result.warnings)
    methods, references = methods_paragraph(config, versions,
                                            roi_result.parameters if roi_result is not None else None)

    # voxelwise results (Figure 3)
    voxelwise = []
    if contrasts:
        bg = load_image(template)
        if bg is None:
            from nilearn.datasets import load_mni152_template

            bg = load_mni152_template(resolution=2)
        for i, con in enumerate(contrasts):
            name = str(con["name"])
            entry = {"name": name, "figure": None, "summary": None, "clusters": None, "error": None}
            try:
                fig, summary = cluster_slices_figure(
                    bg, con["stat"], con["pfwe"], alpha=alpha, cmap="autumn" if i % 2 == 0 else "winter",
                    stat_label=con.get("stat_label", "TFCE"), title=f"{name}: FWE p < {alpha:g}")
                entry["figure"] = figure_to_data_uri(fig, dpi=72)
                entry["summary"] = summary
            except Exception as exc:  # noqa: BLE001 - a broken map must not lose the whole report
                entry["error"] = f"{type(exc).__name__}: {exc}"
                all_warnings.append(f"contrast {name}: figure failed ({entry['error']})")
            clusters = _read_table(con.get("clusters"))
            entry["clusters"] = _table(clusters, "{:.3g}") if clusters is not None else None
            voxelwise.append(entry)

    # region results (Figure 4)
    region = None
    if roi_result is not None and len(roi_result.roi_stats):
        rs = roi_result.roi_stats
        region = {"figure": figure_to_data_uri(roi_bar_figure(rs, roi_result.groups), dpi=80),
                  "table": _table(rs), "parameters": roi_result.parameters}
    corr = None
    if roi_result is not None and len(roi_result.correlations):
        panels = _correlation_panels(roi_result, participants)
        corr = {"table": _table(roi_result.correlations),
                "figure": figure_to_data_uri(scatter_grid_figure(panels), dpi=72) if panels else None}
        subg = roi_result.subgroups
        corr["subgroups"] = _table(subg) if len(subg) else None
        corr.update(_partial_and_leakage_tables(roi_result.correlations))

    # individual views (Figure 5) and thumbnails
    views, thumbs = [], []
    shown = {g: 0 for g in groups}
    for subj in sorted(subjects, key=lambda s: (str(s.get("group")), str(s["participant_id"]))):
        label = _label(subj["participant_id"])
        grp = str(subj.get("group", ""))
        href = quote(f"{participant_pages}sub-{label}.html")
        thumb = None
        chimap = subj.get("chimap")
        if chimap is not None:
            try:
                img = load_image(chimap)
                thumb = thumbnail_data_uri(img, z_mm=cut_mm[2], vmin=display_range_ppm[0],
                                           vmax=display_range_ppm[1])
                if shown.get(grp, n_views_per_group) < n_views_per_group:
                    fig = three_plane_figure(img, cut_mm=cut_mm, vmin=display_range_ppm[0],
                                             vmax=display_range_ppm[1], title=f"sub-{label} ({grp})")
                    views.append({"label": label, "group": grp, "href": href,
                                  "figure": figure_to_data_uri(fig, dpi=60)})
                    shown[grp] += 1
            except Exception as exc:  # noqa: BLE001
                all_warnings.append(f"sub-{label}: map could not be shown ({type(exc).__name__}: {exc})")
        thumbs.append({"label": label, "group": grp, "href": href, "src": thumb})

    params = _table(pd.DataFrame(
        [(f"{s}.{k}", v if not isinstance(v, (list, tuple)) else ", ".join(map(str, v)))
         for s, sec in (config or {}).items() if isinstance(sec, dict) for k, v in sec.items()]
        + [(k, v) for k, v in (config or {}).items() if not isinstance(v, dict)],
        columns=["parameter", "value"])) if config else None
    if analysis:
        title = f"{title}: {analysis}"
    return render_template(
        "group.html", title=title, groups=groups, methods=methods, references=references,
        selection=_selection_view(selection, config, analysis),
        versions=versions, parameters=params, demographics=_table(demographics, "{:.3g}"),
        voxelwise=voxelwise, alpha=alpha, region=region, correlations=corr, views=views,
        thumbnails=thumbs, warnings=all_warnings, colours=GROUP_COLOURS,
        structural=structural or structural_view(None), coverage=coverage)


def _partial_and_leakage_tables(corr: pd.DataFrame) -> dict:
    """The clinical correlations with their partial (onset-, sex-controlled) values, and the leakage check."""
    out = {"partial": None, "leakage": None}
    if "partial_rho" not in corr.columns:
        return out
    cols = ["group", "region", "hemisphere", "variable", "n", "rho", "rho_squared", "p", "partial_covariates",
            "partial_n", "partial_rho", "partial_rho_squared", "partial_p", "partial_df"]
    clinical = corr[corr["analysis"] == "clinical"]
    if len(clinical):
        out["partial"] = _table(clinical[cols])
    leak = corr[corr["analysis"] == "leakage"]
    if len(leak):
        out["leakage"] = _table(leak[cols[:3] + ["variable", "variable_hemisphere"] + cols[4:]])
    return out


def _selection_view(selection: pd.DataFrame | None, config, analysis: str) -> dict | None:
    """Who entered the analysis, the selection applied, and why each other participant was left out."""
    if selection is None:
        return None
    g = (config or {}).get("group", {})
    included = selection[selection["included"].astype(str) == "yes"]
    col = g.get("group_column", "group")
    counts = included[col].astype(str).value_counts().to_dict() if col in included.columns else {}
    left = selection[selection["included"].astype(str) != "yes"][["participant_id", "reason"]]
    return {"analysis": analysis or "main analysis", "n_included": len(included), "counts": counts,
            "restrict": list(g.get("restrict", []) or []), "exclude": list(g.get("exclude", []) or []),
            "group_column": col, "left_out": _table(left) if len(left) else None,
            "included": ", ".join(map(str, included["participant_id"]))}


#: The T1w comparators in the group's structural summary (``structural.json``), as the report names them.
_STRUCTURAL_MEASURES = (
    ("volumes", "Subcortical volumes"),
    ("vbm", "Voxel-based morphometry (modulated GM)"),
    ("thickness", "Cortical thickness (DiReCT)"),
)


def _voxelwise_view(group_dir: Path, entry: dict, alpha: float) -> dict:
    """Contrasts (significant voxels, lowest FWE p), cluster tables and a figure of a VBM/thickness analysis."""
    from nilearn.datasets import load_mni152_template

    rows, clusters, figures = [], [], []
    files = entry.get("files", {})
    for cname, c in entry.get("contrasts", {}).items():
        rows.append({"contrast": cname, "n_voxels": entry.get("n_voxels"), "n_significant": c["n_significant_voxels"],
                     "min_pfwe": c["min_pfwe"]})
        table_path = group_dir / files.get(f"{cname}_clusters", "")
        table = _read_table(table_path) if f"{cname}_clusters" in files and table_path.exists() else None
        if table is not None and len(table):
            clusters.append({"contrast": cname, "table": _table(table, "{:.3g}")})
        if c["n_significant_voxels"] and f"{cname}_tfce" in files:
            try:
                fig, _ = cluster_slices_figure(load_mni152_template(resolution=2), group_dir / files[f"{cname}_tfce"],
                                               group_dir / files[f"{cname}_pfwe"], alpha=alpha,
                                               title=f"{cname}: FWE p < {alpha:g}")
                figures.append(figure_to_data_uri(fig, dpi=72))
            except Exception as exc:  # noqa: BLE001 - a broken map must not lose the report
                logger.warning("structural figure of %s failed: %s", cname, exc)
    return {"table": _table(pd.DataFrame(rows)), "clusters": clusters, "figures": figures,
            "n_participants": entry.get("n_participants"), "covariates": ", ".join(entry.get("covariates", []))}


def structural_view(group_dir) -> dict:
    """The "Structural comparators" section from the files in ``group_dir`` (None: no group folder)."""
    view = {"dti": None, "volumes": None, "vbm": None, "thickness": None, "not_computed": []}
    summary_path = Path(group_dir) / GROUP_OUTPUTS["structural_summary"] if group_dir is not None else None
    if summary_path is None or not summary_path.exists():
        for _, measure in _STRUCTURAL_MEASURES:
            view["not_computed"].append({"measure": measure, "reason": "no participant has structural results (no "
                                         "T1w, or the participant level ran with structural.enabled false)"})
    else:
        summary = json.loads(summary_path.read_text())
        alpha = float(summary.get("alpha", 0.05))
        for key, measure in _STRUCTURAL_MEASURES:
            entry = summary.get(key, {})
            if not entry.get("computed"):
                view["not_computed"].append({"measure": measure, "reason": str(entry.get("reason", "not run"))})
            elif key == "volumes":
                path = Path(group_dir) / GROUP_OUTPUTS["volumes_stats"]
                if path.exists():
                    view["volumes"] = {"table": _table(_read_table(path)), "n_participants": entry.get("n_participants")}
                else:
                    view["not_computed"].append({"measure": measure, "reason": f"{path.name} is missing"})
            else:
                view[key] = _voxelwise_view(Path(group_dir), entry, alpha)
    corr_path = Path(group_dir) / GROUP_OUTPUTS["dti_correlations"] if group_dir is not None else None
    if corr_path is None or not corr_path.exists():
        view["not_computed"].insert(0, {"measure": "QSM-DTI correlations (FA, MD, RD, AD in the CST)",
                                        "reason": "no participant has DWI (no DTI results)"})
        return view
    corr = pd.read_csv(corr_path, sep="\t", na_values=["n/a"], keep_default_na=False)
    values_path = Path(group_dir) / GROUP_OUTPUTS["dti_values"]
    n = len(pd.read_csv(values_path, sep="\t")) if values_path.exists() else 0
    scatter = Path(group_dir) / GROUP_OUTPUTS["dti_scatter"]
    figure = None
    if scatter.exists():
        import base64

        figure = "data:image/png;base64," + base64.b64encode(scatter.read_bytes()).decode()
    for r in corr.itertuples():
        if isinstance(r.note, str) and r.note:
            view["not_computed"].append({"measure": f"QSM-{r.y} correlation", "reason": r.note})
    view["dti"] = {"table": _table(corr.drop(columns=["note"])), "figure": figure, "n_participants": n}
    return view


def coverage_view(group_dir) -> dict | None:
    """The coverage section from the files on disk: the coverage map (figure), the analysis-mask rule
    from its sidecar, and the regions' coverage table (lowest first). None when not written."""
    group_dir = Path(group_dir)
    path = group_dir / GROUP_OUTPUTS["coverage_map"]
    if not path.exists():
        return None
    side_path = group_dir / GROUP_OUTPUTS["coverage_map"].replace(".nii.gz", ".json")
    side = json.loads(side_path.read_text()) if side_path.exists() else {}
    n = int(side.get("NumberOfSubjects", 0))
    need = int(side.get("MinimumCoverage", n))
    import nibabel as nib

    count = np.asarray(nib.load(str(path)).dataobj)
    view = {"n": n, "need": need, "n_voxels": int((count >= need).sum()),
            "n_any": int((count > 0).sum()), "figure": None, "regions": None}
    try:
        view["figure"] = figure_to_data_uri(coverage_figure(path, n, need), dpi=72)
    except Exception as exc:  # noqa: BLE001 - a broken map must not lose the whole report
        view["error"] = f"{type(exc).__name__}: {exc}"
    regions = _read_table(group_dir / GROUP_OUTPUTS["region_coverage"]) \
        if (group_dir / GROUP_OUTPUTS["region_coverage"]).exists() else None
    if regions is not None and len(regions):
        view["regions"] = _table(regions.sort_values("coverage_median", na_position="last"), "{:.3g}")
    return view


def write_group_report(path: str | Path, **kwargs) -> Path:
    """Render (see :func:`render_group_report`) and write atomically to ``path``."""
    from ..io import write_text

    html = render_group_report(**kwargs)
    logger.info("group report: %s (%.1f MB)", path, len(html.encode()) / 1e6)
    return write_text(path, html)


@dataclass
class RegionResults:
    """The region analysis as the report reads it back from ``OUTPUT_DIR/group`` (TSVs + regions.json)."""

    roi_stats: pd.DataFrame
    correlations: pd.DataFrame
    subgroups: pd.DataFrame
    values: pd.DataFrame
    warnings: list
    groups: tuple
    parameters: dict

    @classmethod
    def read(cls, group_dir) -> RegionResults | None:
        """None when the regions step has not written its summary."""
        group_dir = Path(group_dir)
        summary = group_dir / GROUP_OUTPUTS["regions_summary"]
        if not summary.exists():
            return None
        info = json.loads(summary.read_text())

        def tsv(key):
            return pd.read_csv(group_dir / GROUP_OUTPUTS[key], sep="\t", na_values=["n/a"], keep_default_na=False)

        return cls(roi_stats=tsv("roi_stats"), correlations=tsv("correlations"), subgroups=tsv("roi_subgroups"),
                   values=tsv("roi_values"), warnings=list(info.get("Warnings", [])),
                   groups=tuple(info["Groups"]), parameters=dict(info.get("Parameters", {})))


def write_group_report_from_files(output_dir, bids_dir=None, analysis: str = "") -> Path:
    """Render ``group/report.html`` from the group outputs on disk (``group.json``, TSVs, sidecars, maps).

    ``bids_dir``'s participants.tsv gives the clinical scores of the scatter plots (left out when None).
    """
    # a named analysis (subgroup, exclusion) lives in group/<analysis>/, one level deeper
    group_dir = Path(output_dir) / "group" / analysis if analysis else Path(output_dir) / "group"
    summary_path = group_dir / GROUP_OUTPUTS["summary"]
    if not summary_path.exists():
        raise NoInputError(f"{summary_path}: no group results to report; run the group level first")
    summary = json.loads(summary_path.read_text())
    cfg = as_config(summary["Parameters"])
    groups, tpl = cfg.group.groups, cfg.registration.template
    contrasts = [{"name": name, "stat": group_dir / statmap_name(name, "tfce", space=tpl),
                  "pfwe": group_dir / statmap_name(name, "pfwe", space=tpl),
                  "clusters": group_dir / clusters_table_name(name), "stat_label": "TFCE"}
                 for name in summary.get("Contrasts", [])]
    demographics_path = group_dir / GROUP_OUTPUTS["demographics"]
    participants = None
    if bids_dir is not None and (Path(bids_dir) / "participants.tsv").exists():
        participants = read_participants(bids_dir)
    return write_group_report(
        group_dir / GROUP_OUTPUTS["report"], groups=groups, config=summary["Parameters"],
        versions=summary.get("Versions"), roi_result=RegionResults.read(group_dir),
        demographics=_read_table(demographics_path) if demographics_path.exists() else None,
        participants=participants, contrasts=contrasts, template=None, subjects=summary.get("Participants", []),
        warnings=summary.get("Warnings", []), alpha=cfg.group.alpha,
        selection=_read_table(group_dir / GROUP_OUTPUTS["selection"])
        if (group_dir / GROUP_OUTPUTS["selection"]).exists() else None,
        analysis=analysis, participant_pages="../../" if analysis else "../",
        structural=structural_view(group_dir), coverage=coverage_view(group_dir))
