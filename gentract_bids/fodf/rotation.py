"""Rotations of SH fODF volumes and of streamlines (data augmentation, frame changes).

Conventions. Rotations ``R`` (3, 3) act on RAS+ world millimetres about the world origin (the
canonical grid is centred on it). Rotating a function on the sphere by ``R`` gives
``f'(u) = f(R^T u)``: a fibre along ``d`` ends up along ``R d``. The volume and point functions
also take any invertible linear map ``A`` (e.g. a per-axis scaling): space moves by ``A`` and each
fODF is reoriented by the rotation part of ``A`` (its polar decomposition ``A = U P``; the
finite-strain reorientation of diffusion models, Alexander et al. 2001, IEEE TMI 20:1131). SH coefficients are dipy's
non-legacy ``descoteaux07`` basis (see :mod:`gentract_bids.fodf.csd`), expressed in the voxel-array
(``ijk``) frame of the grid they live on (BEP016 ``OrientationEncoding Reference: ijk``). For an
axis-aligned RAS+ grid (the canonical grid) that frame is the world frame.

Plain functions on numpy arrays.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from .csd import LEGACY, SH_BASIS, n_coeffs, sh_order_from_ncoeffs

ROTATION_SPHERE = "repulsion724"  # dipy sphere on which the basis is sampled (724 >> 28 coeffs)


# ----------------------------------------------------------------------------- matrices
def axis_rotation(axis: str, degrees: float) -> np.ndarray:
    """Right-handed rotation by ``degrees`` about world axis ``"x"``, ``"y"`` or ``"z"``."""
    a = np.deg2rad(float(degrees))
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")


def orthonormal_part(matrix) -> np.ndarray:
    """The orthogonal factor ``U`` of the polar decomposition ``matrix = U P`` (3, 3).

    For an affine's 3x3 block this is the direction cosine matrix: voxel-axis unit vectors -> world,
    voxel sizes and shears removed (for an axis-aligned grid: a signed permutation)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, np.float64)[:3, :3])
    return u @ vt


def _check_linear(A) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A, U, A^-1)``: an invertible (3, 3) map, its rotation part and its inverse (``U = A``
    and ``A^-1 = A^T`` for a rotation)."""
    A = np.asarray(A, np.float64)
    if A.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) matrix, got {A.shape}")
    if not np.all(np.isfinite(A)) or abs(np.linalg.det(A)) < 1e-9:
        raise ValueError("the matrix is not invertible")
    if np.allclose(A @ A.T, np.eye(3), atol=1e-6):
        return A, A, A.T
    return A, orthonormal_part(A), np.linalg.inv(A)


def _check_orthogonal(R) -> np.ndarray:
    R = np.asarray(R, np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) matrix, got {R.shape}")
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-6):
        raise ValueError("the matrix is not orthogonal")
    return R


@lru_cache(maxsize=4)
def _basis_on_sphere(sh_order: int):
    """(vertices (n, 3), B (n, m), pinv(B) (m, n)) of the basis on the rotation sphere."""
    from dipy.data import get_sphere

    verts = np.asarray(get_sphere(name=ROTATION_SPHERE).vertices, np.float64)
    B = _real_sh(sh_order, verts)
    return verts, B, np.linalg.pinv(B)


def _real_sh(sh_order: int, directions: np.ndarray) -> np.ndarray:
    """The basis evaluated at unit ``directions`` (n, 3): (n, m)."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux

    assert SH_BASIS == "descoteaux07"
    _, theta, phi = cart2sphere(directions[:, 0], directions[:, 1], directions[:, 2])
    B, _, _ = real_sh_descoteaux(sh_order, theta, phi, legacy=LEGACY)
    return B


def sh_rotation_matrix(R, sh_order: int = 6) -> np.ndarray:
    """(m, m) matrix ``M`` with ``M @ c`` the coefficients of ``f'(u) = f(R^T u)``.

    Computed by evaluating the basis on a 724-point sphere at ``u`` (``B``) and at ``R^T u``
    (``B'``): ``M = pinv(B) @ B'``. Functions of degree <= ``sh_order`` are band-limited, so this is
    exact up to round-off; ``M`` is orthogonal (the basis is orthonormal) and block diagonal by
    degree ``l``. Any orthogonal ``R`` works (reflections included: for the symmetric basis a
    reflection acts like the rotation ``-R``)."""
    R = _check_orthogonal(R)
    n_coeffs(sh_order)  # validates the order
    verts, _, pinv = _basis_on_sphere(int(sh_order))
    M = pinv @ _real_sh(int(sh_order), verts @ R)  # rows of verts @ R are R^T u
    M[np.abs(M) < 1e-12] = 0.0
    return M


def rotate_sh_coefficients(sh, R) -> np.ndarray:
    """Rotate the fODF of every voxel of ``sh`` (..., m) by ``R`` (no spatial resampling)."""
    sh = np.asarray(sh)
    M = sh_rotation_matrix(R, sh_order_from_ncoeffs(sh.shape[-1]))
    out = sh.reshape(-1, sh.shape[-1]).astype(np.float64) @ M.T
    return out.reshape(sh.shape).astype(np.float32)


def voxel_frame_rotation(R, affine) -> np.ndarray:
    """The world rotation ``R`` expressed in the voxel (``ijk``) frame of ``affine``: A^T R A.

    ``A`` is the orthonormal part of the affine's 3x3 block (voxel-axis directions in world)."""
    A = orthonormal_part(np.asarray(affine)[:3, :3])
    return A.T @ _check_orthogonal(R) @ A


def sh_to_world_frame(sh, affine) -> np.ndarray:
    """Re-express SH coefficients given in the voxel frame of ``affine`` in the RAS+ world frame.

    ``f_world(u) = f_voxel(A^T u)``, i.e. a rotation by ``A`` (the orthonormal part of the affine).
    A no-op (the same array is returned) for an axis-aligned RAS+ grid (``A`` = identity); needed
    before placing coefficients of, e.g., an LAS-stored or oblique DWI on the RAS+ canonical grid."""
    A = orthonormal_part(np.asarray(affine)[:3, :3])
    if np.allclose(A, np.eye(3), atol=1e-9):
        return np.asarray(sh)
    return rotate_sh_coefficients(sh, A)


# ----------------------------------------------------------------------------- volumes
def _sample_world(volume, affine, world, order: int):
    """Values of ``volume`` (X, Y, Z[, C]) at world points (3, n): trilinear (``order=1``) or
    nearest (``order=0``); points more than half a voxel outside the field of view are 0, the
    half-voxel border takes the edge value (the rule of :func:`fodf.grid.resample_to_grid`)."""
    vol = np.asarray(volume)
    chans = vol[..., None] if vol.ndim == 3 else vol
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    coords = inv[:3, :3] @ world + inv[:3, 3:4]
    rounded = np.round(coords)
    coords = np.where(np.abs(coords - rounded) < 1e-6, rounded, coords)
    spatial = np.asarray(chans.shape[:3], float)[:, None]
    inside = np.all((coords >= -0.5) & (coords <= spatial - 0.5), axis=0)
    dtype = chans.dtype if order == 0 else np.float32
    out = np.zeros((world.shape[1], chans.shape[-1]), dtype)
    pts = coords[:, inside]
    for c in range(chans.shape[-1]):
        src = chans[..., c] if order == 0 else chans[..., c].astype(np.float64)
        out[inside, c] = ndimage.map_coordinates(src, pts, order=order, mode="nearest")
    return out if vol.ndim == 4 else out[:, 0]


def rotate_sh_volume(sh, affine, R, mask=None, order: int = 1, only_in_mask: bool = False):
    """Rotate an SH volume about the world origin, on its own grid.

    The output voxel at world ``y`` takes the input's coefficients at world ``R^T y``
    (trilinear per coefficient for ``order=1``, the right interpolation for a linear expansion)
    and rotates them with :func:`sh_rotation_matrix` (in the grid's voxel frame, ``A^T R A``), so a
    fibre along ``d`` at ``x`` becomes a fibre along ``R d`` at ``R x``. For a linear map ``R``
    that is not a rotation, the input is sampled at ``R^-1 y`` and the fODFs are rotated by the
    rotation part of ``R`` (see the module docstring).

    ``mask`` (X, Y, Z) is moved the same way (nearest neighbour); ``only_in_mask=True`` computes
    the coefficients only inside the rotated mask (zeros elsewhere): faster, and all a z-scored
    model input keeps. Returns ``(sh_rot float32 (X, Y, Z, m), mask_rot bool or None)``."""
    sh = np.asarray(sh)
    if sh.ndim != 4:
        raise ValueError(f"expected an (X, Y, Z, m) SH volume, got {sh.shape}")
    R, U, R_inv = _check_linear(R)
    affine = np.asarray(affine, np.float64)
    shape = sh.shape[:3]
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    src = R_inv @ world  # where each output voxel samples the input
    mask_rot = None
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != shape:
            raise ValueError(f"mask {mask.shape} does not match the volume {shape}")
        mask_rot = _sample_world(mask.astype(np.uint8), affine, src, order=0).reshape(shape) > 0
    if only_in_mask:
        if mask_rot is None:
            raise ValueError("only_in_mask=True needs a mask")
        keep = np.flatnonzero(mask_rot)
    else:
        keep = np.arange(src.shape[1])
    M = sh_rotation_matrix(voxel_frame_rotation(U, affine), sh_order_from_ncoeffs(sh.shape[-1]))
    vals = _sample_world(sh, affine, src[:, keep], order=order).astype(np.float64)
    out = np.zeros((src.shape[1], sh.shape[-1]), np.float32)
    out[keep] = vals @ M.T
    return out.reshape(shape + (sh.shape[-1],)), mask_rot


def rotate_mask(mask, affine, R) -> np.ndarray:
    """Rotate a mask (X, Y, Z) about the world origin on its own grid (nearest neighbour): the
    output voxel at world ``y`` takes the input at ``R^-1 y`` (``R^T y``); returns bool."""
    mask = np.asarray(mask)
    affine = np.asarray(affine, np.float64)
    ijk = np.indices(mask.shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    src = _check_linear(R)[2] @ world
    return _sample_world((mask > 0).astype(np.uint8), affine, src, order=0).reshape(mask.shape) > 0


# ----------------------------------------------------------------------------- points
def rotate_points(points, R):
    """Rotate world points (..., 3) in mm about the origin: ``x -> R x`` (any invertible linear
    ``R``). Also takes a list of (n, 3) streamlines (returns a list)."""
    R = _check_linear(R)[0]
    if isinstance(points, (list, tuple)):
        return [rotate_points(p, R) for p in points]
    pts = np.asarray(points)
    out = pts.astype(np.float64) @ R.T
    return out.astype(pts.dtype) if np.issubdtype(pts.dtype, np.floating) else out
