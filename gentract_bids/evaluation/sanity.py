"""Sanity metrics of any tractogram (always run): geometry, volume, tissue and coverage checks.

Everything works on one concatenated point array (ArraySequence-like: ``points`` (P, 3),
``offsets`` (N,), ``counts`` (N,)) with per-point quantities reduced per streamline by
``np.add.reduceat`` / ``np.maximum.reduceat`` over the non-empty streamlines — no Python loop over
streamlines, so 100k streamlines of ~50 points take a few seconds.

Streamlines are RAS+ millimetres (world space); ``affine`` maps voxel indices to RAS+ mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- concatenated form


@dataclass
class Packed:
    """Streamlines as one point array: streamline ``i`` is ``points[offsets[i]:offsets[i]+counts[i]]``."""

    points: np.ndarray  # (P, 3) float
    offsets: np.ndarray  # (N,) int64
    counts: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.counts.size)

    @property
    def ids(self) -> np.ndarray:
        """(P,) streamline index of each point."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.counts)

    @property
    def last(self) -> np.ndarray:
        """(N,) index of each streamline's last point (meaningless where counts == 0)."""
        return self.offsets + np.maximum(self.counts, 1) - 1

    def reduce(self, ufunc, per_point: np.ndarray, empty=0):
        """Per-streamline ``ufunc.reduceat`` of a per-point array; ``empty`` for empty streamlines."""
        out = np.full(len(self), empty, dtype=np.result_type(per_point.dtype, np.asarray(empty)))
        nz = self.counts > 0
        if nz.any():
            out[nz] = ufunc.reduceat(per_point, self.offsets[nz])
        return out


def pack_streamlines(streamlines) -> Packed:
    """Concatenate a list of (n_i, 3) arrays (or a nibabel ``ArraySequence``) into a :class:`Packed`.

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
    (False at each streamline's last point, where the vector is zero)."""
    p = packed.points
    has_next = np.ones(len(p), bool)
    has_next[packed.last[packed.counts > 0]] = False
    seg = np.zeros(p.shape, np.float64)
    if len(p) > 1:
        seg[:-1] = np.diff(p, axis=0)
    seg[~has_next] = 0.0
    return seg, has_next


# ----------------------------------------------------------------------------- voxels


def world_to_voxel(points: np.ndarray, affine) -> np.ndarray:
    """Continuous voxel coordinates (P, 3) of RAS+ mm ``points`` (voxel centres are integers)."""
    inv = np.linalg.inv(np.asarray(affine, float))
    return np.asarray(points, np.float64) @ inv[:3, :3].T + inv[:3, 3]


def voxel_index_of_points(points: np.ndarray, affine, shape) -> np.ndarray:
    """Flat voxel index (P,) of the voxel containing each point (nearest centre); -1 outside."""
    ijk = np.rint(world_to_voxel(points, affine)).astype(np.int64)
    shape = np.asarray(shape[:3], np.int64)
    inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
    flat = np.full(len(ijk), -1, np.int64)
    flat[inside] = np.ravel_multi_index(ijk[inside].T, tuple(shape))
    return flat


def densify_points(packed: Packed, max_step_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points on every segment at most ``max_step_mm`` apart (original points included), for voxel
    traversal. Returns (Q, 3) points and (Q,) streamline index of each."""
    seg, has_next = segment_vectors(packed)
    seg_len = np.sqrt((seg ** 2).sum(1))
    k = np.where(has_next, np.maximum(np.ceil(seg_len / max_step_mm), 1), 1).astype(np.int64)
    start = np.repeat(np.arange(len(k)), k)  # index of the point each new point starts from
    frac = np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
    frac = frac / np.repeat(k, k)
    pts = packed.points[start] + seg[start] * frac[:, None]
    return pts, packed.ids[start]


def streamline_voxels(packed: Packed, affine, shape, max_step_mm: float | None = None):
    """Unique (streamline, flat voxel) pairs visited by the streamlines (segments traversed every
    <= ``max_step_mm``, default half the smallest voxel size). Returns (sid, voxel) int64 arrays."""
    if max_step_mm is None:
        max_step_mm = 0.5 * float(np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)).min())
    pts, sid = densify_points(packed, max_step_mm)
    vox = voxel_index_of_points(pts, affine, shape)
    keep = vox >= 0
    nvox = int(np.prod(shape[:3]))
    key = np.unique(sid[keep] * nvox + vox[keep])
    return key // nvox, key % nvox


def density_map(packed: Packed, affine, shape, max_step_mm: float | None = None) -> np.ndarray:
    """Number of streamlines visiting each voxel (track-density image, int32, shape[:3])."""
    _, vox = streamline_voxels(packed, affine, shape, max_step_mm)
    return np.bincount(vox, minlength=int(np.prod(shape[:3]))).reshape(tuple(shape[:3])).astype(np.int32)


def _as_mask(mask, threshold: float = 0.5) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    return m.astype(bool) if m.dtype == bool or m.dtype.kind in "iu" else m > threshold


# ----------------------------------------------------------------------------- sanity


def turning_angles(packed: Packed) -> np.ndarray:
    """(P,) turning angle in degrees at each interior point (0 at endpoints and zero-length steps)."""
    seg, has_next = segment_vectors(packed)
    n = np.sqrt((seg ** 2).sum(1))
    u = np.divide(seg, n[:, None], out=np.zeros_like(seg), where=n[:, None] > 0)
    ang = np.zeros(len(seg))
    if len(seg) > 1:
        # angle at point j+1 between segment j (j -> j+1) and segment j+1 (j+1 -> j+2)
        both = has_next[:-1] & has_next[1:] & (n[:-1] > 0) & (n[1:] > 0)
        cos = np.clip((u[:-1] * u[1:]).sum(1), -1.0, 1.0)
        ang[1:] = np.where(both, np.degrees(np.arccos(cos)), 0.0)
    return ang


def self_approach(packed: Packed, cell_mm: float = 2.0, min_arc_mm: float = 15.0) -> np.ndarray:
    """(N,) bool: a streamline comes back into a ``cell_mm`` grid cell it visited at least
    ``min_arc_mm`` of arc length earlier (a loop / self-approach). One sort of all points by
    (streamline, cell) key; points in neighbouring cells are not compared (a heuristic)."""
    n = len(packed)
    if n == 0 or len(packed.points) == 0:
        return np.zeros(n, bool)
    seg, _ = segment_vectors(packed)
    step = np.sqrt((seg ** 2).sum(1))
    cum = np.cumsum(step)
    arc = cum - step  # arc length from the start of the concatenation to each point
    arc = arc - np.repeat(arc[packed.offsets[packed.counts > 0]], packed.counts[packed.counts > 0])
    cell = np.floor(np.asarray(packed.points, np.float64) / cell_mm).astype(np.int64)
    cell -= cell.min(0)
    ext = cell.max(0) + 1
    ckey = (cell[:, 0] * ext[1] + cell[:, 1]) * ext[2] + cell[:, 2]
    sid = packed.ids
    order = np.lexsort((arc, ckey, sid))
    k_sid, k_cell, k_arc = sid[order], ckey[order], arc[order]
    start = np.r_[True, (k_sid[1:] != k_sid[:-1]) | (k_cell[1:] != k_cell[:-1])]
    grp = np.cumsum(start) - 1
    first = np.flatnonzero(start)
    last = np.r_[first[1:], len(order)] - 1
    span = k_arc[last] - k_arc[first]  # arc spread within one (streamline, cell) group
    out = np.zeros(n, bool)
    out[k_sid[first][span >= min_arc_mm]] = True
    del grp
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
    """Sanity checks of a tractogram (RAS+ mm streamlines on the reference grid ``affine``/``shape``).

    Returns ``(flags, metrics)``. ``flags`` maps a name to an (N,) bool array:

    * ``degenerate``: fewer than 2 points or length < ``min_length_mm``;
    * ``out_of_volume``: a point outside the reference grid (beyond the outer voxel faces);
    * ``out_of_brain``: a point outside ``brain_mask`` (only when given);
    * ``sharp_turn``: a turning angle between consecutive steps > ``max_angle_deg``;
    * ``loop``: cumulative turning > ``loop_turning_deg`` or a self-approach (:func:`self_approach`).

    ``metrics`` (JSON-able) holds counts of each flag, length statistics (mm; over streamlines with
    >= 2 points), the mean step (mm), turning-angle statistics, and when masks are given the
    fraction of points inside WM, of endpoints in GM, of points in the brain, and the fraction of
    WM voxels visited by at least one streamline (density-map coverage). Probabilistic masks are
    binarised at ``> mask_threshold``; integer/bool masks are used as they are.
    """
    pk = pack_streamlines(streamlines)
    n = len(pk)
    shape = tuple(int(s) for s in shape[:3])
    seg, has_next = segment_vectors(pk)
    step = np.sqrt((seg ** 2).sum(1))
    length = pk.reduce(np.add, step, 0.0)
    ang = turning_angles(pk)
    max_turn = pk.reduce(np.maximum, ang, 0.0)
    cum_turn = pk.reduce(np.add, ang, 0.0)

    vc = world_to_voxel(pk.points, affine)
    pt_out = np.any((vc < -0.5) | (vc >= np.asarray(shape) - 0.5), axis=1)
    flat = voxel_index_of_points(pk.points, affine, shape)

    flags = {
        "degenerate": (pk.counts < 2) | (length < min_length_mm),
        "out_of_volume": pk.reduce(np.logical_or, pt_out, False).astype(bool),
        "sharp_turn": max_turn > max_angle_deg,
        "loop": (cum_turn > loop_turning_deg) | self_approach(pk),
    }

    ok = pk.counts >= 2
    lens = length[ok]
    nseg = int(has_next.sum())
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
        "mean_step_mm": float(step[has_next].mean()) if nseg else None,
        "max_step_mm": float(step[has_next].max()) if nseg else None,
        "turning_deg": {
            "mean_max": float(max_turn[ok].mean()) if ok.any() else None,
            "max": float(max_turn.max()) if n else None,
            "mean_cumulative": float(cum_turn[ok].mean()) if ok.any() else None,
        },
        "min_length_mm": float(min_length_mm),
        "max_angle_deg": float(max_angle_deg),
    }
    for name, f in flags.items():
        metrics[f"n_{name}"] = int(f.sum())
        metrics[f"fraction_{name}"] = float(f.mean()) if n else 0.0
    bad = np.zeros(n, bool)
    for f in flags.values():
        bad |= f
    metrics["n_flagged"] = int(bad.sum())

    def _frac_in(mask, idx):
        m = np.r_[mask.reshape(-1), False]  # sentinel for "outside the grid"
        return float(m[idx].mean()) if idx.size else None

    wm = _as_mask(wm_mask, mask_threshold)
    gm = _as_mask(gm_mask, mask_threshold)
    brain = _as_mask(brain_mask, mask_threshold)
    sentinel_flat = np.where(flat < 0, int(np.prod(shape)), flat)
    if wm is not None:
        metrics["fraction_points_in_wm"] = _frac_in(wm, sentinel_flat)
        _, vox = streamline_voxels(pk, affine, shape)
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
    return flags, metrics
