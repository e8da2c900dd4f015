"""The human bundle anatomy (TractSeg, one HCP-like subject in MNI space), in a compact form.

The package carries ``data/anatomy/tractseg_hcp.npz``, derived from the TractSeg reference files
(Wasserthal et al., NeuroImage 2018; Apache-2.0, licence and citation beside the file) by
``scripts/build_human_atlas.py``. :func:`load_atlas` reads it (or a TractSeg-layout folder) into an
:class:`Atlas`: 72 bundle masks with their begin/end regions and tract orientation maps (TOMs), the
three fibre peaks per voxel, FA and the brain mask, all on one grid cropped to the head.

Directions (TOMs, peaks) are in RAS+ world axes, as in the TractSeg files (MRtrix3's convention:
scanner axes, not voxel axes; measured: tracking along the TOMs read as voxel-axis vectors of the
LAS grid ends in the bundles' begin/end regions for 0-4 % of seeds of CST, CC_4 and OR, read as
world vectors for 76-88 %).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np

PACKAGED = "tractseg_hcp.npz"
SPACE = "MNI152NLin6Asym"  # TractSeg's MNI space (FSL's MNI152 template)
CROP_MARGIN = 2  # voxels kept around the brain and every TOM


@dataclass
class BundleAnatomy:
    name: str
    mask: np.ndarray  # (X, Y, Z) bool
    begin: np.ndarray  # (X, Y, Z) bool
    end: np.ndarray  # (X, Y, Z) bool
    tom: np.ndarray  # (X, Y, Z, 3) float32, unit RAS+ directions (zeros where undefined)


@dataclass(eq=False)  # hashed by identity (cached derived maps)
class Atlas:
    names: list
    affine: np.ndarray  # voxel -> MNI mm
    brain: np.ndarray  # (X, Y, Z) bool
    fa: np.ndarray  # (X, Y, Z) float32
    peaks: np.ndarray  # (X, Y, Z, 3, 3) float32: 3 peaks, RAS+ vectors scaled by their amplitude
    _masks: np.ndarray  # (B, 3, X, Y, Z) bool: mask, begin, end
    _tom_index: list  # per bundle: flat voxel indices (int32)
    _tom_dirs: list  # per bundle: (n, 3) float32 unit directions
    checksum: str = ""

    @property
    def shape(self):
        return tuple(int(s) for s in self.brain.shape)

    def bundle(self, name: str) -> BundleAnatomy:
        b = self.names.index(name)
        tom = np.zeros((int(np.prod(self.shape)), 3), np.float32)
        tom[self._tom_index[b]] = self._tom_dirs[b]
        m = self._masks[b]
        return BundleAnatomy(name, m[0], m[1], m[2], tom.reshape(*self.shape, 3))

    def subset(self, names) -> "Atlas":
        idx = [self.names.index(n) for n in names]
        return Atlas([self.names[i] for i in idx], self.affine, self.brain, self.fa, self.peaks,
                     self._masks[idx], [self._tom_index[i] for i in idx],
                     [self._tom_dirs[i] for i in idx], self.checksum)


# ----------------------------------------------------------------------------- compact form
def _quantise(v: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(v) * 127), -127, 127).astype(np.int8)


def compact_from_tractseg(folder) -> dict:
    """Arrays of the compact form, from a TractSeg-layout folder (``bundle_segmentations/``,
    ``endings_segmentations/``, ``TOM/``, ``peaks.nii.gz``, ``FA.nii.gz``,
    ``nodif_brain_mask.nii.gz``). Crops to the brain and every TOM plus a margin; quantises
    directions to int8 (error < 0.5 deg) and FA to uint8."""
    folder = Path(folder)
    ref = nib.load(str(folder / "nodif_brain_mask.nii.gz"))
    affine = ref.affine
    brain = np.asarray(ref.dataobj) > 0
    names = sorted(p.name[: -len(".nii.gz")] for p in (folder / "bundle_segmentations").glob("*.nii.gz"))
    if not names:
        raise FileNotFoundError(f"no bundle_segmentations/*.nii.gz under {folder}")

    def vol(rel):
        img = nib.load(str(folder / rel))
        if img.shape[:3] != brain.shape or not np.allclose(img.affine, affine, atol=1e-4):
            raise ValueError(f"{rel} is not on the grid of nodif_brain_mask.nii.gz")
        return np.asarray(img.dataobj)

    masks, toms = [], []
    support = brain.copy()
    for n in names:
        m = [vol(f"bundle_segmentations/{n}.nii.gz") > 0,
             vol(f"endings_segmentations/{n}_b.nii.gz") > 0,
             vol(f"endings_segmentations/{n}_e.nii.gz") > 0]
        t = np.nan_to_num(vol(f"TOM/{n}.nii.gz").astype(np.float32))
        masks.append(np.stack(m))
        toms.append(t)
        support |= m[0] | m[1] | m[2] | (np.abs(t).sum(-1) > 0)
    ijk = np.argwhere(support)
    lo = np.maximum(ijk.min(0) - CROP_MARGIN, 0)
    hi = np.minimum(ijk.max(0) + CROP_MARGIN + 1, brain.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop_aff = affine.copy()
    crop_aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    shape = tuple(int(b - a) for a, b in zip(lo, hi))
    out = {"names": np.array(names), "affine": crop_aff.astype(np.float64),
           "shape": np.array(shape, np.int32), "brain": np.packbits(brain[box].ravel())}
    fa = np.nan_to_num(vol("FA.nii.gz"))[box]
    out["fa"] = np.clip(np.rint(fa * 255), 0, 255).astype(np.uint8)
    peaks = np.nan_to_num(vol("peaks.nii.gz").astype(np.float32))[box].reshape(*shape, 3, 3)
    scale = float(np.abs(peaks).max()) or 1.0
    out["peaks"], out["peaks_scale"] = _quantise(peaks / scale), np.float32(scale)
    out["masks"] = np.packbits(np.stack([m[(slice(None),) + box] for m in masks]).ravel())
    index, dirs, counts = [], [], []
    for t in toms:
        t = t[box].reshape(-1, 3)
        nz = np.nonzero(np.abs(t).sum(1) > 0)[0]
        v = t[nz] / np.maximum(np.linalg.norm(t[nz], axis=1, keepdims=True), 1e-12)
        index.append(nz.astype(np.int32))
        dirs.append(_quantise(v))
        counts.append(len(nz))
    out["tom_index"] = np.concatenate(index)
    out["tom_dirs"] = np.concatenate(dirs)
    out["tom_counts"] = np.array(counts, np.int64)
    return out


def content_checksum(arrays: dict) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes (independent of zip metadata)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes() if a.dtype.kind != "U" else "\n".join(a.ravel()).encode())
    return h.hexdigest()


def _atlas_from_arrays(a: dict) -> Atlas:
    shape = tuple(int(s) for s in a["shape"])
    nvox = int(np.prod(shape))
    names = [str(n) for n in a["names"]]
    nb = len(names)
    brain = np.unpackbits(a["brain"], count=nvox).astype(bool).reshape(shape)
    masks = np.unpackbits(a["masks"], count=nb * 3 * nvox).astype(bool).reshape(nb, 3, *shape)
    ends = np.cumsum(a["tom_counts"])
    starts = ends - a["tom_counts"]
    idx = [a["tom_index"][s:e] for s, e in zip(starts, ends)]
    dirs = []
    for s, e in zip(starts, ends):
        v = a["tom_dirs"][s:e].astype(np.float32) / 127.0
        dirs.append(v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12))
    peaks = a["peaks"].astype(np.float32) * (float(a["peaks_scale"]) / 127.0)
    return Atlas(names, np.asarray(a["affine"], float), brain,
                 a["fa"].astype(np.float32) / 255.0, peaks, masks, idx, dirs,
                 content_checksum(a))


def packaged_path() -> Path:
    return Path(str(resources.files("gentract_bids.data").joinpath("anatomy").joinpath(PACKAGED)))


def packaged_checksum() -> str:
    meta = json.loads(packaged_path().with_suffix(".json").read_text())
    return meta["ContentSha256"]


@lru_cache(maxsize=2)
def load_atlas(atlas_dir: str | None = None) -> Atlas:
    """The packaged compact atlas (``atlas_dir=None``, checksum verified) or a TractSeg-layout
    folder."""
    if atlas_dir is not None:
        return _atlas_from_arrays(compact_from_tractseg(atlas_dir))
    with np.load(packaged_path(), allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    atlas = _atlas_from_arrays(arrays)
    if atlas.checksum != packaged_checksum():
        raise ValueError(f"{packaged_path()} does not match its recorded checksum: reinstall the "
                         "package or rebuild it with scripts/build_human_atlas.py")
    return atlas
