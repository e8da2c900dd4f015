"""Atlas-mode bundle recognition for real data (no ground truth).

Every atlas comes from a path the user gives; nothing is downloaded. Four methods, each returning an
:class:`AtlasRecognition` (one label per streamline + the shared metrics summary of
:func:`gentract_bids.evaluation.metrics.summarise`):

1. :func:`recognize_waypoints` — waypoint ROIs in subject space, pyAFQ-style semantics (own,
   vectorised implementation; atlas on disk read by :func:`load_waypoint_atlas`).
2. :func:`recognize_recobundles` — dipy's RecoBundles with the user's model bundles
   (:func:`load_model_bundles`), one call per bundle, conflicts resolved by distance.
3. :func:`recognize_pyafq` — pyAFQ's own ``recognize`` (optional extra ``afq``: pyAFQ==3.4) on the
   same waypoint atlas.
4. :func:`recognize_bundleseg` — scilpy's ``scil_tractogram_segment_with_bundleseg`` run as a
   subprocess (scilpy lives in its own environment); its ``results.json`` is read back by
   :func:`parse_bundleseg_results`.

Labels: a bundle name when recognised, :data:`UNRECOGNIZED` otherwise, :data:`DEGENERATE` for
streamlines with fewer than two points or non-finite coordinates. Streamlines are lists of (n, 3)
arrays in RAS+ millimetres; voxel space only appears inside functions named ``*_vox*``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import BadDataError, GenTractError, NoInputError, UsageError
from .metrics import summarise

UNRECOGNIZED = "unrecognized"
DEGENERATE = "degenerate"
MODE = "atlas"
BUNDLESEG_SCRIPT = "scil_tractogram_segment_with_bundleseg"
TRACTOGRAM_EXTENSIONS = (".trk", ".tck", ".trx")


class MissingToolError(UsageError):
    """An optional recognition tool (pyAFQ, scilpy) is not installed / not on PATH."""


class AtlasToolFailed(GenTractError):
    """An external recognition tool ran but failed."""


# ----------------------------------------------------------------------------- results
@dataclass
class AtlasRecognition:
    """Result of one recognition method.

    ``labels``: str array (N,), bundle name / ``"unrecognized"`` / ``"degenerate"``.
    ``flipped``: bool (N,), True where the streamline runs against its bundle's orientation
    (reverse it to orient the bundle consistently; always False where a method has no notion of
    orientation). ``scores``: float (N,), the method's score of the winning bundle (see each
    method; NaN where unrecognised). ``summary``: the shared metrics dict.
    """

    method: str
    labels: np.ndarray
    flipped: np.ndarray
    scores: np.ndarray
    summary: dict

    def bundles(self, streamlines, oriented: bool = True) -> dict[str, list[np.ndarray]]:
        """``{bundle: [streamlines]}`` for every recognised bundle (reversed where ``flipped``
        when ``oriented``)."""
        out: dict[str, list[np.ndarray]] = {}
        for i, lab in enumerate(self.labels):
            if lab in (UNRECOGNIZED, DEGENERATE):
                continue
            s = np.asarray(streamlines[i])
            out.setdefault(str(lab), []).append(s[::-1] if oriented and self.flipped[i] else s)
        return out


def _finish(method: str, labels, bundle_names, flipped, scores, min_streamlines: int,
            parameters: dict) -> AtlasRecognition:
    labels = np.asarray(labels, dtype=object).astype(str)
    summary = summarise(MODE, labels, list(bundle_names), min_streamlines=min_streamlines,
                        extra={"atlas_method": method, "atlas_parameters": parameters})
    return AtlasRecognition(method, labels, np.asarray(flipped, bool),
                            np.asarray(scores, float), summary)


def degenerate_mask(streamlines) -> np.ndarray:
    """True for streamlines with < 2 points or any non-finite coordinate."""
    return np.array([len(s) < 2 or not np.all(np.isfinite(np.asarray(s, float)))
                     for s in streamlines], bool)


def _resolve_conflicts(accepted: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per streamline (column), the accepted bundle (row) with the lowest cost; ties go to the
    first bundle in atlas order; -1 where none accepted."""
    c = np.where(accepted, np.nan_to_num(cost, nan=1e30, posinf=1e30), np.inf)
    best = np.argmin(c, axis=0) if len(c) else np.zeros(accepted.shape[1], int)
    any_acc = accepted.any(axis=0) if len(c) else np.zeros(accepted.shape[1], bool)
    return np.where(any_acc, best, -1)


def _labels_from_winner(winner, names, degenerate) -> np.ndarray:
    labels = np.full(len(winner), UNRECOGNIZED, dtype=object)
    for b, name in enumerate(names):
        labels[winner == b] = name
    labels[degenerate] = DEGENERATE
    return labels


# ----------------------------------------------------------------------------- waypoint atlas
def _winners(accepted, cost, flip_all, names, degenerate):
    """Per streamline: the winning bundle's label, its orientation flag and its score."""
    n = accepted.shape[1]
    winner = _resolve_conflicts(accepted, cost)
    labels = _labels_from_winner(winner, names, degenerate)
    cols = np.arange(n)
    w = np.maximum(winner, 0)
    flipped = np.where(winner >= 0, flip_all[w, cols], False) if n else np.zeros(0, bool)
    scores = np.where(winner >= 0, cost[w, cols], np.nan) if n else np.zeros(0)
    return labels, flipped, scores


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


class _Flat:
    """All points of a tractogram in one (P, 3) array + offsets, for vectorised queries."""

    def __init__(self, streamlines, valid: np.ndarray):
        self.n = len(streamlines)
        self.lengths = np.array([len(s) if v else 0 for s, v in zip(streamlines, valid)], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        pts = [np.asarray(s, float) for s, v in zip(streamlines, valid) if v]
        self.points = np.concatenate(pts) if pts else np.zeros((0, 3))

    def gather(self, idx: np.ndarray):
        """Points of streamlines ``idx``: (pts, local offsets, lengths)."""
        lens = self.lengths[idx]
        starts = self.offsets[idx]
        local_off = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        rel = np.arange(int(lens.sum())) - np.repeat(local_off, lens)
        return self.points[np.repeat(starts, lens) + rel], local_off, lens

    def first(self, idx):
        return self.points[self.offsets[idx]]

    def last(self, idx):
        return self.points[self.offsets[idx] + self.lengths[idx] - 1]


def _voxel_sizes(affine) -> np.ndarray:
    return np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))


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


def _sample_volume_vox_trilinear(volume: np.ndarray, affine: np.ndarray, pts: np.ndarray):
    """Trilinear value of ``volume`` at world points (0 outside the grid)."""
    ijk = (pts - np.asarray(affine)[:3, 3]) @ np.linalg.inv(np.asarray(affine)[:3, :3]).T
    return ndimage.map_coordinates(np.asarray(volume, float), ijk.T, order=1, mode="constant",
                                   cval=0.0)


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


# ----------------------------------------------------------------------------- RecoBundles
def load_model_bundles(directory) -> dict[str, list[np.ndarray]]:
    """Model bundles from a folder of ``.trk/.tck/.trx`` files, one per bundle (name = file stem),
    sorted by name. They must be in the subject's space (RAS+ mm): no registration is done."""
    from ..io.tractogram import load_tractogram

    directory = Path(directory)
    if not directory.is_dir():
        raise NoInputError(f"model bundle folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in TRACTOGRAM_EXTENSIONS)
    if not files:
        raise NoInputError(f"no .trk/.tck/.trx model bundles in {directory}")
    models = {}
    for p in files:
        if p.stem in models:
            raise BadDataError(f"model bundle {p.stem} appears twice in {directory}")
        sl, _ = load_tractogram(p)
        models[p.stem] = sl
    return models


def _resample(streamlines, n_points: int) -> np.ndarray:
    from dipy.tracking.streamline import set_number_of_points

    if len(streamlines) == 0:
        return np.zeros((0, n_points, 3), np.float32)
    return np.asarray(set_number_of_points([np.asarray(s, np.float32) for s in streamlines],
                                           n_points), np.float32)


def _mdf_to_model(candidates: np.ndarray, model: np.ndarray):
    """Min MDF (mean of point distances, direct or flipped, the smaller) from each candidate to
    the model streamlines, and whether the flipped candidate matched better. Arrays (k, m, 3)."""
    best = np.full(len(candidates), np.inf)
    flip = np.zeros(len(candidates), bool)
    for a in range(0, len(candidates), 256):
        c = candidates[a:a + 256]
        direct = np.linalg.norm(c[:, None] - model[None], axis=-1).mean(-1)  # (k, M)
        flipped = np.linalg.norm(c[:, None, ::-1] - model[None], axis=-1).mean(-1)
        d = np.minimum(direct, flipped)
        j = np.argmin(d, axis=1)
        r = np.arange(len(c))
        best[a:a + 256] = d[r, j]
        flip[a:a + 256] = flipped[r, j] < direct[r, j]
    return best, flip


def recognize_recobundles(streamlines, model_bundles: dict, *, model_clust_thr: float = 1.25,
                          reduction_thr: float = 25.0, pruning_thr: float = 12.0,
                          clust_thr: float = 15.0, min_length_mm: float = 10.0,
                          slr: bool = True, slr_select: tuple = (400, 600),
                          whole_brain_slr: bool = False,
                          num_threads: int | None = None, max_model_streamlines: int = 500, rng=0,
                          min_streamlines: int = 1) -> AtlasRecognition:
    """dipy RecoBundles, one ``recognize`` call per model bundle.

    ``model_bundles``: ``{name: [streamlines]}`` in the SAME space as the subject (RAS+ mm; e.g.
    bundles of a template already registered to the subject, or another subject's bundles in a
    shared space). The whole-brain SLR step of the RecoBundles paper is not done (not needed for
    subject-space models) unless ``whole_brain_slr`` (affine SLR of all model streamlines onto
    the tractogram, as dipy's ``whole_brain_slr``, applied to the models first: use it when the
    models come from another subject or a template in roughly the same world space); each bundle
    still gets RecoBundles' local SLR when ``slr`` (its cost grows with ``slr_select``).
    Defaults follow pyAFQ (model_clust_thr 1.25, reduction 25, pruning 12 mm); ``clust_thr`` is
    the QuickBundles threshold for the tractogram; streamlines shorter than ``min_length_mm`` are
    ignored (dipy's default of 50 mm would drop short association fibres).

    Conflicts: a streamline recognised by several bundles goes to the bundle whose model
    streamlines (as given, i.e. before RecoBundles' local registration, which can pull a
    neighbouring bundle onto the model) are nearest in MDF (20 points, orientation-free); ties to
    the first bundle in ``model_bundles`` order. ``scores`` = that MDF distance (mm);
    ``flipped`` = the streamline runs against its nearest model streamline.
    """
    from dipy.segment.bundles import RecoBundles
    from dipy.tracking.streamline import Streamlines

    names = list(model_bundles)
    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    valid_idx = np.nonzero(~degenerate)[0]
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    accepted = np.zeros((len(names), n), bool)
    cost = np.full((len(names), n), np.inf)
    flip_all = np.zeros((len(names), n), bool)
    if len(valid_idx):
        sl = Streamlines([np.asarray(streamlines[i], np.float32) for i in valid_idx])
        rb = RecoBundles(sl, greater_than=min_length_mm, clust_thr=clust_thr, rng=gen,
                         verbose=False)
        if whole_brain_slr:
            model_bundles = _whole_brain_slr(sl, model_bundles, min_length_mm, gen, num_threads)
        for b, name in enumerate(names):
            model = [np.asarray(s, np.float32) for s in model_bundles[name] if len(s) >= 2]
            if not model:
                continue
            recognized, lab = rb.recognize(Streamlines(model), model_clust_thr=model_clust_thr,
                                           reduction_thr=reduction_thr, pruning_thr=pruning_thr,
                                           slr=slr, slr_select=tuple(slr_select),
                                           num_threads=num_threads)
            lab = np.asarray(lab, np.int64)
            if len(lab) == 0:
                continue
            if len(model) > max_model_streamlines:
                model = [model[i] for i in gen.choice(len(model), max_model_streamlines,
                                                      replace=False)]
            orig = valid_idx[lab]
            d, fl = _mdf_to_model(_resample([streamlines[i] for i in orig], 20),
                                  _resample(model, 20))
            accepted[b, orig] = True
            cost[b, orig] = d
            flip_all[b, orig] = fl
    labels, flipped, scores = _winners(accepted, cost, flip_all, names, degenerate)
    params = {"model_clust_thr": model_clust_thr, "reduction_thr": reduction_thr,
              "pruning_thr": pruning_thr, "clust_thr": clust_thr, "min_length_mm": min_length_mm,
              "slr": bool(slr), "slr_select": list(slr_select),
              "whole_brain_slr": bool(whole_brain_slr),
              "min_streamlines": int(min_streamlines)}
    return _finish("recobundles", labels, names, flipped, scores, min_streamlines, params)


def _whole_brain_slr(static, model_bundles: dict, min_length_mm: float, rng, num_threads,
                     qbx_thr=(40, 30, 20, 15), rm_small_clusters: int = 10):
    """Affine whole-brain SLR (Garyfallidis 2015: QuickBundlesX centroids of both sets, then
    progressive SLR up to affine) of the concatenated model bundles onto ``static``; returns the
    moved model bundles. Written out (rather than dipy's ``whole_brain_slr``) so that
    ``num_threads`` reaches the distance metric (dipy 1.12's progressive SLR ignores it)."""
    from dipy.align.streamlinear import (DEFAULT_BOUNDS, BundleMinDistanceMetric,
                                         progressive_slr, remove_clusters_by_size)
    from dipy.segment.clustering import qbx_and_merge
    from dipy.tracking.streamline import Streamlines, set_number_of_points, transform_streamlines

    def centroids(sl):
        sl = [np.asarray(s, np.float32) for s in sl]
        sl = [s for s in sl if len(s) > 1
              and np.linalg.norm(np.diff(s, axis=0), axis=1).sum() > min_length_mm]
        if not sl:
            raise BadDataError("whole-brain SLR: no streamline longer than min_length_mm")
        cmap = qbx_and_merge(Streamlines(set_number_of_points(sl, nb_points=20)), qbx_thr, rng=rng)
        cents = remove_clusters_by_size(cmap, min(rm_small_clusters, max(cmap.clusters_sizes())))
        return cents

    moving = [s for v in model_bundles.values() for s in v]
    metric = BundleMinDistanceMetric(num_threads=num_threads)
    slm = progressive_slr(centroids(static), centroids(moving), metric, "affine", DEFAULT_BOUNDS,
                          num_threads=num_threads)
    return {k: list(transform_streamlines([np.asarray(s, np.float32) for s in v], slm.matrix))
            for k, v in model_bundles.items()}


# ----------------------------------------------------------------------------- pyAFQ
def pyafq_available() -> bool:
    return importlib.util.find_spec("AFQ") is not None


def resample_to_step(streamlines, step_mm: float = 1.0) -> list[np.ndarray]:
    """Resample each streamline to points ``<= step_mm`` apart (n = ceil(length / step) + 1,
    at least 2): pyAFQ's cleaning uses the number of points as a length."""
    from dipy.tracking.streamline import set_number_of_points

    out = []
    for s in streamlines:
        s = np.asarray(s, np.float32)
        length = float(np.linalg.norm(np.diff(s, axis=0), axis=1).sum()) if len(s) > 1 else 0.0
        m = max(int(math.ceil(length / step_mm)) + 1, 2)
        out.append(np.asarray(set_number_of_points(s, m), np.float32) if len(s) > 1 else s)
    return out


def recognize_pyafq(streamlines, atlas: WaypointAtlas, affine=None, *, step_mm: float = 1.0,
                    dist_mm: float = 0.0, endpoint_dist_mm: float = 4.0,
                    prob_threshold: float = 0.0, rng: int = 0, cleaning_params: dict | None = None,
                    min_streamlines: int = 1) -> AtlasRecognition:
    """pyAFQ's ``AFQ.recognition.recognize.recognize`` (pyAFQ 3.4, optional extra ``afq``) on a
    subject-space waypoint atlas (every bundle gets ``"space": "subject"``; no registration, no
    template download: ``resample_to=False``). Streamlines are first resampled to ``step_mm``
    (pyAFQ's Mahalanobis cleaning treats the number of points as length). pyAFQ resolves
    conflicts itself (closest include ROI, then bundle order) and cleans each bundle (Mahalanobis,
    its defaults unless ``cleaning_params``). ``prob_threshold`` is pyAFQ's global threshold
    (the per-bundle ``WaypointBundle.prob_threshold`` is not used here). ``affine`` as in
    :func:`recognize_waypoints`. ``scores`` are NaN (pyAFQ does not return them)."""
    if not pyafq_available():
        raise MissingToolError("atlas recognition with pyAFQ needs the optional extra 'afq' "
                               "(pip install 'gentract[afq]', i.e. pyAFQ==3.4); AFQ is not "
                               "importable in this environment")
    from AFQ.api.bundle_dict import BundleDict
    from AFQ.recognition.recognize import recognize
    from dipy.io.stateful_tractogram import Space, StatefulTractogram

    affine = _mask_affine(atlas, affine)
    if affine is None:
        raise UsageError("recognize_pyafq: the atlas grid's affine is needed")
    affine = np.asarray(affine, float)
    shape = atlas.shape
    if shape is None:
        first = next(iter(atlas.bundles.values()))
        shape = (first.include or [first.start if first.start is not None else first.end])[0].shape
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    as_img = lambda m: nib.Nifti1Image(np.asarray(m, np.float32), affine)  # noqa: E731
    spec = {}
    for name, bd in atlas.bundles.items():
        e: dict = {"space": "subject"}
        if bd.include:
            e["include"] = [as_img(m) for m in bd.include]
        if bd.exclude:
            e["exclude"] = [as_img(m) for m in bd.exclude]
        if bd.start is not None:
            e["start"] = as_img(bd.start)
        if bd.end is not None:
            e["end"] = as_img(bd.end)
        if bd.prob_map is not None:
            e["prob_map"] = as_img(bd.prob_map)
        spec[name] = e
    names = list(spec)
    bundle_dict = BundleDict(spec, resample_to=False, resample_subject_to=False)
    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    valid_idx = np.nonzero(~degenerate)[0]
    labels = np.full(n, UNRECOGNIZED, dtype=object)
    flipped = np.zeros(n, bool)
    if len(valid_idx):
        res = resample_to_step([streamlines[i] for i in valid_idx], step_mm)
        sft = StatefulTractogram(res, ref, Space.RASMM)
        groups, _ = recognize(sft, ref, None, bundle_dict, ref, dist_to_waypoint=dist_mm,
                              dist_to_atlas=endpoint_dist_mm, prob_threshold=prob_threshold,
                              rng=rng, return_idx=True, cleaning_params=cleaning_params)
        for name in names:
            g = groups.get(name)
            if not g or len(g.get("idx", [])) == 0:
                continue
            idx = np.asarray(g["idx"], np.int64)
            labels[valid_idx[idx]] = name
            out = g["sl"]
            out.to_rasmm()
            for k, j in enumerate(idx):
                flipped[valid_idx[j]] = bool(np.allclose(out.streamlines[k][0], res[j][-1],
                                                         atol=1e-3)
                                             and not np.allclose(res[j][0], res[j][-1]))
    labels[degenerate] = DEGENERATE
    params = {"step_mm": step_mm, "dist_mm": dist_mm, "endpoint_dist_mm": endpoint_dist_mm,
              "prob_threshold": prob_threshold, "min_streamlines": int(min_streamlines)}
    return _finish("pyafq", labels, names, flipped, np.full(n, np.nan), min_streamlines, params)


# ----------------------------------------------------------------------------- BundleSeg
def bundleseg_atlas_paths(atlas_dir, config=None) -> tuple[Path, Path]:
    """(models parent folder, config JSON) of a BundleSeg atlas folder.

    Layout (as in scilpy's example atlas): ``DIR/<config>.json`` mapping each model file name to
    its pruning distance (e.g. ``{"AF_L.trk": 10, ...}``) and one or more atlas sub-folders
    ``DIR/<atlas>/AF_L.trk ...`` (each sub-folder is one atlas of the multi-atlas vote). ``config``
    overrides the JSON (needed when DIR holds several)."""
    atlas_dir = Path(atlas_dir)
    if not atlas_dir.is_dir():
        raise NoInputError(f"BundleSeg atlas folder not found: {atlas_dir}")
    if config is None:
        jsons = sorted(atlas_dir.glob("*.json"))
        if len(jsons) != 1:
            raise UsageError(f"BundleSeg atlas {atlas_dir}: expected exactly one config *.json, "
                             f"found {[p.name for p in jsons]}; pass the config explicitly")
        config = jsons[0]
    config = Path(config)
    if not config.is_file():
        raise NoInputError(f"BundleSeg config not found: {config}")
    if not any(p.is_dir() for p in atlas_dir.iterdir()):
        raise NoInputError(f"BundleSeg atlas {atlas_dir}: no atlas sub-folder with model bundles")
    return atlas_dir, config


def bundleseg_bundle_names(config) -> list[str]:
    """Bundle names (model file stems) in the order of the config JSON."""
    try:
        cfg = json.loads(Path(config).read_text())
    except ValueError as exc:
        raise BadDataError(f"BundleSeg config {config}: invalid JSON ({exc})") from exc
    if not isinstance(cfg, dict) or not cfg:
        raise BadDataError(f"BundleSeg config {config}: expected {{model file: distance}}")
    return [os.path.splitext(k)[0] for k in cfg]


def parse_bundleseg_results(results_json, n_streamlines: int, bundle_names=None):
    """Read scilpy's ``results.json`` (scilpy 2.x: ``{bundle: {"indices": [...], "scores":
    [...]}}``, indices into the input tractogram, scores = distance in mm to the nearest model
    streamline) into (labels, scores). scilpy may list a streamline in several bundles; it goes to
    the one with the smallest score (ties: first listed). Unknown bundles are an error when
    ``bundle_names`` is given."""
    path = Path(results_json)
    if not path.is_file():
        raise NoInputError(f"BundleSeg results not found: {path}")
    try:
        res = json.loads(path.read_text())
    except ValueError as exc:
        raise BadDataError(f"BundleSeg results {path}: invalid JSON ({exc})") from exc
    labels = np.full(int(n_streamlines), UNRECOGNIZED, dtype=object)
    best = np.full(int(n_streamlines), np.inf)
    for name, entry in res.items():
        if bundle_names is not None and name not in bundle_names:
            raise BadDataError(f"BundleSeg results {path}: unknown bundle {name}")
        idx = np.asarray(entry.get("indices", []), np.int64).reshape(-1)
        sc = entry.get("scores")
        sc = np.zeros(len(idx)) if sc is None or len(sc) != len(idx) else np.asarray(sc, float)
        if len(idx) and (idx.min() < 0 or idx.max() >= n_streamlines):
            raise BadDataError(f"BundleSeg results {path}: bundle {name} has indices outside "
                               f"0..{n_streamlines - 1}")
        better = sc < best[idx]
        labels[idx[better]] = name
        best[idx[better]] = sc[better]
    return labels.astype(str), np.where(np.isfinite(best), best, np.nan)


def find_bundleseg_script(script: str = BUNDLESEG_SCRIPT) -> str:
    """Full path of scilpy's BundleSeg script, or :class:`MissingToolError`."""
    found = shutil.which(script)
    if found is None:
        raise MissingToolError(
            f"BundleSeg needs scilpy's '{script}' on PATH (scilpy pins numpy 1.x: install it in "
            "its own environment, e.g. python3 -m venv ~/scilpy && ~/scilpy/bin/pip install "
            "scilpy, and add ~/scilpy/bin to PATH)")
    return found


def recognize_bundleseg(streamlines, atlas_dir, *, affine, shape, config=None, transform=None,
                        inverse: bool = False, script: str = BUNDLESEG_SCRIPT, processes: int = 1,
                        seed: int = 0, minimal_vote_ratio: float = 0.5, work_dir=None,
                        timeout_s: float | None = None,
                        min_streamlines: int = 1) -> AtlasRecognition:
    """Run scilpy's BundleSeg on ``streamlines`` and read its ``results.json`` back.

    The tractogram is written as ``.trk`` (reference grid ``affine``/``shape``) and the script is
    called as ``script TRK CONFIG ATLAS_DIR TRANSFO --out_dir OUT --seed S --processes P
    --minimal_vote_ratio R [--inverse]``. ``transform``: 4x4 matrix file (.txt/.npy/.mat) to the
    atlas space; None writes an identity (atlas already in subject space). scilpy always writes
    ``results.json`` with per-bundle indices (no extra option needed in scilpy 2.x).
    ``scores`` = BundleSeg's distance to the nearest model streamline (mm)."""
    exe = find_bundleseg_script(script)
    models_dir, cfg = bundleseg_atlas_paths(atlas_dir, config)
    names = bundleseg_bundle_names(cfg)
    from ..io.tractogram import save_tractogram

    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    valid_idx = np.nonzero(~degenerate)[0]
    labels = np.full(n, UNRECOGNIZED, dtype=object)
    scores = np.full(n, np.nan)
    tmp = tempfile.TemporaryDirectory(prefix="bundleseg_") if work_dir is None else None
    work = Path(tmp.name if tmp else work_dir)
    try:
        work.mkdir(parents=True, exist_ok=True)
        if len(valid_idx):
            trk = save_tractogram(work / "tractogram.trk", [streamlines[i] for i in valid_idx],
                                  affine, shape)
            transfo = transform
            if transfo is None:
                transfo = work / "identity.txt"
                np.savetxt(transfo, np.eye(4))
            out = work / "bundleseg"
            if out.exists():
                shutil.rmtree(out)
            cmd = [exe, str(trk), str(cfg), str(models_dir), str(transfo), "--out_dir",
                   str(out), "--seed", str(int(seed)), "--processes", str(int(processes)),
                   "--minimal_vote_ratio", str(float(minimal_vote_ratio))]
            if inverse:
                cmd.append("--inverse")
            env = {k: v for k, v in os.environ.items()
                   if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=timeout_s, check=False)
            if proc.returncode != 0 or not (out / "results.json").is_file():
                tail = (proc.stderr or proc.stdout or "")[-2000:]
                raise AtlasToolFailed(f"BundleSeg failed (exit {proc.returncode}): "
                                      f"{' '.join(cmd)}\n{tail}")
            lab, sc = parse_bundleseg_results(out / "results.json", len(valid_idx), names)
            labels[valid_idx] = lab
            scores[valid_idx] = sc
    finally:
        if tmp is not None:
            tmp.cleanup()
    labels[degenerate] = DEGENERATE
    params = {"atlas_dir": str(atlas_dir), "config": str(cfg), "seed": int(seed),
              "minimal_vote_ratio": float(minimal_vote_ratio),
              "transform": "identity" if transform is None else str(transform),
              "min_streamlines": int(min_streamlines)}
    return _finish("bundleseg", labels, names, np.zeros(n, bool), scores, min_streamlines, params)
