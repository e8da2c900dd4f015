"""The fODF derivative is read correctly by MRtrix3 itself (issue 18, point 1).

MRtrix3's ``sh2peaks`` on ``*_model-csd_param-fod_dwimap.nii.gz`` must find the phantom's true
fibre directions. Before the fix the file held dipy's non-legacy ``descoteaux07`` coefficients in
the voxel frame, which MRtrix reads as its own basis: median 19.6 deg, 21 % of single-fibre voxels
within 10 deg (measured again below on the internal work file, which still holds that basis).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from helpers import angle_deg
from gentract_bids.cli.run import main
from gentract_bids.fodf import basis
from gentract_bids.fodf.rotation import axis_rotation
from gentract_bids.phantom.cohort import make_cohort

needs_mrtrix = pytest.mark.skipif(shutil.which("sh2peaks") is None,
                                  reason="MRtrix3 (sh2peaks, sh2amp) not installed")
TRUTH = "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_{what}"


def _sh2peaks(fod: Path, mask: Path, out: Path) -> np.ndarray:
    """MRtrix3's main peak per voxel (X, Y, Z, 3), on the input's voxel grid."""
    subprocess.run(["sh2peaks", "-quiet", "-force", "-num", "1", "-mask", str(mask), str(fod),
                    str(out)], check=True)
    img = nb.load(out)
    assert np.allclose(img.affine, nb.load(fod).affine, atol=1e-4)
    return np.nan_to_num(img.get_fdata()[..., :3])


def _lobes(directions, sh_order=8):
    """Internal-basis coefficients (n, m) of sharp axially symmetric lobes along ``directions``
    (voxel frame)."""
    from dipy.data import get_sphere

    u = get_sphere(name="repulsion724").vertices
    sf = np.exp(-20 * (1 - (directions @ u.T) ** 2))
    return sf @ np.linalg.pinv(basis._basis(basis.INTERNAL, sh_order, u)).T


AFFINES = {
    "RAS": np.diag([2.0, 2, 2, 1]),
    "LAS": np.diag([-2.0, 2, 2, 1]),
    "LPS": np.diag([-2.0, -2, 2.5, 1]),
    "permuted": np.array([[0, 0, 2.0, 0], [-2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 1]]),
    "oblique": np.eye(4),
}
AFFINES["oblique"][:3, :3] = axis_rotation("x", 20) @ axis_rotation("z", 35) @ np.diag([-2, 2, 2.5])


def test_conversion_is_orthogonal_and_inverted():
    rng = np.random.default_rng(1)
    sh = rng.normal(size=(5, 4, 3, 28)).astype(np.float32)
    for affine in AFFINES.values():
        back = basis.mrtrix3_to_internal(basis.internal_to_mrtrix3(sh, affine), affine)
        assert np.allclose(back, sh, atol=1e-5)
        enc = {"SphericalHarmonicBasis": "mrtrix3"}
        assert np.allclose(basis.to_internal(basis.internal_to_mrtrix3(sh, affine), affine, enc),
                           sh, atol=1e-5)


@needs_mrtrix
@pytest.mark.parametrize("name", list(AFFINES))
def test_mrtrix_reads_the_conversion_on_any_grid(name, tmp_path):
    """Lobes along known world directions, stored under five kinds of affine: MRtrix3's
    ``sh2amp`` gives the same amplitudes as the internal basis (world direction w = A u) and
    ``sh2peaks`` finds the world directions."""
    from gentract_bids.fodf.rotation import orthonormal_part

    affine = AFFINES[name]
    A = orthonormal_part(affine[:3, :3])
    rng = np.random.default_rng(0)
    world = rng.normal(size=(60, 3))
    world /= np.linalg.norm(world, axis=1, keepdims=True)
    internal = _lobes(world @ A)  # voxel-frame direction of world d is A^T d
    sh = basis.internal_to_mrtrix3(internal, affine)
    fod = tmp_path / "fod.nii.gz"
    nb.Nifti1Image(sh.reshape(60, 1, 1, -1), affine).to_filename(fod)
    # amplitudes along world directions
    probe = rng.normal(size=(20, 3))
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    np.savetxt(tmp_path / "dirs.txt", probe)
    subprocess.run(["sh2amp", "-quiet", "-force", str(fod), str(tmp_path / "dirs.txt"),
                    str(tmp_path / "amp.nii")], check=True)
    amp = nb.load(tmp_path / "amp.nii").get_fdata().reshape(60, -1)
    expected = internal @ basis._basis(basis.INTERNAL, 8, probe @ A).T
    assert np.abs(amp - expected).max() < 1e-4 * np.abs(expected).max()
    subprocess.run(["sh2peaks", "-quiet", "-force", "-num", "1", str(fod),
                    str(tmp_path / "peaks.nii")], check=True)
    peaks = nb.load(tmp_path / "peaks.nii").get_fdata().reshape(60, -1)[:, :3]
    assert np.max(angle_deg(peaks, world)) < 1.0


@pytest.fixture(scope="module")
def fodf_run(tmp_path_factory):
    """The fODF stage of ``gentract`` on a 3 mm phantom subject (the product path)."""
    root = tmp_path_factory.mktemp("fodbasis")
    bids = make_cohort(root / "bids", n_subjects=1, seed=3, voxel_size=3.0, n_dirs=30,
                       n_truth_streamlines=5)
    out, work = root / "out", root / "work"
    code = main([str(bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(work), "--skip-bids-validation",
                 "--tracker", "none", "--nprocs", "1", "--random-seed", "5"])
    assert code == 0
    return bids, out, work, root


def _single_fibre(bids):
    fr = nb.load(bids / TRUTH.format(what="model-truth_param-fractions_dwimap.nii.gz")).get_fdata()
    wm = nb.load(bids / TRUTH.format(what="label-WM_probseg.nii.gz")).get_fdata()
    peaks = nb.load(bids / TRUTH.format(what="model-truth_param-peaks_dwimap.nii.gz"))
    truth = peaks.get_fdata().reshape(*fr.shape[:3], -1, 3)[..., 0, :]  # RAS+ unit vectors
    return (wm >= 0.8) & (fr[..., 0] >= 0.9 * wm), truth, peaks.affine


@needs_mrtrix
def test_sh2peaks_finds_true_directions_in_the_written_fod(fodf_run):
    bids, out, work, root = fodf_run
    d = out / "sub-01" / "dwi"
    fod = d / "sub-01_space-dwi_model-csd_param-fod_dwimap.nii.gz"
    single, truth, affine = _single_fibre(bids)
    assert np.allclose(nb.load(fod).affine, affine) and single.sum() > 200
    mask = root / "single.nii.gz"
    nb.Nifti1Image(single.astype(np.uint8), affine).to_filename(mask)

    err = angle_deg(_sh2peaks(fod, mask, root / "peaks.nii")[single], truth[single])
    frac = float(np.mean(err < 10))
    # the internal (work-directory) file holds what the derivative held before the fix
    internal = next(work.rglob("csd/fod.nii.gz"))
    old = angle_deg(_sh2peaks(internal, mask, root / "peaks_old.nii")[single], truth[single])
    print(f"sh2peaks on the derivative: {single.sum()} single-fibre voxels, median "
          f"{np.median(err):.1f} deg, {100 * frac:.1f} % within 10 deg; on the internal "
          f"descoteaux07 file (the old derivative): median {np.median(old):.1f} deg, "
          f"{100 * np.mean(old < 10):.1f} %")
    assert frac >= 0.90
    assert np.mean(old < 10) < 0.5  # the check tells the two bases apart

    meta = json.loads(fod.with_name(fod.name.replace(".nii.gz", ".json")).read_text())
    enc = meta["OrientationEncoding"]
    assert enc["SphericalHarmonicBasis"] == "mrtrix3" and enc["Reference"] == "xyz"
    assert enc["SphericalHarmonicDegree"] == 6 and "LegacyBasis" not in enc
    assert meta["Model"]["Name"] == "CSD"
    assert meta["Model"]["Parameters"]["shells_used"] == [3000.0]
    assert len(meta["ResponseFunction"]["Coefficients"][0]) == 4  # l = 0, 2, 4, 6


@needs_mrtrix
def test_response_file_is_mrtrix_format(fodf_run):
    """The response text file: one row of l = 0, 2, 4, 6 coefficients, decreasing in magnitude
    with alternating sign (a signal flattened along the fibre), as dwi2response writes."""
    bids, out, work, root = fodf_run
    resp = out / "sub-01" / "dwi" / "sub-01_desc-wm_model-csd_response.txt"
    row = np.loadtxt(resp, ndmin=2)
    assert row.shape == (1, 4)
    r = row[0]
    assert r[0] > 0 and r[1] < 0 and r[2] > 0 and np.all(np.diff(np.abs(r)) < 0)
    # dwi2fod reads it and gives the same directions as ours (loose: another CSD)
    dwi = bids / "sub-01" / "dwi" / "sub-01_dwi"
    single, truth, affine = _single_fibre(bids)
    mask = root / "single.nii.gz"
    nb.Nifti1Image(single.astype(np.uint8), affine).to_filename(mask)
    mrfod = root / "mrtrix_fod.nii.gz"
    subprocess.run(["dwi2fod", "csd", "-quiet", "-force", "-fslgrad", f"{dwi}.bvec",
                    f"{dwi}.bval", "-shells", "3000", "-lmax", "6", "-mask", str(mask),
                    f"{dwi}.nii.gz", str(resp), str(mrfod)], check=True)
    err = angle_deg(_sh2peaks(mrfod, mask, root / "peaks_mr.nii")[single], truth[single])
    assert np.mean(err < 10) >= 0.9
