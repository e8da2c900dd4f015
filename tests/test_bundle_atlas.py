"""--bundle-atlas: TractSeg-layout atlas recognition in template space, mapped by the registration.

A tiny synthetic TractSeg-layout folder is written per test module: bundle ``X`` (a bar along x)
and ``Y`` (a bar along y, elsewhere), each with begin/end caps, plus ``X_part``: X's bar with a
gap in its mask and the same caps (for the inside-fraction tie-break).
"""

from __future__ import annotations

import shutil
from dataclasses import fields

import nibabel as nib
import numpy as np
import pytest

from gentract_bids.cli.parser import parse_args
from gentract_bids.config import Evaluation
from gentract_bids.errors import BadDataError, NoInputError, UsageError
from gentract_bids.evaluation.evaluate import evaluate_tractogram
from gentract_bids.evaluation.recognition import endings as E
from gentract_bids.evaluation.recognition.common import UNRECOGNIZED
from gentract_bids.registration.xfm import write_xfm

VOX = 2.0
SHAPE = (24, 24, 24)
AFFINE = np.array([[VOX, 0, 0, -24.0], [0, VOX, 0, -24.0], [0, 0, VOX, -24.0], [0, 0, 0, 1]])


def _world(ijk):
    return np.asarray(ijk, float) @ AFFINE[:3, :3].T + AFFINE[:3, 3]


def _line(a, b, n=30):
    return _world(np.linspace(a, b, n))


def _write_atlas(root):
    masks, begins, ends = {}, {}, {}
    z = np.zeros(SHAPE, np.uint8)
    x = z.copy(); x[4:20, 11:13, 11:13] = 1  # noqa: E702
    xb = z.copy(); xb[4:6, 11:13, 11:13] = 1  # noqa: E702
    xe = z.copy(); xe[18:20, 11:13, 11:13] = 1  # noqa: E702
    y = z.copy(); y[5:7, 4:20, 4:6] = 1  # noqa: E702
    yb = z.copy(); yb[5:7, 4:6, 4:6] = 1  # noqa: E702
    ye = z.copy(); ye[5:7, 18:20, 4:6] = 1  # noqa: E702
    xp = x.copy(); xp[11:13] = 0  # noqa: E702
    masks.update(X=x, Y=y, X_part=xp)
    begins.update(X=xb, Y=yb, X_part=xb)
    ends.update(X=xe, Y=ye, X_part=xe)
    (root / E.BUNDLE_DIR).mkdir(parents=True)
    (root / E.ENDINGS_DIR).mkdir()
    for name in masks:
        nib.save(nib.Nifti1Image(masks[name], AFFINE), str(root / E.BUNDLE_DIR / f"{name}.nii.gz"))
        for suf, vol in (("_b", begins[name]), ("_e", ends[name])):
            nib.save(nib.Nifti1Image(vol, AFFINE),
                     str(root / E.ENDINGS_DIR / f"{name}{suf}.nii.gz"))
    return root


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    return _write_atlas(tmp_path_factory.mktemp("bundle_atlas") / "atlas")


@pytest.fixture(scope="module")
def atlas(atlas_dir):
    return E.load_bundle_atlas(atlas_dir)


X_SL = _line([4.5, 11.5, 11.5], [19, 11.6, 11.4])
Y_SL = _line([5.5, 4.2, 4.5], [5.6, 19.3, 4.5])
TOL = {"ending_dilation_mm": 2.0, "mask_dilation_mm": 0.0, "min_inside": 0.9}


def _recognise(atlas, sl, matrix=None, **kw):
    return E.recognize_endings(sl, atlas, matrix, affine=AFFINE, shape=SHAPE, **{**TOL, **kw})


def test_load_reads_layout(atlas):
    assert atlas.names == ["X", "X_part", "Y"]
    assert atlas.masks["X"].sum() == 16 * 4 and atlas.begins["Y"].sum() == 8
    np.testing.assert_allclose(atlas.affine, AFFINE)


def test_known_streamlines_assigned_and_either_order(atlas):
    r = _recognise(atlas, [X_SL, Y_SL, X_SL[::-1], Y_SL[::-1]])
    # X beats X_part (larger inside fraction) although X_part shares its caps
    assert r.labels.tolist() == ["X", "Y", "X", "Y"]
    assert r.flipped.tolist() == [False, False, True, True]
    np.testing.assert_allclose(r.scores, 1.0)
    assert r.summary["precision"] == 1.0 and r.summary["atlas_method"] == "bundle_atlas"
    assert set(r.bundles([X_SL, Y_SL, X_SL[::-1], Y_SL[::-1]])) == {"X", "Y"}


def test_inside_fraction_and_endings_reject(atlas):
    # both ends in X's caps, but bowing 10 voxels away from the bar: mostly outside the mask
    t = np.linspace(0, 1, 30)[:, None]
    bow = _world(np.array([4.5, 11.5, 11.5]) + t * [14.5, 0, 0] + np.sin(np.pi * t) * [0, 10, 0])
    short = _line([4.5, 11.5, 11.5], [12, 11.5, 11.5])  # ends mid-bundle
    r = _recognise(atlas, [bow, short])
    assert r.labels.tolist() == [UNRECOGNIZED, UNRECOGNIZED]
    # the rules that rejected them: no inside-fraction requirement / wide enough caps
    assert _recognise(atlas, [bow], min_inside=0.0).labels[0] == "X"
    assert _recognise(atlas, [short], ending_dilation_mm=14.0).labels[0] == "X"


def test_translated_atlas_recognises_translated_streamlines(atlas):
    a = np.eye(4)
    a[:3, 3] = [8.0, -6.0, 4.0]  # template mm -> subject mm (whole voxels)
    moved = [X_SL + a[:3, 3], Y_SL + a[:3, 3]]
    assert _recognise(atlas, moved, a).labels.tolist() == ["X", "Y"]
    assert _recognise(atlas, moved).labels.tolist() == [UNRECOGNIZED, UNRECOGNIZED]
    assert _recognise(atlas, [X_SL, Y_SL], a).labels.tolist() == [UNRECOGNIZED, UNRECOGNIZED]
    # a rotation by 90 deg about z (template -> subject) maps the X bar onto subject's y axis
    rot = np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    rotated = X_SL @ rot[:3, :3].T
    assert _recognise(atlas, [rotated], rot).labels[0] == "X"


def test_atlas_on_subject_grid_moves_the_volume(atlas):
    a = np.eye(4)
    a[:3, 3] = [4.0, 0, 0]  # two voxels along i
    moved = E.atlas_on_subject_grid(atlas.masks["X"], atlas.affine, a, AFFINE, SHAPE)
    np.testing.assert_array_equal(moved[6:22], atlas.masks["X"][4:20])
    assert not moved[:6].any()


def test_evaluate_reads_xfm(atlas_dir, tmp_path):
    a = np.eye(4)
    a[:3, 3] = [8.0, -6.0, 4.0]
    xfm = write_xfm(tmp_path / "xfm.txt", a)
    sl = [X_SL + a[:3, 3], Y_SL + a[:3, 3], _line([1, 1, 1], [2, 20, 3])]
    ev = evaluate_tractogram(sl, AFFINE, SHAPE, mode="atlas", bundle_atlas=str(atlas_dir),
                             xfm_file=str(xfm), bundle_tolerances=TOL, min_streamlines=1)
    assert ev.labels.tolist() == ["X", "Y", UNRECOGNIZED]
    assert ev.summary["valid_bundles"] == 2 and set(ev.bundles) == {"X", "Y"}
    with pytest.raises(UsageError, match="registration"):
        evaluate_tractogram(sl, AFFINE, SHAPE, mode="atlas", bundle_atlas=str(atlas_dir))


def test_malformed_folders(atlas_dir, tmp_path):
    with pytest.raises(NoInputError):
        E.load_bundle_atlas(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(atlas_dir / E.BUNDLE_DIR, bad / E.BUNDLE_DIR)
    with pytest.raises(BadDataError, match="endings_segmentations/.*TractSeg-layout"):
        E.load_bundle_atlas(bad)
    shutil.copytree(atlas_dir / E.ENDINGS_DIR, bad / E.ENDINGS_DIR)
    (bad / E.ENDINGS_DIR / "Y_e.nii.gz").unlink()
    with pytest.raises(BadDataError, match="Y_e"):
        E.load_bundle_atlas(bad)
    assert E.load_bundle_atlas(bad, bundles=["X"]).names == ["X"]
    other = tmp_path / "other"
    _write_atlas(other)
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), AFFINE),
             str(other / E.BUNDLE_DIR / "X.nii.gz"))
    with pytest.raises(BadDataError, match="grid"):
        E.load_bundle_atlas(other)


def test_cli_option(atlas_dir, tmp_path):
    base = [str(tmp_path), str(tmp_path / "out"), "participant", "--tracker", "sdstream"]
    cfg = parse_args(base + ["--eval", "atlas", "--bundle-atlas", str(atlas_dir),
                             "--bundle-ending-dilation", "3"])
    assert cfg.evaluation.bundle_atlas == atlas_dir.resolve()
    assert cfg.evaluation.bundle_ending_dilation_mm == 3.0
    with pytest.raises(UsageError, match="--bundle-atlas"):
        parse_args(base + ["--bundle-atlas", str(tmp_path / "missing")])
    with pytest.raises(UsageError, match="--bundle-min-inside"):
        parse_args(base + ["--bundle-atlas", str(atlas_dir), "--bundle-min-inside", "1.5"])
    with pytest.raises(UsageError, match="--bundle-atlas"):
        parse_args(base + ["--eval", "atlas"])


def test_config_defaults_match_the_recogniser():
    d = {f.name: f.default for f in fields(Evaluation)}
    assert d["bundle_ending_dilation_mm"] == E.ENDING_DILATION_MM
    assert d["bundle_mask_dilation_mm"] == E.MASK_DILATION_MM
    assert d["bundle_min_inside"] == E.MIN_INSIDE


def test_workflow_passes_xfm_only_with_a_bundle_atlas(atlas_dir):
    from gentract_bids.workflows.evaluation import init_evaluation_wf

    wf = init_evaluation_wf(mode="atlas", subject="01", bundle_atlas=str(atlas_dir),
                            bundle_tolerances={"min_inside": 0.5})
    ev = wf.get_node("evaluate")
    assert ev.inputs.bundle_atlas == str(atlas_dir) and ev.inputs.bundle_min_inside == 0.5
    assert ("inputnode", "evaluate") in {(u.name, v.name) for u, v in wf._graph.edges()}
    edges = wf._graph.get_edge_data(wf.get_node("inputnode"), ev)["connect"]
    assert ("xfm_file", "xfm_file") in edges
    plain = init_evaluation_wf(mode="sanity", subject="01", bundle_atlas=str(atlas_dir))
    edges = plain._graph.get_edge_data(plain.get_node("inputnode"),
                                       plain.get_node("evaluate"))["connect"]
    assert ("xfm_file", "xfm_file") not in edges and "xfm_file" in \
        plain.get_node("inputnode").inputs.copyable_trait_names()
