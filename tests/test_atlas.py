"""Atlas-mode bundle recognition (waypoint ROIs, RecoBundles, pyAFQ, BundleSeg) on 3 mm phantoms.

Atlases are built from the phantom's ground truth: waypoint ROIs from subject 1's own masks,
RecoBundles models from subject 2's truth streamlines (a different deformation of the template).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from gentract_bids.errors import BadDataError, NoInputError
from gentract_bids.evaluation.recognition import bundleseg as bs
from gentract_bids.evaluation.recognition import common
from gentract_bids.evaluation.recognition import pyafq as pa
from gentract_bids.evaluation.recognition import recobundles as rb
from gentract_bids.evaluation.recognition import waypoints as wp
from gentract_bids.io.tractogram import save_tractogram
from gentract_bids.phantom.cohort import make_subject
from gentract_bids.phantom.geometry import centreline

DATA = Path(__file__).parent / "data" / "bundleseg"
RECALL = 0.95


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def subj1():
    return make_subject(1, seed=0, voxel_size=3.0, n_truth_streamlines=100)


@pytest.fixture(scope="module")
def subj2():
    return make_subject(2, seed=0, voxel_size=3.0, n_truth_streamlines=100)


def _truth(subj, skip=()):
    sl, lab = [], []
    for name in subj.bundle_names:
        if name in skip:
            continue
        sl += subj.streamlines[name]
        lab += [name] * len(subj.streamlines[name])
    return sl, np.array(lab)


def _random_walks(subj, n=300, steps=80, seed=1):
    """Persistent random walks (1 mm steps) from random brain voxels: not bundles."""
    rng = np.random.default_rng(seed)
    ijk = np.argwhere(subj.brain_mask > 0)
    start = ijk[rng.choice(len(ijk), n)] @ subj.affine[:3, :3].T + subj.affine[:3, 3]
    d = rng.standard_normal((n, 3))
    pts = [start]
    for _ in range(steps):
        d = d / np.linalg.norm(d, axis=1, keepdims=True) + 0.3 * rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        pts.append(pts[-1] + d)
    return list(np.stack(pts, 1))


def _voxel_centres(subj):
    shape = subj.bundle_masks.shape[:3]
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return (ijk @ subj.affine[:3, :3].T + subj.affine[:3, 3]).reshape(*shape, 3)


def _slab(subj, b, frac, half_mm=3.0, side=None):
    """Voxels of bundle ``b``'s mask within ``half_mm`` of the plane normal to its centre-line at
    ``frac`` of its length (near that point); ``side`` keeps one half (sign along a normal)."""
    cl = centreline(subj.geometry.bundles[b], 0.5)
    k = int(np.argmin(np.abs(cl.arclength - frac * cl.length)))
    p, t, r = cl.points[k], cl.tangents[k], cl.radii[k]
    x = _voxel_centres(subj) - p
    m = ((subj.bundle_masks[..., b] > 0) & (np.abs(x @ t) <= half_mm)
         & (np.linalg.norm(x, axis=-1) <= r + 3.0))
    if side is not None:
        nrm = np.cross(t, [0.0, 0.0, 1.0])
        nrm /= np.linalg.norm(nrm)
        m &= side * (x @ nrm) > 0
        return m, p, t, nrm
    return m


@pytest.fixture(scope="module")
def atlas1(subj1):
    bundles = {name: wp.WaypointBundle(include=[_slab(subj1, b, 1 / 3), _slab(subj1, b, 2 / 3)],
                                      start=subj1.head_masks[..., b] > 0,
                                      end=subj1.tail_masks[..., b] > 0)
               for b, name in enumerate(subj1.bundle_names)}
    return wp.WaypointAtlas(bundles, subj1.affine, subj1.bundle_masks.shape[:3])


@pytest.fixture(scope="module")
def tractogram(subj1):
    """Subject 1's truth streamlines followed by 300 random walks (label "walk")."""
    sl, lab = _truth(subj1)
    walks = _random_walks(subj1)
    return sl + walks, np.r_[lab, ["walk"] * len(walks)]


@pytest.fixture(scope="module")
def reco(subj2, tractogram):
    """RecoBundles with subject 2's bundles as models (whole-brain affine SLR first, since the
    models come from another deformation; no local SLR, to stay fast)."""
    sl, _ = tractogram
    return rb.recognize_recobundles(sl, subj2.streamlines, whole_brain_slr=True, slr=False,
                                   num_threads=1, rng=0)


def _recall(labels, truth, names):
    return {n: float(np.mean(labels[truth == n] == n)) for n in names}


# ----------------------------------------------------------------------------- waypoints
def test_waypoint_atlas_recognises_truth(subj1, atlas1, tractogram, tmp_path):
    path = wp.save_waypoint_atlas(atlas1, tmp_path / "atlas")
    loaded = wp.load_waypoint_atlas(path)  # the on-disk format round trip
    assert loaded.bundle_names == subj1.bundle_names
    assert np.allclose(loaded.affine, subj1.affine)
    sl, truth = tractogram
    res = wp.recognize_waypoints(sl, loaded)
    recall = _recall(res.labels, truth, subj1.bundle_names)
    assert min(recall.values()) >= RECALL, recall
    walks = truth == "walk"
    assert np.mean(res.labels[walks] != common.UNRECOGNIZED) < 0.05  # random walks: not bundles
    s = res.summary
    assert s["mode"] == "atlas" and s["atlas_method"] == "waypoints"
    assert s["n_streamlines"] == len(sl) and s["valid_bundles"] == s["n_bundles"] == 22
    assert s["precision"] == pytest.approx(np.mean(res.labels != common.UNRECOGNIZED))
    assert np.all(np.isfinite(res.scores[res.labels != common.UNRECOGNIZED]))
    # the atlas's own grid wins over a reference affine given by the caller
    assert np.array_equal(wp.recognize_waypoints(sl, loaded, np.eye(4)).labels, res.labels)


def test_waypoint_orientation_and_degenerate(subj1, atlas1):
    sl, truth = _truth(subj1)
    rev = np.arange(len(sl)) % 2 == 1
    mixed = [s[::-1] if r else s for s, r in zip(sl, rev)]
    mixed += [np.zeros((1, 3)), np.full((5, 3), np.nan)]
    res = wp.recognize_waypoints(mixed, atlas1)
    assert np.all(res.labels[-2:] == common.DEGENERATE)
    ok = res.labels[:-2] == truth
    assert ok.mean() >= RECALL
    assert np.array_equal(res.flipped[:-2][ok], rev[ok])  # start -> end orientation recovered
    oriented = res.bundles(mixed)["CST_L"]
    first = np.array([o[0] for o in oriented])
    heads = np.array([s[0] for s in subj1.streamlines["CST_L"]])
    assert np.linalg.norm(first.mean(0) - heads.mean(0)) < 3.0


def test_waypoint_order_of_include_rois(subj1, atlas1):
    """Include ROIs listed against the start -> end direction: rejected when order is enforced,
    accepted without it (pyAFQ only orients with the include ROIs)."""
    bd = atlas1.bundles["IFOF_L"]
    swapped = wp.WaypointAtlas({"IFOF_L": wp.WaypointBundle(include=bd.include[::-1], start=bd.start,
                                                          end=bd.end)}, subj1.affine)
    sl = subj1.streamlines["IFOF_L"]
    assert np.mean(wp.recognize_waypoints(sl, swapped).labels == "IFOF_L") < 0.05
    assert np.mean(wp.recognize_waypoints(sl, swapped, ordered=False).labels == "IFOF_L") >= RECALL
    # include ROIs only: orientation comes from them (first ROI first)
    inc_only = wp.WaypointAtlas({"IFOF_L": wp.WaypointBundle(include=bd.include[::-1])},
                               subj1.affine)
    res = wp.recognize_waypoints(sl, inc_only)
    assert np.mean(res.labels == "IFOF_L") >= RECALL and res.flipped[res.labels == "IFOF_L"].all()


def test_waypoint_exclude_rois(subj1, atlas1):
    sl, truth = _truth(subj1)
    names = subj1.bundle_names
    b = names.index("CST_L")
    base = wp.recognize_waypoints(sl, atlas1)
    # 1. an exclude ROI the bundle never touches changes nothing
    far = atlas1.bundles.copy()
    cst_r = subj1.bundle_masks[..., names.index("CST_R")] > 0
    far["CST_L"] = wp.WaypointBundle(**{**vars(atlas1.bundles["CST_L"]), "exclude": [cst_r]})
    res = wp.recognize_waypoints(sl, wp.WaypointAtlas(far, subj1.affine))
    assert np.array_equal(res.labels, base.labels)
    # 2. its own mid cross-section removes the whole bundle, and nothing else
    own = atlas1.bundles.copy()
    own["CST_L"] = wp.WaypointBundle(**{**vars(atlas1.bundles["CST_L"]),
                                       "exclude": [_slab(subj1, b, 0.5)]})
    res = wp.recognize_waypoints(sl, wp.WaypointAtlas(own, subj1.affine), min_streamlines=5)
    assert not np.any(res.labels == "CST_L")
    assert not {r["bundle"]: r["found"] for r in res.summary["bundles"]}["CST_L"]
    assert np.array_equal(res.labels[truth != "CST_L"], base.labels[truth != "CST_L"])
    # 3. half of the cross-section removes the streamlines passing on that side
    half, p, t, nrm = _slab(subj1, b, 0.5, side=+1)
    part = atlas1.bundles.copy()
    part["CST_L"] = wp.WaypointBundle(**{**vars(atlas1.bundles["CST_L"]), "exclude": [half]})
    res = wp.recognize_waypoints(sl, wp.WaypointAtlas(part, subj1.affine))
    cst = np.nonzero(truth == "CST_L")[0]
    offset = []
    for i in cst:  # signed offset of the streamline where it crosses the plane
        s = sl[i]
        k = int(np.argmin(np.abs((s - p) @ t)))
        offset.append((s[k] - p) @ nrm)
    offset = np.array(offset)
    kept = res.labels[cst] == "CST_L"
    vox = 3.0
    assert np.mean(~kept[offset > vox]) >= 0.9  # well inside the excluded half: removed
    assert np.mean(kept[offset < -vox]) >= 0.9  # well inside the other half: kept
    assert 0.2 < kept.mean() < 0.8


def test_waypoint_probability_map(subj1, atlas1):
    sl = subj1.streamlines["CST_L"]
    bd = atlas1.bundles["CST_L"]
    const = np.full(subj1.bundle_masks.shape[:3], 0.3)
    for thr, expected in ((0.2, 1.0), (0.4, 0.0)):
        one = wp.WaypointAtlas({"CST_L": wp.WaypointBundle(**{**vars(bd), "prob_map": const,
                                                            "prob_threshold": thr})},
                              subj1.affine)
        assert np.mean(wp.recognize_waypoints(sl, one).labels == "CST_L") == expected


def test_removed_bundle_is_not_found(subj1, subj2, atlas1):
    sl, truth = _truth(subj1, skip=("AF_L",))
    k = 5
    res = wp.recognize_waypoints(sl, atlas1, min_streamlines=k)
    found = {r["bundle"]: r["found"] for r in res.summary["bundles"]}
    assert not found["AF_L"] and res.summary["valid_bundles"] == 21
    reco = rb.recognize_recobundles(sl, subj2.streamlines, whole_brain_slr=True, slr=False,
                                   num_threads=1, rng=0, min_streamlines=k)
    found = {r["bundle"]: r["found"] for r in reco.summary["bundles"]}
    assert not found["AF_L"] and reco.summary["valid_bundles"] == 21
    assert min(_recall(reco.labels, truth, [n for n in subj1.bundle_names if n != "AF_L"])
               .values()) >= RECALL


def test_waypoint_atlas_errors(subj1, atlas1, tmp_path):
    path = wp.save_waypoint_atlas(atlas1, tmp_path / "a")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)),
             str(tmp_path / "a" / "x.nii.gz"))
    spec = json.loads(path.read_text())
    spec["bundles"]["CST_L"]["exclude"] = ["x.nii.gz"]
    path.write_text(json.dumps(spec))
    with pytest.raises(BadDataError, match="grid"):
        wp.load_waypoint_atlas(path)
    spec["bundles"]["CST_L"]["exclude"] = ["missing.nii.gz"]
    path.write_text(json.dumps(spec))
    with pytest.raises(NoInputError, match="missing.nii.gz"):
        wp.load_waypoint_atlas(path)


# ----------------------------------------------------------------------------- RecoBundles
def test_recobundles_recognises_truth(subj1, reco, tractogram):
    _, truth = tractogram
    recall = _recall(reco.labels, truth, subj1.bundle_names)
    assert min(recall.values()) >= RECALL, recall
    assert np.mean(reco.labels[truth == "walk"] != common.UNRECOGNIZED) < 0.10
    assert reco.summary["valid_bundles"] == 22 and reco.summary["atlas_method"] == "recobundles"


def test_load_model_bundles(subj2, tmp_path):
    for i, name in enumerate(subj2.bundle_names[:3]):
        ext = (".trk", ".tck", ".trx")[i]
        save_tractogram(tmp_path / f"{name}{ext}", subj2.streamlines[name], subj2.affine,
                        subj2.bundle_masks.shape[:3])
    models = rb.load_model_bundles(tmp_path)
    assert sorted(models) == sorted(subj2.bundle_names[:3])
    for name, sl in models.items():
        assert len(sl) == 100 and np.allclose(sl[0], subj2.streamlines[name][0], atol=1e-3)
    with pytest.raises(NoInputError):
        rb.load_model_bundles(tmp_path / "nothing")


# ----------------------------------------------------------------------------- pyAFQ
def test_pyafq_missing_gives_clear_error(subj1, atlas1):
    if pa.pyafq_available():
        pytest.skip("pyAFQ is installed here")
    with pytest.raises(common.MissingToolError, match="afq"):
        pa.recognize_pyafq(subj1.streamlines["CST_L"], atlas1)


def test_pyafq_recognises_truth(subj1, atlas1):
    if not pa.pyafq_available():
        pytest.skip("optional extra 'afq' (pyAFQ==3.4) not installed")
    sl, truth = _truth(subj1)
    rev = np.arange(len(sl)) % 2 == 1
    sl = [s[::-1] if r else s for s, r in zip(sl, rev)]
    res = pa.recognize_pyafq(sl, atlas1)
    recall = _recall(res.labels, truth, subj1.bundle_names)
    assert min(recall.values()) >= 0.8, recall  # pyAFQ's Mahalanobis cleaning trims outliers
    rec = res.labels != common.UNRECOGNIZED
    assert np.all(res.labels[rec] == truth[rec])
    assert np.array_equal(res.flipped[rec], rev[rec])  # pyAFQ orients start -> end


def test_resample_to_step():
    s = np.c_[np.linspace(0, 10.5, 4), np.zeros(4), np.zeros(4)]
    (r,) = pa.resample_to_step([s], 1.0)
    assert len(r) == 12 and np.allclose(r[[0, -1]], s[[0, -1]])
    assert np.linalg.norm(np.diff(r, axis=0), axis=1).max() <= 1.0 + 1e-6


# ----------------------------------------------------------------------------- BundleSeg
def test_bundleseg_parser_on_recorded_output(subj1):
    """A real scilpy 2.3.0 results.json (see tests/data/bundleseg/README.md)."""
    sl, truth = _truth(subj1)
    names = bs.bundleseg_bundle_names(DATA / "config.json")
    assert names == subj1.bundle_names
    labels, scores = bs.parse_bundleseg_results(DATA / "results.json", len(sl), names)
    assert np.array_equal(labels, truth)
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0) and np.all(scores <= 10.0)
    with pytest.raises(BadDataError, match="outside"):
        bs.parse_bundleseg_results(DATA / "results.json", 100, names)


def test_bundleseg_parser_resolves_conflicts(tmp_path):
    res = {"A": {"indices": [0, 1, 2], "scores": [3.0, 1.0, 2.0]},
           "B": {"indices": [0, 1], "scores": [1.5, 4.0]}}
    (tmp_path / "results.json").write_text(json.dumps(res))
    labels, scores = bs.parse_bundleseg_results(tmp_path / "results.json", 4)
    assert labels.tolist() == ["B", "A", "A", common.UNRECOGNIZED]
    assert np.allclose(scores[:3], [1.5, 1.0, 2.0]) and np.isnan(scores[3])
    with pytest.raises(BadDataError, match="unknown bundle"):
        bs.parse_bundleseg_results(tmp_path / "results.json", 4, ["A"])


def test_bundleseg_missing_script(subj1, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(common.MissingToolError, match="scil_tractogram_segment_with_bundleseg"):
        bs.recognize_bundleseg(subj1.streamlines["CST_L"], tmp_path, affine=subj1.affine,
                              shape=subj1.bundle_masks.shape[:3])


def test_bundleseg_atlas_layout_errors(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(Exception, match="exactly one"):
        bs.bundleseg_atlas_paths(tmp_path)
    with pytest.raises(NoInputError, match="sub-folder"):
        bs.bundleseg_atlas_paths(tmp_path, tmp_path / "a.json")


def _scilpy_script():
    exe = os.environ.get("GENTRACT_BUNDLESEG_SCRIPT", bs.BUNDLESEG_SCRIPT)
    return shutil.which(exe)


@pytest.mark.skipif(_scilpy_script() is None, reason="scilpy's BundleSeg script not on PATH "
                    "(set GENTRACT_BUNDLESEG_SCRIPT to its path to run this test)")
def test_bundleseg_real_run(subj1, tmp_path):
    """The whole adapter with the real script: 4 bundles, odd streamlines as the subject-space
    atlas, even ones as the tractogram (identity transform)."""
    names = ["CST_L", "CST_R", "AF_L", "UF_R"]
    atlas = tmp_path / "atlas"
    (atlas / "half").mkdir(parents=True)
    for name in names:
        save_tractogram(atlas / "half" / f"{name}.trk", subj1.streamlines[name][1::2],
                        subj1.affine, subj1.bundle_masks.shape[:3])
    (atlas / "config.json").write_text(json.dumps({f"{n}.trk": 10 for n in names}))
    sl, truth = [], []
    for name in names:
        sl += subj1.streamlines[name][0::2]
        truth += [name] * 50
    res = bs.recognize_bundleseg(sl, atlas, affine=subj1.affine,
                                shape=subj1.bundle_masks.shape[:3], script=_scilpy_script())
    assert min(_recall(res.labels, np.array(truth), names).values()) >= RECALL
    assert res.summary["valid_bundles"] == 4 and res.summary["atlas_method"] == "bundleseg"
