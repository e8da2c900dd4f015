"""Recognition with a TractSeg-layout bundle atlas (bundle masks + begin/end regions) in the model's
template space, mapped into the subject through the registration.

The atlas folder (``--bundle-atlas DIR``)::

    DIR/bundle_segmentations/<Name>.nii.gz          the bundle's voxel mask
    DIR/endings_segmentations/<Name>_b.nii.gz       its begin region
    DIR/endings_segmentations/<Name>_e.nii.gz       its end region

all on one grid in template space (e.g. TractSeg's 72 bundles in MNI space). The registration is a
4x4 RAS+ matrix ``A`` mapping template mm -> subject mm (the ITK file of
:func:`gentract_bids.registration.xfm.read_xfm`); every atlas volume is put on the subject's grid
by nearest neighbour (subject voxel ``y`` takes the atlas at ``inverse(A) y``).

A streamline (RAS+ mm, subject space) goes to bundle ``B`` when its first and last points lie in
``B``'s begin and end regions, either order, each region dilated by ``ending_dilation_mm``, and at
least ``min_inside`` of its points lie in ``B``'s mask dilated by ``mask_dilation_mm``. Several
bundles: the largest inside fraction wins, then the smaller distance of the farther end point to
its region, then atlas order. ``scores`` = the inside fraction; ``flipped`` = the streamline runs
end -> begin. The defaults come from the human phantoms of the development cohort (seed 7; see
``benchmarks/bundle_atlas_check.py`` and the README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ...errors import BadDataError, NoInputError, UsageError
from .common import (AtlasRecognition, _finish, _Flat, _resolve_conflicts, _voxel_sizes,
                     _winners, degenerate_mask)

BUNDLE_DIR = "bundle_segmentations"
ENDINGS_DIR = "endings_segmentations"
NIFTI_SUFFIXES = (".nii.gz", ".nii")
ENDING_DILATION_MM = 4.0
MASK_DILATION_MM = 2.0
MIN_INSIDE = 0.8


@dataclass
class BundleAtlas:
    """A TractSeg-layout atlas: per bundle (atlas order = sorted names) boolean ``masks``,
    ``begins`` and ``ends`` on one grid (``affine``: voxel -> RAS+ mm in template space)."""

    names: list[str]
    masks: dict
    begins: dict
    ends: dict
    affine: np.ndarray
    shape: tuple
    source: str = ""


def _stem(path: Path) -> str | None:
    for suf in NIFTI_SUFFIXES:
        if path.name.endswith(suf):
            return path.name[: -len(suf)]
    return None


def _niftis(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        stem = _stem(p)
        if stem is not None and p.is_file():
            out[stem] = p
    return out


def load_bundle_atlas(folder, bundles=None) -> BundleAtlas:
    """Read a TractSeg-layout folder (module docstring); ``bundles``: a subset of names.

    Raises :class:`NoInputError` for a missing folder, :class:`BadDataError` (with what was
    expected) for a folder that is not TractSeg-layout: no ``bundle_segmentations/`` or
    ``endings_segmentations/``, no bundle mask, a bundle without its ``_b``/``_e`` regions, an
    image that is not 3-D or not on the grid of the others, an empty mask."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NoInputError(f"bundle atlas folder not found: {folder}")
    layout = (f"expected a TractSeg-layout folder: {BUNDLE_DIR}/<Name>.nii.gz and "
              f"{ENDINGS_DIR}/<Name>_b.nii.gz, <Name>_e.nii.gz")
    bdir, edir = folder / BUNDLE_DIR, folder / ENDINGS_DIR
    for sub in (bdir, edir):
        if not sub.is_dir():
            raise BadDataError(f"bundle atlas {folder}: no {sub.name}/ folder ({layout})")
    masks_files, end_files = _niftis(bdir), _niftis(edir)
    if not masks_files:
        raise BadDataError(f"bundle atlas {folder}: no NIfTI bundle mask in {BUNDLE_DIR}/ "
                           f"({layout})")
    names = sorted(masks_files)
    if bundles is not None:
        unknown = sorted(set(bundles) - set(names))
        if unknown:
            raise UsageError(f"bundle atlas {folder}: unknown bundles {unknown}")
        names = [n for n in names if n in set(bundles)]
    missing = [f"{n}{s}" for n in names for s in ("_b", "_e") if f"{n}{s}" not in end_files]
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        raise BadDataError(f"bundle atlas {folder}: {len(missing)} ending region(s) missing in "
                           f"{ENDINGS_DIR}/ ({shown}; {layout})")
    grid: dict = {}

    def read(path: Path) -> np.ndarray:
        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as exc:  # nibabel raises several types for a broken file
            raise BadDataError(f"bundle atlas {folder}: cannot read {path.name} ({exc})") from exc
        data = data.reshape(data.shape[:3]) if data.ndim == 4 and data.shape[3] == 1 else data
        if data.ndim != 3:
            raise BadDataError(f"bundle atlas {folder}: {path.name} is {data.ndim}-D; bundle "
                               "masks and ending regions must be 3-D")
        if not grid:
            grid.update(affine=np.asarray(img.affine, float), shape=tuple(data.shape))
        elif data.shape != grid["shape"] or not np.allclose(img.affine, grid["affine"],
                                                            atol=1e-4):
            raise BadDataError(f"bundle atlas {folder}: {path.name} is not on the grid of the "
                               "other images (all must share one template-space grid)")
        mask = data > 0
        if not mask.any():
            raise BadDataError(f"bundle atlas {folder}: {path.name} is empty")
        return mask

    masks = {n: read(masks_files[n]) for n in names}
    begins = {n: read(end_files[f"{n}_b"]) for n in names}
    ends = {n: read(end_files[f"{n}_e"]) for n in names}
    return BundleAtlas(names, masks, begins, ends, grid["affine"], grid["shape"], str(folder))


def atlas_on_subject_grid(volume, atlas_affine, matrix, affine, shape) -> np.ndarray:
    """A template-space atlas volume on the subject grid ``affine``/``shape`` (nearest neighbour):
    subject voxel ``y`` takes the atlas at ``inverse(matrix) y``; ``matrix`` = A, template mm ->
    subject mm."""
    from ...fodf.grid import resample_to_grid

    a = np.eye(4) if matrix is None else np.asarray(matrix, float)
    out = resample_to_grid(np.asarray(volume, np.uint8), a @ np.asarray(atlas_affine, float),
                           np.asarray(affine, float), shape, order=0)
    return out > 0


def _translate(offset) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = offset
    return t


def _on_subject_crop(mask, atlas_affine, matrix, affine, shape, pad_vox: int):
    """:func:`atlas_on_subject_grid` of ``mask`` on the part of the subject grid around it only
    (its bounding box mapped by ``matrix``, padded by ``pad_vox``): (crop, lo), ``lo`` = the
    crop's first subject voxel. Empty crop where the region falls outside the subject grid."""
    from ...fodf.grid import resample_to_grid

    ijk = np.argwhere(mask)
    a = np.eye(4) if matrix is None else np.asarray(matrix, float)
    alo, ahi = ijk.min(0), ijk.max(0) + 1
    src_affine = a @ np.asarray(atlas_affine, float) @ _translate(alo)
    corners = np.array([[x, y, z] for x in (-0.5, ahi[0] - alo[0] - 0.5)
                        for y in (-0.5, ahi[1] - alo[1] - 0.5)
                        for z in (-0.5, ahi[2] - alo[2] - 0.5)])
    vox2vox = np.linalg.inv(np.asarray(affine, float)) @ src_affine
    c = corners @ vox2vox[:3, :3].T + vox2vox[:3, 3]
    shape = np.asarray(shape, np.int64)
    lo = np.clip(np.floor(c.min(0)).astype(np.int64) - pad_vox - 1, 0, shape)
    hi = np.clip(np.ceil(c.max(0)).astype(np.int64) + pad_vox + 2, 0, shape)
    if np.any(hi <= lo):
        return np.zeros((0, 0, 0), bool), lo
    crop = mask[tuple(slice(x, y) for x, y in zip(alo, ahi))].astype(np.uint8)
    out = resample_to_grid(crop, src_affine, np.asarray(affine, float) @ _translate(lo),
                           tuple(hi - lo), order=0)
    return out > 0, lo


class _DilatedLookup:
    """Distance (mm, Euclidean between voxel centres, 0 inside) from subject voxels to an atlas
    region mapped onto the subject grid (nearest neighbour, :func:`_on_subject_crop`), computed
    on the region's box padded by ``radius_mm`` (farther voxels: +inf)."""

    def __init__(self, region, atlas_affine, matrix, affine, shape, radius_mm: float):
        vs = _voxel_sizes(affine)
        pad = int(math.ceil(radius_mm / float(vs.min()))) + 1
        crop, self.lo = _on_subject_crop(region, atlas_affine, matrix, affine, shape, pad)
        self.empty = not crop.any()
        if not self.empty:
            self.dist = ndimage.distance_transform_edt(~crop, sampling=vs)

    def distance(self, vox: np.ndarray) -> np.ndarray:
        """``vox``: (n, 3) integer voxel indices of the subject grid (any value)."""
        out = np.full(len(vox), np.inf)
        if self.empty or len(vox) == 0:
            return out
        rel = vox - self.lo
        ok = np.all((rel >= 0) & (rel < np.array(self.dist.shape)), axis=1)
        r = rel[ok]
        out[ok] = self.dist[r[:, 0], r[:, 1], r[:, 2]]
        return out


def _voxels_of_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Nearest voxel (integer ijk) of world points on the grid ``affine``."""
    inv = np.linalg.inv(np.asarray(affine, float))
    return np.rint(points @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64)


def recognize_endings(streamlines, atlas: BundleAtlas, matrix=None, *, affine, shape,
                      ending_dilation_mm: float = ENDING_DILATION_MM,
                      mask_dilation_mm: float = MASK_DILATION_MM, min_inside: float = MIN_INSIDE,
                      min_streamlines: int = 1) -> AtlasRecognition:
    """Recognise RAS+ mm ``streamlines`` (subject space, reference grid ``affine``/``shape``) with
    a template-space :class:`BundleAtlas` mapped by ``matrix`` (A, template mm -> subject mm;
    None: the atlas is already in subject space). Rules in the module docstring."""
    if not 0 <= min_inside <= 1:
        raise UsageError(f"min_inside must lie in [0, 1], got {min_inside}")
    if ending_dilation_mm < 0 or mask_dilation_mm < 0:
        raise UsageError("the dilations of the bundle atlas must not be negative")
    affine = np.asarray(affine, float)
    shape = tuple(int(s) for s in shape[:3])
    if matrix is not None:
        matrix = np.asarray(matrix, float)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) \
                or abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
            raise BadDataError("bundle atlas: the registration matrix must be a finite, "
                               "invertible 4x4 affine")
    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    measures = endings_measures(streamlines, atlas, matrix, affine=affine, shape=shape,
                                ending_dilation_mm=ending_dilation_mm,
                                mask_dilation_mm=mask_dilation_mm, degenerate=degenerate)
    labels, flipped, scores = assign_from_measures(measures, atlas.names, n, degenerate,
                                                   ending_dilation_mm, min_inside)
    params = {"atlas": atlas.source, "ending_dilation_mm": float(ending_dilation_mm),
              "mask_dilation_mm": float(mask_dilation_mm), "min_inside": float(min_inside),
              "registration": "identity" if matrix is None else "affine",
              "min_streamlines": int(min_streamlines)}
    return _finish("bundle_atlas", labels, atlas.names, flipped, scores, min_streamlines, params)


def endings_measures(streamlines, atlas: BundleAtlas, matrix=None, *, affine, shape,
                     ending_dilation_mm: float = ENDING_DILATION_MM,
                     mask_dilation_mm: float = MASK_DILATION_MM, degenerate=None) -> dict:
    """Per bundle, for the streamlines whose end points both lie within ``ending_dilation_mm`` of
    its two regions (either order): ``{name: (idx, dist_fwd, dist_rev, inside)}`` — indices, the
    end points' distances (mm) to (begin, end) and to (end, begin), and the fraction of points in
    the mask dilated by ``mask_dilation_mm``. :func:`assign_from_measures` turns them into labels
    (with any ending dilation up to this one and any ``min_inside``)."""
    affine = np.asarray(affine, float)
    shape = tuple(int(s) for s in shape[:3])
    if degenerate is None:
        degenerate = degenerate_mask(streamlines)
    flat = _Flat(streamlines, ~degenerate)
    valid_idx = np.nonzero(~degenerate)[0]
    out: dict = {}
    if not len(valid_idx):
        return out
    first = _voxels_of_points(flat.first(valid_idx), affine)
    last = _voxels_of_points(flat.last(valid_idx), affine)
    r = ending_dilation_mm + 1e-9
    for name in atlas.names:
        look = lambda vol, rad: _DilatedLookup(vol, atlas.affine, matrix, affine, shape, rad)  # noqa: E731
        in_b, in_e = look(atlas.begins[name], ending_dilation_mm), \
            look(atlas.ends[name], ending_dilation_mm)
        if in_b.empty or in_e.empty:
            continue  # the bundle's regions fall outside the subject's field of view
        d_fb, d_le = in_b.distance(first), in_e.distance(last)
        d_fe, d_lb = in_e.distance(first), in_b.distance(last)
        dist_f, dist_r = np.maximum(d_fb, d_le), np.maximum(d_fe, d_lb)
        keep = (dist_f <= r) | (dist_r <= r)
        if not keep.any():
            continue
        idx = valid_idx[keep]
        pts, off, lens = flat.gather(idx)
        in_mask = look(atlas.masks[name], mask_dilation_mm)
        inside = in_mask.distance(_voxels_of_points(pts, affine)) <= mask_dilation_mm + 1e-9
        frac = np.add.reduceat(inside.astype(float), off) / lens
        out[name] = (idx, dist_f[keep], dist_r[keep], frac)
    return out


def assign_from_measures(measures: dict, names, n: int, degenerate, ending_dilation_mm: float,
                         min_inside: float):
    """(labels, flipped, scores) from :func:`endings_measures`: accepted where both end points
    are within ``ending_dilation_mm`` (larger of the two distances) and the inside fraction is at
    least ``min_inside``; the largest inside fraction wins, then the smaller end-point distance,
    then atlas order. ``scores`` = the inside fraction."""
    names = list(names)
    accepted = np.zeros((len(names), n), bool)
    cost = np.full((len(names), n), np.inf)
    flip_all = np.zeros((len(names), n), bool)
    score_all = np.full((len(names), n), np.nan)
    r = ending_dilation_mm + 1e-9
    for b, name in enumerate(names):
        if name not in measures:
            continue
        idx, dist_f, dist_r, frac = measures[name]
        fwd, rev = dist_f <= r, dist_r <= r
        flip = rev & (~fwd | (dist_r < dist_f))
        dist = np.where(flip, dist_r, dist_f)
        ok = (fwd | rev) & (frac >= min_inside)
        accepted[b, idx[ok]] = True
        cost[b, idx[ok]] = (1.0 - frac[ok]) + 1e-6 * dist[ok]
        flip_all[b, idx[ok]] = flip[ok]
        score_all[b, idx[ok]] = frac[ok]
    labels, flipped, _ = _winners(accepted, cost, flip_all, names, degenerate)
    winner = _resolve_conflicts(accepted, cost)
    cols = np.arange(n)
    scores = np.where(winner >= 0, score_all[np.maximum(winner, 0), cols], np.nan) if n \
        else np.zeros(0)
    return labels, flipped, scores
