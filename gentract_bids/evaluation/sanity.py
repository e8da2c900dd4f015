"""Sanity metrics of any tractogram (always run): geometry, volume, tissue and coverage checks.

Everything works on one concatenated point array (ArraySequence-like: ``points`` (P, 3),
``offsets`` (N,), ``counts`` (N,)) with per-point quantities reduced per streamline by
``np.add.reduceat`` / ``np.maximum.reduceat`` over the non-empty streamlines — no Python loop over
streamlines, so 100k streamlines of ~50 points take a few seconds.

Streamlines are RAS+ millimetres (world space); ``affine`` maps voxel indices to RAS+ mm.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# ----------------------------------------------------------------------------- concatenated form


@dataclass
class Packed:
    """Streamlines as one point array: streamline ``i`` is
    ``points[offsets[i]:offsets[i] + counts[i]]``."""

    points: np.ndarray  # (P, 3) float
    offsets: np.ndarray  # (N,) int64
    counts: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.counts.size)

    @cached_property
    def ids(self) -> np.ndarray:
        """(P,) streamline index of each point."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts)

    @property
    def last(self) -> np.ndarray:
        """(N,) index of each streamline's last point (meaningless where counts == 0)."""
        return self.offsets + np.maximum(self.counts, 1) - 1

    @cached_property
    def _segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = self.points
        has_next = np.ones(len(p), bool)
        has_next[self.last[self.counts > 0]] = False
        seg = np.zeros(p.shape, np.float64)
        if len(p) > 1:
            seg[:-1] = np.diff(p, axis=0)
        seg[~has_next] = 0.0
        step = np.sqrt(np.einsum("ij,ij->i", seg, seg))
        return seg, has_next, step

    def reduce(self, ufunc, per_point: np.ndarray, empty=0):
        """Per-streamline ``ufunc.reduceat`` of a per-point array (``empty`` where a streamline
        has no points)."""
        out = np.full(len(self), empty, dtype=np.result_type(per_point.dtype, np.asarray(empty)))
        nz = self.counts > 0
        if nz.any():
            out[nz] = ufunc.reduceat(per_point, self.offsets[nz])
        return out


def pack_streamlines(streamlines) -> Packed:
    """Concatenate a list of (n_i, 3) arrays (or a nibabel ``ArraySequence``) into :class:`Packed`.

    An ``ArraySequence`` is used without copying its point buffer when it is contiguous."""
    if isinstance(streamlines, Packed):
        return streamlines
    data = getattr(streamlines, "_data", None)
    if data is not None and hasattr(streamlines, "_offsets"):
        offsets = np.asarray(streamlines._offsets, np.int64)
        counts = np.asarray(streamlines._lengths, np.int64)
        if len(counts) and np.array_equal(offsets, np.r_[0, np.cumsum(counts)[:-1]]):
            return Packed(np.asarray(data)[: counts.sum()].reshape(-1, 3), offsets, counts)
    arrs = [np.asarray(s).reshape(-1, 3) for s in streamlines]
    counts = np.fromiter((len(a) for a in arrs), np.int64, count=len(arrs))
    offsets = np.zeros(len(arrs), np.int64)
    if len(arrs) > 1:
        offsets[1:] = np.cumsum(counts)[:-1]
    points = np.concatenate(arrs, axis=0) if arrs else np.zeros((0, 3), np.float32)
    if points.dtype.kind != "f":
        points = points.astype(np.float32)
    return Packed(points, offsets, counts)


def unpack_streamlines(packed: Packed) -> list[np.ndarray]:
    """Back to a list of (n_i, 3) arrays (views into ``packed.points``)."""
    return np.split(packed.points, np.cumsum(packed.counts)[:-1]) if len(packed) else []


def segment_vectors(packed: Packed) -> tuple[np.ndarray, np.ndarray]:
    """(P, 3) vector from each point to the next point of its streamline, and (P,) bool ``has_next``
    (False at each streamline's last point, where the vector is zero). Cached on ``packed``."""
    seg, has_next, _ = packed._segments
    return seg, has_next


def step_lengths(packed: Packed) -> np.ndarray:
    """(P,) length (mm) of the step from each point to the next (0 at last points). Cached."""
    return packed._segments[2]


def unique_int(a: np.ndarray) -> np.ndarray:
    """Sorted unique values of an integer array (sort-based: much faster here than np.unique's
    hash path for millions of int64 keys)."""
    a = np.sort(np.asarray(a).reshape(-1))
    return a[np.r_[True, a[1:] != a[:-1]]] if a.size else a


# ----------------------------------------------------------------------------- voxels


def world_to_voxel(points: np.ndarray, affine) -> np.ndarray:
    """Continuous voxel coordinates (P, 3) of RAS+ mm ``points`` (voxel centres are integers).

    Column by column (a (P, 3) @ (3, 3) matmul is several times slower in numpy)."""
    return np.stack(_voxel_columns(points, affine), axis=1)


def _voxel_columns(points, affine) -> list[np.ndarray]:
    """The three continuous voxel coordinates of ``points`` as 1-D arrays, in the points' float
    precision (float32 streamlines stay float32: ~1e-5 voxel error, half the memory traffic)."""
    inv = [[float(v) for v in row] for row in np.linalg.inv(np.asarray(affine, float))]
    p = np.asarray(points).reshape(-1, 3)
    if p.dtype.kind != "f":
        p = p.astype(np.float64)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    return [x * inv[k][0] + y * inv[k][1] + z * inv[k][2] + inv[k][3] for k in range(3)]


def voxel_index_of_points(points: np.ndarray, affine, shape) -> np.ndarray:
    """Flat voxel index (P,) of the voxel containing each point (nearest centre); -1 outside."""
    shape = [int(s) for s in shape[:3]]
    flat = None
    inside = None
    for c, n in zip(_voxel_columns(points, affine), shape):
        ok = (c > -0.5) & (c < n - 0.5)  # False for NaN
        i = np.rint(np.where(ok, c, 0)).astype(np.int64)
        inside = ok if inside is None else inside & ok
        flat = i if flat is None else flat * n + i
    flat[~inside] = -1
    return flat


def densify_points(packed: Packed, max_step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on every segment at most ``max_step_mm`` apart, for voxel traversal: the original
    points followed by interior points of the longer segments. Returns (Q, 3) points and (Q,)
    streamline index of each."""
    seg, _ = segment_vectors(packed)
    seg_len = step_lengths(packed)
    # only these segments get interior points (a relative 1e-4 tolerance absorbs float32 rounding)
    long = np.flatnonzero(seg_len > max_step_mm * (1 + 1e-4))
    if not long.size:
        return packed.points, packed.ids
    k = np.ceil(seg_len[long] / max_step_mm).astype(np.int64) - 1  # interior points per segment
    src = np.repeat(long, k)
    frac = (np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k) + 1) / np.repeat(k + 1, k)
    extra = packed.points[src] + seg[src] * frac[:, None]
    return (np.concatenate([packed.points, extra.astype(packed.points.dtype)]),
            np.concatenate([packed.ids, packed.ids[src]]))


def streamline_voxels(packed: Packed, affine, shape, max_step_mm: float | None = None,
                      point_voxels: np.ndarray | None = None):
    """Unique (streamline, flat voxel) pairs visited by the streamlines (segments traversed every
    <= ``max_step_mm``, default half the smallest voxel size). ``point_voxels``: the flat voxel
    index of ``packed.points`` if already known. Returns (sid, voxel) int64 arrays, sorted."""
    if max_step_mm is None:
        max_step_mm = 0.5 * float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).min())
    pts, sid = densify_points(packed, max_step_mm)
    if point_voxels is None:
        vox = voxel_index_of_points(pts, affine, shape)
    else:  # densify_points keeps the original points first
        vox = np.concatenate([point_voxels,
                              voxel_index_of_points(pts[len(point_voxels):], affine, shape)])
    nvox = int(np.prod(shape[:3]))
    key = sid * nvox + vox
    # drop consecutive repeats first (cheap: most steps stay in their voxel), then sort-unique
    keep = (vox >= 0) & np.r_[True, key[1:] != key[:-1]]
    key = unique_int(key[keep])
    return key // nvox, key % nvox


def density_map(packed: Packed, affine, shape, max_step_mm: float | None = None) -> np.ndarray:
    """Number of streamlines visiting each voxel (track-density image, int32, shape[:3])."""
    _, vox = streamline_voxels(packed, affine, shape, max_step_mm)
    counts = np.bincount(vox, minlength=int(np.prod(shape[:3])))
    return counts.reshape(tuple(shape[:3])).astype(np.int32)


def _as_mask(mask, threshold: float = 0.5) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    return m.astype(bool) if m.dtype == bool or m.dtype.kind in "iu" else m > threshold


# ----------------------------------------------------------------------------- sanity


def non_finite(packed: Packed) -> np.ndarray:
    """(N,) bool: the streamline has a NaN or infinite coordinate."""
    bad = ~np.isfinite(packed.points).all(axis=1)
    return packed.reduce(np.logical_or, bad, False).astype(bool)


def turning_angles(packed: Packed) -> np.ndarray:
    """(P,) turning angle (degrees) at each interior point (0 at endpoints, zero-length steps)."""
    seg, has_next = segment_vectors(packed)
    n = step_lengths(packed)
    u = np.divide(seg, n[:, None], out=np.zeros_like(seg), where=n[:, None] > 0)
    ang = np.zeros(len(seg))
    if len(seg) > 1:
        # angle at point j+1 between segment j (j -> j+1) and segment j+1 (j+1 -> j+2)
        both = has_next[:-1] & has_next[1:] & (n[:-1] > 0) & (n[1:] > 0)
        cos = np.clip(np.einsum("ij,ij->i", u[:-1], u[1:]), -1.0, 1.0)
        ang[1:] = np.where(both, np.degrees(np.arccos(cos)), 0.0)
    return ang


def self_approach(packed: Packed, cell_mm: float = 2.0, min_arc_mm: float = 15.0) -> np.ndarray:
    """(N,) bool: a streamline comes back into a ``cell_mm`` grid cell it visited at least
    ``min_arc_mm`` of arc length earlier (a loop / self-approach). Consecutive points in one cell
    are merged into runs, then the runs are sorted by (streamline, cell) key; points in neighbouring
    cells are not compared (a heuristic)."""
    n = len(packed)
    if n == 0 or len(packed.points) == 0:
        return np.zeros(n, bool)
    step = step_lengths(packed)
    nz = packed.counts > 0
    arc = np.cumsum(step) - step  # arc length from the start of the concatenation to each point
    arc -= np.repeat(arc[packed.offsets[nz]], packed.counts[nz])
    cell = np.floor(world_to_voxel(packed.points, np.diag([cell_mm] * 3 + [1.0])))
    cell = np.nan_to_num(cell, nan=0.0, posinf=0.0, neginf=0.0).astype(np.int64)  # (degenerate)
    cell -= cell.min(0)
    ext = cell.max(0) + 1
    sid = packed.ids
    key = ((sid * ext[0] + cell[:, 0]) * ext[1] + cell[:, 1]) * ext[2] + cell[:, 2]
    run_start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    run_end = np.r_[run_start[1:], len(key)] - 1
    rkey = key[run_start]
    order = np.argsort(rkey, kind="stable")
    rkey = rkey[order]
    lo, hi = arc[run_start][order], arc[run_end][order]
    first = np.flatnonzero(np.r_[True, rkey[1:] != rkey[:-1]])
    multi = np.diff(np.r_[first, len(rkey)]) > 1  # the cell was entered more than once
    span = np.maximum.reduceat(hi, first) - np.minimum.reduceat(lo, first)
    out = np.zeros(n, bool)
    hit = first[multi & (span >= min_arc_mm)]
    out[sid[run_start[order[hit]]]] = True
    return out


def sanity_metrics(
    streamlines,
    affine,
    shape,
    *,
    wm_mask=None,
    gm_mask=None,
    brain_mask=None,
    min_length_mm: float = 10.0,
    max_angle_deg: float = 60.0,
    loop_turning_deg: float = 360.0,
    mask_threshold: float = 0.5,
) -> tuple[dict, dict]:
    """Sanity checks of a tractogram (RAS+ mm streamlines on the grid ``affine``/``shape``).

    Returns ``(flags, metrics)``. ``flags`` maps a name to an (N,) bool array:

    * ``degenerate``: fewer than 2 points, length < ``min_length_mm`` or a non-finite coordinate;
    * ``out_of_volume``: a point outside the reference grid (beyond the outer voxel faces, i.e. its
      nearest voxel centre is not on the grid);
    * ``out_of_brain``: a point outside ``brain_mask`` (only when given);
    * ``sharp_turn``: a turning angle between consecutive steps > ``max_angle_deg``;
    * ``loop``: cumulative turning > ``loop_turning_deg`` or a self-approach
      (:func:`self_approach`).

    ``metrics`` (JSON-able) holds counts of each flag, length statistics (mm; over streamlines with
    >= 2 points), the mean step (mm), turning-angle statistics, and when masks are given the
    fraction of points inside WM, of endpoints in GM, of points in the brain, and the fraction of
    WM voxels visited by at least one streamline (density-map coverage). Probabilistic masks are
    binarised at ``> mask_threshold``; integer/bool masks are used as they are.
    """
    pk = pack_streamlines(streamlines)
    n = len(pk)
    shape = tuple(int(s) for s in shape[:3])
    _, has_next = segment_vectors(pk)
    step = step_lengths(pk)
    length = pk.reduce(np.add, step, 0.0)
    ang = turning_angles(pk)
    max_turn = pk.reduce(np.maximum, ang, 0.0)
    cum_turn = pk.reduce(np.add, ang, 0.0)

    flat = voxel_index_of_points(pk.points, affine, shape)
    pt_out = flat < 0  # the point's nearest voxel centre is outside the grid

    flags = {
        "degenerate": (pk.counts < 2) | ~(length >= min_length_mm) | non_finite(pk),
        "out_of_volume": pk.reduce(np.logical_or, pt_out, False).astype(bool),
        "sharp_turn": max_turn > max_angle_deg,
        "loop": (cum_turn > loop_turning_deg) | self_approach(pk),
    }

    ok = (pk.counts >= 2) & np.isfinite(length)
    lens = length[ok]
    good_step = has_next & np.isfinite(step)
    metrics: dict = {
        "n_streamlines": n,
        "n_points": int(len(pk.points)),
        "mean_points": float(pk.counts.mean()) if n else 0.0,
        "length_mm": {
            "mean": float(lens.mean()) if lens.size else None,
            "median": float(np.median(lens)) if lens.size else None,
            "min": float(lens.min()) if lens.size else None,
            "max": float(lens.max()) if lens.size else None,
            "std": float(lens.std()) if lens.size else None,
        },
        "mean_step_mm": float(step[good_step].mean()) if good_step.any() else None,
        "max_step_mm": float(step[good_step].max()) if good_step.any() else None,
        "turning_deg": {
            "mean_max": float(max_turn[ok].mean()) if ok.any() else None,
            "max": float(max_turn[ok].max()) if ok.any() else None,
            "mean_cumulative": float(cum_turn[ok].mean()) if ok.any() else None,
        },
        "min_length_mm": float(min_length_mm),
        "max_angle_deg": float(max_angle_deg),
    }
    for name, f in flags.items():
        metrics[f"n_{name}"] = int(f.sum())
        metrics[f"fraction_{name}"] = float(f.mean()) if n else 0.0

    def _frac_in(mask, idx):
        m = np.r_[mask.reshape(-1), False]  # sentinel for "outside the grid"
        return float(m[idx].mean()) if idx.size else None

    wm = _as_mask(wm_mask, mask_threshold)
    gm = _as_mask(gm_mask, mask_threshold)
    brain = _as_mask(brain_mask, mask_threshold)
    sentinel_flat = np.where(flat < 0, int(np.prod(shape)), flat)
    if wm is not None:
        metrics["fraction_points_in_wm"] = _frac_in(wm, sentinel_flat)
        _, vox = streamline_voxels(pk, affine, shape, point_voxels=flat)
        visited = np.zeros(int(np.prod(shape)), bool)
        visited[vox] = True
        n_wm = int(wm.sum())
        metrics["wm_coverage"] = float((visited & wm.reshape(-1)).sum() / n_wm) if n_wm else None
    if gm is not None:
        nz = pk.counts > 0
        ends = np.r_[pk.offsets[nz], pk.last[nz]]
        metrics["fraction_endpoints_in_gm"] = _frac_in(gm, sentinel_flat[ends])
    if brain is not None:
        m = np.r_[brain.reshape(-1), False]
        outside = ~m[sentinel_flat]
        flags["out_of_brain"] = pk.reduce(np.logical_or, outside, False).astype(bool)
        metrics["fraction_points_in_brain"] = float(1.0 - outside.mean()) if outside.size else None
        metrics["n_out_of_brain"] = int(flags["out_of_brain"].sum())
        metrics["fraction_out_of_brain"] = float(flags["out_of_brain"].mean()) if n else 0.0
    bad = np.zeros(n, bool)
    for f in flags.values():
        bad |= f
    metrics["n_flagged"] = int(bad.sum())  # streamlines with at least one flag
    return flags, metrics
