"""pyAFQ's own ``recognize`` (optional extra ``afq``: pyAFQ==3.4) on a subject-space waypoint
atlas."""

from __future__ import annotations

import importlib.util
import math

import nibabel as nib
import numpy as np

from ...errors import UsageError
from .common import (DEGENERATE, UNRECOGNIZED, AtlasRecognition, MissingToolError, _finish,
                     degenerate_mask)
from .waypoints import WaypointAtlas, _mask_affine


def pyafq_available() -> bool:
    return importlib.util.find_spec("AFQ") is not None


def resample_to_step(streamlines, step_mm: float = 1.0) -> list[np.ndarray]:
    """Resample each streamline to points ``<= step_mm`` apart (n = ceil(length / step) + 1,
    at least 2): pyAFQ's cleaning uses the number of points as a length."""
    from dipy.tracking.streamline import set_number_of_points

    out = []
    for s in streamlines:
        s = np.asarray(s, np.float32)
        length = float(np.linalg.norm(np.diff(s, axis=0), axis=1).sum()) if len(s) > 1 else 0.0
        m = max(int(math.ceil(length / step_mm)) + 1, 2)
        out.append(np.asarray(set_number_of_points(s, m), np.float32) if len(s) > 1 else s)
    return out


def recognize_pyafq(streamlines, atlas: WaypointAtlas, affine=None, *, step_mm: float = 1.0,
                    dist_mm: float = 0.0, endpoint_dist_mm: float = 4.0,
                    prob_threshold: float = 0.0, rng: int = 0, cleaning_params: dict | None = None,
                    min_streamlines: int = 1) -> AtlasRecognition:
    """pyAFQ's ``AFQ.recognition.recognize.recognize`` (pyAFQ 3.4, optional extra ``afq``) on a
    subject-space waypoint atlas (every bundle gets ``"space": "subject"``; no registration, no
    template download: ``resample_to=False``). Streamlines are first resampled to ``step_mm``
    (pyAFQ's Mahalanobis cleaning treats the number of points as length). pyAFQ resolves
    conflicts itself (closest include ROI, then bundle order) and cleans each bundle (Mahalanobis,
    its defaults unless ``cleaning_params``). ``prob_threshold`` is pyAFQ's global threshold
    (the per-bundle ``WaypointBundle.prob_threshold`` is not used here). ``affine`` as in
    :func:`recognize_waypoints`. ``scores`` are NaN (pyAFQ does not return them)."""
    if not pyafq_available():
        raise MissingToolError("atlas recognition with pyAFQ needs the optional extra 'afq' "
                               "(pip install 'gentract[afq]', i.e. pyAFQ==3.4); AFQ is not "
                               "importable in this environment")
    from AFQ.api.bundle_dict import BundleDict
    from AFQ.recognition.recognize import recognize
    from dipy.io.stateful_tractogram import Space, StatefulTractogram

    affine = _mask_affine(atlas, affine)
    if affine is None:
        raise UsageError("recognize_pyafq: the atlas grid's affine is needed")
    affine = np.asarray(affine, float)
    shape = atlas.shape
    if shape is None:
        first = next(iter(atlas.bundles.values()))
        shape = (first.include or [first.start if first.start is not None else first.end])[0].shape
    ref = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
    as_img = lambda m: nib.Nifti1Image(np.asarray(m, np.float32), affine)  # noqa: E731
    spec = {}
    for name, bd in atlas.bundles.items():
        e: dict = {"space": "subject"}
        if bd.include:
            e["include"] = [as_img(m) for m in bd.include]
        if bd.exclude:
            e["exclude"] = [as_img(m) for m in bd.exclude]
        if bd.start is not None:
            e["start"] = as_img(bd.start)
        if bd.end is not None:
            e["end"] = as_img(bd.end)
        if bd.prob_map is not None:
            e["prob_map"] = as_img(bd.prob_map)
        spec[name] = e
    names = list(spec)
    bundle_dict = BundleDict(spec, resample_to=False, resample_subject_to=False)
    n = len(streamlines)
    degenerate = degenerate_mask(streamlines)
    valid_idx = np.nonzero(~degenerate)[0]
    labels = np.full(n, UNRECOGNIZED, dtype=object)
    flipped = np.zeros(n, bool)
    if len(valid_idx):
        res = resample_to_step([streamlines[i] for i in valid_idx], step_mm)
        sft = StatefulTractogram(res, ref, Space.RASMM)
        groups, _ = recognize(sft, ref, None, bundle_dict, ref, dist_to_waypoint=dist_mm,
                              dist_to_atlas=endpoint_dist_mm, prob_threshold=prob_threshold,
                              rng=rng, return_idx=True, cleaning_params=cleaning_params)
        for name in names:
            g = groups.get(name)
            if not g or len(g.get("idx", [])) == 0:
                continue
            idx = np.asarray(g["idx"], np.int64)
            labels[valid_idx[idx]] = name
            out = g["sl"]
            out.to_rasmm()
            for k, j in enumerate(idx):
                flipped[valid_idx[j]] = bool(np.allclose(out.streamlines[k][0], res[j][-1],
                                                         atol=1e-3)
                                             and not np.allclose(res[j][0], res[j][-1]))
    labels[degenerate] = DEGENERATE
    params = {"step_mm": step_mm, "dist_mm": dist_mm, "endpoint_dist_mm": endpoint_dist_mm,
              "prob_threshold": prob_threshold, "min_streamlines": int(min_streamlines)}
    return _finish("pyafq", labels, names, flipped, np.full(n, np.nan), min_streamlines, params)

