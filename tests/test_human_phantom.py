"""Human-anatomy phantoms: the packaged TractSeg anatomy, TOM tracking, subjects in scanner space.

Small real runs: a few bundles at 3 mm. The CSD check goes through the written files (DWI, .bval,
.bvec, truth peaks) for subjects stored RAS, LAS and LPS.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import EXTERNAL
from helpers import angle_deg
from gentract_bids.cli.phantom import main as phantom_main
from gentract_bids.evaluation.groundtruth import load_groundtruth, score_groundtruth
from gentract_bids.fodf import csd
from gentract_bids.io.dwi import read_dwi
from gentract_bids.io.tractogram import load_tractogram
from gentract_bids.phantom import atlas as atlas_mod
from gentract_bids.phantom.cohort import write_subject
from gentract_bids.phantom.human import human_truth_extras, make_human_subject
from gentract_bids.phantom.tracking import TrackingSettings, truth_streamlines

ROOT = Path(__file__).resolve().parents[1]
TRACTSEG = EXTERNAL / "tractseg-hcp"
VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"
BUNDLES = ["CST_left", "CC_4", "AF_left", "OR_left"]
TRUTH = "derivatives/phantom-truth"


@pytest.fixture(scope="module")
def atlas():
    return atlas_mod.load_atlas()


def test_packaged_atlas(atlas):
    assert len(atlas.names) == 72 and {"CST_left", "CC_7", "UF_right"} <= set(atlas.names)
    assert atlas.checksum == atlas_mod.packaged_checksum()
    anat = atlas_mod.packaged_path().parent
    assert "Apache License" in (anat / "LICENSE").read_text()
    assert "Wasserthal" in json.dumps(json.loads((anat / "tractseg_hcp.json").read_text()))
    assert atlas_mod.packaged_path().stat().st_size < 5e6
    cst = atlas.bundle("CST_left")
    assert cst.mask.sum() > 500 and cst.begin.any() and cst.end.any()
    assert np.allclose(np.linalg.norm(cst.tom[cst.mask], axis=1)[:10], 1.0, atol=0.02)


def test_packaged_atlas_rebuilds_from_its_source():
    if not TRACTSEG.is_dir():
        pytest.skip(f"reference data not found: {TRACTSEG}")
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_human_atlas.py"),
                          "--source", str(TRACTSEG), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_tom_tracking_valid_and_deterministic(atlas):
    sub = atlas.subset(["CST_left", "CC_4"])
    a = truth_streamlines(sub, 40, np.random.default_rng(3))
    b = truth_streamlines(sub, 40, np.random.default_rng(3))
    st = np.ones((3, 3, 3), bool)
    inv = np.linalg.inv(sub.affine)
    for name in sub.names:
        assert a[name].n == 40
        assert all(np.array_equal(x, y) for x, y in zip(a[name].streamlines, b[name].streamlines))
        bun = sub.bundle(name)
        begin = ndimage.binary_dilation(bun.begin, st)
        end = ndimage.binary_dilation(bun.end, st)
        for s in a[name].streamlines:
            i0, i1 = (np.rint(p @ inv[:3, :3].T + inv[:3, 3]).astype(int) for p in (s[0], s[-1]))
            assert begin[tuple(i0)] and end[tuple(i1)]  # oriented begin -> end
            assert np.linalg.norm(np.diff(s, axis=0), axis=1).max() < 1.01  # 1 mm steps


def test_short_bundles_are_listed(atlas):
    s = TrackingSettings(seeds_per_round=0.2, max_rounds=1)
    subj = make_human_subject(1, atlas.subset(["CC_1", "CST_left"]), voxel_size=4.0,
                              bvals=(0, 1000), n_dirs=12, n_b0=2, n_truth_streamlines=60,
                              signal_streamlines=60, tracking=s)
    side = human_truth_extras(subj, 60)["sub-01_space-dwi_model-truth_streamlines.json"]
    assert set(side["BundlesShort"]) == {"CC_1", "CST_left"}
    for name, info in side["BundlesShort"].items():
        assert info["n"] == side["StreamlineCounts"][name] < 60
        assert info["n"] == len(subj.streamlines[name])


@pytest.mark.parametrize("storage", ["RAS", "LAS", "LPS"])
def test_csd_peaks_in_scanner_space(atlas, storage, tmp_path):
    """>= 90 % of CSD main peaks within 10 deg of the true single-fibre populations, read back
    from the files as the fODF stage reads them."""
    subj = make_human_subject(1, atlas.subset(BUNDLES), seed=7, voxel_size=3.0,
                              n_truth_streamlines=50, storage=storage)
    write_subject(subj, tmp_path, {})
    f = tmp_path / "sub-01/dwi/sub-01_dwi"
    dwi = read_dwi(f"{f}.nii.gz", f"{f}.bval", f"{f}.bvec")
    assert nib.aff2axcodes(dwi.affine) == tuple(storage)
    t = tmp_path / TRUTH / "sub-01/dwi/sub-01_space-dwi"
    shape = dwi.data.shape[:3]
    peaks = nib.load(f"{t}_model-truth_param-peaks_dwimap.nii.gz").get_fdata()
    peaks = peaks.reshape(*shape, 3, 3)
    fr = nib.load(f"{t}_model-truth_param-fractions_dwimap.nii.gz").get_fdata()
    brain = nib.load(f"{t}_desc-brain_mask.nii.gz").get_fdata() > 0
    single = brain & (fr[..., 0] >= 0.5) & (fr[..., 1] == 0)
    gtab = csd.make_gtab(dwi.bvals, dwi.bvecs)
    sh, _ = csd.fit_csd(dwi.data, gtab, single, response_mask=brain)
    dirs, _ = csd.peaks_from_sh(sh, single, npeaks=1)
    axes = dwi.affine[:3, :3] / np.linalg.norm(dwi.affine[:3, :3], axis=0)
    err = angle_deg(dirs[single][:, 0] @ axes.T, peaks[single][:, 0])
    print(f"{storage}: {single.sum()} single-fibre voxels, {100 * np.mean(err < 10):.1f} % within "
          f"10 deg, median {np.median(err):.2f} deg")
    assert single.sum() >= 1000
    assert np.mean(err < 10) >= 0.90


# ----------------------------------------------------------------------------- the CLI cohort
SMALL = ["--anatomy", "human", "--bundles", ",".join(BUNDLES), "--voxel-size", "3",
         "--bvals", "0,1000", "--n-dirs", "12", "--n-b0", "2", "--n-truth-streamlines", "40"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("human") / "bids"
    assert phantom_main([str(root), "--n-subjects", "2", "--seed", "4", *SMALL]) == 0
    return root


def _pose(root, sub):
    p = root / TRUTH / sub / "dwi" / f"{sub}_from-MNI152NLin6Asym_to-dwi_mode-image_xfm.json"
    return json.loads(p.read_text())["HeadPose"]


def test_cohort_is_bids_valid_and_posed(cohort):
    out = subprocess.run([str(VALIDATOR), str(cohort)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
    poses = [_pose(cohort, s) for s in ("sub-01", "sub-02")]
    assert poses[0] != poses[1]
    for sub, pose in zip(("sub-01", "sub-02"), poses):
        assert all(abs(a) <= 15 for a in pose["RotationDegrees"])
        assert all(abs(t) <= 25 for t in pose["TranslationMm"])
        img = nib.load(cohort / sub / "dwi" / f"{sub}_dwi.nii.gz")
        assert "".join(nib.aff2axcodes(img.affine)) == pose["StorageOrientation"]
        assert max(abs(a) for a in pose["RotationDegrees"]) > 1.0


def test_truth_streamlines_score_as_valid(cohort):
    gt = load_groundtruth(cohort / TRUTH, "01")
    assert gt.bundle_names == BUNDLES
    sl, groups = load_tractogram(
        cohort / TRUTH / "sub-01/dwi/sub-01_space-dwi_model-truth_streamlines.trx")
    assert list(groups) == BUNDLES
    assert len(sl) == 40 * len(BUNDLES)
    _, summary = score_groundtruth(sl, gt)
    assert summary["valid_bundles"] == len(BUNDLES)
    assert summary["vs_ratio"] >= 0.98


def test_saved_map_takes_truth_to_the_atlas_regions(cohort, atlas):
    """The displacement field (ITK/ANTs, LPS) maps scanner points onto atlas (MNI) points: the
    truth streamlines' ends land in their bundle's begin/end regions of the atlas."""
    d = cohort / TRUTH / "sub-02/dwi"
    img = nib.load(d / "sub-02_from-MNI152NLin6Asym_to-dwi_mode-image_xfm.nii.gz")
    assert img.shape[3:] == (1, 3) and img.header.get_intent()[0] == "vector"
    field = np.asarray(img.dataobj)[:, :, :, 0, :] * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    gt = load_groundtruth(cohort / TRUTH, "02")
    inv_s, inv_a = np.linalg.inv(img.affine), np.linalg.inv(atlas.affine)
    st = np.ones((3, 3, 3), bool)
    hits = []
    for name in BUNDLES:
        bun = atlas.bundle(name)
        regions = [ndimage.binary_dilation(r, st) for r in (bun.begin, bun.end)]
        sl = gt.bundle_streamlines(name)
        for k, region in enumerate(regions):
            y = np.array([s[0] if k == 0 else s[-1] for s in sl])
            ijk = (y @ inv_s[:3, :3].T + inv_s[:3, 3]).T
            x = y + np.stack([ndimage.map_coordinates(field[..., c], ijk, order=1)
                              for c in range(3)], 1)
            a = np.rint(x @ inv_a[:3, :3].T + inv_a[:3, 3]).astype(int)
            hits.append(region[tuple(a.T)])
    assert np.mean(np.concatenate(hits)) >= 0.95


def test_subject_independent_of_cohort_size(cohort, tmp_path):
    one = tmp_path / "n1"
    assert phantom_main([str(one), "--n-subjects", "1", "--seed", "4", *SMALL]) == 0
    for rel in ("sub-01/dwi/sub-01_dwi.bvec", "sub-01/dwi/sub-01_dwi.nii.gz"):
        assert (one / rel).read_bytes() == (cohort / rel).read_bytes()


def test_unknown_bundle_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        phantom_main([str(tmp_path / "x"), "--anatomy", "human", "--bundles", "CST_left,NOPE"])
    assert exc.value.code == 64
    assert "NOPE" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
