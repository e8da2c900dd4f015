"""Tractogram evaluation: shared tables, sanity metrics, ground-truth scoring, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gentract_bids.evaluation.groundtruth import (GroundTruth, load_groundtruth, score_groundtruth,
                                                  valid_bundle_streamlines, valid_indices)
from gentract_bids.evaluation.metrics import (read_bundlestats_tsv, summarise,
                                              write_bundlestats_tsv, write_metrics_json)
from gentract_bids.evaluation.sanity import pack_streamlines, sanity_metrics, unpack_streamlines
from gentract_bids.phantom.cohort import make_cohort


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=1, voxel_size=3.0,
                       n_truth_streamlines=100)


@pytest.fixture(scope="module")
def gt(cohort) -> GroundTruth:
    return load_groundtruth(cohort, "01")


@pytest.fixture(scope="module")
def truth_scored(gt):
    return score_groundtruth(gt.streamlines, gt)


def random_walks(gt: GroundTruth, n: int = 2000, n_points: int = 60, step: float = 1.5,
                 seed: int = 0) -> list[np.ndarray]:
    """Smooth random walks starting at random brain voxels, turned back when they leave it."""
    rng = np.random.default_rng(seed)
    ijk = np.argwhere(gt.brain_mask)
    aff = gt.affine
    p = ijk[rng.integers(len(ijk), size=n)] @ aff[:3, :3].T + aff[:3, 3]
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    inv = np.linalg.inv(aff)
    shape = np.array(gt.shape)
    out = [p]
    for _ in range(n_points - 1):
        d = d + 0.25 * rng.standard_normal((n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        q = out[-1] + step * d
        v = np.rint(q @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        inside = np.all((v >= 0) & (v < shape), 1)
        inside[inside] = gt.brain_mask[tuple(v[inside].T)]
        d[~inside] *= -1.0
        q[~inside] = out[-1][~inside] + step * d[~inside]
        out.append(q)
    return list(np.stack(out, 1).astype(np.float32))


# ----------------------------------------------------------------------------- ground truth
def test_load_groundtruth(gt):
    nb = len(gt.bundle_names)
    assert nb == 22 and gt.bundle_masks.shape == (*gt.shape, nb)
    assert gt.head_masks.shape == gt.tail_masks.shape == gt.bundle_masks.shape
    assert gt.bundle_masks.dtype == bool and gt.bundle_masks.any(axis=(0, 1, 2)).all()
    assert list(gt.groups) == gt.bundle_names  # TRX groups, ordered like the masks
    assert sum(len(v) for v in gt.groups.values()) == len(gt.streamlines) == 100 * nb
    assert gt.wm.shape == gt.gm.shape == gt.brain_mask.shape == gt.shape
    assert np.allclose(np.abs(np.diag(gt.affine)[:3]), 3.0)


def test_truth_streamlines_are_all_valid(gt, truth_scored):
    labels, s = truth_scored
    nb = len(gt.bundle_names)
    assert s["precision"] == s["vs_ratio"] == 1.0
    assert s["valid_bundles"] == nb and s["n_ic"] == 0 and s["n_nc"] == 0 and s["ib"] == 0
    for name, idx in gt.groups.items():  # each truth streamline gets its own bundle's label
        assert (labels[idx] == name).all()
    assert s["mean_f1"] > 0.85 and s["mean_overlap"] > 0.75 and s["mean_overreach"] < 0.01
    assert all(r["f1"] > 0.8 for r in s["bundles"])
    assert s["density_dice"] == pytest.approx(1.0)
    assert s["density_weighted_dice"] == pytest.approx(1.0)
    idx = valid_indices(labels, gt.bundle_names)
    assert all(np.array_equal(idx[b], gt.groups[b]) for b in gt.bundle_names)


def test_random_walks_score_near_zero(gt):
    walks = random_walks(gt)
    labels, s = score_groundtruth(walks, gt)
    assert s["n_streamlines"] == 2000
    assert s["precision"] < 0.05
    assert s["n_nc"] + s["n_ic"] + s["n_vs"] == 2000
    assert s["density_dice"] < 0.9  # a different density map from the truth's


def test_ic_nc_wpc_and_ib(gt):
    """Hand-made invalid streamlines: two IC between different bundles, a wrong-path connection
    (right head/tail pair, straight line leaving the curved tube) and an NC."""
    sl = {b: gt.bundle_streamlines(b)[0] for b in ("CC_Genu", "CST_R", "UF_L", "CING_R")}

    def line(a, b, n=80):
        return np.linspace(a, b, n).astype(np.float32)

    ic1 = line(sl["CST_R"][0], sl["UF_L"][-1])
    ic2 = line(sl["UF_L"][-1], sl["CST_R"][0])[::-1]  # same pair, reversed
    ic3 = line(sl["CC_Genu"][0], sl["CING_R"][-1])
    wpc = line(sl["CING_R"][0], sl["CING_R"][-1])  # CING is strongly curved
    nc = line(np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 20.0]), 21)
    one_point = sl["CST_R"][:1]
    with_nan = sl["CST_R"].copy()
    with_nan[5] = np.nan
    labels, s = score_groundtruth([ic1, ic2, ic3, wpc, nc, sl["CST_R"], one_point, with_nan], gt)
    assert labels.tolist() == ["IC", "IC", "IC", "IC", "NC", "CST_R", "degenerate", "degenerate"]
    assert s["n_ic"] == 4 and s["n_nc"] == 1 and s["n_wpc"] == 1
    assert s["counts"]["degenerate"] == 2
    assert s["ib"] == 2  # the two repeated pairs count once; the WPC adds no invalid pair
    assert s["precision"] == pytest.approx(1 / 8)
    assert s["is_ratio"] == pytest.approx(7 / 8)
    empty_labels, empty = score_groundtruth([], gt)
    assert empty_labels.size == 0 and empty["precision"] == 0.0 and empty["valid_bundles"] == 0


def test_flipping_changes_nothing(gt):
    rng = np.random.default_rng(3)
    idx = rng.choice(len(gt.streamlines), 400, replace=False)
    mix = [gt.streamlines[i] for i in idx] + random_walks(gt, n=300, seed=1)
    mix.append(np.linspace(gt.bundle_streamlines("AC")[0][0],
                           gt.bundle_streamlines("CST_L")[0][-1], 60).astype(np.float32))
    lab1, s1 = score_groundtruth(mix, gt)
    lab2, s2 = score_groundtruth([s[::-1] for s in mix], gt)
    assert np.array_equal(lab1, lab2)
    assert s1 == s2
    assert 0 < s1["precision"] < 1 and s1["n_ic"] >= 1


def test_missing_bundle_loses_exactly_that_bundle(gt, truth_scored):
    _, full = truth_scored
    missing = "CST_L"
    keep = np.setdiff1d(np.arange(len(gt.streamlines)), gt.groups[missing])
    labels, s = score_groundtruth([gt.streamlines[i] for i in keep], gt)
    assert s["valid_bundles"] == full["valid_bundles"] - 1 == len(gt.bundle_names) - 1
    assert s["precision"] == 1.0
    for r_full, r in zip(full["bundles"], s["bundles"]):
        if r["bundle"] == missing:
            assert r["found"] is False and r["n_streamlines"] == 0 and r["f1"] == 0.0
        else:
            assert r == r_full
    assert s["mean_f1"] == pytest.approx(full["mean_f1"] * (len(gt.bundle_names) - 1)
                                         / len(gt.bundle_names) + 0.0, abs=0.02)


# ----------------------------------------------------------------------------- sanity
def test_sanity_flags_and_lengths(gt):
    c = np.array([0.0, 0.0, 0.0])
    straight = np.stack([np.linspace(-20, 20, 41), np.zeros(41), np.zeros(41)], 1)  # 40 mm
    single = c[None]  # one point: degenerate
    short = np.stack([np.linspace(0, 5, 6), np.zeros(6), np.zeros(6)], 1)  # 5 mm: degenerate
    outside = np.stack([np.linspace(0, 200, 101), np.zeros(101), np.zeros(101)], 1)  # leaves grid
    t = np.linspace(0, 3 * np.pi, 120)  # 1.5 turns of a 10 mm circle: loop by turning
    circle = np.stack([10 * np.cos(t), 10 * np.sin(t), 0.2 * t], 1)
    leg = np.linspace(-15, 15, 31)  # hairpin: 180 deg of turning, but comes back on itself
    hairpin = np.r_[np.stack([leg, np.full(31, 0.2), np.zeros(31)], 1),
                    np.stack([leg[::-1], np.full(31, 1.2), np.zeros(31)], 1)]
    nan = straight.copy()
    nan[3, 1] = np.nan
    sl = [straight, single, short, outside, circle, hairpin, nan]
    flags, m = sanity_metrics(sl, gt.affine, gt.shape, wm_mask=gt.wm, gm_mask=gt.gm,
                              brain_mask=gt.brain_mask)
    assert flags["degenerate"].tolist() == [False, True, True, False, False, False, True]
    assert flags["out_of_volume"].tolist()[:6] == [False, False, False, True, False, False]
    assert flags["loop"].tolist()[:6] == [False, False, False, False, True, True]
    assert flags["sharp_turn"][5] and not flags["sharp_turn"][0]
    assert m["length_mm"]["max"] == pytest.approx(200.0)
    assert m["length_mm"]["min"] == pytest.approx(5.0)
    assert m["n_degenerate"] == 3 and m["n_out_of_volume"] >= 1 and m["n_loop"] >= 2
    # a straight line alone: exact length and step
    _, m1 = sanity_metrics([straight], gt.affine, gt.shape)
    assert m1["length_mm"]["mean"] == pytest.approx(40.0)
    assert m1["mean_step_mm"] == pytest.approx(1.0)
    assert m1["turning_deg"]["max"] == pytest.approx(0.0, abs=1e-3)
    json.dumps(m)  # JSON-able


def test_sanity_on_truth_tractogram(gt):
    flags, m = sanity_metrics(gt.streamlines, gt.affine, gt.shape, wm_mask=gt.wm, gm_mask=gt.gm,
                              brain_mask=gt.brain_mask)
    n = len(gt.streamlines)
    assert m["n_streamlines"] == n and all(f.shape == (n,) for f in flags.values())
    assert m["n_degenerate"] == m["n_out_of_volume"] == 0
    # the phantom's offset streamlines can fold (a cusp: two ~160 deg turns) on the inner side of
    # the tight U-fibre bends; those few are rightly flagged as sharp turns / loops
    assert m["n_loop"] <= 0.005 * n and m["n_sharp_turn"] <= 0.005 * n
    assert m["fraction_points_in_wm"] > 0.7  # tubes are WM; ends reach into the cortex
    assert m["wm_coverage"] > 0.9
    assert 0 < m["fraction_endpoints_in_gm"] <= 1
    assert m["mean_step_mm"] == pytest.approx(1.0, abs=0.05)
    # the ArraySequence path gives the same numbers as the list path
    import nibabel as nib

    _, m2 = sanity_metrics(nib.streamlines.ArraySequence(gt.streamlines), gt.affine, gt.shape,
                           wm_mask=gt.wm, gm_mask=gt.gm, brain_mask=gt.brain_mask)
    assert m2 == m


def test_pack_roundtrip():
    rng = np.random.default_rng(0)
    sl = [rng.standard_normal((k, 3)).astype(np.float32) for k in (3, 1, 7, 2)]
    pk = pack_streamlines(sl)
    assert pk.counts.tolist() == [3, 1, 7, 2] and pk.offsets.tolist() == [0, 3, 4, 11]
    assert all(np.array_equal(a, b) for a, b in zip(sl, unpack_streamlines(pk)))


# ----------------------------------------------------------------------------- shared table
def test_summarise_keys_arithmetic_and_json(tmp_path):
    labels = np.array(["A", "A", "IC", "NC", "B", "degenerate", "A"])
    scores = {"A": {"overlap": 0.5, "overreach": 0.1, "f1": 0.6, "extra_col": 7},
              "B": {"overlap": 0.2, "overreach": 0.3, "f1": 0.3}}
    s = summarise("groundtruth", labels, ["A", "B", "C"], bundle_scores=scores,
                  extra={"n_ic": 1})
    for key in ("mode", "n_streamlines", "precision", "valid_bundles", "n_bundles", "mean_overlap",
                "mean_overreach", "mean_f1", "counts", "bundles"):
        assert key in s
    assert s["n_streamlines"] == 7 and s["precision"] == pytest.approx(4 / 7)
    assert s["valid_bundles"] == 2 and s["n_bundles"] == 3 and s["n_ic"] == 1
    assert s["counts"] == {"IC": 1, "NC": 1, "degenerate": 1, "unrecognized": 0, "valid": 4}
    assert s["mean_f1"] == pytest.approx((0.6 + 0.3 + 0.0) / 3)  # missing C counts as 0
    assert s["mean_overlap"] == pytest.approx(0.7 / 3)
    assert [r["bundle"] for r in s["bundles"]] == ["A", "B", "C"]
    assert [r["n_streamlines"] for r in s["bundles"]] == [3, 1, 0]
    assert [r["found"] for r in s["bundles"]] == [True, True, False]
    assert s["bundles"][0]["extra_col"] == 7 and s["bundles"][2]["f1"] is None
    assert summarise("x", labels, ["A", "B", "C"], min_streamlines=2)["valid_bundles"] == 1
    assert summarise("x", labels, ["A"])["mean_f1"] is None  # no bundle scores
    empty = summarise("x", [], ["A"])
    assert empty["precision"] == 0.0 and empty["n_streamlines"] == 0
    # JSON and TSV round trips
    path = write_metrics_json(s, tmp_path / "m.json")
    assert json.loads(path.read_text()) == s
    rows = read_bundlestats_tsv(write_bundlestats_tsv(s, tmp_path / "b.tsv"))
    header = (tmp_path / "b.tsv").read_text().splitlines()[0].split("\t")
    assert header[:6] == ["bundle", "n_streamlines", "found", "overlap", "overreach", "f1"]
    assert "extra_col" in header
    assert [r["bundle"] for r in rows] == ["A", "B", "C"]
    assert rows[0]["found"] == "true" and rows[2]["f1"] == "n/a"
    assert float(rows[0]["f1"]) == pytest.approx(0.6)


def test_groundtruth_summary_writes(gt, truth_scored, tmp_path):
    _, s = truth_scored
    back = json.loads(write_metrics_json(s, tmp_path / "gt.json").read_text())
    assert back == s
    rows = read_bundlestats_tsv(write_bundlestats_tsv(s, tmp_path / "gt.tsv"))
    assert len(rows) == len(gt.bundle_names)


# ----------------------------------------------------------------------------- figures
def test_figures(gt, truth_scored, tmp_path):
    from matplotlib.image import imread

    from gentract_bids.reports.figures import (plot_bundles, plot_f1_bars,
                                               plot_tractogram_directions)

    labels, s = truth_scored
    by_bundle = valid_bundle_streamlines(gt.streamlines, labels, gt.bundle_names)
    sub = {b: v[:10] for b, v in by_bundle.items()}
    paths = [plot_bundles(sub, tmp_path / "bundles.png"),
             plot_tractogram_directions(gt.streamlines[::10], tmp_path / "dirs.png"),
             plot_f1_bars(s, tmp_path / "f1.png")]
    for p in paths:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(str(p))
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.05  # not blank
    img = imread(str(paths[1]))[..., :3]
    saturated = (img.max(-1) - img.min(-1)) > 0.5  # direction colours are drawn
    assert saturated.mean() > 0.005


# ----------------------------------------------------------------------------- interface
@pytest.mark.parametrize("fmt", ["tck", "trk"])
def test_bundle_files_follow_the_output_format(cohort, gt, tmp_path, fmt):
    """``--output-format tck|trk`` applies to the per-bundle tractograms too (issue 18.4)."""
    import nibabel as nb

    from gentract_bids.interfaces.evaluation import EvaluateTractogram
    from gentract_bids.io.tractogram import load_tractogram, save_tractogram

    ref = tmp_path / "ref.nii.gz"
    nb.save(nb.Nifti1Image(gt.brain_mask.astype(np.uint8), gt.affine), ref)
    trx = save_tractogram(tmp_path / "truth.trx", gt.streamlines, gt.affine, gt.shape)
    node = EvaluateTractogram(tractogram=str(trx), reference=str(ref), mode="groundtruth",
                              subject="01", truth_dir=str(cohort), min_streamlines=2,
                              out_format=fmt)
    node.inputs.mask_file = str(ref)
    res = node.run(cwd=str(tmp_path))
    files = res.outputs.bundle_files
    assert len(files) > 10
    assert {f.rsplit(".", 1)[1] for f in files} == {fmt}
    assert sum(len(load_tractogram(f)[0]) for f in files) > 0


def test_eval_none_scores_nothing_beyond_sanity(cohort, tmp_path):
    """``--eval none`` once failed building the workflow (exit 1, TraitError on the evaluation
    node's mode): it must skip the truth a phantom dataset has, and build."""
    from gentract_bids.cli.parser import parse_args
    from gentract_bids.workflows.base import evaluation_mode
    from gentract_bids.workflows.evaluation import init_evaluation_wf

    base = [str(cohort), str(tmp_path / "out"), "participant", "--tracker", "sdstream"]
    assert evaluation_mode(parse_args(base), "01") == "groundtruth"
    mode = evaluation_mode(parse_args(base + ["--eval", "none"]), "01")
    assert mode == "sanity"
    wf = init_evaluation_wf(mode=mode, subject="01")
    assert wf.get_node("evaluate").inputs.mode == "sanity"

