"""One entry point for scoring a tractogram: sanity always, then ground truth or atlas recognition.

Every mode gives one label per streamline and the shared metrics dict of
:func:`gentract_bids.evaluation.metrics.summarise`; the sanity metrics ride along under ``sanity``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .sanity import sanity_metrics

MODES = ("groundtruth", "atlas", "sanity")


@dataclass
class Evaluation:
    mode: str
    summary: dict  # the shared metrics dict (+ "sanity")
    labels: np.ndarray  # (N,) str: bundle name or a category
    bundles: dict = field(default_factory=dict)  # bundle name -> list of streamlines (valid ones)


def bundle_label(name: str) -> str:
    """A bundle name as a BIDS entity value (alphanumerics only): ``L_CST`` -> ``LCST``."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(name))
    if not label:
        raise ValueError(f"bundle name {name!r} has no alphanumeric character")
    return label


def truth_available(truth_dir, subject: str) -> bool:
    """Whether ``truth_dir`` holds phantom ground truth for ``subject``."""
    if truth_dir is None:
        return False
    sub = Path(truth_dir) / f"sub-{subject}"
    return any(sub.glob("**/*_desc-bundles_mask.nii*"))


def resolve_mode(requested: str, *, has_truth: bool, has_atlas: bool) -> str:
    """``auto`` -> groundtruth (phantom truth present) > atlas (an atlas given) > sanity;
    ``none`` -> sanity: no scoring against a truth or an atlas, only the sanity metrics that
    every tractogram gets (its metrics file, bundle-free tables and figures)."""
    if requested == "none":
        return "sanity"
    if requested != "auto":
        return requested
    if has_truth:
        return "groundtruth"
    if has_atlas:
        return "atlas"
    return "sanity"


def _sanity_only(streamlines, flags: dict) -> dict:
    return {
        "mode": "sanity", "n_streamlines": len(streamlines), "precision": None,
        "valid_bundles": None, "n_bundles": 0, "mean_overlap": None, "mean_overreach": None,
        "mean_f1": None, "counts": {"degenerate": int(np.count_nonzero(flags["degenerate"]))},
        "bundles": [],
    }


def _recognise(streamlines, affine, shape, *, waypoint_atlas, recobundles_models,
               bundleseg_atlas, use_pyafq, min_streamlines, seed, work_dir, bundle_atlas=None,
               xfm_file=None, bundle_tolerances=None):
    """The first atlas method that was configured: waypoints (or pyAFQ), RecoBundles, BundleSeg,
    the bundle atlas (mapped by the registration ``xfm_file``, template -> subject)."""
    if waypoint_atlas:
        from .recognition.waypoints import load_waypoint_atlas, recognize_waypoints

        wp = load_waypoint_atlas(waypoint_atlas)
        if use_pyafq:
            from .recognition.pyafq import recognize_pyafq

            return recognize_pyafq(streamlines, wp, affine, rng=seed,
                                   min_streamlines=min_streamlines)
        return recognize_waypoints(streamlines, wp, affine, min_streamlines=min_streamlines)
    if recobundles_models:
        from .recognition.recobundles import load_model_bundles, recognize_recobundles

        models = load_model_bundles(recobundles_models)
        return recognize_recobundles(streamlines, models, rng=seed,
                                     min_streamlines=min_streamlines)
    if bundleseg_atlas:
        from .recognition.bundleseg import recognize_bundleseg

        return recognize_bundleseg(streamlines, bundleseg_atlas, affine=affine, shape=shape,
                                   seed=seed, work_dir=work_dir,
                                   min_streamlines=min_streamlines)
    if bundle_atlas:
        from .recognition.endings import load_bundle_atlas, recognize_endings

        if not xfm_file:
            from ..errors import UsageError

            raise UsageError("--bundle-atlas needs the registration to the model's template "
                             "(the transform file of the fODF stage); none was given")
        from ..registration.xfm import read_xfm

        return recognize_endings(streamlines, load_bundle_atlas(bundle_atlas),
                                 read_xfm(xfm_file), affine=affine, shape=shape,
                                 min_streamlines=min_streamlines, **(bundle_tolerances or {}))
    raise ValueError("atlas mode needs a waypoint atlas, RecoBundles models, a BundleSeg atlas "
                     "or a bundle atlas")


def evaluate_tractogram(streamlines, affine, shape, *, mode: str = "sanity", truth=None,
                        brain_mask=None, waypoint_atlas=None, recobundles_models=None,
                        bundleseg_atlas=None, use_pyafq: bool = False,
                        bundle_atlas=None, xfm_file=None, bundle_tolerances: dict | None = None,
                        min_streamlines: int = 10, seed: int = 0, work_dir=None) -> Evaluation:
    """Score RAS+ mm ``streamlines`` on the reference grid ``affine``/``shape``.

    ``mode``: ``groundtruth`` (``truth`` = :class:`~.groundtruth.GroundTruth`), ``atlas`` (one of
    the atlas arguments; ``bundle_atlas`` also needs ``xfm_file``, the ITK transform template ->
    subject, and takes ``bundle_tolerances``: keywords of
    :func:`~.recognition.endings.recognize_endings`) or ``sanity``. Tissue masks for the sanity metrics come from ``truth``
    when given (phantoms), else only the brain mask is used."""
    from .groundtruth import score_groundtruth, valid_bundle_streamlines

    if mode not in MODES:
        raise ValueError(f"unknown evaluation mode {mode!r}; use one of {MODES}")
    wm = gm = None
    if truth is not None:
        wm, gm = truth.wm, truth.gm
        brain_mask = truth.brain_mask if brain_mask is None else brain_mask
    flags, sanity = sanity_metrics(streamlines, affine, shape, wm_mask=wm, gm_mask=gm,
                                   brain_mask=brain_mask)
    if mode == "groundtruth":
        if truth is None:
            raise ValueError("ground-truth mode needs the subject's ground truth")
        labels, summary = score_groundtruth(streamlines, truth, min_streamlines=min_streamlines)
        bundles = valid_bundle_streamlines(streamlines, labels, truth.bundle_names)
    elif mode == "atlas":
        result = _recognise(streamlines, affine, shape, waypoint_atlas=waypoint_atlas,
                            recobundles_models=recobundles_models,
                            bundleseg_atlas=bundleseg_atlas, use_pyafq=use_pyafq,
                            min_streamlines=min_streamlines, seed=seed, work_dir=work_dir,
                            bundle_atlas=bundle_atlas, xfm_file=xfm_file,
                            bundle_tolerances=bundle_tolerances)
        labels, summary, bundles = result.labels, result.summary, result.bundles(streamlines)
    else:
        labels = np.where(flags["degenerate"], "degenerate", "unlabelled")
        summary, bundles = _sanity_only(streamlines, flags), {}
    summary = dict(summary)
    summary["sanity"] = sanity
    return Evaluation(mode, summary, np.asarray(labels), bundles)
