"""Synthetic cohort: per-subject variability of the template, DWI + ground truth, BIDS files.

Subject ``i`` draws everything from ``SeedSequence([seed, i, stream])`` so it does not depend on
how many subjects are generated.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import __version__
from ..io.dwi import voxel_to_fsl_bvecs
from ..io.tractogram import save_tractogram
from . import anatomy
from .geometry import Bundle, Geometry, IsotropicRegion, centreline, sample_streamlines, save_geometry
from .signal import (S0, gradient_scheme, subvoxel_offsets, synthesize_dwi, top_peaks,
                     tube_populations, voxel_centres, voxel_grid, world_to_voxel_index)

MODEL_BOX_HALF = np.array([75.0, 90.0, 75.0])  # canonical model grid box (mm)
GENERATOR = "gentract-phantom"
_STREAM_ANATOMY, _STREAM_STREAMLINES, _STREAM_NOISE = 0, 1, 2


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), stream]))


# ----------------------------------------------------------------------------- variability
def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SubjectTransform:
    """Template -> subject map y = z + u(z), z = R S x, with a smooth field u (sum of sine waves)."""

    rotation: np.ndarray  # (3, 3)
    scale: np.ndarray  # (3,)
    wavevec: np.ndarray  # (M, 3) rad/mm
    phase: np.ndarray  # (M,)
    amp: np.ndarray  # (M, 3) mm
    radius_jitter: np.ndarray  # (n_bundles,)

    @property
    def linear(self) -> np.ndarray:
        return self.rotation @ np.diag(self.scale)

    def displacement(self, z: np.ndarray) -> np.ndarray:
        return np.sin(z @ self.wavevec.T + self.phase) @ self.amp

    def forward(self, x: np.ndarray) -> np.ndarray:
        z = x @ self.linear.T
        return z + self.displacement(z)

    def inverse(self, y: np.ndarray, n_iter: int = 10) -> np.ndarray:
        z = np.array(y, float)
        for _ in range(n_iter):  # contraction: the field's Lipschitz constant is kept < 0.5
            z = y - self.displacement(z)
        return z @ np.linalg.inv(self.linear).T

    @staticmethod
    def identity(n_bundles: int) -> "SubjectTransform":
        return SubjectTransform(np.eye(3), np.ones(3), np.zeros((1, 3)), np.zeros(1),
                                np.zeros((1, 3)), np.ones(n_bundles))


def draw_transform(rng, n_bundles: int, extent_points: np.ndarray, box_points=None,
                   n_modes: int = 6, rms_mm=(3.0, 5.0), max_mm: float = 8.0,
                   box_half=MODEL_BOX_HALF) -> SubjectTransform:
    """Random scale (+-10 % per axis), rotation (+-10 deg per axis), smooth deformation (RMS
    3-5 mm over ``extent_points``, max 8 mm, Lipschitz < 0.5 so it is invertible) and radius
    jitter (+-15 %). The scale is shrunk where needed to keep ``box_points`` (default
    ``extent_points``) inside the box of half-extent ``box_half`` (default: the canonical model
    box; None: no box)."""
    scale = 1.0 + rng.uniform(-0.10, 0.10, 3)
    rot = _rotation(rng.uniform(-10.0, 10.0, 3))
    k_dir = rng.standard_normal((n_modes, 3))
    k_dir /= np.linalg.norm(k_dir, axis=1, keepdims=True)
    wavevec = k_dir * (2 * np.pi / rng.uniform(90.0, 160.0, n_modes))[:, None]
    phase = rng.uniform(0.0, 2 * np.pi, n_modes)
    amp = rng.standard_normal((n_modes, 3))
    target_rms = rng.uniform(*rms_mm)
    jitter = rng.uniform(0.85, 1.15, n_bundles)
    t = SubjectTransform(rot, scale, wavevec, phase, amp, jitter)
    u = t.displacement(extent_points @ t.linear.T)
    amp *= target_rms / np.sqrt((u ** 2).sum(1).mean())
    u_max = np.linalg.norm(t.displacement(extent_points @ t.linear.T), axis=1).max()
    if u_max > max_mm:
        amp *= max_mm / u_max
    lip = (np.linalg.norm(amp, axis=1) * np.linalg.norm(wavevec, axis=1)).sum()
    if lip > 0.5:
        amp *= 0.5 / lip
    box_points = extent_points if box_points is None else box_points
    for _ in range(20 if box_half is not None else 0):  # keep the brain in the box
        ext = np.abs(t.forward(box_points)).max(0)
        over = ext / (np.asarray(box_half) - 1.0)
        if over.max() <= 1.0:
            break
        t.scale = t.scale / np.maximum(over, 1.0)
    return t


def _brain_sample_points(step: float = 6.0) -> np.ndarray:
    g = [np.arange(-a, a + step, step) for a in anatomy.BRAIN_AXES]
    p = np.stack(np.meshgrid(*g, indexing="ij"), -1).reshape(-1, 3)
    return p[((p / anatomy.BRAIN_AXES) ** 2).sum(1) <= 1]


def deform_geometry(geom: Geometry, t: SubjectTransform, step_mm: float = 4.0) -> Geometry:
    """Map each bundle's dense centre-line forward; keep a control point every ~``step_mm``."""
    mean_scale = float(np.prod(t.scale) ** (1 / 3))
    bundles = []
    for b, jit in zip(geom.bundles, t.radius_jitter):
        cl = centreline(b, step_mm=0.5)
        n = max(int(round(cl.length / step_mm)), 2) + 1
        idx = np.unique(np.rint(np.linspace(0, len(cl.points) - 1, n)).astype(int))
        cp = t.forward(cl.points[idx])
        radii = None if b.radii is None else np.round(cl.radii[idx] * jit * mean_scale, 6)
        bundles.append(Bundle(b.name, np.round(cp, 6), round(b.radius * jit * mean_scale, 6),
                              radii, b.tangents, dict(b.extra)))
    regions = [IsotropicRegion(r.name, np.round(t.forward(r.center[None])[0], 6),
                               round(r.radius * mean_scale, 6), dict(r.extra))
               for r in geom.isotropic_regions]
    return Geometry(bundles, regions)


# ----------------------------------------------------------------------------- one subject
@dataclass
class Subject:
    label: str
    dwi: np.ndarray  # (X, Y, Z, N) int16
    affine: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray  # (N, 3), voxel axes = RAS+ here
    wm: np.ndarray
    gm: np.ndarray
    csf: np.ndarray
    brain_mask: np.ndarray
    peak_dirs: np.ndarray  # (X, Y, Z, K, 3)
    peak_fractions: np.ndarray  # (X, Y, Z, K)
    bundle_names: list
    bundle_masks: np.ndarray  # (X, Y, Z, B) uint8
    head_masks: np.ndarray
    tail_masks: np.ndarray
    geometry: Geometry  # the subject's (deformed) geometry
    streamlines: dict  # bundle name -> list of (n, 3) arrays
    transform: SubjectTransform
    sigma: float
    extra: dict = field(default_factory=dict)  # anatomy-specific truth (human: the atlas map)


def tube_voxel_masks(centrelines, shape, affine, part: str = "all", cap_mm: float = 4.0,
                     dilate: int = 0) -> np.ndarray:
    """(X, Y, Z, B) uint8: voxels that the solid tube (``part="all"``), its first ``cap_mm``
    (``"head"``) or its last ``cap_mm`` (``"tail"``) reaches, from a volumetric sampling of the
    tube every <= 0.5 mm (disc grid in the rotation-minimising frame), dilated ``dilate`` voxels."""
    from .geometry import rotation_minimising_frame

    vs = float(abs(affine[0, 0]))
    out = np.zeros((*shape, len(centrelines)), np.uint8)
    for bi, cl in enumerate(centrelines):
        nrm, bnm = rotation_minimising_frame(cl.points, cl.tangents)
        h = min(vs / 4, 0.5)
        g = np.linspace(-1.0, 1.0, 2 * int(np.ceil(cl.radii.max() / h)) + 1)
        a, b = np.meshgrid(g, g, indexing="ij")
        inside = a ** 2 + b ** 2 <= 1.0
        ring = np.linspace(0, 2 * np.pi, int(np.ceil(2 * np.pi * cl.radii.max() / h)), endpoint=False)
        a = np.r_[a[inside], np.cos(ring)]
        b = np.r_[b[inside], np.sin(ring)]
        ncap = min(max(int(np.ceil(cap_mm / cl.step)), 1) + 1, len(cl.points))
        sl = {"all": slice(None), "head": slice(0, ncap),
              "tail": slice(len(cl.points) - ncap, None)}[part]
        p, r = cl.points[sl], cl.radii[sl]
        m = np.zeros(int(np.prod(shape)), bool)
        for c0 in range(0, len(p), 64):  # chunks of centre-line points
            c1 = c0 + 64
            pts = (p[c0:c1, None] + (a[None, :, None] * nrm[sl][c0:c1, None]
                                     + b[None, :, None] * bnm[sl][c0:c1, None])
                   * r[c0:c1, None, None]).reshape(-1, 3)
            flat = world_to_voxel_index(pts, shape, affine)
            m[flat[flat >= 0]] = True
        m = m.reshape(shape)
        if dilate and m.any():  # dilate inside the bounding box only (fast)
            ijk = np.argwhere(m)
            lo = np.maximum(ijk.min(0) - dilate, 0)
            hi = np.minimum(ijk.max(0) + dilate + 1, shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            m[box] = ndimage.binary_dilation(m[box], np.ones((3, 3, 3), bool), iterations=dilate)
        out[..., bi] = m
    return out


def inverse_map_on_grid(t: SubjectTransform, shape, affine, spacing_mm: float = 6.0):
    """Template position (N, 3) of every voxel centre: the exact inverse on a coarse grid, then
    trilinear interpolation (the field's wavelengths are >= 90 mm, so the error is ~0.1 mm)."""
    vs = float(abs(affine[0, 0]))
    f = max(int(round(spacing_mm / vs)), 1)
    cshape = tuple(int(np.ceil((n - 1) / f)) + 2 for n in shape)
    caff = affine.copy()
    caff[:3, :3] *= f
    coarse = t.inverse(voxel_centres(cshape, caff)).reshape(*cshape, 3)
    ijk = np.stack(np.meshgrid(*[np.arange(n) / f for n in shape], indexing="ij"), 0)
    ijk = ijk.reshape(3, -1)
    return np.stack([ndimage.map_coordinates(coarse[..., k], ijk, order=1, mode="nearest")
                     for k in range(3)], 1)


def _template_tissue(template_geom: Geometry | None, subject_geom: Geometry,
                     t: SubjectTransform, shape, affine, in_tube, n_sub: int, chunk=100_000):
    """GM/CSF fractions and brain mask of the non-tube part of each voxel."""
    nvox = int(np.prod(shape))
    vs = float(abs(affine[0, 0]))
    offs = subvoxel_offsets(n_sub, vs)
    ns = len(offs)
    gm = np.zeros(nvox, np.float32)
    csf = np.zeros(nvox, np.float32)
    brain = np.zeros(nvox, bool)
    if template_geom is None:  # our brain: evaluate template tissue at inverse-mapped points
        offs_t = offs @ np.linalg.inv(t.linear).T
        inv = inverse_map_on_grid(t, shape, affine)
        tol = np.linalg.norm(offs_t, axis=1).max() + 0.25
        for a in range(0, nvox, chunk):
            b = min(a + chunk, nvox)
            xt = inv[a:b]
            brain[a:b] = anatomy._rho(xt) <= 1.0
            free = (~in_tube[a:b]).sum(1) / ns
            lab = anatomy.tissue_labels(xt)  # voxels away from tissue boundaries: one label
            gm[a:b] = (lab == 1) * free
            csf[a:b] = (lab == 2) * free
            idx = np.nonzero(anatomy.near_tissue_boundary(xt, tol))[0]  # the others: sub-sample
            lab = anatomy.tissue_labels(xt[idx][:, None] + offs_t[None])  # (n, ns)
            free = ~in_tube[a + idx]
            gm[a + idx] = ((lab == 1) & free).sum(1) / ns
            csf[a + idx] = ((lab == 2) & free).sum(1) / ns
    else:  # external geometry: isotropic regions are CSF, the rest background
        for a in range(0, nvox, chunk):
            b = min(a + chunk, nvox)
            x = voxel_centres(shape, affine, np.arange(a, b))[:, None] + offs[None]
            iso = np.zeros(x.shape[:2], bool)
            for r in subject_geom.isotropic_regions:
                iso |= ((x - r.center) ** 2).sum(-1) <= r.radius ** 2
            csf[a:b] = (iso & ~in_tube[a:b]).sum(1) / ns
    gm, csf = gm.reshape(shape), csf.reshape(shape)
    return gm, csf, brain.reshape(shape)


def make_subject(index: int, seed: int = 0, snr: float = 30.0, voxel_size: float = 2.0,
                 geometry: Geometry | None = None, bvals=(0, 1000, 2000, 3000), n_dirs: int = 32,
                 n_b0: int = 6, n_truth_streamlines: int = 200, n_sub: int = 3,
                 variability: bool = True, n_peaks: int = 3) -> Subject:
    """Synthesize subject ``index`` (1-based label) in memory.

    ``geometry``: an external template (e.g. the ISBI 2013 phantom); None uses our brain-like one.
    ``variability=False`` gives the undeformed template (for tests and references)."""
    template = anatomy.template_geometry() if geometry is None else geometry
    nb = len(template.bundles)
    rng = _rng(seed, index, _STREAM_ANATOMY)
    if geometry is None:
        extent = anatomy.brain_surface_points()
    else:
        extent = np.concatenate([centreline(b, 1.0).points for b in template.bundles])
    if variability:
        rms_points = extent if geometry is not None else _brain_sample_points()
        t = draw_transform(rng, nb, rms_points, box_points=extent)
        subj_geom = deform_geometry(template, t)
    else:
        t = SubjectTransform.identity(nb)
        subj_geom = template
    shape, affine = voxel_grid(voxel_size)
    cls = [centreline(b, step_mm=0.5) for b in subj_geom.bundles]
    pop = tube_populations(cls, shape, affine, n_sub=n_sub)
    gm, csf, brain = _template_tissue(geometry, subj_geom, t, shape, affine, pop.in_tube, n_sub)
    brain = (brain | (pop.wm > 0) | ((geometry is not None) & (csf > 0))).astype(np.uint8)
    pop.in_tube = None  # free memory
    wm = pop.wm.astype(np.float32)
    peak_dirs, peak_fr = top_peaks(pop, shape, n_peaks)
    bundle_masks = tube_voxel_masks(cls, shape, affine, "all")
    heads = tube_voxel_masks(cls, shape, affine, "head", dilate=1)
    tails = tube_voxel_masks(cls, shape, affine, "tail", dilate=1)
    bv, bvecs = gradient_scheme(bvals, n_dirs, n_b0)
    dwi = synthesize_dwi(pop, gm, csf, bv, bvecs, snr, _rng(seed, index, _STREAM_NOISE))
    srng = _rng(seed, index, _STREAM_STREAMLINES)
    streamlines = {b.name: sample_streamlines(b, n_truth_streamlines, srng, step_mm=1.0)
                   for b in subj_geom.bundles}
    return Subject(f"{index:02d}", dwi, affine, bv, bvecs, wm, gm, csf, brain, peak_dirs, peak_fr,
                   [b.name for b in subj_geom.bundles], bundle_masks, heads, tails, subj_geom,
                   streamlines, t, S0 / snr)



# ----------------------------------------------------------------------------- files
def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def nifti_image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI image in mm with the affine as both qform and sform (code 1, scanner)."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    return img


def _save_nii(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nifti_image(data, affine), str(path))


def is_phantom_dataset(path: Path) -> bool:
    """True if ``path`` holds a dataset written earlier by gentract-phantom."""
    try:
        desc = json.loads((Path(path) / "dataset_description.json").read_text())
        return any(g.get("Name") == GENERATOR for g in desc.get("GeneratedBy", []))
    except (OSError, ValueError, AttributeError):
        return False


def _generated_by(params: dict) -> list:
    return [{"Name": GENERATOR, "Version": __version__,
             "Description": "Synthetic DWI phantom cohort; parameters: "
                            + json.dumps(params, sort_keys=True)}]


DWI_SIDECAR = {
    "Manufacturer": "gentract-phantom (synthetic)",
    "ManufacturersModelName": "procedural tube phantom",
    "MagneticFieldStrength": 3,
    "EchoTime": 0.08,
    "RepetitionTime": 8.0,
    "PhaseEncodingDirection": "j-",
    "TotalReadoutTime": 0.05,
    "SliceThickness": None,  # filled per voxel size
    "MultibandAccelerationFactor": 1,
    "MRAcquisitionType": "2D",
    "ScanningSequence": "EP",
    "SequenceVariant": "NONE",
    "PulseSequenceType": "synthetic diffusion-weighted spin echo (no acquisition)",
    "FlipAngle": 90,
    "NonlinearGradientCorrection": False,
    "SoftwareVersions": f"gentract-phantom {__version__}",
}


def write_subject(subj: Subject, out_dir: Path, params: dict,
                  model_name: str = "procedural tube phantom") -> None:
    """Write one subject's raw files and its ground truth under ``derivatives/phantom-truth``."""
    sub = f"sub-{subj.label}"
    raw = out_dir / sub / "dwi"
    raw.mkdir(parents=True, exist_ok=True)
    _save_nii(raw / f"{sub}_dwi.nii.gz", subj.dwi, subj.affine)
    (raw / f"{sub}_dwi.bval").write_text(" ".join(f"{b:g}" for b in subj.bvals) + "\n")
    (raw / f"{sub}_dwi.bvec").write_text(
        "\n".join(" ".join(f"{v:.6f}" for v in row)
                  for row in voxel_to_fsl_bvecs(subj.bvecs, subj.affine).T) + "\n")
    side = dict(DWI_SIDECAR, SliceThickness=float(abs(subj.affine[2, 2])),
                ManufacturersModelName=model_name)
    side["PhantomParameters"] = params
    _write_json(raw / f"{sub}_dwi.json", side)

    der = out_dir / "derivatives" / "phantom-truth" / sub / "dwi"
    der.mkdir(parents=True, exist_ok=True)
    p = f"{sub}_space-dwi"
    names, aff = subj.bundle_names, subj.affine
    shape = subj.dwi.shape[:3]
    streamlines, groups = [], {}
    for name in names:
        groups[name] = np.arange(len(streamlines), len(streamlines) + len(subj.streamlines[name]))
        streamlines += subj.streamlines[name]
    save_tractogram(der / f"{p}_model-truth_streamlines.trx", streamlines, aff, shape, groups)
    for desc, arr in (("bundles", subj.bundle_masks), ("heads", subj.head_masks),
                      ("tails", subj.tail_masks)):
        _save_nii(der / f"{p}_desc-{desc}_mask.nii.gz", arr, aff)
        _write_json(der / f"{p}_desc-{desc}_mask.json", {"BundleNames": names})
    for label, arr in (("WM", subj.wm), ("GM", subj.gm), ("CSF", subj.csf)):
        _save_nii(der / f"{p}_label-{label}_probseg.nii.gz", arr.astype(np.float32), aff)
    _save_nii(der / f"{p}_desc-brain_mask.nii.gz", subj.brain_mask.astype(np.uint8), aff)
    k = subj.peak_dirs.shape[3]
    _save_nii(der / f"{p}_model-truth_param-peaks_dwimap.nii.gz",
              subj.peak_dirs.reshape(*shape, 3 * k).astype(np.float32), aff)
    _write_json(der / f"{p}_model-truth_param-peaks_dwimap.json",
                {"OrientationEncoding": {"Type": "vector", "EncodingAxis": 3,
                                         "Reference": "xyz", "Description":
                                         "up to K unit fibre directions (RAS+), sorted by "
                                         "volume fraction; zeros where absent"}})
    _save_nii(der / f"{p}_model-truth_param-fractions_dwimap.nii.gz",
              subj.peak_fractions.astype(np.float32), aff)
    if subj.geometry is not None:
        save_geometry(subj.geometry, der / f"{p}_desc-truth_geometry.json")


_README = {
    "tubes": "Each subject is a random smooth deformation, scaling and rotation of a procedural\n"
             "brain-like phantom made of named fibre-bundle tubes (or of an external phantomas\n"
             "geometry), centred on the world origin and stored RAS+.\n",
    "human": "Each subject is a random smooth deformation, scaling and rotation of one human\n"
             "brain's white-matter anatomy (72 TractSeg bundles of an HCP subject in MNI space;\n"
             "Wasserthal et al., NeuroImage 2018; Apache-2.0), with ground-truth streamlines\n"
             "tracked along the bundles' orientation maps, written in its own scanner space (head\n"
             "rotation and translation, RAS/LAS/LPS storage, field of view cropped to the head).\n"
             "The true map from each subject's scanner space to MNI space is in the truth folder.\n",
}
_MODEL_NAME = {"tubes": "procedural tube phantom",
               "human": "human-anatomy phantom (TractSeg HCP bundles)"}


def _write_description(out_dir: Path, params: dict, anatomy_kind: str, n_subjects: int) -> None:
    _write_json(out_dir / "dataset_description.json", {
        "Name": "gentract synthetic phantom cohort",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["gentract developers"],
        "GeneratedBy": _generated_by(params),
    })
    (out_dir / "README").write_text(
        "Synthetic diffusion MRI cohort written by gentract-phantom.\n\n" + _README[anatomy_kind]
        + "Ground truth (streamlines, bundle masks, tissue fractions, fibre peaks) is in\n"
        "derivatives/phantom-truth.\n")
    labels = [f"sub-{i:02d}" for i in range(1, n_subjects + 1)]
    seed = params["seed"]
    (out_dir / "participants.tsv").write_text(
        "participant_id\tphantom_seed\n" + "".join(f"{l}\t{seed}\n" for l in labels))
    _write_json(out_dir / "participants.json", {
        "participant_id": {"Description": "subject label"},
        "phantom_seed": {"Description": "cohort seed; subject i uses SeedSequence([seed, i])"}})
    der = out_dir / "derivatives" / "phantom-truth"
    der.mkdir(parents=True, exist_ok=True)
    _write_json(der / "dataset_description.json", {
        "Name": "gentract phantom ground truth",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": _generated_by(params),
        "SourceDatasets": [{"URL": "../../"}],
    })


def make_cohort(out_dir, n_subjects: int = 4, seed: int = 0, snr: float = 30.0,
                voxel_size: float = 2.0, geometry=None, bvals=(0, 1000, 2000, 3000),
                n_dirs: int = 32, n_b0: int = 6, n_truth_streamlines: int = 200,
                anatomy_kind: str = "tubes", atlas_dir=None, bundles=None,
                on_subject=None, human_poses=None) -> Path:
    """Write a BIDS dataset of ``n_subjects`` synthetic subjects (+ ground-truth derivatives).

    ``anatomy_kind``: "tubes" (``geometry``: None for our brain-like template, a Geometry, or a
    phantomas JSON path) or "human" (the packaged TractSeg anatomy, or the TractSeg-layout folder
    ``atlas_dir``; ``bundles``: a subset of its bundle names). ``on_subject(subject)`` is called
    after each subject is written (progress, logs). ``human_poses`` (human only): a list of
    ``{"index": i, "storage": "LAS", "angles": [ax, ay, az]}``, one per participant written (as
    sub-01, sub-02, ... in order): anatomical subject ``i`` of ``seed`` in that storage
    orientation and head rotation (the same anatomy in several poses); ``n_subjects`` is then
    ignored."""
    from .geometry import load_geometry

    out_dir = Path(out_dir)
    params = {"seed": int(seed), "snr": float(snr), "voxel_size": float(voxel_size),
              "bvals": [float(b) for b in bvals], "n_dirs": int(n_dirs), "n_b0": int(n_b0),
              "n_truth_streamlines": int(n_truth_streamlines), "anatomy": anatomy_kind}
    if anatomy_kind == "human":
        from .atlas import load_atlas

        atlas = load_atlas(None if atlas_dir is None else str(atlas_dir))
        if bundles:
            atlas = atlas.subset(list(bundles))
        params.update(atlas=str(atlas_dir) if atlas_dir else "packaged tractseg_hcp",
                      atlas_checksum=atlas.checksum, bundles=list(atlas.names))
    else:
        geom_name = None
        if geometry is not None and not isinstance(geometry, Geometry):
            geom_name = Path(geometry).name
            geometry = load_geometry(geometry)
        params["geometry"] = geom_name if geometry is not None else "gentract-brain"
    if out_dir.exists() and is_phantom_dataset(out_dir):
        shutil.rmtree(out_dir)  # an earlier phantom: regenerate from scratch
    out_dir.mkdir(parents=True, exist_ok=True)
    if anatomy_kind == "human" and human_poses:
        params["poses"] = [dict(p) for p in human_poses]
        n_subjects = len(human_poses)
    _write_description(out_dir, params, anatomy_kind, n_subjects)
    if anatomy_kind == "human":
        from .human import human_truth_extras, make_human_subject
    specs = (list(human_poses) if anatomy_kind == "human" and human_poses
             else [{"index": i} for i in range(1, n_subjects + 1)])
    for k, spec in enumerate(specs, start=1):
        i = int(spec["index"])
        if anatomy_kind == "human":
            subj = make_human_subject(i, atlas, seed=seed, snr=snr, voxel_size=voxel_size,
                                      bvals=bvals, n_dirs=n_dirs, n_b0=n_b0,
                                      n_truth_streamlines=n_truth_streamlines,
                                      storage=spec.get("storage"),
                                      pose_angles_deg=spec.get("angles"))
            subj.label = f"{k:02d}"
            write_subject(subj, out_dir, params, model_name=_MODEL_NAME[anatomy_kind])
            der = out_dir / "derivatives" / "phantom-truth" / f"sub-{subj.label}" / "dwi"
            for name, content in human_truth_extras(subj, n_truth_streamlines).items():
                if isinstance(content, dict):
                    _write_json(der / name, content)
                else:
                    nib.save(content, str(der / name))
        else:
            subj = make_subject(i, seed=seed, snr=snr, voxel_size=voxel_size, geometry=geometry,
                                bvals=bvals, n_dirs=n_dirs, n_b0=n_b0,
                                n_truth_streamlines=n_truth_streamlines)
            write_subject(subj, out_dir, params)
        if on_subject is not None:
            on_subject(subj)
        del subj
    return out_dir
