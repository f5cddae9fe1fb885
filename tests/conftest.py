"""Shared fixtures: tiny hand-made BIDS datasets for command-line tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _drop_console_log_handler():
    """The command line's console handler writes to the ``sys.stderr`` of its call, which under pytest
    is a capture file closed after the test; Dask's threads that log later would hit it ("Logging
    error ... I/O operation on closed file"). One process runs one command in production."""
    yield
    from qsm_bids.cli import _remove_console_handler

    _remove_console_handler()


def write_image(path: Path, data, affine=None, sidecar: dict | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    nib.Nifti1Image(np.asarray(data), affine).to_filename(str(path))
    if sidecar is not None:
        stem = path.name[: -len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
        path.with_name(stem + ".json").write_text(json.dumps(sidecar))


def make_gre_subject(root: Path, sub: str, n_echoes: int = 2, shape=(12, 12, 10), seed: int = 0,
                     units="rad", field_strength=3.0, coils: int | None = None):
    """A small GRE subject: smooth magnitude and wrapped phase, one file per echo and part."""
    rng = np.random.default_rng(seed)
    anat = root / f"sub-{sub}" / "anat"
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (x**2 + y**2 + z**2) < 0.8
    for echo in range(1, n_echoes + 1):
        te = 0.005 * echo + 0.01
        mag = (1000 * inside + 20 * rng.random(shape)).astype(np.float32)
        phase = np.angle(np.exp(1j * (3 * x + 2 * y) * echo)).astype(np.float32)
        if coils:
            mag = np.repeat(mag[..., None], coils, axis=3)
            phase = np.repeat(phase[..., None], coils, axis=3)
        if units == "arbitrary":
            phase = np.round(phase / np.pi * 4096).clip(-4096, 4095).astype(np.int16)
        meta = {"EchoTime": te, "MagneticFieldStrength": field_strength}
        write_image(anat / f"sub-{sub}_echo-{echo}_part-mag_MEGRE.nii.gz", mag, sidecar=meta)
        write_image(anat / f"sub-{sub}_echo-{echo}_part-phase_MEGRE.nii.gz", phase,
                    sidecar=dict(meta, Units=units))
    return anat


@pytest.fixture
def tiny_bids(tmp_path):
    """Two good subjects and a dataset_description/participants.tsv."""
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\tgroup\tage\nsub-01\tALS\t60\nsub-02\tcontrol\t55\n")
    make_gre_subject(root, "01", seed=1)
    make_gre_subject(root, "02", seed=2)
    return root
