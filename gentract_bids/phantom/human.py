"""Human-anatomy phantom subjects in their own scanner space, from the TractSeg bundle anatomy.

Per subject (everything drawn from the subject's own seed streams):

1. ground-truth streamlines tracked along the atlas TOMs (:mod:`.tracking`), in MNI mm;
2. an anatomical variability map (scale, rotation, smooth deformation: :func:`.cohort.draw_transform`)
   followed by a head pose in the scanner (rotation of up to +-15 deg per axis about the brain's
   centroid, translation of up to +-25 mm): together the map ``atlas (MNI) -> scanner``;
3. an axis-aligned scanner grid over the head plus a margin, stored RAS, LAS or LPS;
4. fibre populations per voxel from the mapped streamlines (trilinearly splatted density and
   segment-orientation tensor, smoothed; fraction from density), merged across overlapping bundles
   (TractSeg's bundles share fibres: populations within 20 deg count once), plus unlabelled fibres
   from the atlas peaks (pushed through the map's Jacobian) in high-FA white matter that no
   selected bundle covers; grey matter and CSF from a simple tissue model (cortical ribbon with a
   sulcal CSF share, a CSF shell outside the brain, ventricles); the multi-compartment signal of
   :func:`.signal.synthesize_dwi` with world-frame gradient directions.

Atlas volumes (bundle, begin, end and brain masks, FA, peaks) are read in the subject through the
exact inverse map (nearest atlas voxel). All truth is in scanner RAS+ mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np
from scipy import ndimage

from .atlas import SPACE, Atlas
from .cohort import S0, Subject, SubjectTransform, _rng, _rotation, draw_transform, nifti_image
from .signal import (Populations, gradient_scheme, synthesize_dwi, top_peaks, voxel_centres,
                     world_to_voxel_index)
from .tracking import TrackingSettings, truth_streamlines

log = logging.getLogger("gentract.phantom")

STORAGE = {"RAS": (1, 1, 1), "LAS": (-1, 1, 1), "LPS": (-1, -1, 1)}
MAX_POSE_ANGLE_DEG = 15.0
MAX_POSE_SHIFT_MM = 25.0
FOV_MARGIN_MM = 10.0
FIBRE_MAX = 0.9  # fibre volume fraction of a voxel at full density
MIN_FRACTION = 0.1  # populations below this fraction are left out
MERGE_ANGLE_DEG = 20.0
DENSITY_SMOOTH_MM = 2.0
UNLABELLED_FA = 0.3
RIBBON_MM, RIBBON_CSF_SHARE, CSF_SHELL_MM = 2.5, 0.3, 4.0
_STREAM_ANATOMY, _STREAM_STREAMLINES, _STREAM_NOISE, _STREAM_POSE = 0, 1, 2, 3


# ----------------------------------------------------------------------------- the map
@dataclass
class Pose:
    """Rigid head pose in the scanner: y = R (z - centre) + centre + translation."""

    angles_deg: np.ndarray  # (3,) about x, y, z
    translation: np.ndarray  # (3,) mm
    centre: np.ndarray  # (3,) mm, the atlas brain's centroid
    storage: str  # RAS, LAS or LPS

    @property
    def rotation(self) -> np.ndarray:
        return _rotation(self.angles_deg)

    def as_dict(self) -> dict:
        return {"RotationDegrees": [round(float(a), 3) for a in self.angles_deg],
                "TranslationMm": [round(float(t), 3) for t in self.translation],
                "RotationCentreMm": [round(float(c), 3) for c in self.centre],
                "StorageOrientation": self.storage}


def draw_pose(rng, centre) -> Pose:
    angles = rng.uniform(-MAX_POSE_ANGLE_DEG, MAX_POSE_ANGLE_DEG, 3)
    shift = rng.uniform(-MAX_POSE_SHIFT_MM, MAX_POSE_SHIFT_MM, 3)
    storage = list(STORAGE)[int(rng.integers(len(STORAGE)))]
    return Pose(angles, shift, np.asarray(centre, float), storage)


@dataclass
class AtlasToScanner:
    """Atlas (MNI) mm -> scanner mm: anatomical variability, then the head pose."""

    anatomy: SubjectTransform
    pose: Pose

    def forward(self, x: np.ndarray) -> np.ndarray:
        p = self.pose
        return (self.anatomy.forward(x) - p.centre) @ p.rotation.T + p.centre + p.translation

    def inverse(self, y: np.ndarray) -> np.ndarray:
        p = self.pose
        return self.anatomy.inverse((np.asarray(y) - p.centre - p.translation) @ p.rotation
                                    + p.centre)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, 3) derivative of :meth:`forward` at atlas points ``x`` (N, 3)."""
        t = self.anatomy
        z = x @ t.linear.T
        c = np.cos(z @ t.wavevec.T + t.phase)  # (N, M)
        du = np.einsum("nm,mj,mi->nji", c, t.amp, t.wavevec)
        return self.pose.rotation @ ((np.eye(3) + du) @ t.linear)


def scanner_grid(points: np.ndarray, voxel_size: float, storage: str,
                 margin: float = FOV_MARGIN_MM):
    """Shape and affine of an axis-aligned grid over ``points`` plus ``margin``, stored
    ``storage`` (the first axis runs to the Right for RAS, to the Left for LAS/LPS, ...)."""
    lo, hi = points.min(0) - margin, points.max(0) + margin
    shape = tuple(int(n) for n in np.ceil((hi - lo) / voxel_size).astype(int) + 1)
    signs = np.array(STORAGE[storage], float)
    affine = np.diag(np.r_[signs * voxel_size, 1.0])
    affine[:3, 3] = np.where(signs > 0, lo, lo + (np.array(shape) - 1) * voxel_size)
    return shape, affine


# ----------------------------------------------------------------------------- atlas-side maps
@dataclass
class AtlasTissue:
    depth_in: np.ndarray  # (X, Y, Z) mm from the brain edge, inside
    depth_out: np.ndarray  # mm from the brain, outside
    ventricles: np.ndarray  # bool
    any_bundle: np.ndarray  # bool, inside any of the atlas's bundle masks
    begin: np.ndarray  # (B, X, Y, Z) bool, dilated like the tracking's regions
    end: np.ndarray


@lru_cache(maxsize=2)
def _atlas_tissue(atlas: Atlas, region_dilation: int) -> AtlasTissue:
    vox = np.abs(np.diag(atlas.affine)[:3])
    brain = atlas.brain
    depth_in = ndimage.distance_transform_edt(brain, sampling=vox)
    depth_out = ndimage.distance_transform_edt(~brain, sampling=vox)
    ijk = np.argwhere(brain)
    xyz = ijk @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    box = ((np.abs(xyz[:, 0]) < 30) & (xyz[:, 1] > -45) & (xyz[:, 1] < 25)
           & (xyz[:, 2] > -2) & (xyz[:, 2] < 32))
    sel = ijk[box]
    vent = np.zeros_like(brain)
    keep = (atlas.fa[tuple(sel.T)] < 0.15) & (depth_in[tuple(sel.T)] > 10.0)
    vent[tuple(sel[keep].T)] = True
    st = np.ones((3, 3, 3), bool)
    dil = (lambda m: ndimage.binary_dilation(m, st, iterations=region_dilation)  # noqa: E731
           if region_dilation else m)
    begin = np.stack([dil(m) for m in atlas._masks[:, 1]])
    end = np.stack([dil(m) for m in atlas._masks[:, 2]])
    return AtlasTissue(depth_in, depth_out, vent, atlas._masks[:, 0].any(0), begin, end)


# ----------------------------------------------------------------------------- populations
def bundle_populations(streamlines, shape, affine, smooth_mm: float = DENSITY_SMOOTH_MM):
    """(voxel, fraction, direction) of one bundle's fibres on a grid, from its streamlines:
    segment lengths splatted trilinearly (density) with their orientation tensors, smoothed with
    a Gaussian of ``smooth_mm``; direction = principal eigenvector of the tensor; fraction =
    FIBRE_MAX x min(1, density / d_ref), d_ref the 75th percentile of the density where it exceeds
    a tenth of its maximum."""
    empty = (np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3)))
    segs = [(s[:-1] + s[1:]) / 2 for s in streamlines if len(s) > 1]
    if not segs:
        return empty
    mid = np.concatenate(segs)
    vec = np.concatenate([np.diff(s, axis=0) for s in streamlines if len(s) > 1])
    w = np.linalg.norm(vec, axis=1)
    u = vec / np.maximum(w, 1e-12)[:, None]
    inv = np.linalg.inv(affine)
    ijk = mid @ inv[:3, :3].T + inv[:3, 3]
    vs = float(np.abs(np.linalg.det(affine[:3, :3])) ** (1 / 3))
    sigma = smooth_mm / vs
    pad = int(np.ceil(3 * sigma)) + 2
    lo = np.maximum(np.floor(ijk.min(0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(ijk.max(0)).astype(int) + pad + 1, shape)
    if np.any(hi <= lo):
        return empty
    local = ijk - lo
    lshape = tuple(int(n) for n in hi - lo)
    base = np.floor(local).astype(int)
    frac = local - base
    comps = np.stack([u[:, 0] ** 2, u[:, 1] ** 2, u[:, 2] ** 2,
                      u[:, 0] * u[:, 1], u[:, 0] * u[:, 2], u[:, 1] * u[:, 2]], 1) * w[:, None]
    n = int(np.prod(lshape))
    dens = np.zeros(n)
    ten = np.zeros((n, 6))
    for c in np.ndindex(2, 2, 2):
        idx = base + c
        ok = np.all((idx >= 0) & (idx < lshape), axis=1)
        cw = np.prod(np.where(c, frac, 1 - frac), axis=1) * ok
        flat = np.ravel_multi_index(np.where(ok[:, None], idx, 0).T, lshape)
        dens += np.bincount(flat, cw * w, n)
        for k in range(6):
            ten[:, k] += np.bincount(flat, cw * comps[:, k], n)
    dens = ndimage.gaussian_filter(dens.reshape(lshape), sigma).ravel()
    ten = np.stack([ndimage.gaussian_filter(ten[:, k].reshape(lshape), sigma).ravel()
                    for k in range(6)], 1)
    pos = dens > 0.1 * dens.max()
    d_ref = np.percentile(dens[pos], 75)
    fr = FIBRE_MAX * np.minimum(1.0, dens / d_ref)
    keep = np.nonzero(fr >= MIN_FRACTION)[0]
    t = ten[keep]
    mat = np.stack([t[:, [0, 3, 4]], t[:, [3, 1, 5]], t[:, [4, 5, 2]]], 1)
    _, vecs = np.linalg.eigh(mat)
    direction = vecs[:, :, -1]
    gijk = np.stack(np.unravel_index(keep, lshape), 1) + lo
    return np.ravel_multi_index(gijk.T, shape), fr[keep], direction


def merge_populations(voxel, bundle, fraction, direction, k: int = 3,
                      max_angle_deg: float = MERGE_ANGLE_DEG, cap: float = FIBRE_MAX,
                      slots: int = 6):
    """Per voxel, fold populations within ``max_angle_deg`` of a stronger one into it (fraction:
    the larger of the two, as overlapping bundle labels share the same fibres; direction: the
    fraction-weighted mean), scale the fractions so they sum to at most ``cap`` and keep the
    ``k`` largest. Returns (voxel, bundle, fraction, direction) arrays."""
    order = np.lexsort((-fraction, voxel))
    v, b, f, d = voxel[order], bundle[order], fraction[order], direction[order]
    uv, first, counts = np.unique(v, return_index=True, return_counts=True)
    slot_v = np.repeat(np.arange(len(uv)), counts)
    rank = np.arange(len(v)) - np.repeat(first, counts)
    cd = np.zeros((len(uv), slots, 3))
    cf = np.zeros((len(uv), slots))
    cb = np.full((len(uv), slots), -1, np.int64)
    nc = np.zeros(len(uv), np.int64)
    cos_max = np.cos(np.deg2rad(max_angle_deg))
    for r in range(int(rank.max()) + 1 if len(rank) else 0):
        sel = np.nonzero(rank == r)[0]
        vi, dd, ff = slot_v[sel], d[sel], f[sel]
        cos = np.einsum("nsk,nk->ns", cd[vi], dd)
        cos[np.arange(slots)[None] >= nc[vi][:, None]] = 0.0
        best = np.argmax(np.abs(cos), axis=1)
        bc = cos[np.arange(len(sel)), best]
        merge = np.abs(bc) >= cos_max
        m_v, m_s = vi[merge], best[merge]
        sign = np.sign(bc[merge])[:, None]
        new_d = cd[m_v, m_s] * cf[m_v, m_s][:, None] + sign * dd[merge] * ff[merge][:, None]
        cd[m_v, m_s] = new_d / np.linalg.norm(new_d, axis=1, keepdims=True)
        cf[m_v, m_s] = np.maximum(cf[m_v, m_s], ff[merge])
        add = ~merge & (nc[vi] < slots)
        a_v, a_s = vi[add], nc[vi[add]]
        cd[a_v, a_s], cf[a_v, a_s], cb[a_v, a_s] = dd[add], ff[add], b[sel][add]
        nc[a_v] += 1
    total = cf.sum(1, keepdims=True)
    cf *= np.minimum(1.0, cap / np.maximum(total, 1e-12))
    top = np.argsort(-cf, axis=1)[:, :k]
    rows = np.arange(len(uv))[:, None]
    cf, cd, cb = cf[rows, top], cd[rows, top], cb[rows, top]
    ok = cf > 0
    return (np.broadcast_to(uv[:, None], ok.shape)[ok], cb[ok], cf[ok], cd[ok])


# ----------------------------------------------------------------------------- one subject
def _brain_points(atlas: Atlas, step: int = 2) -> np.ndarray:
    ijk = np.argwhere(atlas.brain[::step, ::step, ::step]) * step
    return ijk @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]


def _unique_voxels(points: np.ndarray, shape, affine) -> np.ndarray:
    flat = world_to_voxel_index(points, shape, affine)
    return np.unique(flat[flat >= 0])


def make_human_subject(index: int, atlas: Atlas, seed: int = 0, snr: float = 30.0,
                       voxel_size: float = 2.0, bvals=(0, 1000, 2000, 3000), n_dirs: int = 32,
                       n_b0: int = 6, n_truth_streamlines: int = 200, n_peaks: int = 3,
                       signal_streamlines: int = 400, storage: str | None = None,
                       pose_angles_deg=None, tracking: TrackingSettings | None = None) -> Subject:
    """Synthesize human-anatomy subject ``index`` (1-based label) in its scanner space.

    ``signal_streamlines`` per bundle (at least ``n_truth_streamlines``) shape the fibre
    populations; the first ``n_truth_streamlines`` of them are the ground truth. ``storage``
    overrides the drawn storage orientation and ``pose_angles_deg`` (about x, y, z) the drawn head
    rotation (tests, benchmarks); the rest of the subject stays as drawn."""
    tracking = tracking or TrackingSettings()
    names, nb = list(atlas.names), len(atlas.names)
    n_signal = max(int(signal_streamlines), int(n_truth_streamlines))
    tracked = truth_streamlines(atlas, n_signal, _rng(seed, index, _STREAM_STREAMLINES),
                                s=tracking)
    brain_pts = _brain_points(atlas)
    anatomy = draw_transform(_rng(seed, index, _STREAM_ANATOMY), nb, brain_pts, box_half=None)
    pose = draw_pose(_rng(seed, index, _STREAM_POSE), brain_pts.mean(0))
    pose.storage = storage or pose.storage
    if pose_angles_deg is not None:
        pose.angles_deg = np.asarray(pose_angles_deg, float)
    amap = AtlasToScanner(anatomy, pose)
    shape, affine = scanner_grid(amap.forward(brain_pts), voxel_size, pose.storage)
    nvox = int(np.prod(shape))

    # where each scanner voxel comes from in the atlas
    y = voxel_centres(shape, affine)
    x = np.concatenate([amap.inverse(y[a:a + 200_000]) for a in range(0, nvox, 200_000)])
    src = world_to_voxel_index(x, atlas.shape, atlas.affine)
    inside = src >= 0
    srcv = src[inside]

    def pull(vol, fill=0):
        out = np.full(nvox, fill, dtype=vol.dtype)
        out[inside] = vol.reshape(-1, *vol.shape[3:])[srcv] if vol.ndim > 3 else vol.ravel()[srcv]
        return out

    tissue = _atlas_tissue(atlas, tracking.region_dilation)
    brain = pull(atlas.brain)
    fa = pull(atlas.fa)
    depth_in, depth_out = pull(tissue.depth_in), pull(tissue.depth_out, np.inf)

    # fibre populations: named bundles from their streamlines, then unlabelled atlas peaks
    streamlines, vox_l, bun_l, fr_l, dir_l = {}, [], [], [], []
    for bi, name in enumerate(names):
        mapped = [amap.forward(s) for s in tracked[name].streamlines]
        streamlines[name] = mapped[:n_truth_streamlines]
        v, f, d = bundle_populations(mapped, shape, affine)
        vox_l.append(v), bun_l.append(np.full(len(v), bi)), fr_l.append(f), dir_l.append(d)
    labelled = np.zeros(nvox, bool)
    labelled[np.concatenate(vox_l)] = True
    deep = depth_in > 2 * RIBBON_MM
    free = np.nonzero(deep & (fa > UNLABELLED_FA) & ~pull(tissue.any_bundle) & ~labelled)[0]
    if len(free):
        pk = atlas.peaks.reshape(-1, 3, 3)[src[free]]  # (n, 3 peaks, 3)
        amp = np.linalg.norm(pk, axis=2)
        jac = amap.jacobian(x[free])
        for k in range(3):
            ok = (amp[:, k] > 0) & (amp[:, k] >= 0.3 * amp[:, 0])
            if not ok.any():
                continue
            d = np.einsum("nij,nj->ni", jac[ok], pk[ok, k])
            total = FIBRE_MAX * np.clip((fa[free[ok]] - 0.2) / 0.4, 0.25, 1.0)
            share = amp[ok, k] / amp[ok].sum(1)
            vox_l.append(free[ok]), bun_l.append(np.full(ok.sum(), nb))
            fr_l.append(total * share), dir_l.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    pv, pb, pf, pd = merge_populations(np.concatenate(vox_l), np.concatenate(bun_l),
                                       np.concatenate(fr_l), np.concatenate(dir_l), k=n_peaks)
    wm = np.bincount(pv, pf, nvox).astype(np.float32)

    # tissue: the non-fibre part of the brain is grey matter, with a sulcal CSF share in the
    # cortical ribbon; ventricles and a thin shell around the brain are CSF
    rest = np.clip(1.0 - wm, 0.0, 1.0)
    vent = pull(tissue.ventricles)
    ribbon = brain & (depth_in <= RIBBON_MM)
    csf = np.where(vent, rest, np.where(ribbon, RIBBON_CSF_SHARE * rest, 0.0))
    shell = ~brain & inside & (depth_out <= CSF_SHELL_MM) & (wm == 0)
    csf = np.where(shell, 1.0 - depth_out / (CSF_SHELL_MM + 1.0), csf)
    gm = np.where(brain & ~vent, rest - csf, 0.0)
    brain_mask = (brain | (wm > 0)).astype(np.uint8)

    # truth masks: atlas regions pulled through the map, plus what the truth streamlines reach
    bmask = np.zeros((nvox, nb), np.uint8)
    heads = np.zeros((nvox, nb), np.uint8)
    tails = np.zeros((nvox, nb), np.uint8)
    for bi, name in enumerate(names):
        bmask[:, bi] = pull(atlas._masks[bi, 0])
        heads[:, bi] = pull(tissue.begin[bi])
        tails[:, bi] = pull(tissue.end[bi])
        sl = streamlines[name]
        if sl:
            bmask[_unique_voxels(np.concatenate(sl), shape, affine), bi] = 1
            heads[_unique_voxels(np.array([s[0] for s in sl]), shape, affine), bi] = 1
            tails[_unique_voxels(np.array([s[-1] for s in sl]), shape, affine), bi] = 1

    pop = Populations(pv, pb, pf, pd, wm.reshape(shape), None)
    peak_dirs, peak_fr = top_peaks(pop, shape, n_peaks)
    bv, bvecs = gradient_scheme(bvals, n_dirs, n_b0)  # world (scanner) frame
    dwi = synthesize_dwi(pop, gm.reshape(shape), csf.reshape(shape), bv, bvecs, snr,
                         _rng(seed, index, _STREAM_NOISE))
    # the .bvec is written from voxel-frame vectors: rotate the world-frame scheme onto the axes
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    bvecs_voxel = bvecs @ axes

    shortfall = {n: {"n": tracked[n].n, "seeds": tracked[n].n_seeds, **tracked[n].reasons}
                 for n in names if tracked[n].n < n_truth_streamlines}
    for n, info in shortfall.items():
        log.warning("sub-%02d: bundle %s gave %d of %d ground-truth streamlines (%d seeds; "
                    "rejected: %s)", index, n, info["n"], n_truth_streamlines, info["seeds"],
                    ", ".join(f"{k} {v}" for k, v in tracked[n].reasons.items()))
    r3 = lambda a: a.reshape(*shape, nb)  # noqa: E731
    subj = Subject(f"{index:02d}", dwi, affine, bv, bvecs_voxel, wm.reshape(shape),
                   gm.reshape(shape).astype(np.float32), csf.reshape(shape).astype(np.float32),
                   brain_mask.reshape(shape), peak_dirs, peak_fr, names, r3(bmask), r3(heads),
                   r3(tails), None, streamlines, anatomy, S0 / snr)
    subj.extra = {"atlas_map": amap, "truth_counts": {n: tracked[n].n for n in names},
                  "shortfall": shortfall, "xfm_field": displacement_field(x, y, shape)}
    return subj


# ----------------------------------------------------------------------------- files
def displacement_field(atlas_points: np.ndarray, scanner_points: np.ndarray, shape):
    """ITK/ANTs displacement field on the scanner grid for the points map scanner -> atlas
    (what ANTs names the transform that resamples an atlas image into the scanner grid), from
    each voxel centre (``scanner_points``, N x 3 RAS) and its atlas position: (X, Y, Z, 1, 3)
    float32, LPS components, x_atlas = y + d(y)."""
    d = (atlas_points - scanner_points) * np.array([-1.0, -1.0, 1.0])  # RAS -> LPS
    return d.astype(np.float32).reshape(*shape, 1, 3)


def xfm_image(field: np.ndarray, affine) -> nib.Nifti1Image:
    img = nifti_image(field, affine)
    img.header.set_intent("vector")
    return img


def human_truth_extras(subj: Subject, n_truth_streamlines: int) -> dict:
    """What a human subject's truth folder holds besides the common files: name -> content."""
    amap = subj.extra["atlas_map"]
    t = amap.anatomy
    sub = f"sub-{subj.label}"
    xfm = f"{sub}_from-{SPACE}_to-dwi_mode-image_xfm"
    return {
        f"{xfm}.nii.gz": xfm_image(subj.extra["xfm_field"], subj.affine),
        f"{xfm}.json": {
            "Description": "true map of points from this subject's scanner space to the atlas "
                           f"({SPACE}) space, as an ITK/ANTs displacement field on the DWI grid "
                           "(LPS components; atlas point = scanner point + displacement). "
                           "Atlas -> scanner: anatomical variability z = R S x + u(R S x), then "
                           "the head pose y = Rp (z - c) + c + t.",
            "FromSpace": SPACE, "ToSpace": "dwi", "TransformType": "displacement field",
            "HeadPose": amap.pose.as_dict(),
            "Anatomy": {"Scale": [round(float(s), 5) for s in t.scale],
                        "Rotation": np.round(t.rotation, 6).tolist(),
                        "WaveVectors": np.round(t.wavevec, 8).tolist(),
                        "Phases": np.round(t.phase, 8).tolist(),
                        "Amplitudes": np.round(t.amp, 8).tolist()},
        },
        f"{sub}_space-dwi_model-truth_streamlines.json": {
            "Description": "ground-truth streamlines tracked along the atlas TOMs, mapped to "
                           "scanner space (RAS+ mm), oriented begin -> end",
            "RequestedPerBundle": int(n_truth_streamlines),
            "StreamlineCounts": subj.extra["truth_counts"],
            "BundlesShort": subj.extra["shortfall"],
        },
    }
