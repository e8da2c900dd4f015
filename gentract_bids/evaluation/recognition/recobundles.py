"""dipy's RecoBundles with the user's model bundles (:func:`load_model_bundles`), one call per
bundle, conflicts resolved by distance to the model streamlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import BadDataError, NoInputError
from .common import AtlasRecognition, _finish, _winners, degenerate_mask

TRACTOGRAM_EXTENSIONS = (".trk", ".tck", ".trx")


def load_model_bundles(directory) -> dict[str, list[np.ndarray]]:
    """Model bundles from a folder of ``.trk/.tck/.trx`` files, one per bundle (name = file stem),
    sorted by name. They must be in the subject's space (RAS+ mm): no registration is done."""
    from ...io.tractogram import load_tractogram

    directory = Path(directory)
    if not directory.is_dir():
        raise NoInputError(f"model bundle folder not found: {directory}")
    files = sorted(p for p in directory.iterdir() if p.suffix.lower() in TRACTOGRAM_EXTENSIONS)
    if not files:
        raise NoInputError(f"no .trk/.tck/.trx model bundles in {directory}")
    models = {}
    for p in files:
        if p.stem in models:
            raise BadDataError(f"model bundle {p.stem} appears twice in {directory}")
        sl, _ = load_tractogram(p)
        models[p.stem] = sl
    return models


def _resample(streamlines, n_points: int) -> np.ndarray:
    from dipy.tracking.streamline import set_number_of_points

    if len(streamlines) == 0:
        return np.zeros((0, n_points, 3), np.float32)
    return np.asarray(set_number_of_points([np.asarray(s, np.float32) for s in streamlines],
                                           n_points), np.float32)


def _mdf_to_model(candidates: np.ndarray, model: np.ndarray):
    """Min MDF (mean of point distances, direct or flipped, the smaller) from each candidate to
    the model streamlines, and whether the flipped candidate matched better. Arrays (k, m, 3)."""
    best = np.full(len(candidates), np.inf)
    flip = np.zeros(len(candidates), bool)
    for a in range(0, len(candidates), 256):
        c = candidates[a:a + 256]
        direct = np.linalg.norm(c[:, None] - model[None], axis=-1).mean(-1)  # (k, M)
        flipped = np.linalg.norm(c[:, None, ::-1] - model[None], axis=-1).mean(-1)
        d = np.minimum(direct, flipped)
        j = np.argmin(d, axis=1)
        r = np.arange(len(c))
        best[a:a + 256] = d[r, j]
        flip[a:a + 256] = flipped[r, j] < direct[r, j]
    return best, flip


def recognize_recobundles(streamlines, model_bundles: dict, *, model_clust_thr: float = 1.25,
                          reduction_thr: float = 25.0, pruning_thr: float = 12.0,
                          clust_thr: float = 15.0, min_length_mm: float = 10.0,
                          slr: bool = True, slr_select: tuple = (400, 600),
                          whole_brain_slr: bool = False,
                          num_threads: int | None = None, max_model_streamlines: int = 500, rng=0,
                          min_streamlines: int = 1) -> AtlasRecognition:
    """dipy RecoBundles, one ``recognize`` call per model bundle.

    ``model_bundles``: ``{name: [streamlines]}`` in the SAME space as the subject (RAS+ mm; e.g.
    bundles of a template already registered to the subject, or another subject's bundles in a
    shared space). The whole-brain SLR step of the RecoBundles paper is not done (not needed for
    subject-space models) unless ``whole_brain_slr`` (affine SLR of all model streamlines onto
    the tractogram, as dipy's ``whole_brain_slr``, applied to the models first: use it when the
    models come from another subject or a template in roughly the same world space); each bundle
    still gets RecoBundles' local SLR when ``slr`` (its cost grows with ``slr_select``).
    Defaults follow pyAFQ (model_clust_thr 1.25, reduction 25, pruning 12 mm); ``clust_thr`` is
    the QuickBundles threshold for the tractogram; streamlines shorter than ``min_length_mm`` are
    ignored (dipy's default of 50 mm would drop short association fibres).

    Conflicts: a streamline recognised by several bundles goes to the bundle whose model
    streamlines (as given, i.e. before RecoBundles' local registration, which can pull a
    neighbouring bundle onto the model) are nearest in MDF (20 points, orientation-free); ties to
    the first bundle in ``model_bundles`` order. ``scores`` = that MDF distance (mm);
    ``flipped`` = the streamline runs against its nearest model streamline.
    """
    from dipy.segment.bundles import RecoBundles
    from dipy.tracking.streamline import Streamlines

    names = list(model_bundles)
    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    valid_idx = np.nonzero(~degenerate)[0]
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    accepted = np.zeros((len(names), n), bool)
    cost = np.full((len(names), n), np.inf)
    flip_all = np.zeros((len(names), n), bool)
    if len(valid_idx):
        sl = Streamlines([np.asarray(streamlines[i], np.float32) for i in valid_idx])
        rb = RecoBundles(sl, greater_than=min_length_mm, clust_thr=clust_thr, rng=gen,
                         verbose=False)
        if whole_brain_slr:
            model_bundles = _whole_brain_slr(sl, model_bundles, min_length_mm, gen, num_threads)
        for b, name in enumerate(names):
            model = [np.asarray(s, np.float32) for s in model_bundles[name] if len(s) >= 2]
            if not model:
                continue
            recognized, lab = rb.recognize(Streamlines(model), model_clust_thr=model_clust_thr,
                                           reduction_thr=reduction_thr, pruning_thr=pruning_thr,
                                           slr=slr, slr_select=tuple(slr_select),
                                           num_threads=num_threads)
            lab = np.asarray(lab, np.int64)
            if len(lab) == 0:
                continue
            if len(model) > max_model_streamlines:
                model = [model[i] for i in gen.choice(len(model), max_model_streamlines,
                                                      replace=False)]
            orig = valid_idx[lab]
            d, fl = _mdf_to_model(_resample([streamlines[i] for i in orig], 20),
                                  _resample(model, 20))
            accepted[b, orig] = True
            cost[b, orig] = d
            flip_all[b, orig] = fl
    labels, flipped, scores = _winners(accepted, cost, flip_all, names, degenerate)
    params = {"model_clust_thr": model_clust_thr, "reduction_thr": reduction_thr,
              "pruning_thr": pruning_thr, "clust_thr": clust_thr, "min_length_mm": min_length_mm,
              "slr": bool(slr), "slr_select": list(slr_select),
              "whole_brain_slr": bool(whole_brain_slr),
              "min_streamlines": int(min_streamlines)}
    return _finish("recobundles", labels, names, flipped, scores, min_streamlines, params)


def _whole_brain_slr(static, model_bundles: dict, min_length_mm: float, rng, num_threads,
                     qbx_thr=(40, 30, 20, 15), rm_small_clusters: int = 10):
    """Affine whole-brain SLR (Garyfallidis 2015: QuickBundlesX centroids of both sets, then
    progressive SLR up to affine) of the concatenated model bundles onto ``static``; returns the
    moved model bundles. Written out (rather than dipy's ``whole_brain_slr``) so that
    ``num_threads`` reaches the distance metric (dipy 1.12's progressive SLR ignores it)."""
    from dipy.align.streamlinear import (DEFAULT_BOUNDS, BundleMinDistanceMetric,
                                         progressive_slr, remove_clusters_by_size)
    from dipy.segment.clustering import qbx_and_merge
    from dipy.tracking.streamline import Streamlines, set_number_of_points, transform_streamlines

    def centroids(sl):
        sl = [np.asarray(s, np.float32) for s in sl]
        sl = [s for s in sl if len(s) > 1
              and np.linalg.norm(np.diff(s, axis=0), axis=1).sum() > min_length_mm]
        if not sl:
            raise BadDataError("whole-brain SLR: no streamline longer than min_length_mm")
        cmap = qbx_and_merge(Streamlines(set_number_of_points(sl, nb_points=20)), qbx_thr, rng=rng)
        cents = remove_clusters_by_size(cmap, min(rm_small_clusters, max(cmap.clusters_sizes())))
        return cents

    moving = [s for v in model_bundles.values() for s in v]
    metric = BundleMinDistanceMetric(num_threads=num_threads)
    slm = progressive_slr(centroids(static), centroids(moving), metric, "affine", DEFAULT_BOUNDS,
                          num_threads=num_threads)
    return {k: list(transform_streamlines([np.asarray(s, np.float32) for s in v], slm.matrix))
            for k, v in model_bundles.items()}

