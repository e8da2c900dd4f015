"""Reading and checking a DWI series with its bval/bvec files.

BIDS stores b-vectors with the FSL convention: components along the image's voxel axes, with the
first axis flipped when the NIfTI affine has a positive determinant ("neurological" storage).
:func:`read_dwi` returns b-vectors in the *voxel-array* frame that dipy expects, so peaks found in
the array can be mapped to RAS+ world with the affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np

from ..errors import BadDataError, NoInputError, UsageError

B0_THRESHOLD = 50.0
# plausible voxel edge lengths (mm): ex-vivo microscopy (0.1) to very thick clinical slices (20)
VOXEL_SIZE_RANGE = (0.1, 20.0)


@dataclass
class DWI:
    data: np.ndarray  # (X, Y, Z, N) float32
    affine: np.ndarray  # voxel -> RAS+ mm
    bvals: np.ndarray  # (N,)
    bvecs: np.ndarray  # (N, 3), voxel-array frame, unit or zero


def read_bvals_bvecs(bval_file, bvec_file) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL-style text files; raise :class:`BadDataError` with a readable reason."""
    for kind, path in (("bval", bval_file), ("bvec", bvec_file)):
        if path is None or not Path(path).is_file():
            raise BadDataError(f"missing .{kind} file{f' {path}' if path else ''}")
    names = f"{Path(bval_file).name} / {Path(bvec_file).name}"
    try:
        bvals = np.loadtxt(bval_file, ndmin=1).astype(float).ravel()
        bvecs = np.loadtxt(bvec_file, ndmin=2).astype(float)
    except ValueError as err:
        raise BadDataError(f"cannot parse {names}: {err}") from None
    if bvecs.shape[0] != 3 and bvecs.shape[1] == 3:
        bvecs = bvecs.T
    if bvecs.shape[0] != 3:
        raise BadDataError(
            f"{Path(bvec_file).name}: expected 3 rows of b-vector components, got {bvecs.shape}"
        )
    if bvecs.shape[1] != bvals.size:
        raise BadDataError(
            f"{Path(bvec_file).name} has {bvecs.shape[1]} b-vectors but {Path(bval_file).name} "
            f"has {bvals.size} b-values"
        )
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))) or np.any(bvals < 0):
        raise BadDataError(f"{names} hold negative or non-finite values")
    return bvals, bvecs.T


def load_dwi_image(dwi_file) -> nb.Nifti1Image:
    """Load and fully read a 4-D NIfTI; corrupt or truncated files raise :class:`BadDataError`."""
    path = Path(dwi_file)
    if not path.is_file():
        raise NoInputError(f"DWI file not found: {path}")
    try:
        img = nb.load(path)
        data = np.asanyarray(img.dataobj, dtype=np.float32)
    except Exception as err:  # nibabel raises many types for broken files
        raise BadDataError(f"cannot read {path.name}: {type(err).__name__}: {err}") from None
    if data.ndim != 4:
        raise BadDataError(
            f"{path.name} is a {data.ndim}-D image (shape {data.shape}); a DWI series must be 4-D"
        )
    if not np.all(np.isfinite(data)):
        raise BadDataError(f"{path.name} contains NaN or infinite values")
    check_affine(img.affine, path.name)
    return nb.Nifti1Image(data, img.affine, img.header)


def check_affine(affine, name: str) -> None:
    """Refuse a voxel-to-world affine that is not finite, singular (e.g. all zeros) or whose voxel
    sizes lie outside :data:`VOXEL_SIZE_RANGE`."""
    m = np.asarray(affine, float)[:3, :3]
    if not np.all(np.isfinite(m)) or np.linalg.matrix_rank(m) < 3:
        raise BadDataError(f"{name}: the voxel-to-world affine (sform/qform) is singular or "
                           "not finite; the image has no usable geometry")
    zooms = np.sqrt((m ** 2).sum(0))
    lo, hi = VOXEL_SIZE_RANGE
    if np.any(zooms < lo) or np.any(zooms > hi):
        raise BadDataError(f"{name}: voxel size {' x '.join(f'{z:g}' for z in zooms)} mm lies "
                           f"outside the plausible range {lo:g}-{hi:g} mm (check the header)")


def read_mask(mask_file, affine, shape, ref_name: str) -> np.ndarray:
    """A brain mask (3-D, or 4-D using its first volume) as booleans; it must lie on the grid
    (``shape``, ``affine``) of the DWI ``ref_name``, else :class:`BadDataError`."""
    path = Path(mask_file)
    try:
        img = nb.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as err:
        raise BadDataError(f"cannot read {path.name}: {type(err).__name__}: {err}") from None
    if img.shape[:3] != tuple(shape[:3]):
        raise BadDataError(f"{path.name} has shape {img.shape[:3]} but {ref_name} has "
                           f"{tuple(shape[:3])}")
    if not np.allclose(img.affine, affine, atol=1e-3):
        raise BadDataError(f"{path.name} has the shape of {ref_name} but another affine "
                           "(voxel-to-world mapping): it does not lie on the DWI grid")
    return (data[..., 0] if data.ndim == 4 else data) > 0


def fsl_to_voxel_bvecs(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL/BIDS b-vectors -> voxel-array frame (flip the first axis if det(affine) > 0)."""
    out = np.array(bvecs, dtype=float)
    if np.linalg.det(affine[:3, :3]) > 0:
        out[:, 0] *= -1
    return out


# The flip is its own inverse: writing voxel-frame b-vectors to a BIDS .bvec is the same operation.
voxel_to_fsl_bvecs = fsl_to_voxel_bvecs


def read_dwi(dwi_file, bval_file, bvec_file) -> DWI:
    """Read a DWI series and check it against its gradient table."""
    bvals, bvecs = read_bvals_bvecs(bval_file, bvec_file)
    img = load_dwi_image(dwi_file)
    nvol = img.shape[3]
    if nvol != bvals.size:
        raise BadDataError(
            f"{Path(dwi_file).name} has {nvol} volumes but {Path(bval_file).name} lists "
            f"{bvals.size} b-values"
        )
    is_dw = bvals > B0_THRESHOLD
    if not np.any(~is_dw):
        raise BadDataError(f"{Path(bval_file).name}: no b=0 volume")
    if not np.any(is_dw):
        raise BadDataError(f"{Path(bval_file).name}: no diffusion-weighted volume")
    norms = np.linalg.norm(bvecs[is_dw], axis=1)
    if np.any(np.abs(norms - 1) > 0.1):
        raise BadDataError(f"{Path(bvec_file).name}: diffusion-weighted b-vectors are not unit length")
    bvecs = bvecs.copy()
    bvecs[is_dw] /= norms[:, None]
    bvecs[~is_dw] = 0
    return DWI(
        data=np.asarray(img.dataobj, dtype=np.float32),
        affine=img.affine,
        bvals=bvals,
        bvecs=fsl_to_voxel_bvecs(bvecs, img.affine),
    )


def check_csd_input(dwi: DWI, mask, *, sh_order: int, method: str, shell, names) -> None:
    """Refuse a series CSD cannot fit: a b=0 signal that is zero everywhere (in ``mask`` when
    given), or a shell CSD uses with fewer independent directions than
    :func:`~gentract_bids.fodf.csd.csd_min_directions` asks for (every shell for msmt).
    ``names``: (DWI name, bval name, mask name or None) for the messages."""
    from ..fodf import csd

    dwi_name, bval_name, mask_name = names
    b0 = dwi.data[..., dwi.bvals <= B0_THRESHOLD].mean(-1)
    if not np.any(b0[mask] > 0 if mask is not None else b0 > 0):
        where = f" inside {mask_name}" if mask_name else ""
        raise BadDataError(f"{dwi_name}: the b=0 signal is zero everywhere{where}; "
                           "there is nothing to fit")
    all_shells = csd.shells(dwi.bvals)
    if method == "msmt":
        used = all_shells
    elif shell is None:
        used = [csd.choose_shell(dwi.bvals)]
    elif any(np.isclose(shell, s) for s in all_shells):
        used = [float(shell)]
    else:
        raise UsageError(f"--csd-shell {shell:g}: {bval_name} has no such shell (shells: "
                         f"{', '.join(f'{s:g}' for s in all_shells)})")
    need = csd.csd_min_directions(sh_order)
    for b in used:
        vecs = dwi.bvecs[csd.on_shell(dwi.bvals, b)]
        found = csd.independent_directions(vecs, sh_order)
        if found < need:
            raise BadDataError(
                f"{bval_name}: the b={b:g} shell has {found} independent diffusion-weighted "
                f"direction{'s' * (found != 1)} ({len(vecs)} volume{'s' * (len(vecs) != 1)}); CSD at SH order "
                f"{sh_order} needs at least {need}"
            )
