"""Baseline trackers on a real 3 mm phantom BIDS subject: MRtrix3 (iFOD2/SD_Stream + SIFT,
tckglobal) and dipy local tracking. The ground truth proves the coordinate conventions: points
inside the brain, on the truth bundles, and segments parallel to the truth fibre directions (an
axis flip of the positions or of the gradients fails these checks; see _quality)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from gentract_bids.baselines import mrtrix
from gentract_bids.baselines.dipy_tracking import estimate_tissue_maps, track_dipy
from gentract_bids.errors import EX_FAILURE, GenTractError

needs_mrtrix = pytest.mark.skipif(shutil.which("tckgen") is None,
                                  reason="MRtrix3 not installed (apt-get install mrtrix3)")
N = 200  # target streamline count in these tests
SEEDS = 1000  # dipy: track from this many random WM seeds (of ~5500), enough for N


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from gentract_bids.phantom.cohort import make_cohort

    root = make_cohort(tmp_path_factory.mktemp("bids"), n_subjects=1, voxel_size=3.0)
    raw = root / "sub-01" / "dwi" / "sub-01_dwi"
    truth = root / "derivatives" / "phantom-truth" / "sub-01" / "dwi" / "sub-01_space-dwi"
    files = {"dwi": f"{raw}.nii.gz", "bval": f"{raw}.bval", "bvec": f"{raw}.bvec",
             "mask": f"{truth}_desc-brain_mask.nii.gz"}
    for t in ("WM", "GM", "CSF"):
        files[t] = f"{truth}_label-{t}_probseg.nii.gz"
    ref = nib.load(files["mask"])
    bundles = np.asanyarray(nib.load(f"{truth}_desc-bundles_mask.nii.gz").dataobj).any(-1)
    peaks = np.asarray(nib.load(f"{truth}_model-truth_param-peaks_dwimap.nii.gz").dataobj)
    return {"files": files, "affine": ref.affine, "brain": np.asanyarray(ref.dataobj) > 0,
            "bundles": ndimage.binary_dilation(bundles, np.ones((3, 3, 3), bool)),
            "peaks": peaks.reshape(*peaks.shape[:3], -1, 3)}


def _voxels(points, affine, shape):
    ijk = np.rint((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)
    return ijk, np.all((ijk >= 0) & (ijk < np.array(shape)), axis=1)


def _quality(streamlines, ph) -> dict:
    """Fractions of points in the brain / in the 1-voxel-dilated union of truth bundles, and the
    median angle (deg) between segments and the closest truth fibre direction of their voxel.
    On this phantom a random point lies in the dilated bundles with p = 0.44; mirroring good
    tractograms along x, y or z gave 0.48-0.71 and median angles of 29-49 deg, against
    >= 0.9 and <= 12 deg unflipped."""
    pts = np.concatenate(streamlines)
    ijk, ok = _voxels(pts, ph["affine"], ph["brain"].shape)
    inside = np.zeros(len(pts), bool)
    inside[ok] = ph["brain"][tuple(ijk[ok].T)]
    on_bundle = np.zeros(len(pts), bool)
    on_bundle[ok] = ph["bundles"][tuple(ijk[ok].T)]
    seg = np.concatenate([np.diff(s, axis=0) for s in streamlines])
    mid = np.concatenate([(s[1:] + s[:-1]) / 2 for s in streamlines])
    seg /= np.linalg.norm(seg, axis=1, keepdims=True) + 1e-12
    ijk, ok = _voxels(mid, ph["affine"], ph["brain"].shape)
    pk = ph["peaks"][tuple(ijk[ok].T)]
    has = np.linalg.norm(pk, axis=-1).max(-1) > 0
    cos = np.abs(np.einsum("nkj,nj->nk", pk[has], seg[ok][has])).max(-1)
    return {"brain": inside.mean(), "bundles": on_bundle.mean(),
            "angle": float(np.median(np.degrees(np.arccos(np.clip(cos, 0, 1)))))}


def _assert_good(streamlines, ph, n=N):
    assert len(streamlines) == n
    assert all(s.ndim == 2 and s.shape[1] == 3 and len(s) >= 2 for s in streamlines)
    q = _quality(streamlines, ph)
    assert q["brain"] >= 0.9, q
    assert q["bundles"] >= 0.8, q
    assert q["angle"] <= 20.0, q
    return q


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- MRtrix3
@pytest.fixture(scope="module")
def mrtrix_fod(phantom, tmp_path_factory):
    f = phantom["files"]
    work = tmp_path_factory.mktemp("mrtrix_fod")
    fod, meta = mrtrix.estimate_fod(f["dwi"], f["bval"], f["bvec"], f["mask"], work, nthreads=2)
    return fod, meta


@needs_mrtrix
@pytest.mark.parametrize("algorithm", ["ifod2", "sdstream"])
def test_mrtrix_local_sift(phantom, mrtrix_fod, tmp_path, algorithm):
    f = phantom["files"]
    fod, fmeta = mrtrix_fod
    assert fmeta["ShellsUsed"] == [3000.0]
    out = tmp_path / f"{algorithm}.tck"
    sl, meta = mrtrix.run_local(algorithm, f["dwi"], f["bval"], f["bvec"], f["mask"], out,
                                n_streamlines=N, sift_factor=3, wm_pve=f["WM"], wm_fod=fod,
                                nthreads=2, random_seed=1, workdir=tmp_path / "work")
    _assert_good(sl, phantom)
    assert _same(sl, mrtrix.load_tck(out))  # the file holds what is returned
    assert meta["NGenerated"] == 3 * N and N <= meta["NAfterSIFT"] < 3 * N
    cmds = " || ".join(meta["Commands"])
    assert f"-algorithm {mrtrix.LOCAL_ALGORITHMS[algorithm]}" in cmds
    assert "tcksift" in cmds and f"-term_number {N}" in cmds and "MRTRIX_RNG_SEED=1" in cmds
    assert meta["Timings"]["tckgen"] > 0 and meta["Deterministic"] is False


@needs_mrtrix
def test_mrtrix_seed_reproducible_single_thread(phantom, mrtrix_fod, tmp_path):
    """MRTRIX_RNG_SEED makes tckgen reproducible when single-threaded (SIFT is not: no SIFT)."""
    f = phantom["files"]
    run = lambda seed, name: mrtrix.run_local(  # noqa: E731
        "sdstream", f["dwi"], f["bval"], f["bvec"], f["mask"], tmp_path / f"{name}.tck",
        n_streamlines=100, sift_factor=1, wm_pve=f["WM"], wm_fod=mrtrix_fod[0], nthreads=1,
        random_seed=seed, workdir=tmp_path / name)
    a, meta = run(7, "a")
    b, _ = run(7, "b")
    c, _ = run(8, "c")
    assert meta["Deterministic"] is True and meta["SIFT"] is False
    assert _same(a, b)
    assert not _same(a, c)


@needs_mrtrix
def test_tckglobal(phantom, mrtrix_fod, tmp_path):
    f = phantom["files"]
    resp = mrtrix_fod[1]["ResponseFiles"]
    sl, meta = mrtrix.run_tckglobal(f["dwi"], f["bval"], f["bvec"], f["mask"],
                                    tmp_path / "global.tck", wm_response=resp["wm"],
                                    gm_response=resp["gm"], csf_response=resp["csf"], niter=4e6,
                                    n_streamlines=N, nthreads=2, random_seed=3,
                                    workdir=tmp_path / "work")
    _assert_good(sl, phantom)
    assert meta["NAboveMinLength"] >= N and meta["Parameters"]["length"] == 3.0
    assert "-niter 4e+06" in meta["Commands"][-2]
    assert len(mrtrix.load_tck(tmp_path / "global.tck")) == N


@needs_mrtrix
def test_tckglobal_error_with_exit_code_0_is_caught(phantom, mrtrix_fod, tmp_path):
    """A WM response with too few shells: tckglobal prints [ERROR] yet exits 0 with garbage."""
    f = phantom["files"]
    rows = Path(mrtrix_fod[1]["ResponseFiles"]["wm"]).read_text().splitlines()
    bad = tmp_path / "wm_3rows.txt"
    bad.write_text("\n".join([r for r in rows if not r.startswith("#")][:3]) + "\n")
    with pytest.raises(mrtrix.MRtrixCommandError, match="kernel size"):
        mrtrix.run_tckglobal(f["dwi"], f["bval"], f["bvec"], f["mask"], tmp_path / "g.tck",
                             wm_response=bad, niter=1e4, nthreads=1, workdir=tmp_path / "w")


def test_check_command_output():
    mrtrix.check_command_output("tckglobal", 0, "tckglobal: [WARNING] something minor\n")
    err = "tckglobal: [ERROR] WM kernel size does not match the no. b-values in the image.\n"
    with pytest.raises(mrtrix.MRtrixCommandError, match="exit code 0.*WM kernel size"):
        mrtrix.check_command_output("tckglobal", 0, err)
    with pytest.raises(mrtrix.MRtrixCommandError, match="exit code 2"):
        mrtrix.check_command_output("tckgen", 2, "")


def test_missing_mrtrix_names_the_package(phantom, tmp_path, monkeypatch):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(mrtrix.MRtrixNotFoundError, match="mrtrix3") as err:
        mrtrix.check_mrtrix()
    assert isinstance(err.value, GenTractError) and err.value.exit_code == EX_FAILURE
    assert "tckgen" in str(err.value) and "apt-get install mrtrix3" in str(err.value)
    f = phantom["files"]
    with pytest.raises(mrtrix.MRtrixNotFoundError, match="tckglobal"):
        mrtrix.run_tckglobal(f["dwi"], f["bval"], f["bvec"], f["mask"], tmp_path / "g.tck")


# ----------------------------------------------------------------------------- dipy
@pytest.fixture(scope="module")
def dipy_inputs(phantom):
    from gentract_bids.fodf.csd import fit_csd, make_gtab
    from gentract_bids.io.dwi import read_dwi

    f = phantom["files"]
    dwi = read_dwi(f["dwi"], f["bval"], f["bvec"])
    gtab = make_gtab(dwi.bvals, dwi.bvecs)
    sh, _ = fit_csd(dwi.data, gtab, phantom["brain"], sh_order=6)
    pves = {k: np.asarray(nib.load(f[t]).dataobj, np.float32)
            for k, t in (("wm_pve", "WM"), ("gm_pve", "GM"), ("csf_pve", "CSF"))}
    return {"sh": sh, "affine": dwi.affine, "pves": pves, "dwi": dwi, "gtab": gtab}


@pytest.mark.parametrize("kind", ["det", "prob"])
def test_dipy_tracking(phantom, dipy_inputs, kind):
    d = dipy_inputs
    sl, meta = track_dipy(d["sh"], d["affine"], kind=kind, n_streamlines=N, random_seed=5,
                          max_seeds=SEEDS, **d["pves"])
    assert meta["StoppingCriterion"].startswith("CmcStoppingCriterion")
    assert meta["NAboveMinLength"] >= N
    _assert_good(sl, phantom)
    again, _ = track_dipy(d["sh"], d["affine"], kind=kind, n_streamlines=N, random_seed=5,
                          max_seeds=SEEDS, **d["pves"])
    assert _same(sl, again)
    other, _ = track_dipy(d["sh"], d["affine"], kind=kind, n_streamlines=N, random_seed=6,
                          max_seeds=SEEDS, **d["pves"])
    assert not _same(sl, other)


def test_dipy_estimated_tissue_maps(phantom, dipy_inputs):
    """Without tissue maps: DTI-based WM/GM/CSF that match the truth well enough to track."""
    d = dipy_inputs
    est = estimate_tissue_maps(d["dwi"].data, d["gtab"], phantom["brain"])
    brain = phantom["brain"]
    for k in ("wm", "gm"):
        r = np.corrcoef(est[k][brain], d["pves"][f"{k}_pve"][brain])[0, 1]
        assert r > 0.8, (k, r)
    sl, meta = track_dipy(d["sh"], d["affine"], kind="det", n_streamlines=N, random_seed=1,
                          max_seeds=SEEDS, wm_pve=est["wm"], gm_pve=est["gm"], csf_pve=est["csf"])
    _assert_good(sl, phantom)
    with pytest.raises(ValueError, match="wm_pve or wm_mask"):
        track_dipy(d["sh"], d["affine"])


# ----------------------------------------------------------------------------- interfaces
@needs_mrtrix
def test_interfaces(phantom, mrtrix_fod, dipy_inputs, tmp_path, monkeypatch):
    from gentract_bids.interfaces.tracking import DipyTrack, MRtrixTrack
    from gentract_bids.io.tractogram import load_tractogram

    monkeypatch.chdir(tmp_path)
    f = phantom["files"]
    res = MRtrixTrack(algorithm="sdstream", dwi_file=f["dwi"], bval_file=f["bval"],
                      bvec_file=f["bvec"], mask_file=f["mask"], wm_pve_file=f["WM"],
                      wm_fod=str(mrtrix_fod[0]), n_streamlines=100, sift_factor=1,
                      random_seed=2, nthreads=2).run()
    sl, _ = load_tractogram(res.outputs.out_file)
    assert res.outputs.out_file.endswith(".trx") and len(sl) == 100
    assert res.outputs.metadata["Algorithm"] == "SD_Stream"

    fod = tmp_path / "fod.nii.gz"
    nib.Nifti1Image(dipy_inputs["sh"], dipy_inputs["affine"]).to_filename(fod)
    res = DipyTrack(fod_file=str(fod), kind="prob", dwi_file=f["dwi"], bval_file=f["bval"],
                    bvec_file=f["bvec"], mask_file=f["mask"], n_streamlines=100,
                    max_seeds=500, out_format="tck").run()
    sl, _ = load_tractogram(res.outputs.out_file)
    assert len(sl) == 100 and res.outputs.metadata["TissueMaps"].startswith("estimated")
    _assert_good(sl, phantom, n=100)
