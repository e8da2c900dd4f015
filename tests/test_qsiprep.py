"""QSIPrep derivatives as input: the same phantom under QSIPrep's names, fODF-only end to end."""

from __future__ import annotations

import json
import shutil

import nibabel as nb
import numpy as np

from gentract_bids.io.bids import is_qsiprep
from helpers import run_cli

QSI = "sub-01_space-ACPC_desc-"


def _qsiprep_folder(root):
    from gentract_bids.phantom.cohort import make_cohort

    bids = make_cohort(root / "bids", n_subjects=1, voxel_size=4.0, n_dirs=20)
    qsi = root / "qsiprep"
    d = qsi / "sub-01" / "dwi"
    d.mkdir(parents=True)
    (qsi / "dataset_description.json").write_text(json.dumps({
        "Name": "QSIPrep output", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsiprep", "Version": "1.0.0"}]}))
    raw = bids / "sub-01" / "dwi" / "sub-01_dwi"
    for ext in (".nii.gz", ".bval", ".bvec"):
        shutil.copyfile(f"{raw}{ext}", d / f"{QSI}preproc_dwi{ext}")
    truth = bids / "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_desc-brain_mask.nii.gz"
    shutil.copyfile(truth, d / f"{QSI}brain_mask.nii.gz")
    return bids, qsi


def test_qsiprep_folder_runs_end_to_end(tmp_path):
    bids, qsi = _qsiprep_folder(tmp_path)
    assert is_qsiprep(qsi) and not is_qsiprep(bids)
    out = tmp_path / "out"
    assert run_cli(qsi, out, tmp_path, skip=False) == 0  # detected: no raw-BIDS validation
    d = out / "sub-01" / "dwi"
    fod = nb.load(d / "sub-01_space-dwi_model-csd_param-fod_dwimap.nii.gz")
    assert fod.shape[3] == 28
    mask = np.asanyarray(nb.load(d / "sub-01_space-dwi_desc-brain_mask.nii.gz").dataobj) > 0
    given = np.asanyarray(nb.load(qsi / "sub-01/dwi" / f"{QSI}brain_mask.nii.gz").dataobj) > 0
    assert np.array_equal(mask, given)  # QSIPrep's mask was used, not a new one
    meta = json.loads((d / "sub-01_space-dwi_desc-brain_mask.json").read_text())
    assert meta["Source"].startswith("given")
