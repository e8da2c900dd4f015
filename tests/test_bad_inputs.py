"""Bad inputs refused up front: exit 65 (BIDS-Apps "bad data"), one line, no traceback, nothing
written, the input untouched (issue 19)."""

from __future__ import annotations

import shutil

import nibabel as nb
import numpy as np
import pytest

from gentract_bids.errors import EX_DATAERR
from gentract_bids.phantom.cohort import make_cohort
from helpers import assert_clean_failure, run_cli, tree_digest

DWI = "sub-01/dwi/sub-01_dwi"
MASK = "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_desc-brain_mask.nii.gz"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One small phantom subject (4 mm, 3 shells of 32 directions, a brain mask)."""
    return make_cohort(tmp_path_factory.mktemp("cohort") / "bids", n_subjects=1, voxel_size=4.0,
                       n_truth_streamlines=20)


def _rewrite(path, data=None, affine=None):
    """Rewrite a NIfTI with new data and/or a new affine (sform only when it is singular)."""
    img = nb.load(path)
    data = np.asanyarray(img.dataobj) if data is None else data
    new = nb.Nifti1Image(data, None, img.header)
    aff = img.affine if affine is None else np.asarray(affine, float)
    new.header.set_sform(aff, code=1)
    new.header.set_qform(aff if np.linalg.matrix_rank(aff[:3, :3]) == 3 else None,
                         code=1 if np.linalg.matrix_rank(aff[:3, :3]) == 3 else 0)
    nb.save(new, path)


def _break(bids, breakage):
    dwi = bids / f"{DWI}.nii.gz"
    affine = nb.load(dwi).affine
    if breakage == "affine_zero":
        _rewrite(dwi, affine=np.zeros((4, 4)))
    elif breakage == "affine_singular":
        bad = affine.copy()
        bad[:3, 1] = bad[:3, 0]  # two voxel axes point the same way
        _rewrite(dwi, affine=bad)
    elif breakage == "voxel_50mm":
        bad = affine.copy()
        bad[:3, :3] *= 12.5
        _rewrite(dwi, affine=bad)
    elif breakage == "mask_affine":
        bad = affine.copy()
        bad[:3, 3] += 8.0  # same shape, shifted by two voxels
        _rewrite(bids / MASK, affine=bad)


@pytest.mark.parametrize("breakage, words", [
    ("affine_zero", ["sub-01_dwi.nii.gz", "affine", "singular"]),
    ("affine_singular", ["sub-01_dwi.nii.gz", "affine", "singular"]),
    ("voxel_50mm", ["sub-01_dwi.nii.gz", "voxel size 50 x 50 x 50 mm", "0.1-20 mm"]),
    ("mask_affine", ["sub-01_space-dwi_desc-brain_mask.nii.gz", "another affine", "DWI grid"]),
])
def test_bad_input_refused(cohort, tmp_path, capsys, breakage, words):
    bids = shutil.copytree(cohort, tmp_path / "bids")
    _break(bids, breakage)
    before = tree_digest(bids)
    out = tmp_path / "out"
    code = run_cli(bids, out, tmp_path)
    assert_clean_failure(capsys, code, EX_DATAERR, out, ["sub-01:", *words])
    assert not out.exists()
    assert tree_digest(bids) == before
