"""fODF support of sampled streamlines (model/support.py): trimming, rejection, extension, and the
rejection sampling in sample_tractogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dipy.data import get_sphere
from dipy.reconst.shm import sf_to_sh

from test_inference import tiny_ckpt, zscored_sh  # noqa: F401 (fixtures)

from gentract_bids.io.tractogram import load_tractogram
from gentract_bids.model.inference import (ModelMismatchError, fod_support, load_model,
                                           sample_tractogram, sh_tensor)
from gentract_bids.model.support import FodSupport, SupportSettings, resample_polyline

SPACING = 2.0
SHAPE = (40, 20, 20)
AFFINE = np.diag([SPACING] * 3 + [1.0])
AFFINE[:3, 3] = [-(n - 1) / 2 * SPACING for n in SHAPE]  # centred on the world origin
TUBE_X = (-25.0, 25.0)  # mm: a tube of fibres along x, |y|, |z| <= 5 mm
P = 12


def _fibre_sh(direction) -> np.ndarray:
    """SH (descoteaux07, order 6) of a sharp single-fibre fODF along ``direction``."""
    sphere = get_sphere(name="repulsion724")
    sf = np.exp(-20 * (1 - (sphere.vertices @ np.asarray(direction, float)) ** 2))
    return sf_to_sh(sf, sphere, sh_order_max=6, basis_type="descoteaux07", legacy=False)


def _tube_volume():
    ijk = np.indices(SHAPE).reshape(3, -1).T
    xyz = (ijk * SPACING + AFFINE[:3, 3]).reshape(SHAPE + (3,))
    tube = ((np.abs(xyz[..., 1]) <= 5) & (np.abs(xyz[..., 2]) <= 5)
            & (xyz[..., 0] >= TUBE_X[0]) & (xyz[..., 0] <= TUBE_X[1]))
    sh = np.zeros(SHAPE + (28,), np.float32)
    sh[tube] = _fibre_sh([1, 0, 0])
    return sh, np.ones(SHAPE, bool)


@pytest.fixture(scope="module")
def support():
    sh, mask = _tube_volume()
    return FodSupport(sh, mask, AFFINE)


def _line(a, b, n=P):
    return np.linspace(a, b, n)


def test_a_streamline_along_the_fibres_is_kept_and_extended_to_where_they_end(support):
    short = _line([-10, 0, 0], [12, 1, 0])  # inside the tube, stopping short of both its ends
    out = support.filter(short[None])
    assert out.shape == (1, P, 3)
    ends = np.sort(out[0, [0, -1], 0])
    # followed along the fODF to within about a voxel of the tube's ends (|x| = 25 mm)
    assert TUBE_X[0] - 2.5 <= ends[0] <= TUBE_X[0] + 2.5
    assert TUBE_X[1] - 2.5 <= ends[1] <= TUBE_X[1] + 2.5
    assert np.abs(out[0, :, 1:]).max() <= 5.0  # it stayed in the tube
    none = FodSupport(*_tube_volume(), AFFINE, SupportSettings(max_extension_mm=0))
    kept = none.filter(short[None])
    np.testing.assert_allclose(kept[0, [0, -1]], short[[0, -1]], atol=1e-6)  # no extension


def test_an_end_beyond_the_fibres_is_trimmed(support):
    long = _line([-20, 0, 0], [33, 0, 0])  # runs 8 mm past the tube's end at x = 25 mm
    out = FodSupport(*_tube_volume(), AFFINE, SupportSettings(max_extension_mm=0)).filter(
        long[None])
    assert out.shape == (1, P, 3)
    assert 22.5 <= out[0, :, 0].max() <= 27.5 and out[0, :, 0].min() == pytest.approx(-20)


def test_unsupported_streamlines_are_rejected(support):
    across = _line([0, -18, 0], [0, 18, 0])  # perpendicular to the fibres
    gap = np.concatenate([_line([-20, 0, 0], [-5, 0, 0], 4), _line([-3, 15, 0], [3, 15, 0], 4),
                          _line([5, 0, 0], [20, 0, 0], 4)])  # leaves the tube and comes back
    outside = _line([-20, 15, 15], [20, 15, 15])  # parallel to the tube, out of it
    batch = np.stack([across, resample_polyline(gap, P), outside, _line([-20, 0, 0], [20, 0, 0])])
    out = support.filter(batch)
    assert out.shape == (1, P, 3)  # only the last one
    assert np.abs(out[0, :, 1:]).max() < 1.0  # (extended along the nearest sphere direction)


def test_too_short_a_remainder_is_rejected(support):
    mostly_out = _line([15, 0, 0], [60, 0, 0])  # 10 of its 45 mm along the fibres
    assert support.filter(mostly_out[None]).shape == (0, P, 3)


def test_settings_are_checked():
    for bad in ({"threshold": 0}, {"threshold": 1.5}, {"min_length_fraction": 0},
                {"extension_cone_deg": 95}, {"max_extension_mm": -1}):
        with pytest.raises(ValueError):
            SupportSettings(**bad)
    sh, mask = _tube_volume()
    with pytest.raises(ValueError, match="empty brain mask"):
        FodSupport(sh, np.zeros_like(mask), AFFINE)


# ------------------------------------------------- the vectorised filter = the per-step loop
def _loop_filter(sup: FodSupport, streamlines: np.ndarray) -> np.ndarray:
    """The filter as it was before it was vectorised: per-coefficient map_coordinates, dipy's SH
    basis, one streamline (or end) at a time where it was; the reference for the test below."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux
    from scipy import ndimage

    st, ref, verts = sup.settings, sup.reference, sup.sphere.vertices

    def coefficients(points):
        ijk = (points @ sup._inv[:3, :3].T + sup._inv[:3, 3]).T
        return np.stack([ndimage.map_coordinates(np.ascontiguousarray(sup.sh[..., c]), ijk,
                                                 order=1, mode="constant", cval=0.0)
                         for c in range(sup.sh.shape[-1])], axis=1)

    def amplitude(points, directions):
        _, theta, phi = cart2sphere(*np.asarray(directions, np.float64).T)
        basis, _, _ = real_sh_descoteaux(sup.sh_order, theta, phi, legacy=False)
        return np.einsum("nm,nm->n", coefficients(points), basis) / ref

    def extend(ends, directions):
        added = [[] for _ in range(len(ends))]
        cos_cone = np.cos(np.deg2rad(st.extension_cone_deg))
        p, d = np.array(ends, np.float64), np.array(directions, np.float64)
        active = np.arange(len(p))
        for _ in range(int(st.max_extension_mm / st.extension_step_mm)):
            amp = np.maximum(coefficients(p[active]) @ sup._B, 0) / ref
            amp[d[active] @ verts.T < cos_cone] = 0.0
            best = np.argmax(amp, axis=1)
            step = p[active] + st.extension_step_mm * verts[best]
            go = amp[np.arange(len(active)), best] >= st.extension_threshold
            go[go] = amplitude(step[go], verts[best[go]]) >= st.extension_threshold
            moving = active[go]
            p[moving], d[moving] = step[go], verts[best[go]]
            for i in moving:
                added[i].append(p[i].copy())
            active = moving
        return [np.reshape(a, (-1, 3)) for a in added]

    def unit(v):
        return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)

    k, p = st.n_check, streamlines.shape[1]
    kept = []
    for s in streamlines:
        arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(s, axis=0), axis=1))]
        fine = np.stack([np.interp(np.linspace(0, arc[-1], k), arc, s[:, c]) for c in range(3)], 1)
        tangent = unit(np.gradient(fine, axis=0))
        o = np.flatnonzero(amplitude(fine, tangent) >= st.threshold)
        if len(o) >= 2 and len(o) == o[-1] - o[0] + 1 and (
                o[-1] - o[0] >= st.min_length_fraction * (k - 1)):
            kept.append(fine[o[0]:o[-1] + 1])
    heads = extend(np.array([s[0] for s in kept]), unit(np.array([s[0] - s[1] for s in kept])))
    tails = extend(np.array([s[-1] for s in kept]), unit(np.array([s[-1] - s[-2] for s in kept])))
    return np.stack([resample_polyline(np.vstack([h[::-1], s, t]), p)
                     for s, h, t in zip(kept, heads, tails)])


def test_the_vectorised_filter_keeps_what_the_loop_kept():
    """Two crossing tubes (x and a 45-degree diagonal), jittered lines along, across and beside
    them: the same streamlines are kept, trimmed and extended to the same points."""
    sh, mask = _tube_volume()
    ijk = np.indices(SHAPE).reshape(3, -1).T
    xyz = (ijk * SPACING + AFFINE[:3, 3]).reshape(SHAPE + (3,))
    diagonal = (np.abs(xyz[..., 0] - xyz[..., 1]) <= 5) & (np.abs(xyz[..., 2]) <= 5)
    sh[diagonal] += _fibre_sh([1 / np.sqrt(2), 1 / np.sqrt(2), 0])
    sup = FodSupport(sh, mask, AFFINE)
    rng = np.random.default_rng(0)
    starts = rng.uniform([-30, -12, -6], [0, 12, 6], (150, 3))
    dirs = rng.normal([1, 0.4, 0], [0.2, 0.6, 0.1], (150, 3))
    ends = starts + rng.uniform(20, 45, (150, 1)) * dirs / np.linalg.norm(dirs, axis=1)[:, None]
    batch = np.stack([_line(a, b) for a, b in zip(starts, ends)])
    batch += rng.normal(0, 0.3, batch.shape)
    want, got = _loop_filter(sup, batch), sup.filter(batch)
    assert 10 <= len(want) < len(batch)  # some kept, some rejected
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
    grew = np.linalg.norm(want[:, -1] - want[:, 0], axis=1) > np.linalg.norm(
        batch[:, -1] - batch[:, 0], axis=1).min()
    assert grew.any()  # the extension did something


# ----------------------------------------------------------------------------- sampling
def _half_space_support(meta):
    """An isotropic fODF (every direction supported) in the x < 0 half of the canonical grid.

    The tiny untrained model's streamlines are long random polylines that leave the grid, so the
    test keeps any single supported run of at least 2 % of a streamline."""
    from gentract_bids.fodf.grid import canonical_grid

    affine, shape = canonical_grid()
    mask = np.zeros(shape, bool)
    mask[: shape[0] // 2] = True
    z = np.zeros(shape + (28,), np.float32)
    z[..., 0] = 1.0  # z-scored with mean 0, std 1 (META): raw c00 = 1 inside the mask
    support = fod_support(meta, z, mask, affine)
    strict = support.settings
    support.settings = SupportSettings(min_length_fraction=0.02)
    return support, strict, affine, mask


def test_sampling_keeps_drawing_until_enough_supported_streamlines(tiny_ckpt, zscored_sh,
                                                                    tmp_path):
    model, meta = load_model(tiny_ckpt)
    support, strict, affine, mask = _half_space_support(meta)
    last_inside_x = affine[0, 3] + (mask.shape[0] // 2 - 1) * affine[0, 0]

    with torch.inference_mode():  # encoded once for all runs (the tiny model's VAEs are slow)
        context = model.encode_context(sh_tensor(model, zscored_sh))

    def run(name, seed, n=50, **kw):
        info = sample_tractogram(model, meta, zscored_sh, tmp_path / name, n_streamlines=n,
                                 ref_affine=affine, ref_shape=mask.shape, seed=seed,
                                 batch_size=64, support=support, context=context, **kw)
        return np.stack(load_tractogram(tmp_path / name)[0]), info

    a, info = run("a.trx", 3)
    b, _ = run("b.trx", 3)
    np.testing.assert_array_equal(a, b)  # the same seed: the same kept streamlines
    assert info["NumberRequested"] == 50
    assert info["NumberSampled"] > info["NumberOfStreamlines"] == len(a)
    # the last batch is sized from the running acceptance rate, not a whole batch of 64
    assert info["NumberSampled"] % 64 != 0
    assert info["ModelFit"]["Verdict"] == "unknown"  # no expected acceptance for this model
    assert info["Guidance"] is None
    # fODF guidance runs inside the sampler and is recorded; it changes what is drawn
    g, info_g = run("g.trx", 3, guidance_scale=1.0)
    assert info_g["Guidance"]["Scale"] == 1.0 and len(g) == 50
    assert not np.allclose(g, a)
    # ModelFit compares the run with an expectation of its own sampler settings only
    import gentract_bids.model.inference as inference

    entry = {"sha256": meta["sha256"], "acceptance": 0.9,
             "sampler": {"guidance_scale": 1.0, "smc_times": []}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(inference, "expected_acceptance", lambda m: entry)
        _, guided = run("g2.trx", 3, guidance_scale=1.0)
        _, plain = run("p2.trx", 3)
    assert guided["ModelFit"]["ExpectedAcceptance"] == 0.9
    assert guided["ModelFit"]["Verdict"] in ("fits", "does not fit")
    assert plain["ModelFit"]["Verdict"] == "unknown"
    assert "guidance scale 0, no SMC: not compared" in plain["ModelFit"]["Message"]
    assert info["SupportFilter"]["Threshold"] == pytest.approx(0.05)
    assert 0 < info["SupportFilter"]["AcceptanceRate"] < 1
    # every kept point lies where the fODF is (within the interpolation's reach of the mask)
    assert a[..., 0].max() <= last_inside_x + affine[0, 0]
    # too few supported ones within max_oversampling: fewer are written, and the sidecar says so
    support.settings = SupportSettings(min_length_fraction=0.02, max_oversampling=1.0)
    c, info_c = run("c.trx", 3, n=200)
    assert info_c["NumberSampled"] == 200 and len(c) == info_c["NumberOfStreamlines"] < 200
    # none supported (the default settings reject these random polylines): a clear error and
    # no file, partial or temporary, is left behind
    support.settings = strict
    with pytest.raises(ModelMismatchError, match="none of the .* supported"):
        run("d.trx", 3)
    assert not (tmp_path / "d.trx").exists() and not list(tmp_path.glob(".*"))
