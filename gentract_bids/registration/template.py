"""The model's template: what a checkpoint carries to say which space it was trained in.

A template is a reference image (FA) and its brain mask on the model's canonical grid, placed in
the template's own world space (for the human-anatomy model: MNI152NLin6Asym, the TractSeg atlas;
for the tube model: the tube phantoms' own frame). It is stored beside the checkpoint as one 4-D
NIfTI ``<stem>_template.nii.gz`` (volume 0 the FA, volume 1 the mask) whose sha256 the checkpoint's
JSON records. The canonical grid's centre in template space is :attr:`ModelTemplate.origin`:
model coordinates (what the network sees, centred on the origin) + origin = template mm.

Plain functions on numpy arrays and NIfTI files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..fodf.grid import CANONICAL_SHAPE, CANONICAL_SPACING, canonical_grid, resample_to_grid

TEMPLATE_SUFFIX = "_template.nii.gz"
BRAIN_MARGIN_MM = 3.0  # the canonical grid must cover the template brain by at least this


@dataclass
class ModelTemplate:
    """Reference FA (X, Y, Z) float32 and brain mask (bool) on the canonical grid, in the template
    space ``space`` (RAS+ mm through ``affine``)."""

    fa: np.ndarray
    mask: np.ndarray
    affine: np.ndarray  # canonical voxel -> template mm
    space: str
    description: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.fa.shape)

    @property
    def spacing(self) -> float:
        return float(np.linalg.norm(self.affine[:3, 0]))

    @property
    def origin(self) -> np.ndarray:
        """Template mm of the canonical grid's centre (model coordinate 0)."""
        centre = (np.asarray(self.shape, float) - 1.0) / 2.0
        return self.affine[:3, :3] @ centre + self.affine[:3, 3]

    def model_to_template(self) -> np.ndarray:
        """4x4 translation: model coordinates -> template mm."""
        m = np.eye(4)
        m[:3, 3] = self.origin
        return m

    def model_affine(self) -> np.ndarray:
        """The canonical grid's affine in model coordinates (:func:`fodf.grid.canonical_grid`)."""
        return canonical_grid(self.spacing, self.shape)[0]

    def image(self) -> nib.Nifti1Image:
        data = np.stack([self.fa.astype(np.float32), self.mask.astype(np.float32)], axis=-1)
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_xyzt_units("mm")
        img.header["descrip"] = f"gentract template {self.space}"[:79].encode()
        return img

    def save(self, path) -> Path:
        path = Path(path)
        self.image().to_filename(path)
        return path


def load_template(path, space: str, description: str = "") -> ModelTemplate:
    """Read a template file written by :meth:`ModelTemplate.save`."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj, np.float32)
    if data.ndim != 4 or data.shape[-1] != 2:
        raise ValueError(f"{path}: a template holds 2 volumes (FA, mask), found shape {data.shape}")
    return ModelTemplate(data[..., 0], data[..., 1] > 0.5, np.asarray(img.affine, float), space,
                         description)


def grid_around(points, spacing=CANONICAL_SPACING, shape=CANONICAL_SHAPE,
                margin=BRAIN_MARGIN_MM) -> np.ndarray:
    """The canonical grid's affine (voxel -> template mm) centred on the bounding box of ``points``
    (N, 3), its centre rounded to 0.5 mm. Raises ``ValueError`` when the grid does not cover the
    box with ``margin`` mm on every side."""
    pts = np.asarray(points, float)
    lo, hi = pts.min(0), pts.max(0)
    centre = np.round((lo + hi) / 2.0 * 2.0) / 2.0
    affine, shape = canonical_grid(spacing, shape)
    affine = affine.copy()
    affine[:3, 3] += centre
    half = spacing * (np.asarray(shape, float) - 1.0) / 2.0
    short = np.maximum(hi - centre, centre - lo) + margin - half
    if np.any(short > 0):
        raise ValueError(f"a {shape} grid of {spacing} mm does not cover the template brain "
                         f"({lo.round(1)} .. {hi.round(1)} mm) with a {margin} mm margin "
                         f"(short by {short.clip(0).round(1)} mm)")
    return affine


def template_from_atlas(atlas, spacing=CANONICAL_SPACING, shape=CANONICAL_SHAPE,
                        space: str | None = None) -> ModelTemplate:
    """The template of a model trained on human-anatomy phantoms: the atlas FA and brain mask
    (:class:`gentract_bids.phantom.atlas.Atlas`) resampled onto a canonical grid centred on the
    atlas brain (trilinear FA, nearest-neighbour mask)."""
    from ..phantom.atlas import SPACE

    ijk = np.argwhere(atlas.brain)
    brain_mm = ijk @ atlas.affine[:3, :3].T + atlas.affine[:3, 3]
    affine = grid_around(brain_mm, spacing, shape)
    fa = resample_to_grid(np.where(atlas.brain, atlas.fa, 0).astype(np.float32), atlas.affine,
                          affine, shape, order=1)
    mask = resample_to_grid(atlas.brain.astype(np.uint8), atlas.affine, affine, shape, order=0)
    return ModelTemplate(fa.astype(np.float32), mask > 0, affine, space or SPACE,
                         "FA and brain mask of the TractSeg HCP atlas (packaged anatomy)")


def mean_template(fa_maps, masks, affine, space: str, description: str) -> ModelTemplate:
    """A cohort template: the voxel-wise mean of FA maps already on one canonical grid
    (``affine``), and the voxels that at least half of the masks hold."""
    fa = np.mean([np.asarray(f, np.float32) for f in fa_maps], axis=0)
    mask = np.mean([np.asarray(m, bool) for m in masks], axis=0) >= 0.5
    return ModelTemplate(np.where(mask, fa, 0).astype(np.float32), mask, np.asarray(affine, float),
                         space, description)


def model_to_subject(template: ModelTemplate, matrix=None) -> np.ndarray:
    """4x4 map model coordinates -> subject mm: the template's placement, then the registration
    ``matrix`` (template mm -> subject mm; identity when the data are already in the template's
    space)."""
    reg = np.eye(4) if matrix is None else np.asarray(matrix, float)
    return reg @ template.model_to_template()


# ----------------------------------------------------------------------------- in a checkpoint
def template_path(checkpoint_path) -> Path:
    """``<stem>_template.nii.gz`` beside the checkpoint files (either file or their stem)."""
    from ..io.checkpoint import checkpoint_paths

    weights, _ = checkpoint_paths(checkpoint_path)
    return weights.with_name(weights.name[: -len(".safetensors")] + TEMPLATE_SUFFIX)


def save_model_template(checkpoint_path, template: ModelTemplate) -> dict:
    """Write the template beside a checkpoint; returns the metadata entry the JSON records."""
    from ..io.checkpoint import file_sha256

    path = template_path(checkpoint_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.nii.gz")
    template.save(tmp)
    tmp.replace(path)
    return {"file": path.name, "sha256": file_sha256(path), "space": template.space,
            "description": template.description,
            "origin_mm": [round(float(v), 4) for v in template.origin]}


def load_model_template(checkpoint_path, meta: dict) -> ModelTemplate | None:
    """The template a checkpoint carries (checksum verified), or None for one without."""
    from ..io.checkpoint import CheckpointError, file_sha256

    entry = meta.get("template")
    if not entry:
        return None
    path = template_path(checkpoint_path).with_name(entry["file"])
    if not path.is_file():
        raise CheckpointError(f"the model's template {path} is missing")
    digest = file_sha256(path)
    if digest != entry.get("sha256"):
        raise CheckpointError(f"the model's template {path} fails its checksum (sha256 "
                              f"{digest[:12]}…, the checkpoint records "
                              f"{str(entry.get('sha256'))[:12]}…)")
    tpl = load_template(path, entry.get("space", "template"), entry.get("description", ""))
    if tpl.shape != tuple(meta["grid_shape"]) or not np.isclose(tpl.spacing,
                                                                 float(meta["grid_spacing"])):
        raise CheckpointError(f"the model's template {path} is a {tpl.shape} grid of "
                              f"{tpl.spacing:g} mm, not the model's {tuple(meta['grid_shape'])} of "
                              f"{meta['grid_spacing']} mm")
    return tpl


def subject_map(model_path, xfm_file=None):
    """Model coordinates -> subject mm for a run: the checkpoint's template placement composed
    with the registration in ``xfm_file`` (ITK affine; none: the data are in the template's
    space). None for a checkpoint without a template and no registration (the model grid is the
    subject's world)."""
    from ..io.checkpoint import read_checkpoint_metadata
    from ..model.inference import resolve_model_path
    from .xfm import read_xfm

    path = resolve_model_path(model_path)
    template = load_model_template(path, read_checkpoint_metadata(path))
    matrix = read_xfm(xfm_file) if xfm_file else None
    if template is None:
        return matrix
    return model_to_subject(template, matrix)
