"""Ground-truth streamlines from a bundle's tract orientation map (TOM), in the atlas space.

For each bundle: seeds drawn uniformly inside its mask are tracked along the TOM in both
directions (trilinear interpolation whose eight corner vectors are sign-aligned with the previous
step, so the orientation field's arbitrary signs cancel nothing), with a fixed small step, until the
streamline leaves the bundle mask dilated by one voxel, turns by more than ``max_angle`` or meets no
orientation. A streamline is kept when one end lies in the bundle's begin region and the other in
its end region (both dilated by one voxel; either order: it is then oriented begin -> end) and its
length is plausible: at least ``min_length_ratio`` x the distance between the two regions'
centroids and at most ``max_length_ratio`` x that distance. All seeds of a bundle are tracked at
once (vectorised over seeds). Everything is in mm of the atlas grid's world space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .atlas import Atlas, BundleAnatomy

_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])


@dataclass
class TrackingSettings:
    step_mm: float = 1.0
    max_angle_deg: float = 45.0
    mask_dilation: int = 1
    region_dilation: int = 1
    min_length_ratio: float = 0.8
    max_length_ratio: float = 3.0
    min_length_mm: float = 10.0
    seeds_per_round: float = 3.0  # seeds tracked per requested streamline in each round
    max_rounds: int = 6


@dataclass
class BundleTruth:
    name: str
    streamlines: list = field(default_factory=list)  # (n, 3) arrays, begin -> end, mm
    n_seeds: int = 0
    reasons: dict = field(default_factory=dict)  # rejection counts

    @property
    def n(self) -> int:
        return len(self.streamlines)


def _sample_vectors(field_flat, shape, ijk, ref):
    """Trilinear interpolation at continuous voxel positions ``ijk`` (S, 3) of an orientation
    field (flattened (V, 3)), each corner sign-aligned with ``ref`` (S, 3). Corners outside the
    grid count as zero."""
    base = np.floor(ijk).astype(np.int64)
    frac = ijk - base
    out = np.zeros_like(ijk)
    shp = np.array(shape)
    for c in _CORNERS:
        idx = base + c
        ok = np.all((idx >= 0) & (idx < shp), axis=1)
        w = np.prod(np.where(c, frac, 1.0 - frac), axis=1) * ok
        flat = np.ravel_multi_index(np.where(ok[:, None], idx, 0).T, shape)
        v = field_flat[flat]
        s = np.sign((v * ref).sum(1))
        s[s == 0] = 1.0
        out += (w * s)[:, None] * v
    return out


def _lookup(mask, ijk):
    idx = np.rint(ijk).astype(np.int64)
    ok = np.all((idx >= 0) & (idx < np.array(mask.shape)), axis=1)
    res = np.zeros(len(ijk), bool)
    res[ok] = mask[tuple(idx[ok].T)]
    return res


def _track_one_way(tom_flat, shape, inside, seeds_ijk, dir0_world, lin_inv, vox_mm,
                   s: TrackingSettings, max_steps: int):
    """Positions (S, T, 3) in voxel coordinates (NaN after the stop) and number of points."""
    n = len(seeds_ijk)
    pos = seeds_ijk.copy()
    d = dir0_world.copy()
    out = np.full((n, max_steps + 1, 3), np.nan)
    out[:, 0] = pos
    alive = np.ones(n, bool)
    count = np.ones(n, np.int64)
    cos_max = np.cos(np.deg2rad(s.max_angle_deg))
    for t in range(1, max_steps + 1):
        a = np.nonzero(alive)[0]
        if not len(a):
            break
        v = _sample_vectors(tom_flat, shape, pos[a], d[a])
        nv = np.linalg.norm(v, axis=1)
        ok = nv > 1e-6
        v[ok] /= nv[ok, None]
        ok &= (v * d[a]).sum(1) >= cos_max
        new = pos[a] + (v @ lin_inv.T) * s.step_mm
        ok &= _lookup(inside, new)
        a_ok = a[ok]
        pos[a_ok] = new[ok]
        d[a_ok] = v[ok]
        out[a_ok, t] = new[ok]
        count[a_ok] += 1
        alive[a[~ok]] = False
    return out, count


def track_bundle(bundle: BundleAnatomy, affine, n: int, rng, s: TrackingSettings | None = None
                 ) -> BundleTruth:
    """Up to ``n`` valid streamlines of one bundle (world mm, oriented begin -> end)."""
    s = s or TrackingSettings()
    res = BundleTruth(bundle.name)
    shape = bundle.mask.shape
    if not bundle.mask.any() or not bundle.begin.any() or not bundle.end.any():
        res.reasons["empty mask or region"] = 1
        return res
    st = np.ones((3, 3, 3), bool)
    inside = ndimage.binary_dilation(bundle.mask, st, iterations=s.mask_dilation)
    inside &= np.abs(bundle.tom).sum(-1) > 0
    begin = ndimage.binary_dilation(bundle.begin, st, iterations=s.region_dilation)
    end = ndimage.binary_dilation(bundle.end, st, iterations=s.region_dilation)
    lin = affine[:3, :3]
    lin_inv = np.linalg.inv(lin)
    vox_mm = float(np.abs(np.linalg.det(lin)) ** (1 / 3))
    to_mm = lambda ijk: ijk @ lin.T + affine[:3, 3]  # noqa: E731
    cb = to_mm(np.argwhere(bundle.begin).mean(0))
    ce = to_mm(np.argwhere(bundle.end).mean(0))
    span = float(np.linalg.norm(cb - ce))
    lo = max(s.min_length_mm, s.min_length_ratio * span)
    hi = max(s.max_length_ratio * span, 2 * lo)
    extent = np.ptp(np.argwhere(bundle.mask), axis=0).astype(float) * vox_mm
    max_steps = int(np.ceil(1.5 * np.linalg.norm(extent) / s.step_mm)) + 10
    tom_flat = bundle.tom.reshape(-1, 3).astype(np.float64)
    vox = np.argwhere(bundle.mask)
    reasons = {"endpoints": 0, "length": 0}
    for _ in range(s.max_rounds):
        if res.n >= n:
            break
        k = int(np.ceil(s.seeds_per_round * max(n - res.n, 1)))
        seeds = vox[rng.integers(0, len(vox), k)] + rng.uniform(-0.5, 0.5, (k, 3))
        res.n_seeds += k
        d0 = _sample_vectors(tom_flat, shape, seeds, np.tile([1.0, 0, 0], (k, 1)))
        d0 = _sample_vectors(tom_flat, shape, seeds, d0)  # align to the local field, not to +x
        nd = np.linalg.norm(d0, axis=1)
        good = nd > 1e-6
        seeds, d0 = seeds[good], d0[good] / nd[good, None]
        fw, nf = _track_one_way(tom_flat, shape, inside, seeds, d0, lin_inv, vox_mm, s, max_steps)
        bw, nbk = _track_one_way(tom_flat, shape, inside, seeds, -d0, lin_inv, vox_mm, s,
                                 max_steps)
        for i in range(len(seeds)):
            pts = np.concatenate([bw[i, 1:nbk[i]][::-1], fw[i, :nf[i]]])
            if len(pts) < 3:
                reasons["length"] += 1
                continue
            a, b = pts[[0]], pts[[-1]]
            ab = _lookup(begin, a)[0] and _lookup(end, b)[0]
            ba = _lookup(begin, b)[0] and _lookup(end, a)[0]
            if not (ab or ba):
                reasons["endpoints"] += 1
                continue
            mm = to_mm(pts)
            length = float(np.linalg.norm(np.diff(mm, axis=0), axis=1).sum())
            if not lo <= length <= hi:
                reasons["length"] += 1
                continue
            res.streamlines.append(mm if ab else mm[::-1].copy())
            if res.n >= n:
                break
    res.reasons = reasons
    return res


def truth_streamlines(atlas: Atlas, n: int, rng, names=None, s: TrackingSettings | None = None
                      ) -> dict[str, BundleTruth]:
    """Track every bundle of ``atlas`` (or ``names``), in atlas order, with one generator."""
    names = atlas.names if names is None else names
    return {name: track_bundle(atlas.bundle(name), atlas.affine, n, rng, s) for name in names}
