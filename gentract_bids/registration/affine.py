"""FA of a DWI series and its robust affine registration to the model's template.

dipy's ``imaffine`` (Mattes mutual information; Avants et al.'s ANTs recipe): centre of mass ->
translation -> rigid -> affine, each stage at three resolutions (factors 4, 2, 1; Gaussian sigmas
3, 1, 0 voxels), then the affine stage once more with the subject resampled onto the template's
grid (so that the result no longer depends on how the subject's voxels are stored), and last
the affine that best fits (least squares over the subject's brain voxels) a symmetric
diffeomorphic (SyN, cross-correlation) map started from it. The FA of the subject (moving) is
matched to the template FA (static) inside both brain masks. The result is checked by the overlap (Dice) of the template's brain mask mapped into
the subject and the subject's own brain mask.

Plain functions on numpy arrays.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadDataError

LOG = logging.getLogger("gentract.registration")

PIPELINE = ("center_of_mass", "translation", "rigid", "affine")
LEVEL_ITERS = (1000, 200, 50)  # fewer at the finest level: 2.4 mm instead of 1.8 mm off (dev subject)
SIGMAS = (3.0, 1.0, 0.0)
FACTORS = (4, 2, 1)
NBINS = 32
MIN_DICE = 0.75  # brain-mask overlap after registration below this: the registration failed
MAX_DICE_DROP = 0.02  # a stage that lowers the overlap by more than this has run off
FA_MAX_B = 1600.0  # the tensor is fitted to b0 and the shells up to this b-value
COARSER = 1.25  # a subject's voxels this much larger than the template's: register at the subject's


MAX_AXES_ANGLE = 45.0  # a principal-axes start rotated more than this is not a head pose
REFINE = True  # a last affine pass with the subject resampled onto the template's grid
# then the least-squares affine of a SyN map; iterations per level (coarse -> fine), chosen on the
# seed-7 development cohort: (20, 10, 5) 1.49 mm mean, (50, 25, 10) 1.12, (100, 50, 25) 0.94,
# (200, 100, 50) 0.95 (from 1.74 mm after the affine stages); () turns the stage off
SYN_ITERS = (100, 50, 25)


class RegistrationError(BadDataError):
    """The subject could not be brought into the model's space."""


@dataclass
class Registration:
    """``matrix`` (4, 4) maps template mm -> subject mm (RAS+)."""

    matrix: np.ndarray
    dice: float
    seconds: float
    stages: list = field(default_factory=list)

    def as_dict(self) -> dict:
        s = np.linalg.svd(self.matrix[:3, :3], compute_uv=False)
        angle = rotation_degrees(self.matrix)
        stages = " -> ".join(PIPELINE + (("affine on the template grid",) if REFINE else ())
                             + ((f"least-squares affine of a SyN map (iterations "
                                 f"{list(SYN_ITERS)})",) if SYN_ITERS else ()))
        return {"Method": "dipy imaffine: " + stages + " (mutual information, "
                          f"{NBINS} bins; levels: factors {list(FACTORS)}, sigmas {list(SIGMAS)}, "
                          f"iterations {list(LEVEL_ITERS)})",
                "MatrixTemplateToSubject": np.round(self.matrix, 6).tolist(),
                "RotationDegrees": round(angle, 3),
                "Scales": np.round(s, 4).tolist(),
                "TranslationMm": np.round(self.matrix[:3, 3], 3).tolist(),
                "BrainMaskDice": round(float(self.dice), 4),
                "Stages": self.stages,
                "MinimumDice": MIN_DICE,
                "Seconds": round(self.seconds, 2)}


def fa_map(data, bvals, bvecs, mask) -> np.ndarray:
    """Fractional anisotropy (X, Y, Z) float32 of a DWI series inside ``mask`` (0 outside), from a
    weighted-least-squares tensor fit (dipy) to the b0 volumes and the shells up to
    :data:`FA_MAX_B` s/mm² (the lowest shell when all are higher)."""
    from dipy.reconst.dti import TensorModel

    from ..fodf.csd import make_gtab

    bvals = np.asarray(bvals, float)
    b0 = bvals <= 50
    dw = bvals[~b0]
    if not dw.size:
        raise BadDataError("FA needs diffusion-weighted volumes")
    limit = max(FA_MAX_B, float(dw.min()) + 50)
    keep = b0 | (bvals <= limit)
    gtab = make_gtab(bvals[keep], np.asarray(bvecs)[keep])
    mask = np.asarray(mask, bool)
    fit = TensorModel(gtab, fit_method="WLS").fit(np.asarray(data)[..., keep], mask=mask)
    fa = np.nan_to_num(np.asarray(fit.fa, np.float32), nan=0.0)
    return np.where(mask, np.clip(fa, 0.0, 1.0), 0.0).astype(np.float32)


def mask_dice(template_mask, template_affine, subject_mask, subject_affine, matrix) -> float:
    """Dice of the template's brain mask mapped into the subject grid through ``matrix``
    (template mm -> subject mm) and the subject's own brain mask."""
    from ..fodf.grid import resample_to_grid

    # a subject voxel y takes the template at inverse(matrix) y
    mapped = resample_to_grid(np.asarray(template_mask).astype(np.uint8),
                              np.asarray(matrix, float) @ np.asarray(template_affine, float),
                              np.asarray(subject_affine, float), np.asarray(subject_mask).shape,
                              order=0) > 0
    sub = np.asarray(subject_mask, bool)
    denom = mapped.sum() + sub.sum()
    return float(2.0 * (mapped & sub).sum() / denom) if denom else 0.0


def principal_axes(mask, affine):
    """Centroid (mm), axes (3, 3; columns, largest extent first) and their variances of the
    voxels of ``mask`` in world mm."""
    ijk = np.argwhere(np.asarray(mask, bool)).astype(float)
    xyz = ijk @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    centre = xyz.mean(axis=0)
    var, axes = np.linalg.eigh(np.cov((xyz - centre).T))
    return centre, axes[:, ::-1], var[::-1]


def rotation_degrees(matrix) -> float:
    """Angle (degrees) of the rotation part of a 3x3 or 4x4 matrix (polar decomposition)."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, float)[:3, :3])
    rot = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1))))


def axes_start(template_mask, template_affine, mask, affine):
    """Rigid start (template mm -> subject mm) that maps the template brain's principal axes and
    centroid onto the subject's: of the axis sign choices that make a rotation, the smallest
    rotation. ``None`` when it exceeds :data:`MAX_AXES_ANGLE` (elongation too weak to tell)."""
    c_t, a_t, _ = principal_axes(template_mask, template_affine)
    c_s, a_s, _ = principal_axes(mask, affine)
    best = None
    for signs in itertools.product((1.0, -1.0), repeat=3):
        rot = a_s @ np.diag(signs) @ a_t.T
        if np.linalg.det(rot) > 0 and (best is None
                                       or rotation_degrees(rot) < rotation_degrees(best)):
            best = rot
    if rotation_degrees(best) > MAX_AXES_ANGLE:
        return None
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = best, c_s - best @ c_t
    return out


def static_image(template, subject_affine):
    """The template FA and mask that the registration matches the subject to, and their grid.

    A subject whose voxels are more than :data:`COARSER` times the template's is registered at
    its own resolution: the template is resampled (same field of view) to the subject's voxel
    size, since a finer static grid adds cost (every voxel enters the mutual information at every
    iteration) but no detail the subject has. Measured on a 3 mm tube phantom against the
    1.875 mm template: 23 s instead of 67 s, brain-mask Dice 0.94, 1.6 mm mean displacement
    between the two results."""
    from ..fodf.grid import resample_to_grid

    static = np.where(template.mask, template.fa, 0).astype(np.float64)
    voxel = float(np.mean(np.linalg.norm(np.asarray(subject_affine, float)[:3, :3], axis=0)))
    factor = voxel / template.spacing
    if factor <= COARSER:
        return static, template.mask, np.asarray(template.affine, float)
    aff = np.asarray(template.affine, float).copy()
    shape = np.ceil(np.asarray(template.shape) / factor).astype(int)
    # same centre of the field of view (the template's origin), voxels ``factor`` times larger
    aff[:3, :3] = aff[:3, :3] * factor
    aff[:3, 3] = template.origin - aff[:3, :3] @ ((shape - 1) / 2.0)
    fa = resample_to_grid(static, template.affine, aff, shape, order=1).astype(np.float64)
    mask = resample_to_grid(template.mask.astype(np.uint8), template.affine, aff, shape,
                            order=0) > 0
    return np.where(mask, fa, 0), mask, aff


def syn_affine(static, static_mask, static_affine, moving, mask, affine, matrix,
               level_iters=SYN_ITERS) -> np.ndarray:
    """The affine (template mm -> subject mm) that best fits, in least squares over the subject's
    brain voxels inside the template's brain, the symmetric diffeomorphic map (dipy SyN,
    cross-correlation) from ``static`` (on ``static_affine``) to the subject's ``moving`` (on
    ``affine``), started from ``matrix``. The map's template mm at every subject voxel come from
    warping the template grid's three coordinate images into the subject (linear
    interpolation of a linear function: exact)."""
    from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
    from dipy.align.metrics import CCMetric

    from ..fodf.grid import resample_to_grid

    static = np.asarray(static, np.float64)
    sdr = SymmetricDiffeomorphicRegistration(CCMetric(3), level_iters=list(level_iters))
    warp = sdr.optimize(static, moving, static_grid2world=static_affine,
                        moving_grid2world=affine, prealign=matrix)
    grid = np.indices(static.shape).reshape(3, -1).T.astype(float)
    coords = (grid @ static_affine[:3, :3].T + static_affine[:3, 3]).reshape(*static.shape, 3)
    ijk = np.argwhere(mask)
    inside = resample_to_grid(np.asarray(static_mask).astype(np.uint8), matrix @ static_affine,
                              affine, mask.shape, order=0)[tuple(ijk.T)] > 0
    ijk = ijk[inside]
    if len(ijk) < 100:  # too little overlap to fit an affine: keep the start
        return np.asarray(matrix, float)
    x = np.stack([warp.transform_inverse(coords[..., c], interpolation="linear")[tuple(ijk.T)]
                  for c in range(3)], axis=-1)
    y = np.c_[ijk @ affine[:3, :3].T + affine[:3, 3], np.ones(len(ijk))]
    fit, *_ = np.linalg.lstsq(y, x, rcond=None)  # subject mm -> template mm
    inverse = np.eye(4)
    inverse[:3, :] = fit.T
    return np.linalg.inv(inverse)


def register_to_template(fa, affine, mask, template, *, pipeline=PIPELINE,
                         level_iters=LEVEL_ITERS, min_dice: float = MIN_DICE,
                         name: str = "the subject") -> Registration:
    """Register a subject's FA (on its grid ``affine``, brain ``mask``) to ``template`` (a
    :class:`~gentract_bids.registration.template.ModelTemplate`).

    The stages run one after the other, each starting from the last one kept. A stage is kept
    only if the brain-mask overlap (:func:`mask_dice`) does not fall by more than
    :data:`MAX_DICE_DROP` from the best so far: mutual information can run off to a far
    translation where the images hardly overlap (measured: a phantom whose centre-of-mass start
    had Dice 0.88 ended at 0.02, 116 mm off, in the translation stage's coarsest level). Such a
    stage is run again without its coarsest level, and left out if it still falls.
    The rigid stage runs twice, from the translation stage's result and from the principal-axes
    start (:func:`axes_start`), and keeps the higher mutual information: from the first alone
    the rotation stopped short in a local optimum (held-out phantom rotated 15 degrees: 5 degrees
    found, 12 mm off; a development subject: 13.8 degrees found, 1.75 mm with both starts).
    Last, the affine stage runs once more from the identity with the subject resampled onto the
    template's grid through the result (:data:`REFINE`): the image pyramid and gradients are then
    the same whatever the storage order or pose (measured on the seed-7 development cohort, mean
    displacement from the true affine: 2.92 -> 1.88 mm, 1.75 -> 1.51 mm and 1.80 -> 1.56 mm for
    three subjects; about 40 % more time).
    Then :func:`syn_affine` (:data:`SYN_ITERS`): a non-linear map absorbs the subject's local
    differences from the template, so the affine fitted to it is the affine part of the whole
    correspondence rather than the optimum of one image metric (dev cohort: 1.74 -> 0.94 mm
    mean over four subjects; 35 s more on a 2 mm human phantom).
    Deterministic: the mutual information is computed on every voxel (no random sampling).
    Raises :class:`RegistrationError` when the final overlap is below ``min_dice``."""
    from dipy.align.imaffine import (AffineRegistration, MutualInformationMetric,
                                     transform_centers_of_mass)
    from dipy.align.transforms import (AffineTransform3D, RigidTransform3D,
                                       TranslationTransform3D)

    t0 = time.perf_counter()
    mask = np.asarray(mask, bool)
    if mask.sum() < 100:
        raise RegistrationError(f"{name}: the brain mask has {int(mask.sum())} voxels; nothing "
                                "to register to the model's template")
    moving = np.where(mask, np.asarray(fa, np.float32), 0).astype(np.float64)
    affine = np.asarray(affine, float)
    static, static_mask, static_affine = static_image(template, affine)
    kinds = {"translation": TranslationTransform3D, "rigid": RigidTransform3D,
             "affine": AffineTransform3D}

    def dice_of(m):
        return mask_dice(template.mask, template.affine, mask, affine, m)

    def run_stage(kind, start, levels, image=moving, grid=affine, image_mask=mask):
        """One stage from ``start``: the map (template mm -> mm of ``grid``) and its cost;
        the moving image is the subject's FA unless another (``image`` on ``grid``) is given."""
        k = len(levels)
        reg = AffineRegistration(metric=MutualInformationMetric(nbins=NBINS,
                                                                sampling_proportion=None),
                                 level_iters=list(levels), sigmas=list(SIGMAS[-k:]),
                                 factors=list(FACTORS[-k:]), verbosity=0)
        out, _, cost = reg.optimize(static, image, kinds[kind](), None,
                                    static_grid2world=static_affine, moving_grid2world=grid,
                                    starting_affine=start, ret_metric=True,
                                    static_mask=static_mask.astype(np.int32),
                                    moving_mask=np.asarray(image_mask).astype(np.int32))
        return np.asarray(out.affine, float), float(cost)

    def best_start(kind, start, levels):
        """The stage run from ``start`` and, for the rigid stage, also from the principal-axes
        start: the result with the higher mutual information (lower cost)."""
        runs = [(*run_stage(kind, start, levels), "previous stage")]
        if kind == "rigid" and axes is not None:
            runs.append((*run_stage(kind, axes, levels), "principal axes"))
        best_run = min(runs, key=lambda r: r[1])
        return best_run[0], best_run[2]

    def refine_pass(matrix):
        """The affine stage again, from the identity, with the subject resampled onto the static
        grid through ``matrix``: the returned map (template mm -> resampled mm) no longer
        depends on how the subject's voxels were stored or posed."""
        from ..fodf.grid import resample_to_grid

        to_subject = matrix @ static_affine
        moved = resample_to_grid(moving, affine, to_subject, static.shape).astype(np.float64)
        moved_mask = resample_to_grid(mask.astype(np.uint8), affine, to_subject, static.shape,
                                      order=0) > 0
        return run_stage("affine", np.eye(4), level_iters, moved, static_affine, moved_mask)[0]

    axes = axes_start(template.mask, template.affine, mask, affine)
    matrix = np.eye(4)
    stages = []
    best = -1.0
    for kind in pipeline:
        if kind == "center_of_mass":
            matrix = np.asarray(transform_centers_of_mass(static, static_affine, moving,
                                                          affine).affine, float)
            best = dice_of(matrix)
            stages.append({"stage": kind, "dice": round(best, 4)})
            continue
        cand, start = best_start(kind, matrix, level_iters)
        d = dice_of(cand)
        note = "kept"
        if d < best - MAX_DICE_DROP and len(level_iters) > 1:
            cand, start = best_start(kind, matrix, level_iters[1:])
            d = dice_of(cand)
            note = "rerun without the coarsest level"
        if d < best - MAX_DICE_DROP:
            note = "left out (the overlap fell)"
        else:
            matrix, best = cand, max(best, d) if note == "kept" else d
        stages.append({"stage": kind, "dice": round(float(d), 4), "result": note,
                       "start": start})
        if note != "kept":
            LOG.warning("%s: registration stage %s: %s (Dice %.2f)", name, kind, note, d)
    last = ((REFINE, "affine on the template grid", lambda m: m @ refine_pass(m)),
            (bool(SYN_ITERS), "least-squares affine of a SyN map",
             lambda m: syn_affine(static, static_mask, static_affine, moving, mask, affine, m)))
    for on, stage, run in last:  # each kept only if the overlap does not fall
        if not on:
            continue
        cand = run(matrix)
        d = dice_of(cand)
        note = "kept" if d >= best - MAX_DICE_DROP else "left out (the overlap fell)"
        stages.append({"stage": stage, "dice": round(float(d), 4), "result": note})
        if note == "kept":
            matrix = cand
    dice = dice_of(matrix)
    reg = Registration(matrix, dice, time.perf_counter() - t0, stages)
    LOG.info("%s: registered to the %s template in %.1f s (brain-mask Dice %.3f)", name,
             template.space, reg.seconds, dice)
    if not np.isfinite(dice) or dice < min_dice:
        raise RegistrationError(
            f"{name}: registration to the model's {template.space} template failed: the brain "
            f"masks overlap with Dice {dice:.2f} after registration (at least {min_dice} "
            "expected). Check the brain mask and the DWI's orientation (affine), or run with "
            "--registration none if the data are already in the model's space")
    return reg
