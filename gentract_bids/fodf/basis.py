"""SH basis and frame conversions between gentract's internal fODF and MRtrix3's.

Internally (CSD output, the canonical grid, the GenTract model, the dipy trackers) an fODF is
dipy's non-legacy ``descoteaux07`` basis in the voxel-array (``ijk``) frame of its grid (see
:mod:`gentract_bids.fodf.csd`). The fODF *derivative* is written the way MRtrix3 (and so
QSIRecon, ``sh2peaks``, ``tckgen``, ``mrview``) reads a NIfTI of SH coefficients: the BEP016
``mrtrix3`` basis, with directions in the scanner (RAS+ world, ``xyz``) frame of the NIfTI
affine.

Measured with MRtrix3 3.0.3 (``sh2amp``/``sh2peaks`` on synthetic lobes under RAS, LAS, LPS,
permuted and oblique affines, tests/test_fodf_basis.py): MRtrix's basis equals dipy's
``tournier07`` with ``legacy=False`` exactly (amplitudes agree to 1e-7), and MRtrix evaluates it
on world directions (voxel-frame coefficients are wrong on any grid that is not RAS+ axis-
aligned). dipy's ``descoteaux07`` (non-legacy) read as MRtrix's basis is wrong everywhere: the
two bases order the ``m`` of each degree the other way round and, in the non-legacy forms, one
term of each odd-``|m|`` pair changes sign, so ``convert_sh_descoteaux_tournier`` alone (which
only reorders) is not enough for a non-legacy file.

Both bases are orthonormal real symmetric SH of the same degrees, so the change of basis and of
frame is one orthogonal, degree-block-diagonal ``(m, m)`` matrix per affine, computed exactly on a
724-point sphere (band-limited functions).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .csd import LEGACY, SH_BASIS, n_coeffs, sh_order_from_ncoeffs
from .rotation import ROTATION_SPHERE, orthonormal_part

MRTRIX3 = "mrtrix3"  # BEP016's value of OrientationEncoding.SphericalHarmonicBasis
INTERNAL = "descoteaux07"


def _basis(kind: str, sh_order: int, directions: np.ndarray) -> np.ndarray:
    """``(n, m)``: dipy's ``descoteaux07`` (non-legacy) or MRtrix3's basis at unit directions."""
    from dipy.core.geometry import cart2sphere
    from dipy.reconst.shm import real_sh_descoteaux, real_sh_tournier

    _, theta, phi = cart2sphere(directions[:, 0], directions[:, 1], directions[:, 2])
    if kind == INTERNAL:
        assert SH_BASIS == "descoteaux07"
        return real_sh_descoteaux(sh_order, theta, phi, legacy=LEGACY)[0]
    if kind == MRTRIX3:
        return real_sh_tournier(sh_order, theta, phi, legacy=False)[0]
    raise ValueError(f"unknown SH basis {kind!r}: {INTERNAL!r} or {MRTRIX3!r}")


@lru_cache(maxsize=16)
def _matrix(sh_order: int, frame: tuple) -> np.ndarray:
    """``M`` with ``c_mrtrix = M @ c_internal``; ``frame``: the affine's orthonormal part, as a
    tuple (voxel-axis unit vectors -> world)."""
    from dipy.data import get_sphere

    n_coeffs(sh_order)
    A = np.asarray(frame, np.float64).reshape(3, 3)
    u = np.asarray(get_sphere(name=ROTATION_SPHERE).vertices, np.float64)  # voxel-frame dirs
    # f(world w = A u) must equal f_internal(u): fit MRtrix's basis at A u to the internal basis
    M = np.linalg.pinv(_basis(MRTRIX3, sh_order, u @ A.T)) @ _basis(INTERNAL, sh_order, u)
    M[np.abs(M) < 1e-12] = 0.0
    return M


def _frame(affine) -> tuple:
    A = orthonormal_part(np.asarray(affine, np.float64)[:3, :3])
    return tuple(np.round(A, 12).ravel())


def internal_to_mrtrix3(sh, affine) -> np.ndarray:
    """Internal coefficients (..., m) on a grid with ``affine`` -> MRtrix3 basis, world frame."""
    sh = np.asarray(sh)
    M = _matrix(sh_order_from_ncoeffs(sh.shape[-1]), _frame(affine))
    out = sh.reshape(-1, sh.shape[-1]).astype(np.float64) @ M.T
    return out.reshape(sh.shape).astype(np.float32)


def mrtrix3_to_internal(sh, affine) -> np.ndarray:
    """The inverse of :func:`internal_to_mrtrix3` (``M`` is orthogonal: ``M^-1 = M^T``)."""
    sh = np.asarray(sh)
    M = _matrix(sh_order_from_ncoeffs(sh.shape[-1]), _frame(affine))
    out = sh.reshape(-1, sh.shape[-1]).astype(np.float64) @ M
    return out.reshape(sh.shape).astype(np.float32)


def to_internal(sh, affine, encoding: dict | None) -> np.ndarray:
    """Coefficients of a gentract fODF file in the internal basis, whatever its sidecar's
    ``OrientationEncoding`` says it holds (``mrtrix3``: the derivative; ``descoteaux07``, or no
    sidecar: files written before the derivative switched to MRtrix's basis)."""
    basis = (encoding or {}).get("SphericalHarmonicBasis", INTERNAL)
    if basis == MRTRIX3:
        return mrtrix3_to_internal(sh, affine)
    if basis == INTERNAL and not (encoding or {}).get("LegacyBasis", False):
        return np.asarray(sh, np.float32)
    raise ValueError(f"unsupported SH basis in the sidecar: {encoding}")


def zonal_response_mrtrix3(evals, s0, bval: float, sh_order: int) -> list[float]:
    """MRtrix3's single-shell response (``dwi2fod csd`` text file, one row): the ``m = 0``
    coefficients (l = 0, 2, ..., ``sh_order``) in MRtrix's basis of the axially symmetric tensor
    signal ``S0 exp(-b u^T D u)`` of a fibre along z with eigenvalues ``evals``."""
    from dipy.data import get_sphere
    from dipy.reconst.shm import sph_harm_ind_list

    lam = np.asarray(evals, np.float64)
    u = np.asarray(get_sphere(name=ROTATION_SPHERE).vertices, np.float64)
    D = np.diag(lam[[1, 2, 0]])  # principal eigenvalue along z
    sig = float(s0) * np.exp(-float(bval) * np.einsum("ni,ij,nj->n", u, D, u))
    coef = np.linalg.pinv(_basis(MRTRIX3, sh_order, u)) @ sig
    m, _ = sph_harm_ind_list(sh_order)
    return [float(c) for c in coef[m == 0]]
