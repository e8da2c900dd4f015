"""Rotation augmentation: the paper's deterministic rotations, applied to fODF and tractogram alike.

Rotating a training pair means resampling the SH volume on its grid *and* rotating every voxel's
fODF (:func:`gentract_bids.fodf.rotation.rotate_sh_volume`), and rotating the streamlines by the
same world rotation about the origin (the centre of the canonical grid).

Per-axis scalings (*ours*, :func:`augmentation_scalings`) go through the same functions: space is
stretched about the origin and each fODF is reoriented by the map's rotation part (none for a
scaling along the axes), so a cohort whose heads differ in size is covered by the training pairs.
"""

from __future__ import annotations

import numpy as np

from ..fodf.rotation import axis_rotation, rotate_points, rotate_sh_volume

IDENTITY = "identity"


def rotation_name(axis: str, degrees: float) -> str:
    """``"z+30"``, ``"x-15"``: the name of a rotation about one axis."""
    return f"{axis}{'+' if degrees >= 0 else '-'}{abs(degrees):g}"


def augmentation_rotations(angles=(15, 30, 45), axes: str = "xyz") -> list[tuple[str, np.ndarray]]:
    """``[(name, R)]``: the identity first, then +angle and -angle about each axis.

    Order: for each axis in ``axes``, for each angle, + then - (18 rotations + identity by
    default). Names are stable (``"identity"``, ``"x+15"``, ``"x-15"``, ...)."""
    out = [(IDENTITY, np.eye(3))]
    for axis in axes:
        for a in angles:
            a = abs(float(a))
            if a == 0:
                continue
            for sign in (1.0, -1.0):
                out.append((rotation_name(axis, sign * a), axis_rotation(axis, sign * a)))
    return out


def scaling_name(axis: str, factor: float) -> str:
    """``"sx1.08"``, ``"sz0.92"``: the name of a scaling along one axis."""
    return f"s{axis}{float(factor):g}"


def augmentation_scalings(factors=(), axes: str = "xyz") -> list[tuple[str, np.ndarray]]:
    """``[(name, S)]``: a scaling by each factor along each axis, about the origin (no identity).

    Order: for each axis in ``axes``, for each factor (factors of 1 are skipped)."""
    out = []
    for axis in axes:
        k = "xyz".index(axis)
        for f in factors:
            f = float(f)
            if f <= 0:
                raise ValueError(f"scaling factors must be positive, got {f}")
            if f == 1.0:
                continue
            S = np.eye(3)
            S[k, k] = f
            out.append((scaling_name(axis, f), S))
    return out


def apply_rotation(sh, mask, affine, streamlines, R, only_in_mask: bool = False):
    """Rotate one training pair by world rotation ``R`` about the origin.

    ``sh`` (X, Y, Z, m) and ``mask`` (X, Y, Z) on the grid ``affine``; ``streamlines`` a list of
    (n, 3) arrays or an (N, p, 3) array in mm. Returns ``(sh_rot, mask_rot, streamlines_rot)``
    (the identity returns copies without resampling)."""
    R = np.asarray(R, np.float64)
    if np.allclose(R, np.eye(3), atol=1e-12):
        sl = ([np.array(s) for s in streamlines] if isinstance(streamlines, (list, tuple))
              else np.array(streamlines))
        return (np.array(sh, np.float32), None if mask is None else np.array(mask, bool), sl)
    sh_rot, mask_rot = rotate_sh_volume(sh, affine, R, mask=mask, only_in_mask=only_in_mask)
    return sh_rot, mask_rot, rotate_points(streamlines, R)
