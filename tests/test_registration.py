"""Registration to the model's template: the transform file, the resampling with reorientation,
the affine registration itself and the template a checkpoint carries."""

from __future__ import annotations

import numpy as np
import pytest

from gentract_bids.fodf.grid import canonical_grid, resample_to_grid, to_canonical
from gentract_bids.fodf.rotation import axis_rotation
from gentract_bids.registration.affine import (RegistrationError, axes_start, mask_dice,
                                               rotation_degrees,
                                               register_to_template)
from gentract_bids.registration.template import (ModelTemplate, grid_around, load_template,
                                                 model_to_subject)
from gentract_bids.registration.xfm import apply_to_points, read_xfm, write_xfm


def _affine(R=np.eye(3), t=(0, 0, 0), scale=1.0):
    m = np.eye(4)
    m[:3, :3] = np.asarray(R) * scale
    m[:3, 3] = t
    return m


def test_xfm_file_is_itk_lps_and_round_trips(tmp_path):
    m = _affine(axis_rotation("z", 12) @ axis_rotation("x", -7), (4.0, -11.0, 23.5), 1.04)
    path = write_xfm(tmp_path / "x.txt", m)
    text = path.read_text().splitlines()
    assert text[0] == "#Insight Transform File V1.0"
    # ITK stores the map in LPS: diag(-1, -1, 1) M diag(-1, -1, 1)
    params = np.array(next(t for t in text if t.startswith("Parameters:")).split()[1:], float)
    flip = np.diag([-1.0, -1.0, 1.0])
    lps = flip @ m[:3, :3] @ flip
    assert np.allclose(params[:9].reshape(3, 3), lps, atol=1e-5)
    assert np.allclose(params[9:], flip @ m[:3, 3], atol=1e-4)
    assert np.allclose(read_xfm(path), m, atol=1e-5)
    pts = np.array([[1.0, 2.0, 3.0], [-40.0, 10.0, 5.0]])
    assert np.allclose(apply_to_points(m, pts), pts @ m[:3, :3].T + m[:3, 3])


def _single_fibre_sh(shape, direction, sh_order=6):
    """An SH volume whose every voxel holds one fibre along ``direction`` (voxel = world frame)."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    from gentract_bids.fodf.rotation import _basis_on_sphere

    verts, _, pinv = _basis_on_sphere(sh_order)
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    sf = np.abs(verts @ d) ** 20  # a sharp lobe along +-d
    coef = pinv @ sf
    _ = (cart2sphere, real_sh_descoteaux)
    return np.broadcast_to(coef, tuple(shape) + coef.shape).astype(np.float32).copy()


def _peak(coef):
    from gentract_bids.fodf.rotation import _basis_on_sphere

    verts, B, _ = _basis_on_sphere(6)
    return verts[np.argmax(B @ coef)]


def test_to_canonical_through_a_map_moves_and_reorients():
    # subject: a 60 mm cube of fibres along x (RAS grid, 2 mm), a marker blob at a known place
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -40
    shape = (41, 41, 41)
    sh = _single_fibre_sh(shape, (1, 0, 0))
    mask = np.zeros(shape, bool)
    mask[5:36, 5:36, 5:36] = True
    blob = (10, 30, 20)  # voxel -> world (-20, 20, 0)
    sh[blob][0] *= 3.0
    R = axis_rotation("z", 30)
    to_subject = _affine(R, (6.0, -4.0, 2.0))  # model -> subject: rotate 30 deg, then shift
    c_sh, c_mask, c_aff = to_canonical(sh, aff, mask, spacing=2.0, shape=(48, 48, 48),
                                       to_subject=to_subject)
    # the fibre along x in the subject is along R^T x in model coordinates
    centre = tuple(s // 2 for s in c_mask.shape)
    assert c_mask[centre]
    got = _peak(c_sh[centre].astype(float))
    want = R.T @ np.array([1.0, 0, 0])
    assert abs(abs(got @ want) - 1) < 0.01
    # the marker: brightest voxel of the l=0 coefficient is at inverse(to_subject) of its world
    world = aff[:3, :3] @ np.array(blob) + aff[:3, 3]
    inv = np.linalg.inv(to_subject)
    model = inv[:3, :3] @ world + inv[:3, 3]
    ijk = np.unravel_index(np.argmax(c_sh[..., 0]), c_mask.shape)
    assert np.linalg.norm(c_aff[:3, :3] @ np.array(ijk) + c_aff[:3, 3] - model) <= 2.0 * 1.5
    # without a map: the same as before (world placement, no reorientation)
    plain, _, _ = to_canonical(sh, aff, mask, spacing=2.0, shape=(48, 48, 48))
    assert abs(abs(_peak(plain[centre].astype(float))[0]) - 1) < 0.01


def _phantom_fa(shape, affine):
    """A brain-like FA image in world mm: an ellipsoid with an off-centre tract and a cross bar
    (asymmetric, so rotations and flips are identifiable)."""
    ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    x = ijk @ affine[:3, :3].T + affine[:3, 3]
    r = ((x / np.array([60.0, 75.0, 55.0])) ** 2).sum(1)
    fa = np.where(r < 1, 0.15, 0.0)
    fa += 0.6 * np.exp(-(((x[:, 0] - 15) ** 2 + (x[:, 2] - 10) ** 2) / 60.0)) * (r < 1)
    fa += 0.5 * np.exp(-(((x[:, 1] + 25) ** 2 + (x[:, 2] + 5) ** 2) / 40.0)) * (r < 0.8)
    fa += 0.4 * np.exp(-((x[:, 0] + 20) ** 2 + (x[:, 1] - 30) ** 2 + x[:, 2] ** 2) / 150.0)
    return fa.reshape(shape).astype(np.float32), (r < 1).reshape(shape)


def test_affine_registration_recovers_a_known_pose():
    t_aff, t_shape = canonical_grid(3.75, (40, 48, 40))
    fa, mask = _phantom_fa(t_shape, t_aff)
    template = ModelTemplate(fa, mask, t_aff, "testspace")
    # the subject is the template moved by a known map, stored LPS at 3 mm
    true = _affine(axis_rotation("x", 10) @ axis_rotation("z", -8), (12.0, -9.0, 15.0), 1.05)
    s_aff = np.diag([-3.0, -3.0, 3.0, 1.0])
    s_aff[:3, 3] = [90, 110, -80]
    s_shape = (60, 74, 56)
    s_fa = resample_to_grid(fa, true @ t_aff, s_aff, s_shape, order=1)
    s_mask = resample_to_grid(mask.astype(np.uint8), true @ t_aff, s_aff, s_shape, order=0) > 0
    reg = register_to_template(s_fa, s_aff, s_mask, template)
    pts = np.argwhere(mask) @ t_aff[:3, :3].T + t_aff[:3, 3]
    err = np.linalg.norm(apply_to_points(reg.matrix, pts) - apply_to_points(true, pts), axis=1)
    assert err.mean() < 2.5, err.mean()  # 2/3 of the template's 3.75 mm voxel
    start = np.linalg.norm(pts - apply_to_points(true, pts), axis=1).mean()
    assert start > 15  # the pose was far from the identity
    assert reg.dice > 0.9
    info = reg.as_dict()
    assert info["BrainMaskDice"] == round(reg.dice, 4) and info["Seconds"] > 0
    # a registration whose overlap stays below the threshold is refused with a readable message
    with pytest.raises(RegistrationError, match="Dice"):
        register_to_template(s_fa, s_aff, s_mask, template, min_dice=0.999,
                             level_iters=(5, 0, 0))


def test_principal_axes_start_finds_the_rotation_of_an_elongated_brain():
    """The rigid stage's second start: an ellipsoid (semi-axes 70, 85, 55 mm, as a brain) rotated
    by 20 degrees and moved is found within 2 degrees and 1 mm; a sphere (no axes) gives none."""
    aff, shape = canonical_grid(2.5, (80, 80, 80))
    ijk = np.indices(shape).reshape(3, -1).T
    x = ijk @ aff[:3, :3].T + aff[:3, 3]
    mask = (((x / [70.0, 85.0, 55.0]) ** 2).sum(1) < 1).reshape(shape)
    rot = axis_rotation("x", 12) @ axis_rotation("y", -9) @ axis_rotation("z", 11)
    true = _affine(rot, (6.0, -4.0, 9.0), 1.0)
    moved = resample_to_grid(mask.astype(np.uint8), true @ aff, aff, shape, order=0) > 0
    start = axes_start(mask, aff, moved, aff)
    angle = rotation_degrees(start[:3, :3] @ rot.T)
    assert angle < 2.0, angle
    assert np.abs(start[:3, 3] - true[:3, 3]).max() < 1.0
    sphere = ((x ** 2).sum(1) < 60.0 ** 2).reshape(shape)
    rotated = resample_to_grid(sphere.astype(np.uint8), true @ aff, aff, shape, order=0) > 0
    found = axes_start(sphere, aff, rotated, aff)
    assert found is None or np.abs(found[:3, 3] - true[:3, 3]).max() < 1.0


def test_mask_dice_is_one_for_the_true_map():
    t_aff, t_shape = canonical_grid(4.0, (24, 24, 24))
    m = np.zeros(t_shape, bool)
    m[6:18, 5:19, 7:17] = True
    true = _affine(axis_rotation("y", 90), (5.0, 0, 0))
    s_aff = np.diag([4.0, 4.0, 4.0, 1.0])
    s_aff[:3, 3] = -50
    s_shape = (26, 26, 26)
    s_mask = resample_to_grid(m.astype(np.uint8), true @ t_aff, s_aff, s_shape, order=0) > 0
    assert mask_dice(m, t_aff, s_mask, s_aff, true) == pytest.approx(1.0)
    assert mask_dice(m, t_aff, s_mask, s_aff, np.eye(4)) < 0.9


def test_template_grid_placement_and_round_trip(tmp_path):
    from gentract_bids.phantom.atlas import load_atlas
    from gentract_bids.registration.template import template_from_atlas

    atlas = load_atlas()
    with pytest.raises(ValueError, match="does not cover the template brain"):
        template_from_atlas(atlas, shape=(80, 96, 80))  # MNI brains are bigger than that box
    tpl = template_from_atlas(atlas, shape=(80, 112, 96))
    assert tpl.mask.sum() > 0.5 * atlas.brain.sum() * (2.5 / 1.875) ** 3
    # the grid is centred on the brain, not on the MNI origin (its centre lies ~15 mm posterior)
    assert tpl.origin[1] < -10
    m2t = tpl.model_to_template()
    assert np.allclose(m2t[:3, 3], tpl.origin)
    assert np.allclose(model_to_subject(tpl, None), m2t)
    tpl.save(tmp_path / "t.nii.gz")
    back = load_template(tmp_path / "t.nii.gz", tpl.space)
    assert np.array_equal(back.mask, tpl.mask) and np.allclose(back.fa, tpl.fa)
    assert np.allclose(back.affine, tpl.affine)
    with pytest.raises(ValueError, match="does not cover"):
        grid_around(np.array([[-100.0, 0, 0], [100.0, 0, 0]]), 2.0, (50, 50, 50))


def _tangent_agreement(sh, affine, streamlines, max_points=4000, seed=0):
    """Median angle (deg) between the streamlines' tangents and the closest of the fODF's peaks
    in the voxels they cross (both in the grid's world frame)."""
    from gentract_bids.fodf.csd import peaks_from_sh

    pts = np.concatenate([(s[1:] + s[:-1]) / 2 for s in streamlines])
    tan = np.concatenate([np.diff(s, axis=0) for s in streamlines])
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    pick = np.random.default_rng(seed).choice(len(pts), min(max_points, len(pts)), replace=False)
    inv = np.linalg.inv(affine)
    ijk = np.round(pts[pick] @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(sh.shape[:3])), axis=1)
    ijk, t = ijk[inside], tan[pick][inside]
    uniq, back = np.unique(ijk, axis=0, return_inverse=True)
    vol = np.zeros((len(uniq), 1, 1, sh.shape[-1]), np.float32)
    vol[:, 0, 0] = sh[tuple(uniq.T)]
    dirs, vals = peaks_from_sh(vol)
    d = dirs[:, 0, 0][back.ravel()]  # (n, 3 peaks, 3); the grid is RAS-aligned: frame = world
    cos = np.abs(np.einsum("npk,nk->np", d, t)).max(1)
    ok = vals[:, 0, 0, 0][back.ravel()] > 0
    return float(np.degrees(np.arccos(np.clip(np.median(cos[ok]), 0, 1))))


@pytest.mark.slow
def test_human_phantom_comes_into_the_model_space_aligned(tmp_path):
    """A human phantom stored LPS with a 17-degree head rotation: after registration the canonical
    fODF and the truth streamlines (both mapped into the model's space by the training path) agree
    in place and direction; without the fODF reorientation they agree much less."""
    from gentract_bids.phantom.atlas import load_atlas
    from gentract_bids.phantom.cohort import make_cohort
    from gentract_bids.registration.template import template_from_atlas
    from gentract_bids.train.dataset import discover_subjects, prepare_subject

    bids = make_cohort(tmp_path / "bids", seed=7, voxel_size=2.5, anatomy_kind="human",
                       bundles=["CST_left", "CC_4", "AF_right", "IFO_left", "OR_left"],
                       human_poses=[{"index": 1, "storage": "LPS", "angles": [10, -10, 10]}])
    source = discover_subjects(bids)[0]
    template = template_from_atlas(load_atlas(), shape=(80, 112, 96))
    cfg = {"grid_shape": [80, 112, 96]}
    prep = prepare_subject(source, cfg, n_points=32, cache_dir=tmp_path / "cache",
                           template=template)
    # the streamlines now lie in the template brain (model coordinates)
    tm = np.asarray(template.mask)
    inv = np.linalg.inv(prep.affine)
    pts = prep.streamlines.reshape(-1, 3)
    ijk = np.clip(np.round(pts @ inv[:3, :3].T + inv[:3, 3]).astype(int), 0,
                  np.array(tm.shape) - 1)
    assert tm[tuple(ijk.T)].mean() > 0.97
    aligned = _tangent_agreement(prep.sh_raw, prep.affine, list(prep.streamlines))
    # the same resampling without reorienting the fODFs
    from gentract_bids.fodf.csd import fit_csd
    from gentract_bids.fodf.grid import to_canonical
    from gentract_bids.registration.template import model_to_subject
    from gentract_bids.train.dataset import _read_subject, subject_registration

    to_subject = model_to_subject(template, subject_registration(source, template,
                                                                 tmp_path / "cache"))
    dwi, gtab, mask = _read_subject(source)
    sh, _ = fit_csd(dwi.data, gtab, mask, sh_order=6)
    unrot, _, _ = to_canonical(sh, dwi.affine, mask, spacing=1.875, shape=(80, 112, 96),
                               to_subject=to_subject, reorient=False)
    plain = _tangent_agreement(unrot, prep.affine, list(prep.streamlines))
    print(f"median tangent-peak angle: {aligned:.1f} deg reoriented, {plain:.1f} deg not")
    assert aligned < 12.0
    assert plain > aligned + 5.0


def test_mrtrix_reads_the_transform_as_written(tmp_path):
    """MRtrix3's own ITK import (a reader nobody here wrote) gives back the RAS matrix."""
    import shutil
    import subprocess

    if not shutil.which("transformconvert"):
        pytest.skip("MRtrix3 is not installed")
    m = _affine(axis_rotation("y", -14) @ axis_rotation("z", 9), (-23.0, 8.5, 12.0), 0.95)
    write_xfm(tmp_path / "x.txt", m)
    subprocess.run(["transformconvert", str(tmp_path / "x.txt"), "itk_import",
                    str(tmp_path / "mrtrix.txt"), "-quiet", "-force"], check=True)
    rows = [r for r in (tmp_path / "mrtrix.txt").read_text().splitlines() if not r.startswith("#")]
    got = np.array([[float(v) for v in r.split()] for r in rows if r.strip()])
    assert np.allclose(got[:3], m[:3], atol=1e-4)


@pytest.mark.slow
def test_failed_registration_stops_the_series_cleanly(tmp_path, capsys):
    """A registration below the overlap threshold: exit 1, one readable line naming the series,
    the template and the Dice, and nothing of the series in the output."""
    from gentract_bids.cli.run import main
    from gentract_bids.phantom.cohort import make_cohort

    bids = make_cohort(tmp_path / "bids", n_subjects=1, seed=3, voxel_size=4.0, n_dirs=30)
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(tmp_path / "work"),
                 "--n-streamlines", "50", "--min-registration-dice", "0.999"])
    err = capsys.readouterr().err
    assert code == 1
    assert "registration to the model's phantomTubes template failed" in err
    assert "Dice" in err and "sub-01" in err
    assert "Traceback" not in err
    assert not list(out.glob("sub-01/**/*.*")) if out.exists() else True
