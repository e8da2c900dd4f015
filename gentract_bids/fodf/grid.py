"""The model's canonical grid: world-space resampling and per-coefficient z-scoring.

Plain functions on numpy arrays (no file I/O). Affines map voxel indices to RAS+ millimetres.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CANONICAL_SPACING = 1.875
CANONICAL_SHAPE = (80, 96, 80)
STD_FLOOR = 1e-6  # z-scoring: std values below this are raised to it (constant coefficients)


def canonical_grid(spacing=CANONICAL_SPACING, shape=CANONICAL_SHAPE):
    """RAS+ axis-aligned grid of ``shape`` voxels of ``spacing`` mm centred on world (0, 0, 0).

    Returns ``(affine, shape)``; the centre of voxel ``(shape - 1) / 2`` is the world origin."""
    shape = tuple(int(s) for s in shape)
    affine = np.diag([float(spacing)] * 3 + [1.0])
    affine[:3, 3] = -float(spacing) * (np.asarray(shape, float) - 1.0) / 2.0
    return affine, shape


def resample_to_grid(volume, affine_in, affine_out, shape_out, order=1):
    """Resample a 3-D volume, or a 4-D one (last axis = channels), onto another grid.

    Each output voxel centre is mapped to world (``affine_out``) and back to input voxel
    coordinates (``inverse(affine_in)``), so any input orientation (oblique, LPS-stored, flipped)
    is handled. ``order=1`` is trilinear (right for SH coefficients: the SH expansion is linear, so
    interpolating coefficients interpolates the fODFs), ``order=0`` nearest neighbour (masks,
    labels; dtype kept). Points farther than half a voxel outside the input's field of view
    are 0; within that half-voxel border the edge value is used. Returns float32 for
    ``order > 0``."""
    vol = np.asarray(volume)
    if vol.ndim not in (3, 4):
        raise ValueError(f"expected a 3-D or 4-D volume, got shape {vol.shape}")
    shape_out = tuple(int(s) for s in shape_out)
    vox2vox = np.linalg.inv(np.asarray(affine_in, float)) @ np.asarray(affine_out, float)
    grid = np.indices(shape_out, dtype=np.float64).reshape(3, -1)
    coords = vox2vox[:3, :3] @ grid + vox2vox[:3, 3:4]
    spatial = np.asarray(vol.shape[:3], float)[:, None]
    inside = np.all((coords >= -0.5) & (coords <= spatial - 0.5), axis=0)
    # snap tiny round-off so that identical grids give identical values
    rounded = np.round(coords)
    coords = np.where(np.abs(coords - rounded) < 1e-6, rounded, coords)
    dtype = vol.dtype if order == 0 else np.float32
    chans = vol[..., None] if vol.ndim == 3 else vol
    out = np.zeros((grid.shape[1], chans.shape[-1]), dtype)
    pts = coords[:, inside]
    for c in range(chans.shape[-1]):
        src = chans[..., c] if order == 0 else chans[..., c].astype(np.float64)
        out[inside, c] = ndimage.map_coordinates(src, pts, order=order, mode="nearest")
    out = out.reshape(shape_out + (chans.shape[-1],))
    return out[..., 0] if vol.ndim == 3 else out


def to_canonical(sh, sh_affine, mask, mask_affine=None, spacing=CANONICAL_SPACING,
                 shape=CANONICAL_SHAPE, to_subject=None, reorient: bool = True):
    """A subject's SH coefficients (X, Y, Z, m) in its voxel frame -> the canonical grid.

    Coefficients are re-expressed in the RAS+ world frame (:func:`fodf.rotation.sh_to_world_frame`,
    a no-op for axis-aligned RAS+ data), then resampled trilinearly; the brain ``mask`` (on
    ``mask_affine``, default ``sh_affine``) by nearest neighbour. Training and inference both use
    this. ``mask`` is read as ``mask != 0`` (threshold it first if it is not binary).

    ``to_subject`` (4, 4), when given, maps model coordinates (the canonical grid's world) to the
    subject's world mm (the registration composed with the template's placement,
    :func:`gentract_bids.registration.template.model_to_subject`): canonical voxel ``v`` takes the
    subject's fODF at ``to_subject @ affine @ v``, reoriented by the rotation part of the inverse
    map (finite strain), so that a fibre along ``d`` in the subject points along
    ``U d``, ``U`` the rotation of ``inverse(to_subject)``, on the grid (``reorient=False``
    skips that, for diagnostics). Returns
    ``(sh float32 (X', Y', Z', m), mask bool (X', Y', Z'), affine)`` (``affine``: the canonical
    grid in model coordinates)."""
    from .rotation import orthonormal_part, rotate_sh_coefficients, sh_to_world_frame

    affine, shape = canonical_grid(spacing, tuple(shape))
    sample = affine if to_subject is None else np.asarray(to_subject, float) @ affine
    m_aff = sh_affine if mask_affine is None else mask_affine
    mask_c = resample_to_grid(np.asarray(mask).astype(np.uint8), m_aff, sample, shape, order=0) > 0
    sh_c = resample_to_grid(sh_to_world_frame(np.asarray(sh), sh_affine), sh_affine, sample, shape,
                            order=1)
    if to_subject is not None and reorient:
        U = orthonormal_part(np.linalg.inv(np.asarray(to_subject, float)[:3, :3]))
        if not np.allclose(U, np.eye(3), atol=1e-9):
            sh_c[mask_c] = rotate_sh_coefficients(sh_c[mask_c], U)
            sh_c[~mask_c] = 0.0  # what z-scoring gives the background anyway
    return sh_c, mask_c, affine


def zscore_stats(sh, mask):
    """Mean and standard deviation of every coefficient over the voxels of ``mask``.

    Returns two float64 arrays of shape (m,)."""
    sh = np.asarray(sh)
    mask = np.asarray(mask, bool)
    if mask.shape != sh.shape[:-1]:
        raise ValueError(f"mask {mask.shape} does not match volume {sh.shape[:-1]}")
    if not mask.any():
        raise ValueError("empty mask: cannot compute z-scoring statistics")
    x = sh[mask].astype(np.float64)
    return x.mean(0), x.std(0)


def _floored(std):
    return np.maximum(np.asarray(std, np.float64), STD_FLOOR)


def zscore(sh, mean, std, mask=None):
    """``(sh - mean) / std`` per coefficient, float32.

    ``std`` is floored at :data:`STD_FLOOR` (a constant coefficient does not blow up). Voxels
    outside ``mask`` are set to 0, i.e. they read as the average masked voxel, the neutral value
    for the model's input (this is the choice the canonical-grid background gets; it is not
    inverted by :func:`unzscore`)."""
    z = (np.asarray(sh, np.float64) - np.asarray(mean, np.float64)) / _floored(std)
    if mask is not None:
        z[~np.asarray(mask, bool)] = 0.0
    return z.astype(np.float32)


def unzscore(z, mean, std, mask=None):
    """Inverse of :func:`zscore` inside ``mask`` (0 outside it when a mask is given)."""
    x = np.asarray(z, np.float64) * _floored(std) + np.asarray(mean, np.float64)
    if mask is not None:
        x[~np.asarray(mask, bool)] = 0.0
    return x.astype(np.float32)
