"""SH rotation, rotation augmentation and the training dataset (subjects, split, batches)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from gentract_bids.errors import NoInputError
from gentract_bids.fodf.csd import make_gtab, fit_csd, peaks_from_sh
from gentract_bids.fodf.grid import canonical_grid, resample_to_grid
from gentract_bids.fodf.rotation import (axis_rotation, rotate_mask, rotate_points,
                                         rotate_sh_coefficients, rotate_sh_volume,
                                         sh_rotation_matrix, sh_to_world_frame)
from gentract_bids.io.tractogram import load_tractogram, save_tractogram
from gentract_bids.phantom.cohort import make_cohort, make_subject
from gentract_bids.train.augment import (IDENTITY, apply_rotation, augmentation_rotations,
                                         augmentation_scalings)
from gentract_bids.train.dataset import (PreparedSubject, TrainingData, compute_canonical_fod,
                                         discover_subjects, find_reference_files,
                                         fod_cache_key, load_reference, prepare_subject,
                                         resample_streamlines, split_subjects, write_split)

R_TEST = axis_rotation("x", 15) @ axis_rotation("z", 30)  # 30 deg about z, then 15 deg about x


def _angles(a, b):
    """Unsigned angles (deg) between rows of a and b (axial: d and -d are the same)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.abs((a * b).sum(-1)), 0, 1)))


# ----------------------------------------------------------------------------- SH rotation
def test_sh_rotation_matrix_properties():
    from dipy.reconst.shm import sph_harm_ind_list

    assert np.allclose(sh_rotation_matrix(np.eye(3), 6), np.eye(28), atol=1e-12)
    r1, r2 = R_TEST, axis_rotation("y", -40) @ axis_rotation("z", 75)
    m1, m2 = sh_rotation_matrix(r1, 6), sh_rotation_matrix(r2, 6)
    assert m1.shape == (28, 28)
    assert np.allclose(m1 @ m1.T, np.eye(28), atol=1e-10)  # orthogonal
    _, degree = sph_harm_ind_list(6)
    assert np.all(m1[degree[:, None] != degree[None, :]] == 0)  # block diagonal by degree
    assert abs(m1[0, 0] - 1) < 1e-12  # l = 0 (the mean) is invariant
    assert not np.allclose(m1[1:6, 1:6], np.eye(5), atol=0.1)  # ... the others do move
    # f -> f(R2^T .) -> f(R2^T R1^T .) = f((R1 R2)^T .)
    assert np.allclose(sh_rotation_matrix(r1 @ r2, 6), m1 @ m2, atol=1e-10)
    assert np.allclose(sh_rotation_matrix(r1.T, 6), m1.T, atol=1e-10)  # inverse
    assert sh_rotation_matrix(R_TEST, 8).shape == (45, 45)
    with pytest.raises(ValueError):
        sh_rotation_matrix(np.diag([1.0, 2.0, 1.0]), 6)


def _sharp_lobe_sh(direction, sh_order=6):
    """SH (non-legacy descoteaux07) of a sharp axially symmetric lobe along ``direction``."""
    from dipy.data import get_sphere
    from dipy.reconst.shm import sf_to_sh

    sphere = get_sphere(name="repulsion724")
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    sf = np.abs(sphere.vertices @ d) ** 40
    return sf_to_sh(sf, sphere, sh_order_max=sh_order, basis_type="descoteaux07", legacy=False)


def _eval_sh(sh, directions):
    """Values (k, n) of the SH functions ``sh`` (k, m) at unit ``directions`` (n, 3)."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    _, theta, phi = cart2sphere(*directions.T)
    B, _, _ = real_sh_descoteaux(6, theta, phi, legacy=False)
    return sh @ B.T


def test_single_fibre_peak_follows_rotation():
    rng = np.random.default_rng(3)
    dirs = rng.standard_normal((6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    sh = np.stack([_sharp_lobe_sh(d) for d in dirs])[:, None, None, :]  # (6, 1, 1, 28)
    rotations = [R_TEST, axis_rotation("y", 45), axis_rotation("z", -30) @ axis_rotation("y", 20)]
    u = rng.standard_normal((50, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    for R in rotations:
        rotated = rotate_sh_coefficients(sh, R)
        # exact: the rotated function at R u equals the original at u
        assert np.allclose(_eval_sh(rotated[:, 0, 0], u @ R.T), _eval_sh(sh[:, 0, 0], u),
                           atol=1e-5)
        peaks, _ = peaks_from_sh(rotated, npeaks=1)
        err = _angles(peaks[:, 0, 0, 0], dirs @ R.T)
        assert err.max() < 5.0, err  # peaks are vertices of repulsion724 (~7 deg apart)
        wrong, _ = peaks_from_sh(rotate_sh_coefficients(sh, R.T), npeaks=1)
        assert np.median(_angles(wrong[:, 0, 0, 0], dirs @ R.T)) > 10.0  # direction matters


def test_sh_to_world_frame_of_a_flipped_grid():
    d = np.array([1.0, 2.0, 0.5])
    sh = _sharp_lobe_sh(d)[None, None, None]
    las = np.diag([-2.0, 2.0, 2.0, 1.0])  # voxel axis i points to world -x
    peaks, _ = peaks_from_sh(sh_to_world_frame(sh, las), npeaks=1)
    assert _angles(peaks[0, 0, 0, 0], d * [-1, 1, 1]) < 3.0
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    assert sh_to_world_frame(sh, ras) is sh


def test_rotate_points_and_augmentation_rotations():
    rots = augmentation_rotations()
    assert len(rots) == 19 and rots[0][0] == IDENTITY and np.allclose(rots[0][1], np.eye(3))
    assert len({n for n, _ in rots}) == 19
    names = dict(rots)
    assert np.allclose(names["z+30"] @ [1.0, 0, 0], [np.cos(np.pi / 6), 0.5, 0])
    assert np.allclose(names["x-45"] @ names["x+45"], np.eye(3))
    assert len(augmentation_rotations((30,), "z")) == 3
    pts = np.array([[10.0, 0, 0], [0, 5, 0]], np.float32)
    out = rotate_points(pts, names["z+30"])
    assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), [10, 5], atol=1e-5)
    assert np.allclose(rotate_points([pts], names["z+30"])[0], out)


def test_linear_map_moves_space_and_reorients_by_its_rotation_part():
    """A non-rotation map A = R S: a blob of fibres at x0 lands at A x0 and its fODF peak turns
    by R only (finite-strain reorientation); points map by A; scalings are named and checked."""
    shape, spacing = (25, 25, 25), 2.0
    affine = np.diag([spacing] * 3 + [1.0])
    affine[:3, 3] = -spacing * (np.asarray(shape) - 1) / 2
    ijk = np.indices(shape).reshape(3, -1).T
    world = ijk * spacing + affine[:3, 3]
    x0, d = np.array([10.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    blob = (np.linalg.norm(world - x0, axis=1) <= 5.0).reshape(shape)
    sh = np.zeros(shape + (28,), np.float32)
    sh[blob] = _sharp_lobe_sh(d)
    R, S = axis_rotation("z", 30), np.diag([1.4, 1.0, 0.8])
    A = R @ S
    out, moved = rotate_sh_volume(sh, affine, A, mask=blob)
    centre = world[moved.reshape(-1)].mean(0)
    assert np.linalg.norm(centre - A @ x0) < spacing, (centre, A @ x0)
    assert np.linalg.norm(centre - R @ x0) > 1.5 * spacing  # the scaling did move it
    hit = tuple(np.rint((A @ x0 - affine[:3, 3]) / spacing).astype(int))
    peak, _ = peaks_from_sh(out[hit][None, None, None], npeaks=1)
    assert _angles(peak[0, 0, 0, 0], R @ d) < 5.0
    assert np.array_equal(rotate_mask(blob, affine, A), moved)
    assert np.allclose(rotate_points(x0[None], A)[0], A @ x0)
    with pytest.raises(ValueError, match="invertible"):
        rotate_points(x0[None], np.diag([1.0, 0.0, 1.0]))

    scalings = augmentation_scalings((0.9, 1.0, 1.1), "xz")
    assert [n for n, _ in scalings] == ["sx0.9", "sx1.1", "sz0.9", "sz1.1"]
    assert np.allclose(dict(scalings)["sz1.1"], np.diag([1.0, 1.0, 1.1]))
    assert augmentation_scalings(()) == []
    with pytest.raises(ValueError):
        augmentation_scalings((0.0,))


# ----------------------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def phantom_fod():
    """A 3 mm phantom subject and its CSD fODF (fitted on the white matter + 1 voxel)."""
    subj = make_subject(1, seed=0, voxel_size=3.0, n_truth_streamlines=100)
    fit_mask = ndimage.binary_dilation(subj.wm > 0, iterations=1) & (subj.brain_mask > 0)
    sh, _ = fit_csd(subj.dwi, make_gtab(subj.bvals, subj.bvecs), fit_mask)
    return subj, sh, fit_mask


def _voxel_directions(streamlines, affine, shape):
    """Per voxel: number of streamline segments and their principal direction (world)."""
    inv = np.linalg.inv(affine)
    tensor = np.zeros(tuple(shape) + (3, 3))
    count = np.zeros(shape, int)
    for sl in streamlines:
        seg = np.diff(sl, axis=0)
        tang = seg / np.linalg.norm(seg, axis=1, keepdims=True)
        ijk = np.rint((sl[1:] + sl[:-1]) / 2 @ inv[:3, :3].T + inv[:3, 3]).astype(int)
        ok = np.all((ijk >= 0) & (ijk < shape), axis=1)
        idx = tuple(ijk[ok].T)
        np.add.at(tensor, idx, tang[ok][:, :, None] * tang[ok][:, None, :])
        np.add.at(count, idx, 1)
    return count, tensor


def test_rotated_fod_peaks_follow_rotated_streamlines(phantom_fod):
    subj, sh, fit_mask = phantom_fod
    affine, shape = subj.affine, sh.shape[:3]
    assert np.allclose(affine @ [*(np.asarray(shape) - 1) / 2, 1], [0, 0, 0, 1])  # centred grid
    R = R_TEST
    all_sl = [s for sls in subj.streamlines.values() for s in sls]
    sh_rot, mask_rot, sl_rot = apply_rotation(sh, fit_mask, affine, all_sl, R)
    # the variant without the per-voxel coefficient rotation: the grid is resampled only
    R4 = np.eye(4)
    R4[:3, :3] = R.T
    sh_moved = resample_to_grid(sh, affine, R4 @ affine, shape, order=1)
    assert np.allclose(rotate_sh_coefficients(sh_moved, R), sh_rot, atol=1e-4)
    assert np.array_equal(mask_rot, rotate_mask(fit_mask, affine, R))

    # voxels whose source voxel (at R^T y) holds a single fibre population, crossed by streamlines
    count, tensor = _voxel_directions(sl_rot, affine, shape)
    ijk = np.indices(shape).reshape(3, -1).astype(float)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inv = np.linalg.inv(affine)
    src = np.rint(inv[:3, :3] @ (R.T @ world) + inv[:3, 3:4]).astype(int)
    ok = np.all((src >= 0) & (src < np.asarray(shape)[:, None]), axis=0)
    frac = subj.peak_fractions
    single = np.zeros(ok.size, bool)
    single[ok] = (frac[..., 0][tuple(src[:, ok])] >= 0.8) & (frac[..., 1][tuple(src[:, ok])] == 0)
    sel = single.reshape(shape) & (count >= 5) & mask_rot
    assert sel.sum() > 1000
    sl_dir = np.linalg.eigh(tensor[sel])[1][:, :, -1]

    peaks, _ = peaks_from_sh(sh_rot, mask=sel, npeaks=1)
    err = _angles(peaks[sel][:, 0], sl_dir)
    assert np.median(err) < 10.0 and (err < 20.0).mean() >= 0.85, (np.median(err),
                                                                   (err < 20).mean())
    peaks_bad, _ = peaks_from_sh(sh_moved, mask=sel, npeaks=1)
    err_bad = _angles(peaks_bad[sel][:, 0], sl_dir)
    assert np.median(err_bad) > 20.0 and (err_bad < 20.0).mean() < 0.5
    assert np.median(err_bad) > 3 * np.median(err)


# ----------------------------------------------------------------------------- discovery
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort") / "bids", n_subjects=2,
                       voxel_size=3.0, n_truth_streamlines=20)


def _write_pyafq(cohort, labels):
    """A pyAFQ-like derivatives folder: one .tck per bundle under sub-XX/dwi/bundles/."""
    root = cohort / "derivatives" / "pyafq"
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "pyAFQ", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "pyAFQ"}]}))
    counts = {}
    for lab in labels:
        truth = cohort / "derivatives" / "phantom-truth" / f"sub-{lab}" / "dwi"
        trx = truth / f"sub-{lab}_space-dwi_model-truth_streamlines.trx"
        sl, groups = load_tractogram(trx)
        img = nib.load(cohort / f"sub-{lab}" / "dwi" / f"sub-{lab}_dwi.nii.gz")
        out = root / f"sub-{lab}" / "dwi" / "bundles"
        out.mkdir(parents=True)
        for name, idx in groups.items():
            save_tractogram(out / (f"sub-{lab}_coordsys-RASMM_trkmethod-probCSD_recogmethod-AFQ_"
                                   f"desc-{name.replace('_', '')}_tractography.tck"),
                            [sl[i] for i in idx], img.affine, img.shape[:3])
        counts[lab] = len(sl)
    return root, counts


def test_discover_subjects_truth_and_pyafq(cohort, caplog):
    sources = discover_subjects(cohort)
    assert [s.label for s in sources] == ["01", "02"]
    for s in sources:
        assert len(s.references) == 1 and s.references[0].endswith("model-truth_streamlines.trx")
        assert s.mask and "desc-brain_mask" in s.mask and s.bval and s.bvec
    truth_counts = {s.label: len(load_reference(s.references)) for s in sources}
    assert truth_counts == {"01": 22 * 20, "02": 22 * 20}

    root, counts = _write_pyafq(cohort, ["01"])
    with caplog.at_level(logging.WARNING, logger="gentract.train"):
        afq = discover_subjects(cohort, root)
    assert [s.label for s in afq] == ["01"]
    assert "sub-02" in caplog.text  # the subject without a reference is named
    assert len(afq[0].references) == 22 and all(r.endswith(".tck") for r in afq[0].references)
    assert len(load_reference(afq[0].references)) == counts["01"] == truth_counts["01"]
    with pytest.raises(NoInputError, match="sub-02"):
        discover_subjects(cohort, root, participant_label=["02"])

    # a whole-brain file (no bundle- entity, not in bundles/) is preferred over per-bundle files
    whole = root / "sub-01" / "dwi" / "sub-01_coordsys-RASMM_trkmethod-probCSD_tractography.tck"
    save_tractogram(whole, load_reference(afq[0].references)[:5], np.eye(4), (10, 10, 10))
    assert find_reference_files(root, "01") == [whole]
    assert len(find_reference_files(root, "01", prefer="bundles")) == 22
    whole.unlink()


def test_compute_canonical_fod_is_cached(cohort, tmp_path):
    source = discover_subjects(cohort, participant_label=["01"])[0]
    img = nib.load(source.dwi)
    box = np.zeros(img.shape[:3], np.uint8)
    c = np.asarray(img.shape[:3]) // 2
    box[c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5, c[2] - 3:c[2] + 5] = 1  # a small slab: fast CSD
    nib.save(nib.Nifti1Image(box, img.affine), tmp_path / "box_mask.nii.gz")
    source = dataclasses.replace(source, mask=str(tmp_path / "box_mask.nii.gz"))
    cfg = {"sh_order": 6, "grid_shape": (40, 48, 40), "grid_spacing": 3.75}
    cache = tmp_path / "cache"
    sh, mask, affine = compute_canonical_fod(source, cfg, cache)
    assert sh.shape == (40, 48, 40, 28) and sh.dtype == np.float32 and mask.shape == (40, 48, 40)
    assert np.allclose(affine, canonical_grid(3.75, (40, 48, 40))[0])
    assert 150 < mask.sum() < 600 and np.all(sh[mask][:, 0] > 0)
    assert np.all(sh[~ndimage.binary_dilation(mask)] == 0)  # trilinear: one voxel of spill
    path = cache / "sub-01_fod.npz"
    assert path.is_file()
    with np.load(path) as z:
        assert str(z["key"]) == fod_cache_key(source, cfg)
        z_sh = z["sh"].copy()
    z_sh[..., 0] += 1.0  # mark the cache: a cache hit returns the marked values
    np.savez(path, sh=z_sh, mask=mask, affine=affine, key=np.array(fod_cache_key(source, cfg)))
    again, _, _ = compute_canonical_fod(source, cfg, cache)
    assert np.array_equal(again, z_sh)
    st = os.stat(source.mask)  # a newer mask file invalidates the cache
    os.utime(source.mask, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    fresh, _, _ = compute_canonical_fod(source, cfg, cache)
    assert np.allclose(fresh, sh, atol=1e-5)
    assert fod_cache_key(source, dict(cfg, sh_order=8)) != fod_cache_key(source, cfg)
    prepared = prepare_subject(source, cfg, n_points=16, cache_dir=cache)
    assert prepared.streamlines.shape == (22 * 20, 16, 3)


# ----------------------------------------------------------------------------- split, streamlines
def test_split_subjects():
    labels = [f"{i:02d}" for i in range(1, 21)]
    a = split_subjects(labels, seed=7)
    assert a == split_subjects(list(reversed(labels)), seed=7)  # deterministic, order-free
    assert [len(a[k]) for k in ("train", "validation", "test")] == [15, 2, 3]
    sets = [set(a[k]) for k in ("train", "validation", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set.union(*sets) == set(labels)
    assert split_subjects(labels, seed=8) != a
    for n, sizes in ((1, [1, 0, 0]), (2, [2, 0, 0]), (3, [3, 0, 0]), (4, [3, 0, 1]),
                     (8, [6, 1, 1])):
        s = split_subjects(labels[:n], seed=0)
        assert [len(s[k]) for k in ("train", "validation", "test")] == sizes
    assert len(split_subjects(labels[:2], (0.0, 0.5, 0.5))["train"]) == 1  # train never empty
    with pytest.raises(ValueError):
        split_subjects(labels, (0.5, 0.2, 0.2))


def test_write_split(tmp_path):
    split = split_subjects(["01", "02", "03", "04"], seed=1)
    path = write_split(tmp_path / "run" / "split.json", split)
    assert json.loads(path.read_text()) == split


def test_resample_streamlines():
    t = np.linspace(0, 1, 50)[:, None]
    curved = np.hstack([40 * t, 10 * np.sin(3 * t), np.zeros_like(t)])
    line = np.array([[0, 0, 0], [0, 0, 30.0]])
    out = resample_streamlines([curved, np.zeros((1, 3)), line], 16)
    assert out.shape == (2, 16, 3) and out.dtype == np.float32  # the 1-point one is dropped
    assert np.allclose(out[0, [0, -1]], curved[[0, -1]], atol=1e-5)
    assert np.allclose(out[1, [0, -1]], line, atol=1e-5)
    seg = np.linalg.norm(np.diff(out[0], axis=0), axis=1)
    assert seg.std() / seg.mean() < 0.02  # equally spaced along the curve
    assert resample_streamlines([], 8).shape == (0, 8, 3)


# ----------------------------------------------------------------------------- TrainingData
def _prepared(label, seed, phantom_subject, shape=(24, 28, 24), spacing=6.0):
    """A small synthetic subject on a centred grid with the phantom's truth streamlines."""
    rng = np.random.default_rng(seed)
    affine, shape = canonical_grid(spacing, shape)
    x, y, z = np.indices(shape)
    mask = ((x - 11.5) / 10) ** 2 + ((y - 13.5) / 12) ** 2 + ((z - 11.5) / 10) ** 2 < 1
    sh = rng.normal(seed, 1 + seed, shape + (28,)).astype(np.float32) * mask[..., None]
    sl = [s for sls in phantom_subject.streamlines.values() for s in sls][seed::2]
    return PreparedSubject(label, sh, mask, resample_streamlines(sl, 12), affine)


@pytest.fixture(scope="module")
def training_data(phantom_fod):
    subj = phantom_fod[0]
    subs = [_prepared("01", 0, subj), _prepared("02", 1, subj), _prepared("03", 2, subj)]
    data = TrainingData(subs)
    data.fit_statistics(["01", "02"])
    return data, subs


def test_pooled_statistics_and_bounds(training_data):
    data, subs = training_data
    vox = np.concatenate([subs[0].sh_raw[subs[0].mask], subs[1].sh_raw[subs[1].mask]]).astype(
        np.float64)
    assert np.allclose(data.mean, vox.mean(0), atol=1e-9)
    assert np.allclose(data.std, vox.std(0), rtol=1e-7)
    pts = np.concatenate([subs[0].streamlines, subs[1].streamlines]).reshape(-1, 3)
    rotated = np.concatenate([pts @ R.T for _, R in augmentation_rotations()])
    assert np.allclose(data.lo, rotated.min(0) - 2.0, atol=1e-4)
    assert np.allclose(data.hi, rotated.max(0) + 2.0, atol=1e-4)
    plain = TrainingData(subs).fit_statistics(["01"], rotations=[], margin_mm=0.0)
    assert np.allclose(plain["coord_bounds"]["lo"], subs[0].streamlines.reshape(-1, 3).min(0))
    json.dumps(data.statistics())  # plain lists for the checkpoint


def test_pairs_volumes_and_batches(training_data):
    data, subs = training_data
    rots = augmentation_rotations()
    pairs = data.choose_pairs(["01", "02"], rots, per_subject=3, seed=5)
    assert len(pairs) == 8 and pairs[0] == ("01", IDENTITY) and pairs[4] == ("02", IDENTITY)
    assert pairs == TrainingData(subs).choose_pairs(["01", "02"], rots, 3, seed=5)
    assert pairs[:4] == TrainingData(subs).choose_pairs(["01"], rots, 3, seed=5)
    assert data.choose_pairs(["03"], rots, 0) == [("03", IDENTITY)]
    assert len(data.prepare_rotations(rots, ["03"])) == 19
    assert set(pairs) <= set(data.pairs)

    ident = data.volume(("01", IDENTITY))
    assert tuple(ident.shape) == (28, 24, 28, 24) and str(ident.dtype) == "torch.float32"
    m = subs[0].mask
    assert np.allclose(ident.numpy()[:, m].mean(1), (subs[0].sh_raw[m].mean(0) - data.mean)
                       / data.std, atol=1e-4)
    pair = pairs[1]
    vol = data.volume(pair).numpy()
    mask = data.mask(pair)
    assert np.all(vol[:, ~mask] == 0) and mask.sum() > 0.8 * m.sum()
    expect, _ = rotate_sh_volume(subs[0].sh_raw, subs[0].affine, data.rotation(pair), mask=m)
    expect = (expect[mask] - data.mean) / data.std
    assert np.allclose(vol[:, mask].T, expect, atol=1e-4)
    assert data.volume(pair) is data.volume(pair)  # kept

    sl = data.streamlines(pair)
    assert np.allclose(sl, subs[0].streamlines @ data.rotation(pair).T.astype(np.float32),
                       atol=1e-4)
    unit = data.streamlines_unit(pair)
    b1 = data.sample_batch(pair, 300, np.random.default_rng(11))
    b2 = data.sample_batch(pair, 300, np.random.default_rng(11))
    assert b1.shape == (300, 12, 3) and b1.dtype == np.float32 and np.array_equal(b1, b2)
    assert b1.min() >= -1.0 and b1.max() <= 1.0
    # every row is a streamline of the pair, in one orientation or the other; both occur
    fwd = np.abs(b1[:, None] - unit[None]).max(axis=(2, 3)).min(1) < 1e-6
    rev = np.abs(b1[:, None] - unit[None, :, ::-1]).max(axis=(2, 3)).min(1) < 1e-6
    assert np.all(fwd | rev) and 0.3 < rev.mean() < 0.7
    for p in data.pairs:  # all 45° rotations stay within the fitted bounds
        u = data.streamlines_unit(p)
        assert np.abs(u).max() <= 1.0
    with pytest.raises(RuntimeError):
        TrainingData(subs).volume(("01", IDENTITY))
