"""One typed configuration, with the defaults of Acosta-Cabronero et al. 2018.

Every tunable parameter of qsm-bids lives here. Command-line options and a
``--config`` file (YAML or JSON, nested by section) override the defaults;
an unknown key is an error that names it. Workflows pass the relevant section
to the kernels and write :meth:`Config.to_dict` into every sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .templates import TEMPLATE_NAME

__all__ = [
    "SECTIONS",
    "ConfigError",
    "InputConfig",
    "ReconConfig",
    "RegistrationConfig",
    "AtlasConfig",
    "GroupConfig",
    "RoiStatsConfig",
    "DiffusionConfig",
    "StructuralConfig",
    "Config",
    "PRESETS",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file or value is invalid (usage error, exit 64)."""


# The legal values of every choice parameter: read by Config.validate, the command line and the method
# tables of qsm_bids.recon.pipeline (a new method is one value here plus one table entry there).
PhaseUnits = Literal["rad", "arbitrary"]
MaskMethod = Literal["auto", "magnitude"]
EchoCombination = Literal["weighted_fit", "average"]
PhaseOffsetMethod = Literal["unwrapped", "wrapped"]
UnwrapMethod = Literal["auto", "laplacian", "guided", "temporal"]
BackgroundMethod = Literal["sharp", "vsharp", "pdf"]
InversionMethod = Literal["medi", "tkd", "tikhonov"]
CGPreconditioner = Literal["circulant", "none"]
ReferenceMethod = Literal["none", "csf", "brain"]
RegistrationPreset = Literal["fast", "standard"]
SyNMetric = Literal["mattes", "cc"]
GroupTemplate = Literal["study", "mni"]
PermutationBackend = Literal["processes", "dask"]
Connectivity = Literal[6, 18, 26]
TensorFitMethod = Literal["WLS", "OLS", "NLLS"]


@dataclass
class InputConfig:
    """How the GRE inputs are read."""

    #: B0 in tesla when the sidecars lack ``MagneticFieldStrength`` (None: required).
    field_strength: float | None = None
    #: Force the phase units ("rad" or "arbitrary"); None reads ``Units`` or infers.
    phase_units: PhaseUnits | None = None


@dataclass
class ReconConfig:
    """Participant steps 1-5: coils, mask, unwrapping, background, inversion.

    Coil-resolved data are combined with the adaptive (modified Walsh) combination (one method, so no
    parameter); the phase is unwrapped in time over the echoes, or with the Laplacian method
    (Schofield & Zhu 2003) for one echo (``unwrap_method``).
    """

    #: Smoothing kernel (mm, box width) of the coil covariance for the adaptive combination.
    coil_smoothing_mm: float = 6.0
    #: Brain mask: "auto" (with a T1w: the MNI152 brain mask brought through the T1w->template and GRE->T1w transforms, refined on the magnitude and phase, no erosion; without one: the magnitude mask) or "magnitude".
    mask_method: MaskMethod = "auto"
    #: Fraction of the robust magnitude range used as the initial signal threshold.
    mask_threshold: float = 0.15
    #: Multi-echo data: drop mask voxels whose first-echo phase disagrees with their neighbours (coherence ``|mean_j exp(i (phi_j - phi_i))|`` over the 6 neighbours) at or below this, and leave a later echo out of a voxel's field fit where its phase is that incoherent (0 disables both). One echo: ``mask_phase_quality_single_echo``.
    mask_phase_quality: float = 0.5
    #: One echo: the same rule at this threshold. A 20 ms echo dephases where a 6 ms first echo does not, and below 0.5 it keeps veins and outer cortex whose phase still holds their field. Measured against 0.5 (README, issue 17): on `make demo`'s cohort (2 mm) the motor-cortex clusters grew (left 16 -> 390 voxels, right 67 -> 99), nothing new in the reverse contrast, every region's error the same or smaller (ventral SN 0.115 -> 0.082 ppm), brain coverage 90-92 -> 93-95 %, precentral grey matter in template space 92-97 -> 96-98 %; at the paper protocol (2 heads) coverage 95 -> 97.5 %, the nuclei closer (worst ventral SN 0.013 -> 0.005 ppm), whole-brain NRMSE 60-61 -> 56 %, the tissue of the outer 5 mm noisier at SNR 35 (NRMSE without the veins 99-102 -> 106-111 %), unchanged at SNR 300 (91 -> 92 %). Multi-echo data keep 0.5: at 0.35 their first echo admits skull-base partial volumes whose biased field reaches the midbrain (worst red nucleus 0.009 -> 0.013 ppm).
    mask_phase_quality_single_echo: float = 0.35
    #: Multi-echo: also drop voxels of the mask's outermost layer whose phase is incoherent at any echo (the first echo alone keeps partial-volume voxels at the skull base whose phase is biased; one echo at 20 ms loses them anyway). Off: the midbrain gains, the rim and coverage lose (README, issue 16).
    mask_outer_layer_every_echo: bool = False
    #: Final erosion (mm) of the automatic brain mask.
    mask_erode_mm: float = 1.0
    #: Multi-echo field estimate: "weighted_fit" (magnitude^2-weighted fit over TE through zero).
    echo_combination: EchoCombination = "weighted_fit"
    #: Remove the phase at TE = 0 of already-combined multi-echo data before the fit.
    remove_phase_offset_multiecho: bool = True
    #: TE = 0 offset from the echo-1-to-2 phase change: "unwrapped" first (exact where it exceeds pi) or "wrapped".
    phase_offset_method: PhaseOffsetMethod = "unwrapped"
    #: FWHM (mm) of the TE = 0 offset's smoothing over the brain mask (MCPC-3D-S smooths with sigma 10 voxels); receive phase offsets vary over centimetres, and at 6 mm the estimate's own errors near the skull base made a false cluster that followed head size (README, issue 16).
    phase_offset_smoothing_mm: float = 24.0
    #: Re-smoothings of the TE = 0 offset without the voxels further from it than 3 robust SDs and 0.2 rad (wrong-2-pi echo differences); 0: a plain weighted smoothing.
    phase_offset_robust_passes: int = 2
    #: Phase unwrapping: "auto" ("temporal" for multi-echo data, "laplacian" for one echo; measured in the README), "laplacian" (the Laplacian solution itself, paper), "guided" (each echo the wrapped phase + 2 pi k nearest a masked least-squares unwrapping) or "temporal" (echo 1 guided, later echoes + 2 pi k nearest the earlier echoes' frequency x TE).
    unwrap_method: UnwrapMethod = "auto"
    #: Background removal: "sharp" (paper), "vsharp" or "pdf".
    background: BackgroundMethod = "sharp"
    #: SHARP spherical kernel radius in mm (paper: 5 mm).
    sharp_radius_mm: float = 5.0
    #: SHARP truncation threshold of the deconvolution.
    sharp_threshold: float = 0.05
    #: V-SHARP kernel radii in mm, largest first.
    vsharp_radii_mm: tuple[float, ...] = (12.0, 10.0, 8.0, 6.0, 4.0, 2.0)
    #: PDF: maximum conjugate-gradient iterations.
    pdf_max_iter: int = 100
    #: PDF: relative tolerance of the conjugate gradient.
    pdf_tol: float = 0.01
    #: Dipole inversion: "medi" (paper), "tkd" or "tikhonov".
    inversion: InversionMethod = "medi"
    #: MEDI regularisation weight on the MEDI toolbox scaling (paper: 1000).
    medi_lambda: float = 1000.0
    #: MEDI gradient mask: fraction of voxels (over the 3 directions) counted as edges-free.
    medi_percentage: float = 0.9
    #: MEDI Gauss-Newton outer iterations (toolbox default 10).
    medi_max_iter: int = 10
    #: MEDI stops when the update norm falls below this fraction of the solution norm (toolbox 0.1).
    medi_tol_norm_ratio: float = 0.1
    #: MEDI conjugate-gradient inner iterations (toolbox 100).
    medi_cg_max_iter: int = 100
    #: MEDI conjugate-gradient relative tolerance (toolbox 0.01).
    medi_cg_tol: float = 0.01
    #: MEDI conjugate gradients: "circulant" (preconditioned by the inverse of the shift-invariant operator nearest the Gauss-Newton one, on half spectra so that it costs no FFT: the same problem to the same tolerance in 2-3x fewer iterations, measured in the README) or "none" (plain CG, as the toolbox).
    medi_cg_preconditioner: CGPreconditioner = "circulant"
    #: MEDI IRLS smoothing of the L1 weight (toolbox beta, 1e-6 on its gradient scale).
    medi_beta: float = 1e-6
    #: With SHARP, MEDI inverts the SMV-filtered total field as the toolbox's 'smv' option does.
    medi_smv: bool = True
    #: With the SMV form: smaller spheres (mm) for the rim the SHARP sphere erodes, each voxel high-passed by the largest that fits, so chi is measured up to the brain edge; used with a brain mask from the T1w or the user, not with the magnitude mask, whose thresholded rim they turn into errors (radii up to the smallest voxel edge are skipped: on a 2 mm grid the 2 mm sphere is the voxel and its 6 neighbours, and 3 mm alone measured better on 16 heads, whole-brain NRMSE 54.6 % vs 56.5 %; radii under `medi_rim_min_radius_voxels` voxel edges are widened to it; empty: the rim is not returned, the paper's chain). [3, 2] measured best at the paper protocol in the README (coverage 1.0, whole-brain NRMSE 61 % vs 76 %, 3 mm alone 65.5 %, the same or better nuclei; each radius adds 2 FFTs per CG iteration, 8 instead of 4 with [3, 2]).
    medi_edge_radii_mm: tuple[float, ...] = (3.0, 2.0)
    #: Rim-shell radii under this many of the smallest voxel edges are raised to it (1: the radii as given). The brain mask's outermost voxel layer holds partial volumes of the skull and dura, whose field is not harmonic; a sphere 1.5 voxels wide averages few voxels of which that layer is a large share, and MEDI fits what it leaves as rim sources whose fields reach the midbrain. 2 (a 4 mm shell on a 2 mm grid) measured on 16 held-out 2 mm three-echo heads (README): worst red nucleus error 0.016 -> 0.011 ppm, dorsal SN 0.020 -> 0.013, ventral 0.018 -> 0.016, interior NRMSE 35.6 -> 34.0 %, whole brain 52.0 -> 56.7 % (the outer 6 mm), and that cohort's red nucleus found with more voxels and no false cluster; but on the single-echo demo cohort it lost the right motor-cortex cluster and brought a false control > ALS cluster in the midline cerebellum (FWE p 0.025), so 1 stays the default. At the paper protocol's 1 mm in-plane voxels 2 changes nothing.
    medi_rim_min_radius_voxels: float = 1.0
    #: Weight (0, 1] of the rim shells' MEDI data term against the interior's. A small sphere leaves more of the steep background near the skull base than the SMV sphere, and MEDI fits it as rim sources whose fields reach the midbrain. Measured on 16 held-out 2 mm three-echo heads (README): 0.3 takes the worst red nucleus error from 0.019 to 0.010 ppm and SN from 0.021 to 0.013 (pallidum 0.016 -> 0.017) and interior NRMSE 39.4 -> 37.4 %, but rim NRMSE 65 -> 73 % (the cortex); with medi_lambda 2000 every small nucleus is within 0.015 ppm (whole brain 54 -> 59 %), but that cohort's group level then found a 9,580-voxel false cluster (precuneus, FWE p 0.0014) beside the planted effects (3,021 voxels with 0.3 alone). At the paper protocol (1x1x2 mm, one echo) 0.3 makes the ventral SN worse (0.013 -> 0.019 ppm). With the robust TE = 0 offset (issue 16) 0.3 with medi_lambda 2000 found the planted effects of a second held-out cohort and no false cluster, RN / pallidum within 0.015 ppm, SN dorsal 0.0165. 1 stays the default: the rim (the cortex) and the paper protocol's SN are worse with 0.3.
    medi_rim_data_weight: float = 1.0
    #: MERIT reweighting of the MEDI data term (model-error outliers).
    medi_merit: bool = False
    #: Bregman steps after MEDI (the data residual added back, MEDI solved again): the L1 term under-reads compact iron-rich nuclei, each step restores part of that contrast, adds noise and doubles MEDI's time (README, issue 16). 0: the toolbox's MEDI.
    medi_bregman_steps: int = 0
    #: TKD truncation threshold of the dipole kernel.
    tkd_threshold: float = 0.19
    #: Closed-form Tikhonov (L2 gradient) regularisation weight.
    tikhonov_lambda: float = 0.05
    #: QSM referencing: "none" (paper), "csf" or "brain".
    reference: ReferenceMethod = "none"


@dataclass
class RegistrationConfig:
    """Participant step 6: ANTs normalisation."""

    #: Quality preset: "fast" or "standard".
    preset: RegistrationPreset = "standard"
    #: Metric of the T1w -> template SyN stage: "cc" (cross-correlation over a 2-voxel radius of the template grid, antsRegistrationSyN's) or "mattes" (mutual information, antsRegistrationSyNQuick's, the earlier default; registration 1.25x faster with the fast preset, 2x with standard); a GRE registered without a T1w keeps "mattes". On 16 simulated controls "cc" cut the error of the warp's Jacobian (VBM's modulation) against the truth by a third and removed the unplanted VBM clusters that the "mattes" warp's errors made; on the 16 demo subjects it raised the atlas's Dice with the true labels (pallidum 0.82 -> 0.88, putamen 0.89 -> 0.93) and the voxelwise motor-cortex finding (README).
    syn_metric: SyNMetric = "cc"
    #: Template name in derivative file names (nilearn's MNI152 2009 sym).
    template: str = TEMPLATE_NAME
    #: Resolution (mm) of the template grid that maps are written on.
    template_resolution_mm: float = 2.0


@dataclass
class AtlasConfig:
    """Participant step 7: regions and their medians."""

    #: Atlas name in file names; "qsmbids" is the default composite atlas.
    name: str = "qsmbids"
    #: A user atlas (integer labels, NIfTI) in the template space (``--atlas``).
    atlas_file: str | None = None
    #: Its labels table: TSV with index, region, hemisphere (``--atlas-labels``).
    atlas_labels: str | None = None
    #: Erosion of every region by a sphere of this radius in mm (paper: 1 mm).
    erosion_radius_mm: float = 1.0
    #: A region with fewer voxels than this after erosion gets NaN and a warning.
    min_voxels: int = 5


@dataclass
class GroupConfig:
    """Group steps 1-2: study template and voxelwise inference."""

    #: participants.tsv column holding the groups.
    group_column: str = "group"
    #: The two levels compared; the first is the "patient" side of the contrasts.
    groups: tuple[str, ...] = ("ALS", "control")
    #: Nuisance covariates (participants.tsv columns) in the GLM and the region adjustment.
    covariates: tuple[str, ...] = ("age",)
    #: Covariates that are categories (dummy coded); any other covariate must be a number in every row.
    categorical_covariates: tuple[str, ...] = ("sex", "onset")
    #: "study" (ANTs template from the participants' T1w) or "mni".
    template: GroupTemplate = "study"
    #: Iterations of the study template construction.
    template_iterations: int = 3
    #: Resolution (mm) of the study template and the voxelwise analysis.
    template_resolution_mm: float = 2.0
    #: Gaussian smoothing sigma (mm), compensated at the brain boundary.
    smoothing_sigma_mm: float = 3.0
    #: Analysis mask: voxels covered by at least this fraction of the participants' QSM masks (1: their intersection, the paper's; 0.9 keeps the cortex where a few masks fall short). The coverage map is written beside it.
    coverage_fraction: float = 0.9
    #: Permutations of the Freedman-Lane test (the observed labelling counts as one).
    n_permutations: int = 20000
    #: Permutations per chunk (memory bound; each chunk has its own seed).
    permutation_chunk_size: int = 500
    #: Participants the study template is built from (0: all): a balanced, seeded subset by group and age.
    template_subset_size: int = 0
    #: Weight of the susceptibility channel in the study template's SyN (0: the T1w alone, the paper preset; > 0: multi-channel, a CC between each Chimap and the mean Chimap beside the T1w's metric of weight 1, so the iron-rich nuclei, flat in the T1w, steer the warp). Measured on 16 simulated subjects, weight 1 vs 0: mean pairwise Dice of the true labels in the template, dentate 0.59 -> 0.83, pallidum 0.70 -> 0.77, red nucleus 0.78 -> 0.80, SN 0.66 -> 0.63-0.67; template time 2.3x (README).
    template_chi_weight: float = 1.0
    #: Where the permutation chunks run: "processes" (this machine, --n-cpus workers) or "dask".
    permutation_backend: PermutationBackend = "processes"
    #: Dask scheduler address for the "dask" backend, e.g. "tcp://10.0.0.5:8786" (--dask-scheduler).
    dask_scheduler: str = ""
    #: Or a dask-jobqueue cluster started for the run: {cluster: SLURMCluster, n_workers: N, options: {...}}.
    dask_jobqueue: dict = field(default_factory=dict)
    #: TFCE extent exponent E (Smith & Nichols 2009).
    tfce_E: float = 0.5
    #: TFCE height exponent H.
    tfce_H: float = 2.0
    #: Voxel connectivity for TFCE (26 as in randomise -T; 6 or 18 possible).
    tfce_connectivity: Connectivity = 26
    #: FWE-corrected significance level for clusters and the report.
    alpha: float = 0.05
    #: QSM-DTI: CST QSM is the median over the centre of each axial cross-section of the atlas CST in the study template (the paper's skeletonised CST mask): voxels within this in-plane distance (voxels) of the section's deepest point. Measured on two simulated cohorts (README): patients' CST QSM ranks the planted CST susceptibility with rho 0.93-0.98 here, 0.57-0.62 with the native region medians.
    cst_centreline_tolerance_voxels: float = 0.5
    #: Keep only participants with COLUMN=VALUE[,VALUE...] (all must hold), e.g. "group=ALS";
    #: any restriction or exclusion writes the analysis to its own folder under group/.
    restrict: tuple[str, ...] = ()
    #: Leave out participants with COLUMN=VALUE[,VALUE...], e.g. "genetics=C9orf72".
    exclude: tuple[str, ...] = ()


@dataclass
class RoiStatsConfig:
    """Group steps 3-4: region statistics."""

    #: Left/right kept apart when the laterality test in patients has p below this.
    laterality_alpha: float = 0.05
    #: Columns used for subgroup analyses when present.
    subgroup_columns: tuple[str, ...] = ("onset", "sex")
    #: Clinical columns correlated with QSM (empty: every numeric non-covariate column).
    clinical_columns: tuple[str, ...] = ()
    #: Continuity correction (0.5) in the normal approximation of the rank-sum Z.
    rank_sum_continuity: bool = True
    #: Yates correction in the chi-square test of sex (2x2 table).
    chi_square_yates: bool = False
    #: Covariates removed in the partial Spearman correlations (when present in participants.tsv).
    partial_covariates: tuple[str, ...] = ("onset", "sex")
    #: Region pairs correlated in the first group for the leakage check (a name matches its subdivisions).
    leakage_pairs: tuple[tuple[str, str], ...] = (("corticospinal_tract", "globus_pallidus"),)
    #: Bootstrap replicates of the effect-size intervals (0: no intervals).
    n_bootstrap: int = 2000
    #: Coverage of the bootstrap intervals of the effect sizes.
    bootstrap_confidence: float = 0.95


@dataclass
class DiffusionConfig:
    """Participant DTI when the subject has DWI: gradient checks, tensor fit, CST metrics."""

    #: b-value (s/mm2) of the shell the tensor is fitted to (multi-shell data keep only it and the b=0 volumes).
    shell_b: float = 1000.0
    #: Volumes whose b-value is within this of shell_b belong to the shell (s/mm2).
    shell_tolerance: float = 100.0
    #: b-values at or below this are b=0 volumes (s/mm2).
    b0_threshold: float = 50.0
    #: b-vectors of diffusion-weighted volumes must have unit length within this (else exit 65).
    unit_tolerance: float = 0.05
    #: Fewest distinct diffusion directions in the shell (else exit 65).
    min_directions: int = 6
    #: DIPY tensor fit: weighted least squares (the default), ordinary least squares or nonlinear.
    fit_method: TensorFitMethod = "WLS"
    #: Atlas regions whose median FA, MD, RD and AD are written (native DWI space).
    regions: tuple[str, ...] = ("corticospinal_tract",)


@dataclass
class StructuralConfig:
    """Participant T1w comparators when the subject has a T1w: N4, Atropos tissues, modulated GM (VBM), volumes,
    and (switched separately, for its cost) DiReCT cortical thickness."""

    #: Run the structural step (priors, N4, Atropos, volumes, modulated GM) for every subject with a T1w (measured ~3 min per simulated 1 mm T1w, one thread).
    enabled: bool = True
    #: N4 bias correction: shrink factor of the fitting grid.
    n4_shrink: int = 4
    #: Atropos: weight of the template tissue priors (0: data only, 1: priors only).
    prior_weight: float = 0.25
    #: Atropos: EM iterations.
    atropos_iterations: int = 5
    #: Atropos: Markov random field smoothing factor (radius 1 voxel).
    mrf: float = 0.1
    #: Cortical thickness with DiReCT (ants.kelly_kapowski), the paper's third structural comparator (false saves its cost): on the box around GM and WM at 2 mm / 20 iterations 84 s per simulated 1 mm T1w on one thread (297-335 s at 1.5 mm), so the structural step with it takes about 220 s; a planted 12 % cortical thinning reads 0.76 / 0.78 (the change in mm about right, twice as a ratio; benchmarks/bench_thickness.py, README).
    thickness: bool = True
    #: Isotropic grid (mm) DiReCT runs on, the thickness brought back to the T1w grid by nearest neighbour (0: the T1w grid); 2 mm read the same thinning as 1.5 mm (0.757 / 0.776 vs 0.755 / 0.784) in a quarter of the time.
    thickness_resolution_mm: float = 2.0
    #: DiReCT iterations.
    thickness_iterations: int = 20
    #: DiReCT gradient step.
    thickness_gradient_step: float = 0.025
    #: DiReCT smoothing (sigma, voxels) of the velocity field.
    thickness_smoothing: float = 1.5
    #: Atlas regions whose volumes (native T1w, mm3) are written and compared between the groups (ICV- and age-adjusted).
    volume_regions: tuple[str, ...] = ("caudate", "putamen", "globus_pallidus", "thalamus", "hippocampus",
                                       "amygdala")
    #: Refine the atlas labels of the volume regions with a local SyN (template -> T1w, 1 mm, CC) in a box around them: the whole-brain warp lives on a 2-4 mm grid and misses a nucleus' own size (measured on 12 simulated subjects, fast registration: mean volume error of the putamen 15.4 % -> 2.9 %, of the pallidum 7.6 % -> 2.2 %; about 40 s).
    volume_refinement: bool = True
    #: Local SyN iterations per resolution level, the finest (1 mm) last.
    volume_refinement_iterations: tuple[int, ...] = (30, 15, 5)
    #: Local SyN: radius (voxels) of the cross-correlation metric.
    volume_refinement_radius: int = 2
    #: Margin (mm) of the box around the volume regions that the local SyN sees.
    volume_refinement_margin_mm: float = 12.0
    #: Atlas regions whose mean cortical thickness is written (motor cortex and pars opercularis).
    thickness_regions: tuple[str, ...] = ("precentral_gyrus", "pars_opercularis")
    #: VBM analysis mask: template voxels whose mean modulated GM over the participants is at least this.
    vbm_gm_threshold: float = 0.2


@dataclass
class Config:
    """All parameters of a qsm-bids run."""

    inputs: InputConfig = field(default_factory=InputConfig)
    recon: ReconConfig = field(default_factory=ReconConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    atlas: AtlasConfig = field(default_factory=AtlasConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    roi_stats: RoiStatsConfig = field(default_factory=RoiStatsConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    structural: StructuralConfig = field(default_factory=StructuralConfig)
    seed: int = 0
    #: The named parameter set applied over the defaults (:data:`PRESETS`; "" for none).
    preset: str = ""

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict of every parameter."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def update(self, overrides: dict, source: str = "overrides") -> "Config":
        """Apply a nested dict of overrides in place; unknown keys raise ConfigError."""
        if "preset" in overrides:  # a preset first: the other keys of the same source override it
            name = overrides["preset"]
            if name not in PRESETS and name not in ("", None):
                raise ConfigError(f"{source}: unknown preset {name!r} (known: {', '.join(PRESETS)})")
            if name:
                self.update(PRESETS[name], source=f"preset {name}")
            self.preset = name or ""
            overrides = {k: v for k, v in overrides.items() if k != "preset"}
        for key, value in overrides.items():
            if key == "seed":
                self.seed = _coerce(int, value, "seed", source)
                continue
            section = getattr(self, key, None) if key in _SECTIONS else None
            if section is None:
                raise ConfigError(f"{source}: unknown configuration key '{key}' "
                                  f"(sections: {', '.join(_SECTIONS)}, seed, preset)")
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{key}' must be a mapping of parameters")
            hints = typing.get_type_hints(type(section))
            for sub, subvalue in value.items():
                if sub not in hints:
                    raise ConfigError(
                        f"{source}: unknown configuration key '{key}.{sub}'; valid keys of "
                        f"'{key}': {', '.join(hints)}")
                setattr(section, sub, _coerce(hints[sub], subvalue, f"{key}.{sub}", source))
        self.validate()
        return self

    def validate(self) -> None:
        """Check choices and ranges; raise ConfigError naming the parameter."""
        for section in _SECTIONS:
            obj = getattr(self, section)
            for name, hint in typing.get_type_hints(type(obj)).items():
                allowed = literal_choices(hint)
                value = getattr(obj, name)
                if allowed and value is not None and value not in allowed:
                    raise ConfigError(f"{section}.{name}={value!r} is not one of {sorted(allowed, key=str)}")
        positive = {
            "recon.sharp_radius_mm": self.recon.sharp_radius_mm,
            "recon.medi_lambda": self.recon.medi_lambda,
            "group.smoothing_sigma_mm": self.group.smoothing_sigma_mm,
            "group.n_permutations": self.group.n_permutations,
            "group.permutation_chunk_size": self.group.permutation_chunk_size,
            "registration.template_resolution_mm": self.registration.template_resolution_mm,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value!r}")
        if self.inputs.field_strength is not None and not self.inputs.field_strength > 0:
            raise ConfigError("inputs.field_strength must be positive (tesla)")
        if len(self.group.groups) != 2 or self.group.groups[0] == self.group.groups[1]:
            raise ConfigError(f"group.groups must name two different levels, got {self.group.groups!r}")
        if not (0 <= self.recon.mask_phase_quality < 1 and 0 <= self.recon.mask_phase_quality_single_echo < 1):
            raise ConfigError("recon.mask_phase_quality and mask_phase_quality_single_echo must lie in [0, 1) "
                              "(a coherence; 0 keeps every voxel)")
        if not 0 < self.recon.medi_rim_data_weight <= 1:
            raise ConfigError("recon.medi_rim_data_weight must lie in (0, 1]")
        if self.recon.medi_bregman_steps < 0 or (self.recon.medi_bregman_steps and self.recon.medi_merit):
            raise ConfigError("recon.medi_bregman_steps must be 0 or more, and 0 with recon.medi_merit")
        if not self.recon.medi_rim_min_radius_voxels >= 1:
            raise ConfigError("recon.medi_rim_min_radius_voxels must be at least 1 (voxel edges)")
        if not 0 < self.recon.medi_percentage < 1:
            raise ConfigError("recon.medi_percentage must lie in (0, 1)")
        if self.group.permutation_backend == "dask" and not (self.group.dask_scheduler or self.group.dask_jobqueue):
            raise ConfigError("group.permutation_backend 'dask' needs group.dask_scheduler (--dask-scheduler) "
                              "or group.dask_jobqueue")
        if not isinstance(self.group.dask_jobqueue, dict):
            raise ConfigError("group.dask_jobqueue must be a mapping (cluster, n_workers, options)")
        if not 0 < self.group.coverage_fraction <= 1:
            raise ConfigError("group.coverage_fraction must lie in (0, 1]")
        if not 0 < self.roi_stats.bootstrap_confidence < 1:
            raise ConfigError("roi_stats.bootstrap_confidence must lie in (0, 1)")
        if self.group.template_chi_weight < 0:
            raise ConfigError("group.template_chi_weight must be 0 (T1w only) or more")
        if self.group.cst_centreline_tolerance_voxels < 0:
            raise ConfigError("group.cst_centreline_tolerance_voxels must be 0 (the deepest voxels only) or more")
        if self.group.template_subset_size < 0:
            raise ConfigError("group.template_subset_size must be 0 (all participants) or more")
        if self.roi_stats.n_bootstrap < 0:
            raise ConfigError("roi_stats.n_bootstrap must be 0 or more")
        if not (self.diffusion.shell_b > self.diffusion.b0_threshold >= 0 and self.diffusion.min_directions >= 6):
            raise ConfigError("diffusion: shell_b must exceed b0_threshold (>= 0) and min_directions be at least 6")
        st = self.structural
        if not (st.n4_shrink >= 1 and st.atropos_iterations >= 1 and st.thickness_iterations >= 1):
            raise ConfigError("structural: n4_shrink, atropos_iterations and thickness_iterations must be at least 1")
        if not (0 <= st.prior_weight <= 1 and st.mrf >= 0 and st.thickness_resolution_mm >= 0
                and st.thickness_gradient_step > 0 and st.thickness_smoothing >= 0):
            raise ConfigError("structural: prior_weight must lie in [0, 1], mrf, thickness_resolution_mm and "
                              "thickness_smoothing be 0 or more, thickness_gradient_step positive")
        if not 0 < st.vbm_gm_threshold < 1:
            raise ConfigError("structural.vbm_gm_threshold must lie in (0, 1)")
        if (not st.volume_refinement_iterations or any(int(n) < 0 for n in st.volume_refinement_iterations)
                or st.volume_refinement_radius < 1 or st.volume_refinement_margin_mm < 0):
            raise ConfigError("structural: volume_refinement_iterations must be counts >= 0 (one per level), "
                              "volume_refinement_radius at least 1 and volume_refinement_margin_mm >= 0")
        for pair in self.roi_stats.leakage_pairs:
            if len(pair) != 2:
                raise ConfigError(f"roi_stats.leakage_pairs: each entry names two regions, got {list(pair)!r}")


#: The configuration file's sections, in the order the README documents them.
SECTIONS = ("inputs", "recon", "registration", "atlas", "group", "roi_stats", "diffusion", "structural")
_SECTIONS = SECTIONS
_SECTION_TYPES = {name: typing.get_type_hints(Config)[name] for name in _SECTIONS}


#: Named parameter sets (``--preset NAME`` or ``preset: NAME`` in a config file), applied over the
#: defaults and under the config file and the command line.
#: "paper": the chain of Acosta-Cabronero et al. 2018 exactly: Laplacian unwrapping, brain mask from the
#: GRE magnitude (eroded 1 mm), SHARP with a 5 mm sphere, nonlinear MEDI with lambda 1000 on the MEDI toolbox's
#: scaling (its 'smv' form, data weights of mean 1, gradient mask percentage 0.9, plain CG), no referencing, and
#: the voxelwise analysis on the voxels every participant covers, in a study template registered on the T1w alone.
#: "nuclei": per-subject values of the small iron-rich nuclei (red nucleus, substantia nigra, pallidum) from
#: multi-echo data: the mask's outermost-layer voxels incoherent at a later echo left out (their phase is the
#: tissue part's of a partial volume at the skull base, and the rim shells carried it into the midbrain) and one
#: Bregman step after MEDI (the contrast the L1 term takes from compact nuclei restored). On issue 16's held-out
#: 2 mm three-echo cohort every subject's red nucleus, SN and pallidum came within 0.015 ppm of the truth (the
#: defaults: 0.016-0.020); the maps are noisier (interior NRMSE 36 -> 41 %) and cover 95 % of the brain
#: instead of 99 % (README). With one echo only the Bregman step applies, and on the single-echo demo cohort it
#: nearly lost the motor cortex: not for cortical group studies.
PRESETS: dict[str, dict] = {
    "paper": {
        "recon": {"mask_method": "magnitude", "mask_erode_mm": 1.0, "background": "sharp",
                  "sharp_radius_mm": 5.0, "sharp_threshold": 0.05, "inversion": "medi", "medi_lambda": 1000.0,
                  "medi_percentage": 0.9, "medi_max_iter": 10, "medi_tol_norm_ratio": 0.1,
                  "medi_cg_max_iter": 100, "medi_cg_tol": 0.01, "medi_cg_preconditioner": "none", "medi_smv": True, "medi_merit": False,
                  "medi_bregman_steps": 0, "mask_outer_layer_every_echo": False,
                  "mask_phase_quality_single_echo": 0.5,
                  "medi_edge_radii_mm": [], "reference": "none", "unwrap_method": "laplacian"},
        "group": {"coverage_fraction": 1.0, "smoothing_sigma_mm": 3.0, "n_permutations": 20000,
                  "template_chi_weight": 0.0},
        "atlas": {"erosion_radius_mm": 1.0},
    },
    "nuclei": {
        "recon": {"mask_outer_layer_every_echo": True, "medi_bregman_steps": 1},
    },
}


def literal_choices(hint) -> tuple:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation; () for other types."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return tuple(v for a in typing.get_args(hint) for v in literal_choices(a))
    return ()


def choices(section: str, name: str) -> list:
    """The legal values of a choice parameter, e.g. ``choices("recon", "background")`` (for argparse)."""
    hints = typing.get_type_hints(_SECTION_TYPES[section])
    return list(literal_choices(hints[name]))


def _coerce(hint, value, name, source):
    """Coerce a config value to its annotated type, or raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    try:
        if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)][0]
            return _coerce(inner, value, name, source)
        if origin is Literal:
            kinds = {type(a) for a in args}
            return _coerce(kinds.pop() if len(kinds) == 1 else str, value, name, source)
        if origin is tuple:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                value = [value]
            return tuple(_coerce(args[0], v, name, source) for v in value)
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise TypeError
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: '{name}' must be {getattr(hint, '__name__', hint)}, "
                          f"got {value!r}") from None
    return value


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Defaults, then a preset (``overrides["preset"]`` or the file's ``preset``), then a YAML/JSON
    file, then command-line overrides."""
    cfg = Config()
    overrides = dict(overrides or {})
    if "preset" in overrides:
        cfg.update({"preset": overrides.pop("preset")}, source="--preset")
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # noqa: BLE001 - any parser error is a usage error
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must contain a mapping of sections")
        cfg.update(data, source=str(path))
    if overrides:
        cfg.update(overrides, source="command line")
    cfg.validate()
    return cfg


def parameter_table_markdown() -> str:
    """Markdown table of every parameter, its default and its meaning (for the README).

    The meaning is the ``#:`` comment above each field in this module.
    """
    import inspect
    import sys

    lines = inspect.getsource(sys.modules[__name__]).splitlines()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    cfg = Config()
    for section in _SECTIONS:
        obj = getattr(cfg, section)
        start = lines.index(f"class {type(obj).__name__}:")
        comments: dict = {}
        pending: list = []
        for line in lines[start + 1:]:
            if line.startswith(("class ", "def ", "@")):
                break
            s = line.strip()
            if s.startswith("#:"):
                pending.append(s[2:].strip())
            elif s and s.split(":")[0].isidentifier() and ":" in s:
                comments[s.split(":")[0]] = " ".join(pending)
                pending = []
        for f in dataclasses.fields(obj):
            default = getattr(obj, f.name)
            shown = ", ".join(map(str, default)) if isinstance(default, tuple) else default
            rows.append(f"| `{section}.{f.name}` | `{shown}` | {comments.get(f.name, '')} |")
    rows.append(f"| `seed` | `{cfg.seed}` | random seed (registration sampling, permutations) |")
    rows.append(f"| `preset` | `{cfg.preset}` | named parameter set applied under the config file: "
                f"{', '.join(PRESETS)} (`--preset`) |")
    return "\n".join(rows)
