"""Atomic writes honour the process umask (mkstemp alone would leave every output 0600)."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from qsm_bids.io import write_json, write_nifti, write_text, write_tsv


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                      (0o002, 0o664, 0o775)])
def test_outputs_and_folders_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        folder = tmp_path / "sub-01" / "anat"
        paths = [write_nifti(folder / "sub-01_Chimap.nii.gz", np.zeros((2, 2, 2)), np.eye(4), sidecar={"a": 1}),
                 write_json(folder / "x.json", {"a": 1}), write_text(folder / "x.html", "<p>"),
                 write_tsv(folder / "x.tsv", pd.DataFrame({"a": [1]}))]
    finally:
        os.umask(old)
    paths.append(folder / "sub-01_Chimap.json")
    for p in paths:
        assert stat.S_IMODE(p.stat().st_mode) == file_mode, p
    for d in (folder, folder.parent):
        assert stat.S_IMODE(d.stat().st_mode) == dir_mode, d
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
