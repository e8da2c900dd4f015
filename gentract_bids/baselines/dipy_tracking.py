"""dipy local tracking baselines: deterministic (maximum) and probabilistic fODF tracking.

Input is our CSD output: SH coefficients (X, Y, Z, m) in dipy's non-legacy ``descoteaux07``
basis, fitted with *voxel-frame* b-vectors (see :mod:`gentract_bids.io.dwi`), so fODF directions
are along the voxel axes. dipy's ``LocalTracking`` works in voxel coordinates internally and maps
the result to world space with the affine it is given, which is exactly right for such SH: the
streamlines come back in RAS+ mm.

Stopping: with WM/GM/CSF partial-volume maps, dipy's continuous map criterion
(``CmcStoppingCriterion``, Girard 2014: stop in GM = valid end, in CSF = invalid); otherwise a
``ThresholdStoppingCriterion`` on a WM probability map (``wm_pve`` or a binary ``wm_mask``) at
``wm_threshold``. Seeds: ``seeds_per_voxel`` random seeds in every voxel with WM > 0.5.
For real data without tissue maps, :func:`estimate_tissue_maps` gives simple DTI-based ones.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

DIPY_KINDS = ("det", "prob")


def _length_mm(s: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(s, axis=0), axis=1).sum()) if len(s) > 1 else 0.0


def _check_map(name, arr, shape):
    if arr is None:
        return None
    arr = np.nan_to_num(np.asarray(arr, np.float64))
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}, the SH volume {shape}")
    return arr


def track_dipy(sh: np.ndarray, affine: np.ndarray, *, kind: str = "det", wm_pve=None,
               gm_pve=None, csf_pve=None, wm_mask=None, seeds_per_voxel: int = 1,
               step_mm: float = 0.5, max_angle: float = 30.0, n_streamlines: int | None = None,
               random_seed: int = 0, min_length_mm: float = 10.0, max_length_mm: float = 250.0,
               wm_threshold: float = 0.5, pmf_threshold: float = 0.1, pft: bool = False,
               max_seeds: int | None = None, sphere=None) -> tuple[list[np.ndarray], dict]:
    """Local tracking on an fODF SH volume with dipy.

    ``kind``: ``"det"`` (``DeterministicMaximumDirectionGetter``) or ``"prob"``
    (``ProbabilisticDirectionGetter``). ``wm_pve``/``gm_pve``/``csf_pve``: tissue fractions on
    the SH grid (all three: CMC stopping; ``pft=True`` then uses ``ParticleFilteringTracking``);
    ``wm_mask``: a binary WM mask used when no ``wm_pve`` is given. Streamlines shorter than
    ``min_length_mm`` are dropped; ``n_streamlines`` keeps a random subset. ``max_seeds``: track
    from a random subset of at most this many seeds (saves time when ``n_streamlines`` is much
    smaller than the number of WM voxels; then fewer than ``n_streamlines`` may survive the
    length filter — ``NAboveMinLength`` tells). Fully reproducible
    for a given ``random_seed`` (seeds, directions and subset all follow it).

    Returns (streamlines: list of (n, 3) float32 arrays in RAS+ mm, metadata dict)."""
    from dipy.data import get_sphere
    from dipy.direction import DeterministicMaximumDirectionGetter, ProbabilisticDirectionGetter
    from dipy.tracking import utils
    from dipy.tracking.local_tracking import LocalTracking, ParticleFilteringTracking
    from dipy.tracking.stopping_criterion import (CmcStoppingCriterion,
                                                  ThresholdStoppingCriterion)

    from ..fodf.csd import LEGACY, SH_BASIS

    t0 = time.perf_counter()
    if kind not in DIPY_KINDS:
        raise ValueError(f"unknown dipy tracking kind {kind!r}: det or prob")
    sh = np.asarray(sh, np.float64)
    shape = sh.shape[:3]
    affine = np.asarray(affine, np.float64)
    wm_pve, gm_pve, csf_pve = (_check_map(n, a, shape) for n, a in
                               (("wm_pve", wm_pve), ("gm_pve", gm_pve), ("csf_pve", csf_pve)))
    wm_mask = _check_map("wm_mask", wm_mask, shape)
    wm = wm_pve if wm_pve is not None else wm_mask
    if wm is None:
        raise ValueError("track_dipy needs wm_pve or wm_mask (see estimate_tissue_maps)")
    vox = float(np.mean(np.sqrt((affine[:3, :3] ** 2).sum(0))))
    use_cmc = wm_pve is not None and gm_pve is not None and csf_pve is not None
    if use_cmc:
        stopping = CmcStoppingCriterion.from_pve(wm_pve, gm_pve, csf_pve, step_size=step_mm,
                                                 average_voxel_size=vox)
        stop_desc = "CmcStoppingCriterion (WM/GM/CSF partial volumes)"
    else:
        stopping = ThresholdStoppingCriterion(wm, float(wm_threshold))
        stop_desc = f"ThresholdStoppingCriterion (WM map > {wm_threshold:g})"
    seed_mask = wm > 0.5
    if not seed_mask.any():
        raise ValueError("no voxel with WM > 0.5 to seed from")
    seeds = utils.random_seeds_from_mask(seed_mask, affine, seeds_count=int(seeds_per_voxel),
                                         seed_count_per_voxel=True, random_seed=int(random_seed))
    n_all_seeds = len(seeds)
    if max_seeds is not None and n_all_seeds > max_seeds:
        pick = np.random.default_rng([int(random_seed), 1]).choice(n_all_seeds, int(max_seeds),
                                                                    replace=False)
        seeds = seeds[np.sort(pick)]
    sphere = sphere if sphere is not None else get_sphere(name="repulsion724")
    getter_cls = (DeterministicMaximumDirectionGetter if kind == "det"
                  else ProbabilisticDirectionGetter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getter = getter_cls.from_shcoeff(sh, max_angle=float(max_angle), sphere=sphere,
                                         pmf_threshold=float(pmf_threshold),
                                         basis_type=SH_BASIS, legacy=LEGACY)
    max_points = int(np.ceil(max_length_mm / step_mm)) + 1
    common = dict(max_cross=1, maxlen=max_points, random_seed=int(random_seed),
                  return_all=not use_cmc)
    if pft:
        if not use_cmc:
            raise ValueError("pft=True needs wm_pve, gm_pve and csf_pve")
        gen = ParticleFilteringTracking(getter, stopping, seeds, affine, step_mm, **common)
        tracker = "ParticleFilteringTracking"
    else:
        gen = LocalTracking(getter, stopping, seeds, affine, step_mm, **common)
        tracker = "LocalTracking"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracked = [np.asarray(s, np.float32) for s in gen]
    n_tracked = len(tracked)
    streamlines = [s for s in tracked if _length_mm(s) >= min_length_mm]
    n_long = len(streamlines)
    if n_streamlines is not None and n_long > n_streamlines:
        rng = np.random.default_rng(int(random_seed))
        keep = np.sort(rng.choice(n_long, int(n_streamlines), replace=False))
        streamlines = [streamlines[i] for i in keep]
    meta = {
        "Software": f"dipy {_dipy_version()}",
        "Algorithm": {"det": "deterministic (DeterministicMaximumDirectionGetter)",
                      "prob": "probabilistic (ProbabilisticDirectionGetter)"}[kind],
        "Tracker": tracker, "StoppingCriterion": stop_desc,
        "Seeding": f"{int(seeds_per_voxel)} random seed(s) per voxel with WM > 0.5",
        "NSeeds": int(len(seeds)), "NSeedsInMask": int(n_all_seeds), "NTracked": n_tracked,
        "NAboveMinLength": n_long, "NStreamlines": len(streamlines),
        "Parameters": {"step_mm": float(step_mm), "max_angle": float(max_angle),
                       "pmf_threshold": float(pmf_threshold),
                       "min_length_mm": float(min_length_mm),
                       "max_length_mm": float(max_length_mm), "sphere": "repulsion724",
                       "sh_basis": SH_BASIS, "legacy": bool(LEGACY),
                       "return_all": not use_cmc},
        "RandomSeed": int(random_seed), "Deterministic": True,
        "Timings": {"TrackingSeconds": round(time.perf_counter() - t0, 3)},
    }
    return streamlines, meta


def _dipy_version() -> str:
    import dipy

    return dipy.__version__


def estimate_tissue_maps(data: np.ndarray, gtab, mask: np.ndarray, *, fa_low: float = 0.15,
                         fa_high: float = 0.4, md_low: float = 1.5e-3,
                         md_high: float = 2.5e-3) -> dict[str, np.ndarray]:
    """Rough WM/GM/CSF fractions for data without tissue maps (a simple DTI rule, no atlas).

    A tensor is fitted on the b=0 volumes and the lowest shell (b <= 1500 if present) inside
    ``mask``. CSF = linear ramp of mean diffusivity from ``md_low`` (0) to ``md_high`` (1);
    WM = linear ramp of FA from ``fa_low`` (0) to ``fa_high`` (1), times (1 - CSF);
    GM = the rest of the mask. Zero outside ``mask``. Good enough to seed and stop tracking;
    not a segmentation."""
    import dipy.reconst.dti as dti
    from dipy.core.gradients import gradient_table

    mask = np.asarray(mask, bool)
    b = np.asarray(gtab.bvals, float)
    dw = b[~gtab.b0s_mask]
    if dw.size == 0:
        raise ValueError("no diffusion-weighted volume")
    low = dw.min()
    keep = gtab.b0s_mask | (np.abs(b - low) < 100) | ((b > gtab.b0_threshold) & (b <= 1500))
    sub = gradient_table(b[keep], bvecs=gtab.bvecs[keep], b0_threshold=gtab.b0_threshold)
    fa = np.zeros(mask.shape, np.float32)
    md = np.zeros(mask.shape, np.float32)
    idx = np.flatnonzero(mask)
    if idx.size:
        flat = np.asarray(data).reshape(-1, data.shape[-1])[idx][:, keep].astype(np.float64)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            fit = dti.TensorModel(sub).fit(flat)
        fa.reshape(-1)[idx] = np.nan_to_num(fit.fa)
        md.reshape(-1)[idx] = np.nan_to_num(fit.md)
    csf = np.clip((md - md_low) / (md_high - md_low), 0, 1) * mask
    wm = np.clip((fa - fa_low) / (fa_high - fa_low), 0, 1) * (1 - csf) * mask
    gm = np.clip(1 - wm - csf, 0, 1) * mask
    return {"wm": wm.astype(np.float32), "gm": gm.astype(np.float32),
            "csf": csf.astype(np.float32), "fa": fa, "md": md}
