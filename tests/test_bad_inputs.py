"""Bad inputs refused up front: exit 65 (BIDS-Apps "bad data"), one line, no traceback, nothing
written, the input untouched (issue 19)."""

from __future__ import annotations

import shutil

import nibabel as nb
import numpy as np
import pytest

from gentract_bids.errors import EX_DATAERR, EX_USAGE
from gentract_bids.fodf import csd
from gentract_bids.phantom.cohort import make_cohort
from helpers import assert_clean_failure, run_cli, tree_digest

DWI = "sub-01/dwi/sub-01_dwi"
MASK = "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_desc-brain_mask.nii.gz"
TRUTH = "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_model-truth_streamlines.trx"


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
    elif breakage in ("two_volumes", "twelve_directions", "zero_signal"):
        img, bvals, bvecs = nb.load(dwi), np.loadtxt(f"{bids / DWI}.bval"), \
            np.loadtxt(f"{bids / DWI}.bvec")
        data = np.asanyarray(img.dataobj)
        keep = {"two_volumes": [0, int(np.argmax(bvals > 0))],  # one b=0, one direction
                "twelve_directions": np.r_[0, np.flatnonzero(bvals == 3000)[:12]],
                "zero_signal": slice(None)}[breakage]
        data = np.zeros_like(data) if breakage == "zero_signal" else data[..., keep]
        _rewrite(dwi, data=data)
        np.savetxt(f"{bids / DWI}.bval", bvals[keep][None], fmt="%d")
        np.savetxt(f"{bids / DWI}.bvec", bvecs[:, keep], fmt="%.6f")
    elif breakage == "mask_affine":
        bad = affine.copy()
        bad[:3, 3] += 8.0  # same shape, shifted by two voxels
        _rewrite(bids / MASK, affine=bad)


@pytest.mark.parametrize("breakage, words", [
    ("affine_zero", ["sub-01_dwi.nii.gz", "affine", "singular"]),
    ("affine_singular", ["sub-01_dwi.nii.gz", "affine", "singular"]),
    ("voxel_50mm", ["sub-01_dwi.nii.gz", "voxel size 50 x 50 x 50 mm", "0.1-20 mm"]),
    ("two_volumes", ["sub-01_dwi.bval", "b=1000 shell has 1 independent",
                     "SH order 6 needs at least 15"]),
    ("twelve_directions", ["b=3000 shell has 12 independent", "needs at least 15"]),
    ("zero_signal", ["sub-01_dwi.nii.gz", "b=0 signal is zero everywhere",
                     "inside sub-01_space-dwi_desc-brain_mask.nii.gz"]),
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


def test_csd_direction_rule():
    """15 independent directions from order 4 on (6 at order 2); repeats and antipodes count once;
    32 directions at order 8 (super-resolved CSD) pass."""
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(32, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    assert [csd.csd_min_directions(o) for o in (2, 4, 6, 8)] == [6, 15, 15, 15]
    assert csd.independent_directions(dirs, 8) == 15
    assert csd.independent_directions(np.r_[dirs[:6], -dirs[:6], dirs[:6]], 6) == 6
    assert csd.independent_directions(dirs[:0], 6) == 0


def test_few_directions_pass_at_low_order(cohort, tmp_path):
    """Twelve directions are refused at order 6 but enough for order 2 (checked alone)."""
    from gentract_bids.io.dwi import check_csd_input, read_dwi

    bids = shutil.copytree(cohort, tmp_path / "bids")
    _break(bids, "twelve_directions")
    dwi = read_dwi(f"{bids / DWI}.nii.gz", f"{bids / DWI}.bval", f"{bids / DWI}.bvec")
    check_csd_input(dwi, None, sh_order=2, method="auto", shell=None, names=("d", "b", None))


def test_csd_shell_not_in_data(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(cohort, out, tmp_path, "--csd-shell", "12345")
    assert_clean_failure(capsys, code, EX_USAGE, out,
                         ["--csd-shell 12345", "sub-01_dwi.bval", "1000, 2000, 3000"])


def test_input_tractogram_opened_read_only(cohort, tmp_path, monkeypatch):
    """A read-only input TRX (a :ro mount, DataLad) is read: it is never opened for writing
    (observed through ``open``, as root ignores file modes) and a mode 0444 file loads."""
    import builtins
    from pathlib import Path

    from gentract_bids.io.tractogram import load_tractogram

    truth = shutil.copytree(cohort, tmp_path / "bids") / TRUTH
    truth.chmod(0o444)
    modes, real_open = [], builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == truth:
            modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    streamlines, groups = load_tractogram(truth)
    assert streamlines and groups
    assert modes and all(set(m) <= set("rb") for m in modes), modes
