"""Waypoint-ROI recognition in subject space, pyAFQ-style semantics (own, vectorised
implementation; the atlas on disk is read by :func:`load_waypoint_atlas`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ...errors import BadDataError, NoInputError, UsageError
from .common import (AtlasRecognition, _finish, _Flat, _sample_volume_vox_trilinear,
                     _voxel_sizes, _winners, degenerate_mask)


@dataclass
class WaypointBundle:
    """One bundle's definition; masks are boolean arrays on the atlas grid (subject space).

    ``include``: the streamline must pass within ``dist_mm`` of EVERY include ROI (in list order
    when ``ordered``); ``exclude``: of none; ``start``/``end``: its endpoints must lie within
    ``endpoint_dist_mm`` of these ROIs (either orientation); ``prob_map`` (float, same grid): the
    mean probability along the streamline must exceed ``prob_threshold``."""

    include: list = field(default_factory=list)
    exclude: list = field(default_factory=list)
    start: np.ndarray | None = None
    end: np.ndarray | None = None
    prob_map: np.ndarray | None = None
    prob_threshold: float = 0.0


@dataclass
class WaypointAtlas:
    """Bundle definitions + the grid of their masks (``affine``: voxel -> RAS+ mm)."""

    bundles: dict
    affine: np.ndarray | None = None
    shape: tuple | None = None

    @property
    def bundle_names(self) -> list[str]:
        return list(self.bundles)


def _load_nifti(path: Path):
    if not path.is_file():
        raise NoInputError(f"waypoint atlas: file not found: {path}")
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, img.shape[:3]


def load_waypoint_atlas(path) -> WaypointAtlas:
    """Read ``waypoints.json``::

        {"bundles": {"Name": {"include": ["roi1.nii.gz", ...], "exclude": [...],
                              "start": "...", "end": "...",          # optional
                              "prob_map": "...", "prob_threshold": 0.0}}}   # optional

    Paths are relative to the JSON file; all images must share one grid in subject space (the
    space of the tractogram; no registration is done). Masks are ``data > 0``."""
    path = Path(path)
    if not path.is_file():
        raise NoInputError(f"waypoint atlas not found: {path}")
    try:
        spec = json.loads(path.read_text())
        entries = spec["bundles"]
        if not isinstance(entries, dict) or not entries:
            raise ValueError("'bundles' must be a non-empty object")
    except (ValueError, KeyError, TypeError) as exc:
        raise BadDataError(f"waypoint atlas {path}: invalid JSON ({exc})") from exc
    grid: dict = {}

    def read(rel, kind="mask"):
        data, aff, shape = _load_nifti(path.parent / rel)
        if not grid:
            grid.update(affine=np.asarray(aff, float), shape=tuple(int(s) for s in shape))
        elif shape != grid["shape"] or not np.allclose(aff, grid["affine"], atol=1e-4):
            raise BadDataError(f"waypoint atlas {path}: {rel} is not on the grid of the other "
                               "ROIs (all ROIs must share one subject-space grid)")
        data = np.asarray(data, float).reshape(shape)
        return data > 0 if kind == "mask" else data

    bundles = {}
    for name, e in entries.items():
        unknown = set(e) - {"include", "exclude", "start", "end", "prob_map", "prob_threshold"}
        if unknown:
            raise BadDataError(f"waypoint atlas {path}: bundle {name}: unknown keys "
                               f"{sorted(unknown)}")
        b = WaypointBundle(
            include=[read(r) for r in e.get("include", [])],
            exclude=[read(r) for r in e.get("exclude", [])],
            start=read(e["start"]) if e.get("start") else None,
            end=read(e["end"]) if e.get("end") else None,
            prob_map=read(e["prob_map"], "map") if e.get("prob_map") else None,
            prob_threshold=float(e.get("prob_threshold", 0.0)))
        if not (b.include or b.start is not None or b.end is not None):
            raise BadDataError(f"waypoint atlas {path}: bundle {name} needs include or "
                               "start/end ROIs")
        bundles[str(name)] = b
    return WaypointAtlas(bundles, grid["affine"], grid["shape"])


def save_waypoint_atlas(atlas: WaypointAtlas, out_dir, affine=None) -> Path:
    """Write ``atlas`` as ``out_dir/waypoints.json`` + one NIfTI per ROI; returns the JSON path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(atlas.affine if affine is None else affine, float)
    spec = {}

    def write(arr, fname, dtype=np.uint8):
        nib.save(nib.Nifti1Image(np.asarray(arr).astype(dtype), affine), str(out_dir / fname))
        return fname

    for name, b in atlas.bundles.items():
        e: dict = {kind: [write(m, f"{name}_{kind}{i}.nii.gz") for i, m in enumerate(masks)]
                   for kind, masks in (("include", b.include), ("exclude", b.exclude))}
        if b.start is not None:
            e["start"] = write(b.start, f"{name}_start.nii.gz")
        if b.end is not None:
            e["end"] = write(b.end, f"{name}_end.nii.gz")
        if b.prob_map is not None:
            e["prob_map"] = write(b.prob_map, f"{name}_prob.nii.gz", np.float32)
            e["prob_threshold"] = float(b.prob_threshold)
        spec[name] = e
    path = out_dir / "waypoints.json"
    path.write_text(json.dumps({"bundles": spec}, indent=2) + "\n")
    return path


class _RoiDistanceVox:
    """Distance (mm) from world points to an ROI mask, pyAFQ 3.4's convention: the Euclidean
    distance transform of the mask's complement (mm, between voxel centres) minus half a voxel,
    trilinearly interpolated — negative inside the ROI, ~0 on its faces. Computed on the mask's
    bounding box padded by ``margin_mm`` (farther points get +inf)."""

    def __init__(self, mask: np.ndarray, affine: np.ndarray, margin_mm: float):
        mask = np.asarray(mask, bool)
        affine = np.asarray(affine, float)
        vs = _voxel_sizes(affine)
        self.half = 0.5 * float(vs.mean())
        ijk = np.argwhere(mask)
        self.empty = len(ijk) == 0
        if self.empty:
            return
        pad = int(math.ceil((margin_mm + self.half) / vs.min())) + 2
        self.lo = np.maximum(ijk.min(0) - pad, 0)
        hi = np.minimum(ijk.max(0) + pad + 1, mask.shape)
        crop = mask[tuple(slice(a, b) for a, b in zip(self.lo, hi))]
        self.edt = ndimage.distance_transform_edt(~crop, sampling=vs) - self.half
        self.origin = affine[:3, 3]
        self.inv = np.linalg.inv(affine[:3, :3])

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        if self.empty or len(pts) == 0:
            return np.full(len(pts), np.inf)
        ijk = (np.asarray(pts, float) - self.origin) @ self.inv.T - self.lo
        inside = np.all((ijk >= 0) & (ijk <= np.array(self.edt.shape) - 1), axis=1)
        vals = np.full(len(pts), np.inf)
        vals[inside] = ndimage.map_coordinates(self.edt, ijk[inside].T, order=1, mode="nearest")
        return vals


def _segment_min(d: np.ndarray, local_off: np.ndarray, lens: np.ndarray):
    """Per segment: min value and the (first) position of the min along the segment."""
    if len(lens) == 0:
        return np.zeros(0), np.zeros(0, np.int64)
    seg_min = np.minimum.reduceat(d, local_off)
    seg = np.repeat(np.arange(len(lens)), lens)
    pos = np.arange(len(d)) - local_off[seg]
    pos = np.where(d <= seg_min[seg], pos, np.iinfo(np.int64).max)
    return seg_min, np.minimum.reduceat(pos, local_off)


def _mask_affine(atlas: WaypointAtlas, affine):
    """The grid of the atlas masks: the atlas's own affine, else the one given."""
    return atlas.affine if atlas.affine is not None else affine


def recognize_waypoints(streamlines, atlas: WaypointAtlas, affine=None, *, dist_mm: float = 0.0,
                        endpoint_dist_mm: float = 4.0, ordered: bool = True,
                        min_streamlines: int = 1) -> AtlasRecognition:
    """Waypoint-ROI recognition (pyAFQ-style semantics, own vectorised implementation).

    Per bundle, a streamline is accepted when (in this order, each step on the survivors only):

    * ``prob_map``: its mean trilinear probability over its points > ``prob_threshold``;
    * ``start``/``end``: its endpoints lie within ``endpoint_dist_mm`` (default 4 mm, pyAFQ's
      ``dist_to_atlas``) of the start/end ROIs, in either orientation; the orientation that fits
      (the closer one if both fit) fixes its direction (start -> end);
    * ``include``: some point lies within ``dist_mm`` of EVERY include ROI (distance to an ROI =
      trilinear distance transform of its complement minus half a voxel, as in pyAFQ 3.4; so
      ``dist_mm = 0``, pyAFQ's default, means "inside the ROI"). Without start/end ROIs the orientation comes from the
      include ROIs (first ROI before the last, like pyAFQ). With ``ordered=True`` (default) the
      closest points to the include ROIs must come in list order along the oriented streamline —
      stricter than pyAFQ, which uses only the first and last include ROIs to orient;
    * ``exclude``: no point within ``dist_mm`` of any exclude ROI.

    A streamline accepted by several bundles goes to the one with the smallest mean ROI distance
    (include distances and the endpoint distances used), ties to the first in atlas order (as in
    pyAFQ 3.4). ``scores`` = that mean distance (mm). The masks' grid is ``atlas.affine``
    (voxel -> RAS+ mm; set by :func:`load_waypoint_atlas`); ``affine`` is used only for an
    in-memory atlas without one (e.g. masks on the tractogram's reference grid).
    """
    affine = _mask_affine(atlas, affine)
    if affine is None:
        raise UsageError("recognize_waypoints: the atlas grid's affine is needed")
    affine = np.asarray(affine, float)
    names = atlas.bundle_names
    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    flat = _Flat(streamlines, ~degenerate)
    valid_idx = np.nonzero(~degenerate)[0]
    accepted = np.zeros((len(names), n), bool)
    cost = np.full((len(names), n), np.inf)
    flip_all = np.zeros((len(names), n), bool)
    cache: dict[int, _RoiDistanceVox] = {}
    margin = max(float(dist_mm), float(endpoint_dist_mm))

    def roi(mask):
        key = id(mask)
        if key not in cache:
            cache[key] = _RoiDistanceVox(mask, affine, margin)
        return cache[key]

    for b, name in enumerate(names):
        bd: WaypointBundle = atlas.bundles[name]
        idx = valid_idx
        if bd.prob_map is not None and len(idx):
            pts, off, lens = flat.gather(idx)
            vals = _sample_volume_vox_trilinear(bd.prob_map, affine, pts)
            mean_p = np.add.reduceat(vals, off) / lens
            idx = idx[mean_p > bd.prob_threshold]
        dsum = np.zeros(len(idx))
        nterm = np.zeros(len(idx))
        flip = np.zeros(len(idx), bool)
        oriented = bd.start is not None or bd.end is not None
        if oriented and len(idx):
            f, l_ = flat.first(idx), flat.last(idx)
            fwd, rev = np.zeros(len(idx)), np.zeros(len(idx))
            ok_f, ok_r = np.ones(len(idx), bool), np.ones(len(idx), bool)
            for mask, p_fwd, p_rev in ((bd.start, f, l_), (bd.end, l_, f)):
                if mask is None:
                    continue
                d_f, d_r = roi(mask)(p_fwd), roi(mask)(p_rev)
                ok_f &= d_f <= endpoint_dist_mm
                ok_r &= d_r <= endpoint_dist_mm
                fwd, rev = fwd + d_f, rev + d_r
            flip = ok_r & (~ok_f | (rev < fwd))
            keep = ok_f | ok_r
            dsum = np.where(flip, rev, fwd)[keep]
            nterm = np.full(int(keep.sum()), float((bd.start is not None) + (bd.end is not None)))
            idx, flip = idx[keep], flip[keep]
        if bd.include and len(idx):
            pts, off, lens = flat.gather(idx)
            ok = np.ones(len(idx), bool)
            positions = []
            for mask in bd.include:
                seg_min, seg_pos = _segment_min(roi(mask)(pts), off, lens)
                ok &= seg_min <= dist_mm
                dsum = dsum + np.where(np.isfinite(seg_min), seg_min, 0.0)
                positions.append(seg_pos)
            nterm = nterm + len(bd.include)
            pos = np.stack(positions)  # (n_include, n_idx), along the stored direction
            if not oriented and len(bd.include) > 1:
                flip = pos[0] > pos[-1]
            pos = np.where(flip, (lens - 1)[None] - pos, pos)
            if ordered and len(bd.include) > 1:
                ok &= np.all(np.diff(pos, axis=0) >= 0, axis=0)
            idx, flip, dsum, nterm = idx[ok], flip[ok], dsum[ok], nterm[ok]
        if bd.exclude and len(idx):
            pts, off, lens = flat.gather(idx)
            hit = np.zeros(len(idx), bool)
            for mask in bd.exclude:
                seg_min, _ = _segment_min(roi(mask)(pts), off, lens)
                hit |= seg_min <= dist_mm
            idx, flip, dsum, nterm = idx[~hit], flip[~hit], dsum[~hit], nterm[~hit]
        accepted[b, idx] = True
        cost[b, idx] = dsum / np.maximum(nterm, 1)
        flip_all[b, idx] = flip

    labels, flipped, scores = _winners(accepted, cost, flip_all, names, degenerate)
    params = {"dist_mm": float(dist_mm), "endpoint_dist_mm": float(endpoint_dist_mm),
              "ordered": bool(ordered), "min_streamlines": int(min_streamlines)}
    return _finish("waypoints", labels, names, flipped, scores, min_streamlines, params)

