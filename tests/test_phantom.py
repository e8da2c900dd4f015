"""Tests of the synthetic phantom cohort generator (gentract-phantom)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gentract_bids.cli.phantom import main as phantom_main
from gentract_bids.io.tractogram import load_tractogram, save_tractogram
from gentract_bids.phantom import anatomy
from gentract_bids.phantom.geometry import (centreline, geometry_to_dict, load_geometry,
                                            sample_streamlines, save_geometry)
from gentract_bids.phantom.signal import world_to_voxel_index

ISBI = Path(__file__).resolve().parents[2] / "shared/data/external/isbi2013-phantom/isbi_challenge_2013.json"
VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"
SMALL = ["--voxel-size", "3", "--bvals", "0,1000", "--n-dirs", "12", "--n-b0", "3",
         "--n-truth-streamlines", "50"]
TRUTH = "derivatives/phantom-truth"


def _cohort(path: Path, *args) -> Path:
    assert phantom_main([str(path), *SMALL, *args]) == 0
    return path


def _hashes(root: Path, raw_only=True) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not (raw_only and rel.startswith("derivatives")):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def cohort1(tmp_path_factory) -> Path:
    """One subject, seed 0, 3 mm."""
    return _cohort(tmp_path_factory.mktemp("ph") / "n1", "--n-subjects", "1")


@pytest.fixture(scope="module")
def cohort2(tmp_path_factory) -> Path:
    """Two subjects, seed 0, 3 mm."""
    return _cohort(tmp_path_factory.mktemp("ph") / "n2", "--n-subjects", "2")


def _truth(root: Path, sub: str, name: str):
    return nib.load(root / TRUTH / sub / "dwi" / f"{sub}_space-dwi_{name}.nii.gz")


def _bundle_names(root: Path, sub: str):
    side = root / TRUTH / sub / "dwi" / f"{sub}_space-dwi_desc-bundles_mask.json"
    return json.loads(side.read_text())["BundleNames"]


def _fraction_in_masks(streamlines: dict, masks: np.ndarray, names, affine) -> dict:
    """Per bundle: the fraction of its streamline points in a voxel of its own mask."""
    out = {}
    for bi, name in enumerate(names):
        pts = np.concatenate(streamlines[name])
        flat = world_to_voxel_index(pts, masks.shape[:3], affine)
        m = masks[..., bi].ravel()
        out[name] = float(np.mean((flat >= 0) & (m[np.maximum(flat, 0)] > 0)))
    return out


def _load_truth_streamlines(root: Path, sub: str) -> dict:
    sl, groups = load_tractogram(
        root / TRUTH / sub / "dwi" / f"{sub}_space-dwi_model-truth_streamlines.trx")
    return {name: [sl[i] for i in idx] for name, idx in groups.items()}


# ----------------------------------------------------------------------------- BIDS + CLI
def test_cohort_is_bids_valid(cohort1):
    res = subprocess.run([str(VALIDATOR), str(cohort1)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    desc = json.loads((cohort1 / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "raw" and desc["GeneratedBy"][0]["Name"] == "gentract-phantom"
    ddesc = json.loads((cohort1 / TRUTH / "dataset_description.json").read_text())
    assert ddesc["DatasetType"] == "derivative"
    img = nib.load(cohort1 / "sub-01/dwi/sub-01_dwi.nii.gz")
    bvals = np.loadtxt(cohort1 / "sub-01/dwi/sub-01_dwi.bval")
    bvecs = np.loadtxt(cohort1 / "sub-01/dwi/sub-01_dwi.bvec")
    assert img.shape[3] == len(bvals) == bvecs.shape[1] == 3 + 12
    assert np.allclose(img.header.get_zooms()[:3], 3.0)
    # RAS+ axis-aligned, world origin at the grid centre
    centre = img.affine @ np.r_[(np.array(img.shape[:3]) - 1) / 2, 1]
    assert np.allclose(centre[:3], 0) and np.all(np.diag(img.affine)[:3] > 0)


def test_cli_exit_codes(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        phantom_main([str(tmp_path / "x"), "--voxel-size", "-1"])
    assert e.value.code == 64
    with pytest.raises(SystemExit) as e:
        phantom_main([str(tmp_path / "x"), "--bvals", "0,abc"])
    assert e.value.code == 64
    user = tmp_path / "user"
    user.mkdir()
    (user / "precious.txt").write_text("do not delete")
    assert phantom_main([str(user)]) == 73
    assert (user / "precious.txt").read_text() == "do not delete"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert phantom_main([str(blocker / "sub")]) == 73


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_and_subject_independent_of_n(cohort1, cohort2, tmp_path):
    first = _hashes(cohort1)
    again = _cohort(tmp_path / "again", "--n-subjects", "1")
    assert _hashes(again) == first
    # derivative arrays are identical too
    for name in ("desc-bundles_mask", "label-WM_probseg", "model-truth_param-peaks_dwimap"):
        a = np.asarray(_truth(cohort1, "sub-01", name).dataobj)
        b = np.asarray(_truth(again, "sub-01", name).dataobj)
        assert np.array_equal(a, b)
    s1, s2 = _load_truth_streamlines(cohort1, "sub-01"), _load_truth_streamlines(again, "sub-01")
    assert all(np.array_equal(np.concatenate(s1[k]), np.concatenate(s2[k])) for k in s1)
    # regenerating into an earlier phantom is allowed and gives the same bytes
    assert phantom_main([str(again), *SMALL, "--n-subjects", "1"]) == 0
    assert _hashes(again) == first
    # subject 1 does not depend on how many subjects are generated
    two = _hashes(cohort2)
    for rel, h in first.items():
        if rel.startswith("sub-01/"):
            assert two[rel] == h, rel
    assert two["sub-02/dwi/sub-02_dwi.nii.gz"] != first["sub-01/dwi/sub-01_dwi.nii.gz"]


def test_different_seed_differs(cohort1, tmp_path):
    other = _cohort(tmp_path / "seed1", "--n-subjects", "1", "--seed", "1")
    a, b = _hashes(cohort1), _hashes(other)
    assert a["sub-01/dwi/sub-01_dwi.nii.gz"] != b["sub-01/dwi/sub-01_dwi.nii.gz"]
    ga = json.loads((cohort1 / TRUTH / "sub-01/dwi/sub-01_space-dwi_desc-truth_geometry.json").read_text())
    gb = json.loads((other / TRUTH / "sub-01/dwi/sub-01_space-dwi_desc-truth_geometry.json").read_text())
    assert ga != gb


# ----------------------------------------------------------------------------- ground truth
def test_truth_streamlines_in_bundle_head_tail_masks(cohort1):
    sub = "sub-01"
    names = _bundle_names(cohort1, sub)
    sl = _load_truth_streamlines(cohort1, sub)
    assert list(sl) == names and all(len(v) == 50 for v in sl.values())
    img = _truth(cohort1, sub, "desc-bundles_mask")
    masks, aff = np.asarray(img.dataobj), img.affine
    assert masks.dtype == np.uint8 and masks.shape[3] == len(names)
    inside = _fraction_in_masks(sl, masks, names, aff)
    assert min(inside.values()) >= 0.99, inside
    heads = np.asarray(_truth(cohort1, sub, "desc-heads_mask").dataobj)
    geom = load_geometry(cohort1 / TRUTH / sub / "dwi" / f"{sub}_space-dwi_desc-truth_geometry.json")
    lengths = {b.name: centreline(b).length for b in geom.bundles}
    tails = np.asarray(_truth(cohort1, sub, "desc-tails_mask").dataobj)
    for bi, name in enumerate(names):
        first = world_to_voxel_index(np.array([s[0] for s in sl[name]]), heads.shape[:3], aff)
        last = world_to_voxel_index(np.array([s[-1] for s in sl[name]]), heads.shape[:3], aff)
        assert np.all(first >= 0) and np.all(heads[..., bi].ravel()[first] > 0), name
        assert np.all(last >= 0) and np.all(tails[..., bi].ravel()[last] > 0), name
        # end regions are a few mm of the tube, not the whole bundle (long bundles)
        if lengths[name] > 60:
            assert (heads[..., bi] & masks[..., bi]).sum() < 0.4 * masks[..., bi].sum(), name
    # tissue fractions sum to <= 1 and WM is the union of the tubes
    wm = _truth(cohort1, sub, "label-WM_probseg").get_fdata()
    gm = _truth(cohort1, sub, "label-GM_probseg").get_fdata()
    csf = _truth(cohort1, sub, "label-CSF_probseg").get_fdata()
    assert np.all(wm + gm + csf <= 1 + 1e-5) and wm.max() == pytest.approx(1.0)
    assert np.all(masks.max(3)[wm > 0] > 0)
    fr = _truth(cohort1, sub, "model-truth_param-fractions_dwimap").get_fdata()
    assert np.all(fr.sum(3) <= wm + 1e-4)  # top-K populations of the WM fraction
    assert np.mean(np.isclose(fr.sum(3)[wm > 0], wm[wm > 0], atol=1e-4)) > 0.99
    assert np.all(np.diff(fr, axis=3) <= 1e-6)  # sorted by fraction
    pk = _truth(cohort1, sub, "model-truth_param-peaks_dwimap").get_fdata()
    norms = np.linalg.norm(pk.reshape(*pk.shape[:3], -1, 3), axis=-1)
    assert np.allclose(norms[fr > 0], 1, atol=1e-4) and np.all(norms[fr == 0] == 0)
    assert (fr[..., 1] > 0.05).sum() > 20 and (fr[..., 2] > 0.05).sum() > 3  # crossings exist


def test_template_bundles_named_mirrored_and_in_cortex():
    geom = anatomy.template_geometry()
    names = geom.names
    assert len(names) >= 20 and len(set(names)) == len(names)
    for kind in ("CC_", "CST_", "AF_", "SLF_", "IFOF_", "UF_", "ILF_", "CING_", "U_"):
        assert any(n.startswith(kind) for n in names), kind
    mirror = np.array([-1.0, 1.0, 1.0])
    for b in geom.bundles:
        if b.name.endswith("_R"):
            left = geom[b.name[:-2] + "_L"]
            assert np.allclose(left.control_points, b.control_points * mirror)
            assert left.radius == b.radius
        elif not b.name.endswith("_L"):  # commissural: symmetric about x = 0, crossing it
            cp = b.control_points
            assert np.allclose(cp[::-1] * mirror, cp)
    # both ends in the cortex shell (CST: the inferior end leaves at the bottom)
    for b in geom.bundles:
        cl = centreline(b)
        ends = [cl.points[-1]] if b.name.startswith("CST") else [cl.points[0], cl.points[-1]]
        assert all(anatomy.cortex_mask(p[None])[0] for p in ends), b.name
    # a ~90 degree crossing: CST x CC_Body
    cst, cc = centreline(geom["CST_R"]), centreline(geom["CC_Body"])
    d = np.linalg.norm(cst.points[:, None] - cc.points[None], axis=2)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert d[i, j] < 2 and abs(cst.tangents[i] @ cc.tangents[j]) < 0.5


def test_isbi_geometry_and_round_trip(tmp_path):
    geom = load_geometry(ISBI)
    assert len(geom.bundles) == 27 and len(geom.isotropic_regions) == 3
    for b in geom.bundles:
        cl = centreline(b)
        assert abs(np.linalg.norm(cl.points[0]) - 50) < 1 and abs(np.linalg.norm(cl.points[-1]) - 50) < 1
    save_geometry(geom, tmp_path / "g.json")
    again = load_geometry(tmp_path / "g.json")
    assert geometry_to_dict(again) == geometry_to_dict(geom)
    assert json.loads((tmp_path / "g.json").read_text()) == json.loads(ISBI.read_text())
    out = _cohort(tmp_path / "isbi", "--n-subjects", "1", "--geometry", str(ISBI))
    sl = _load_truth_streamlines(out, "sub-01")
    assert len(sl) == 27
    subj_geom = load_geometry(out / TRUTH / "sub-01/dwi/sub-01_space-dwi_desc-truth_geometry.json")
    assert subj_geom.names == geom.names
    csf = _truth(out, "sub-01", "label-CSF_probseg").get_fdata()
    gm = _truth(out, "sub-01", "label-GM_probseg").get_fdata()
    assert csf.sum() > 0 and gm.sum() == 0  # isotropic regions as CSF, no brain
    res = subprocess.run([str(VALIDATOR), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:]


def test_geometry_radii_round_trip(tmp_path):
    geom = anatomy.template_geometry()
    save_geometry(geom, tmp_path / "t.json")
    again = load_geometry(tmp_path / "t.json")
    assert geometry_to_dict(again) == geometry_to_dict(geom)
    assert again["CST_R"].radii is not None and np.array_equal(again["CST_R"].radii,
                                                                 geom["CST_R"].radii)


def test_sample_streamlines_stay_in_tube():
    b = anatomy.template_geometry()["CST_R"]  # fanning tube
    sl = sample_streamlines(b, 100, np.random.default_rng(0), step_mm=1.0)
    cl = centreline(b, 0.25)
    pts = np.concatenate(sl)
    d = np.linalg.norm(pts[:, None] - cl.points[None], axis=2)
    j = d.argmin(1)
    assert np.all(d[np.arange(len(pts)), j] <= cl.radii[j] + 0.1)
    # the fan: streamlines spread more at the cortex end than at the brainstem
    spread = lambda k: np.linalg.norm(np.array([s[k] for s in sl]) - cl.points[k if k == 0 else -1], axis=1).max()
    assert spread(-1) > 1.8 * spread(0)


# ----------------------------------------------------------------------------- variability
def test_subjects_differ_enough(cohort2):
    """A fixed template tractogram must score poorly on a new subject: the fraction of the
    template's points inside the subject's own bundle masks is << 1 (the template scores >= 0.99
    on its own masks, see the test above); we require < 0.7 on average for both subjects."""
    names = _bundle_names(cohort2, "sub-01")
    geom = anatomy.template_geometry()
    rng = np.random.default_rng(0)
    template = {b.name: sample_streamlines(b, 30, rng) for b in geom.bundles}
    scores = []
    for sub in ("sub-01", "sub-02"):
        img = _truth(cohort2, sub, "desc-bundles_mask")
        scores.append(np.mean(list(_fraction_in_masks(template, np.asarray(img.dataobj), names,
                                                      img.affine).values())))
    s1 = _load_truth_streamlines(cohort2, "sub-01")
    img2 = _truth(cohort2, "sub-02", "desc-bundles_mask")
    cross = np.mean(list(_fraction_in_masks(s1, np.asarray(img2.dataobj), names, img2.affine).values()))
    assert max(scores) < 0.7 and cross < 0.7, (scores, cross)
    # brains stay in the canonical model box
    for sub in ("sub-01", "sub-02"):
        bm = _truth(cohort2, sub, "desc-brain_mask")
        ijk = np.argwhere(np.asarray(bm.dataobj) > 0)
        xyz = ijk @ bm.affine[:3, :3].T + bm.affine[:3, 3]
        assert np.all(np.abs(xyz).max(0) <= np.array([75, 90, 75]) + 1.5)


# ----------------------------------------------------------------------------- physics
def test_signal_physics_and_noise(cohort1):
    img = nib.load(cohort1 / "sub-01/dwi/sub-01_dwi.nii.gz")
    dwi = np.asarray(img.dataobj).astype(float)
    bvals = np.loadtxt(cohort1 / "sub-01/dwi/sub-01_dwi.bval")
    bvecs = np.loadtxt(cohort1 / "sub-01/dwi/sub-01_dwi.bvec").T
    fr = _truth(cohort1, "sub-01", "model-truth_param-fractions_dwimap").get_fdata()
    pk = _truth(cohort1, "sub-01", "model-truth_param-peaks_dwimap").get_fdata()[..., :3]
    single = (fr[..., 0] > 0.99) & (fr[..., 1] == 0)
    assert single.sum() > 20
    s, v = dwi[single], pk[single]
    dw = bvals > 0
    att = s[:, dw] / s[:, ~dw].mean(1, keepdims=True)
    cos2 = (v @ bvecs[dw].T) ** 2
    # lowest signal along the fibre: strongly negative correlation of signal with cos^2
    corr = [np.corrcoef(a, c)[0, 1] for a, c in zip(att, cos2)]
    assert np.median(corr) < -0.8
    along = np.array([a[np.argmax(c)] for a, c in zip(att, cos2)])
    across = np.array([a[np.argmin(c)] for a, c in zip(att, cos2)])
    assert np.median(along) < 0.5 * np.median(across)
    # noise: in the background, magnitude is Rayleigh with mean sigma*sqrt(pi/2); sigma = 1000/SNR
    wm = _truth(cohort1, "sub-01", "label-WM_probseg").get_fdata()
    gm = _truth(cohort1, "sub-01", "label-GM_probseg").get_fdata()
    csf = _truth(cohort1, "sub-01", "label-CSF_probseg").get_fdata()
    bg = (wm + gm + csf) == 0
    sigma = dwi[bg].mean() / np.sqrt(np.pi / 2)
    assert sigma == pytest.approx(1000 / 30, rel=0.05)
    # b0 in pure WM is ~1000 (S0 scale)
    assert np.median(dwi[single][:, ~dw]) == pytest.approx(1000, rel=0.05)


# ----------------------------------------------------------------------------- tractogram IO
@pytest.mark.parametrize("ext", [".trx", ".tck", ".trk"])
def test_tractogram_round_trip(tmp_path, ext):
    rng = np.random.default_rng(0)
    sl = [rng.normal(size=(n, 3)).astype(np.float32) * 20 for n in (5, 9, 3)]
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -50
    groups = {"A": np.array([0, 2]), "B": np.array([1])}
    save_tractogram(tmp_path / f"t{ext}", sl, aff, (50, 50, 50), groups)
    back, g = load_tractogram(tmp_path / f"t{ext}")
    assert len(back) == 3 and all(np.allclose(a, b, atol=1e-3) for a, b in zip(sl, back))
    if ext == ".trx":
        assert {k: list(v) for k, v in g.items()} == {"A": [0, 2], "B": [1]}


# ----------------------------------------------------------------------------- resolutions
def test_native_resolutions_agree():
    """1.25 mm and 3 mm grids hold the same anatomy: same FOV, same white-matter volume (+-10 %)."""
    from gentract_bids.phantom.cohort import make_subject

    volumes = {}
    for vs in (1.25, 3.0):
        s = make_subject(0, seed=0, voxel_size=vs, bvals=(0, 1000), n_dirs=6, n_b0=1, n_sub=2)
        assert np.allclose(np.abs(np.diag(s.affine)[:3]), vs)
        extent = np.array(s.dwi.shape[:3]) * vs
        assert np.all(extent >= [160, 192, 160]) and np.all(extent < [160 + 2 * vs, 192 + 2 * vs,
                                                                      160 + 2 * vs])
        volumes[vs] = float(s.wm.sum()) * vs**3
    assert abs(volumes[1.25] / volumes[3.0] - 1) < 0.10, volumes
