"""Training data: (z-scored SH volume on the canonical grid, reference tractogram) per subject.

Pipeline::

    sources = discover_subjects(bids_dir, reference_dir)          # DWI + reference tractogram files
    split = split_subjects([s.label for s in sources], seed=0)    # subject-level train/val/test
    prepared = prepare_subjects(sources, cfg, n_points, cache_dir)  # fODF on the canonical grid
    data = TrainingData(prepared)
    data.fit_statistics(split["train"])                           # z-score stats, coordinate bounds
    pairs = data.choose_pairs(split["train"], augmentation_rotations(), per_subject=4, seed=0)
    data.volume(pair)         # (m, X, Y, Z) float32 tensor, z-scored, rotated
    data.sample_batch(pair, 256, rng)  # (B, p, 3) float32 in [-1, 1], random orientation

The fODF is computed with the same functions as the inference workflow (``io.dwi.read_dwi``,
``fodf.csd``, ``fodf.grid``), so training and inference see the same input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadDataError, NoInputError
from ..fodf.rotation import rotate_mask, rotate_points, rotate_sh_volume
from .augment import IDENTITY, augmentation_rotations

LOG = logging.getLogger("gentract.train")

TRACTOGRAM_EXTENSIONS = (".trx", ".tck", ".trk")
DEFAULT_REFERENCE = Path("derivatives") / "phantom-truth"
CACHE_VERSION = 1  # bump when compute_canonical_fod changes what it computes
Pair = tuple  # (subject label, rotation name)


# ----------------------------------------------------------------------------- discovery
@dataclass
class SubjectSource:
    """One training subject: its DWI series (with sidecars and optional mask) and reference."""

    label: str
    dwi: str
    bval: str | None
    bvec: str | None
    mask: str | None
    references: list[str]  # one whole-brain tractogram, or the per-bundle files to concatenate
    session: str | None = None
    entities: dict = field(default_factory=dict)


def _entities(name: str) -> dict:
    """BIDS-like ``key-value`` entities of a file name (extension stripped)."""
    stem = name.split(".")[0]
    out = {}
    for part in stem.split("_"):
        if "-" in part:
            k, v = part.split("-", 1)
            out[k] = v
    return out


def _is_tractogram(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in TRACTOGRAM_EXTENSIONS


def _is_per_bundle(path: Path, root: Path) -> bool:
    """A one-bundle file: a ``bundle-`` entity, or inside a ``bundles`` folder (pyAFQ layout)."""
    rel = path.relative_to(root)
    return "bundle" in _entities(path.name) or any(d.lower() == "bundles" for d in rel.parts[:-1])


def find_reference_files(reference_dir, label: str, session: str | None = None,
                         prefer: str = "whole_brain") -> list[Path]:
    """The reference tractogram file(s) of subject ``label`` in a derivatives folder.

    Candidates, in this order (the first rule that finds anything wins):

    1. files named ``sub-<label>[_ses-<session>]_*streamlines.(trx|tck|trk)`` under
       ``reference_dir/sub-<label>/`` or at the top of ``reference_dir`` (BIDS/BEP016 naming);
    2. any ``.trx/.tck/.trk`` file under ``reference_dir/sub-<label>/`` (pyAFQ, QSIRecon, ...).

    Files whose ``ses-`` entity (or ``ses-*`` folder) names another session are dropped. A file is
    *per-bundle* if its name has a ``bundle-`` entity or it sits in a ``bundles/`` folder (pyAFQ
    writes one file per bundle there); the others are *whole-brain*. With ``prefer="whole_brain"``
    one whole-brain file is returned when there is any (the first by name, preferring
    ``*streamlines.*``; a warning lists the others); otherwise, or with ``prefer="bundles"``, all
    per-bundle files are returned (sorted) to be concatenated. Empty list: no reference."""
    root = Path(reference_dir)
    sub = f"sub-{label}"
    subdir = root / sub
    pool = sorted(p for p in subdir.rglob("*") if _is_tractogram(p)) if subdir.is_dir() else []
    pool += sorted(p for p in root.glob(f"{sub}_*") if _is_tractogram(p))

    def same_session(p: Path) -> bool:
        ses = _entities(p.name).get("ses")
        folders = [d[4:] for d in p.relative_to(root).parts[:-1] if d.startswith("ses-")]
        if session is None:
            return True
        return (ses is None or ses == session) and all(f == session for f in folders)

    pool = [p for p in pool if same_session(p)]
    pattern = re.compile(rf"^{re.escape(sub)}(_ses-[A-Za-z0-9]+)?_.*streamlines\.(trx|tck|trk)$",
                         re.IGNORECASE)
    named = [p for p in pool if pattern.match(p.name)]
    cands = named or [p for p in pool if subdir in p.parents]
    if not cands:
        return []
    bundles = [p for p in cands if _is_per_bundle(p, root)]
    whole = [p for p in cands if not _is_per_bundle(p, root)]
    if prefer not in ("whole_brain", "bundles"):
        raise ValueError(f"prefer must be 'whole_brain' or 'bundles', got {prefer!r}")
    if whole and (prefer == "whole_brain" or not bundles):
        whole.sort(key=lambda p: (not p.name.lower().split(".")[0].endswith("streamlines"),
                                  str(p)))
        if len(whole) > 1:
            LOG.warning("sub-%s: %d whole-brain reference tractograms; using %s (ignored: %s)",
                        label, len(whole), whole[0].name, ", ".join(p.name for p in whole[1:]))
        return [whole[0]]
    return sorted(bundles)


def discover_subjects(bids_dir, reference_dir=None, participant_label=None,
                      prefer: str = "whole_brain") -> list[SubjectSource]:
    """Training subjects: DWI from the BIDS dataset (pybids) + reference tractogram(s).

    ``reference_dir``: a derivatives folder (default ``bids_dir/derivatives/phantom-truth``), see
    :func:`find_reference_files` for the matching rule. One DWI series per subject: when a
    subject has several, the first by path is used (a warning names the others). Subjects without
    a reference are left out with a warning that lists them; if ``participant_label`` names any
    of them, or none is left, :class:`NoInputError` lists them instead."""
    from ..io.bids import collect_dwi, load_layout

    bids_dir = Path(bids_dir)
    reference_dir = Path(reference_dir) if reference_dir else bids_dir / DEFAULT_REFERENCE
    if not reference_dir.is_dir():
        raise NoInputError(f"reference tractogram folder not found: {reference_dir}")
    inputs = collect_dwi(load_layout(bids_dir), participant_label=participant_label)
    by_subject: dict[str, list] = {}
    for inp in sorted(inputs, key=lambda i: i.dwi):
        by_subject.setdefault(inp.subject, []).append(inp)
    sources, missing = [], []
    for label, series in sorted(by_subject.items()):
        inp = series[0]
        if len(series) > 1:
            LOG.warning("sub-%s has %d DWI series; training uses %s only", label, len(series),
                        Path(inp.dwi).name)
        session = inp.entities.get("session")
        refs = find_reference_files(reference_dir, label, session, prefer=prefer)
        if not refs:
            missing.append(label)
            continue
        sources.append(SubjectSource(label, inp.dwi, inp.bval, inp.bvec, inp.mask,
                                     [str(p) for p in refs], session, dict(inp.entities)))
    if missing:
        msg = (f"no reference tractogram in {reference_dir} for subject(s): "
               + ", ".join(f"sub-{m}" for m in missing))
        if participant_label or not sources:
            raise NoInputError(msg)
        LOG.warning("%s; they are left out of training", msg)
    return sources


def load_reference(paths) -> list[np.ndarray]:
    """All streamlines (RAS+ mm) of the reference file(s), concatenated in the given order."""
    from ..io.tractogram import load_tractogram

    out: list[np.ndarray] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        out += load_tractogram(p)[0]
    return out


# ----------------------------------------------------------------------------- fODF
def _fod_settings(cfg) -> dict:
    """sh_order, grid shape/spacing and CSD method from a GenTractConfig-like object or dict."""
    from ..fodf.grid import CANONICAL_SHAPE, CANONICAL_SPACING

    get = (lambda k, d: cfg.get(k, d)) if isinstance(cfg, dict) else (
        lambda k, d: getattr(cfg, k, d))
    return {"sh_order": int(get("sh_order", 6)),
            "grid_shape": [int(s) for s in get("grid_shape", CANONICAL_SHAPE)],
            "grid_spacing": float(get("grid_spacing", CANONICAL_SPACING)),
            "csd_method": str(get("csd_method", "auto"))}


def _file_id(path) -> list:
    if not path:
        return [None]
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_mtime_ns, st.st_size]


def fod_cache_key(source: SubjectSource, cfg, to_subject=None) -> str:
    """Hash of what the canonical fODF depends on: input files (path, mtime, size) + settings
    (+ the map into the model's space, when the subject is registered)."""
    key = {"version": CACHE_VERSION, "settings": _fod_settings(cfg),
           "files": [_file_id(p) for p in (source.dwi, source.bval, source.bvec, source.mask)]}
    if to_subject is not None:
        key["to_subject"] = np.round(np.asarray(to_subject, float), 6).tolist()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _read_subject(source: SubjectSource):
    """``(dwi, gtab, mask)``: the DWI series and its brain mask (given, or computed)."""
    from ..fodf.csd import compute_brain_mask, make_gtab
    from ..io.dwi import read_dwi, read_mask

    dwi = read_dwi(source.dwi, source.bval, source.bvec)
    gtab = make_gtab(dwi.bvals, dwi.bvecs)
    if source.mask:
        mask = read_mask(source.mask, dwi.affine, dwi.data.shape, Path(source.dwi).name)
    else:
        mask = compute_brain_mask(dwi.data, gtab)
    return dwi, gtab, mask


def template_key(template) -> str:
    """A short content hash of a :class:`~gentract_bids.registration.template.ModelTemplate`."""
    h = hashlib.sha256()
    for a in (template.fa.astype(np.float32), template.mask.astype(np.uint8),
              np.asarray(template.affine, np.float64)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:32]


def subject_registration(source: SubjectSource, template, cache_dir=None) -> np.ndarray:
    """The subject registered to ``template`` the way the participant workflow does it (FA of the
    DWI, :func:`gentract_bids.registration.affine.register_to_template`): the 4x4 matrix
    template mm -> subject mm. Cached in ``cache_dir/sub-<label>[_ses-<ses>]_reg.npz``."""
    from ..registration.affine import fa_map, register_to_template

    cache = key = None
    if cache_dir is not None:
        name = f"sub-{source.label}" + (f"_ses-{source.session}" if source.session else "")
        cache = Path(cache_dir) / f"{name}_reg.npz"
        key = hashlib.sha256(json.dumps(
            {"files": [_file_id(p) for p in (source.dwi, source.bval, source.bvec, source.mask)],
             "template": template_key(template)}, sort_keys=True).encode()).hexdigest()[:32]
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    if str(z["key"]) == key:
                        return np.asarray(z["matrix"], float)
            except (OSError, KeyError, ValueError) as err:
                LOG.warning("unreadable cache %s (%s); recomputing", cache, err)
    dwi, _, mask = _read_subject(source)
    fa = fa_map(dwi.data, dwi.bvals, dwi.bvecs, mask)
    reg = register_to_template(fa, dwi.affine, mask, template, name=f"sub-{source.label}")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.partial.npz")
        np.savez(tmp, matrix=reg.matrix, dice=reg.dice, key=np.array(key))
        os.replace(tmp, cache)
    return reg.matrix


def subject_fa(source: SubjectSource, spacing, shape) -> tuple[np.ndarray, np.ndarray]:
    """The subject's FA and brain mask on the canonical grid, placed as they are (no
    registration): what a cohort template averages."""
    from ..fodf.grid import canonical_grid, resample_to_grid
    from ..registration.affine import fa_map

    dwi, _, mask = _read_subject(source)
    fa = fa_map(dwi.data, dwi.bvals, dwi.bvecs, mask)
    affine, shape = canonical_grid(spacing, shape)
    return (resample_to_grid(fa, dwi.affine, affine, shape, order=1),
            resample_to_grid(mask.astype(np.uint8), dwi.affine, affine, shape, order=0) > 0)




def compute_canonical_fod(source: SubjectSource, cfg=None, cache_dir=None, to_subject=None):
    """The subject's raw (not z-scored) fODF on the canonical grid.

    ``read_dwi`` -> brain mask (``source.mask`` if given, else ``compute_brain_mask``) ->
    ``fit_csd(sh_order, method="auto")`` -> coefficients re-expressed in the RAS+ world frame
    (:func:`fodf.rotation.sh_to_world_frame`: a no-op for RAS+ axis-aligned data such as the
    phantom) -> ``resample_to_grid`` onto ``canonical_grid`` (trilinear for the SH, nearest for the
    mask). With ``cache_dir`` the result is stored in ``cache_dir/sub-<label>[_ses-<ses>]_fod.npz``
    with :func:`fod_cache_key`; a later call with the same inputs loads it. ``to_subject``: the
    map model coordinates -> subject mm of a registered subject (:func:`fodf.grid.to_canonical`).

    Returns ``(sh float32 (X, Y, Z, m), mask bool (X, Y, Z), affine (4, 4))``."""
    from ..fodf.csd import fit_csd
    from ..fodf.grid import to_canonical

    st = _fod_settings(cfg)
    cache = None
    if cache_dir is not None:
        name = f"sub-{source.label}" + (f"_ses-{source.session}" if source.session else "")
        cache = Path(cache_dir) / f"{name}_fod.npz"
        key = fod_cache_key(source, cfg, to_subject)
        if cache.is_file():
            try:
                with np.load(cache) as z:
                    if str(z["key"]) == key:
                        return z["sh"], z["mask"].astype(bool), z["affine"]
                LOG.info("%s: inputs or settings changed; recomputing", cache.name)
            except (OSError, KeyError, ValueError) as err:
                LOG.warning("unreadable cache %s (%s); recomputing", cache, err)
    t0 = time.perf_counter()
    dwi, gtab, mask = _read_subject(source)
    sh, _ = fit_csd(dwi.data, gtab, mask, sh_order=st["sh_order"], method=st["csd_method"])
    sh_c, mask_c, affine = to_canonical(sh, dwi.affine, mask, spacing=st["grid_spacing"],
                                        shape=st["grid_shape"], to_subject=to_subject)
    LOG.info("sub-%s: fODF on the canonical grid in %.1f s", source.label,
             time.perf_counter() - t0)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + f".{os.getpid()}.partial.npz")
        np.savez(tmp, sh=sh_c, mask=mask_c, affine=affine, key=np.array(key))
        os.replace(tmp, cache)
    return sh_c, mask_c, affine


# ----------------------------------------------------------------------------- streamlines
def resample_streamlines(streamlines, n_points: int) -> np.ndarray:
    """(N, p, 3) float32: every streamline with >= 2 points resampled to ``n_points`` points
    equally spaced along its length (dipy ``set_number_of_points``; endpoints kept). Streamlines
    with fewer than 2 points are dropped."""
    from dipy.tracking.streamline import set_number_of_points

    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    keep = [np.asarray(s, np.float32) for s in streamlines if len(s) >= 2]
    if not keep:
        return np.zeros((0, n_points, 3), np.float32)
    out = set_number_of_points(keep, nb_points=int(n_points))
    return np.asarray(out, np.float32).reshape(len(keep), n_points, 3)


@dataclass
class PreparedSubject:
    """A subject ready for training: raw fODF on the canonical grid + resampled streamlines."""

    label: str
    sh_raw: np.ndarray  # (X, Y, Z, m) float32, not z-scored
    mask: np.ndarray  # (X, Y, Z) bool
    streamlines: np.ndarray  # (N, p, 3) float32, RAS+ mm
    affine: np.ndarray  # canonical grid


def reference_in_model(source: SubjectSource, template=None, cache_dir=None):
    """``(to_subject, streamlines)``: the model -> subject map of the subject's registration to
    ``template`` (:func:`subject_registration`, cached; None without a template) and its
    reference streamlines mapped into model coordinates with its inverse."""
    streamlines = load_reference(source.references)
    if template is None:
        return None, streamlines
    from ..registration.template import model_to_subject
    from ..registration.xfm import apply_to_points

    to_subject = model_to_subject(template, subject_registration(source, template, cache_dir))
    return to_subject, apply_to_points(np.linalg.inv(to_subject), streamlines)


def prepare_subject(source: SubjectSource, cfg=None, n_points: int = 32,
                    cache_dir=None, template=None) -> PreparedSubject:
    """fODF on the canonical grid (cached) + the reference streamlines resampled to ``n_points``.

    With ``template`` (a :class:`~gentract_bids.registration.template.ModelTemplate`) the
    subject is registered to it first (:func:`subject_registration`, cached): the fODF is
    resampled through the registration and the streamlines are mapped into model coordinates
    with its inverse, so a cohort in scanner space trains a model in the template's space."""
    to_subject, streamlines = reference_in_model(source, template, cache_dir)
    sh, mask, affine = compute_canonical_fod(source, cfg, cache_dir, to_subject=to_subject)
    sl = resample_streamlines(streamlines, n_points)
    if len(sl) == 0:
        raise BadDataError(f"sub-{source.label}: the reference tractogram has no streamline")
    return PreparedSubject(source.label, sh, mask, sl, affine)


def prepare_subjects(sources, cfg=None, n_points: int = 32, cache_dir=None,
                     template=None, workers: int = 1) -> list:
    """:func:`prepare_subject` for every source, in order; with ``workers`` > 1 that many
    subjects at once in separate processes (CSD and the registration are single-threaded for the
    most part: on 2 cores, 2 workers halve the wall time). The results do not depend on it."""
    sources = list(sources)
    if workers <= 1 or len(sources) <= 1:
        return [prepare_subject(s, cfg, n_points, cache_dir, template) for s in sources]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(sources)),
                             mp_context=mp.get_context("forkserver")) as pool:
        futures = [pool.submit(prepare_subject, s, cfg, n_points, cache_dir, template)
                   for s in sources]
        return [f.result() for f in futures]


# ----------------------------------------------------------------------------- split
def split_subjects(labels, fractions=(0.75, 0.10, 0.15), seed: int = 0) -> dict:
    """Subject-level split ``{"train", "validation", "test"}`` (each a sorted list of labels).

    The sorted unique labels are shuffled with ``seed``; validation gets round(f_val * n) and
    test round(f_test * n) subjects (halves round up), train the rest, and train always keeps at
    least one subject (test shrinks first, then validation). Tiny cohorts degrade like this: 1–3
    subjects -> all in train, validation and test empty; 4 -> 3 train + 1 test; 8 -> 6/1/1. The
    result depends only on the set of labels, the fractions and the seed."""
    labels = sorted(set(str(lab) for lab in labels))
    if not labels:
        raise ValueError("no subjects to split")
    f = np.asarray(fractions, float)
    if f.shape != (3,) or np.any(f < 0) or abs(f.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(labels)
    n_val, n_test = (int(np.floor(x * n + 0.5)) for x in f[1:])
    while n - n_val - n_test < 1:
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [labels[i] for i in order]
    return {"train": sorted(shuffled[n_val + n_test:]),
            "validation": sorted(shuffled[:n_val]),
            "test": sorted(shuffled[n_val:n_val + n_test])}


def write_split(path, split: dict) -> Path:
    """Write the split as JSON (``{"train": [...], "validation": [...], "test": [...]}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: list(split.get(k, [])) for k in ("train", "validation", "test")},
                               indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------- training data
def _pooled_stats(subjects) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every coefficient over all mask voxels of all ``subjects`` (float64),
    pooled exactly from per-subject ``zscore_stats`` and voxel counts."""
    from ..fodf.grid import zscore_stats

    n_tot, s1, s2 = 0, 0.0, 0.0
    for s in subjects:
        mean, std = zscore_stats(s.sh_raw, s.mask)
        n = int(np.count_nonzero(s.mask))
        n_tot += n
        s1 = s1 + n * mean
        s2 = s2 + n * (std ** 2 + mean ** 2)
    mean = s1 / n_tot
    return mean, np.sqrt(np.maximum(s2 / n_tot - mean ** 2, 0.0))


def _hull_points(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of ``points`` (n, 3): the only points that can be extreme
    along any direction, so bounds under any rotation come from them."""
    from scipy.spatial import ConvexHull, QhullError

    if len(points) < 5:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except (QhullError, ValueError):
        return points


class TrainingData:
    """Prepared subjects + augmentation rotations, as (subject, rotation) pairs for the loop.

    A pair is ``(label, rotation_name)``. After :meth:`fit_statistics` (or :meth:`set_statistics`):
    :meth:`volume` gives the pair's z-scored, rotated SH volume as an (m, X, Y, Z) float32 tensor
    (computed on first use and kept: ~69 MB per pair on the 80x96x80 grid with m = 28; pass
    ``max_cached`` to keep only the most recently used ones), :meth:`mask` its rotated brain mask,
    :meth:`sample_batch` a batch of its rotated streamlines in [-1, 1]."""

    def __init__(self, subjects, *, margin_mm: float = 2.0, max_cached: int | None = None):
        self.subjects: dict[str, PreparedSubject] = {}
        for s in subjects:
            if s.label in self.subjects:
                raise ValueError(f"subject {s.label} given twice")
            if s.sh_raw.shape[:3] != s.mask.shape:
                raise ValueError(f"sub-{s.label}: SH {s.sh_raw.shape} and mask {s.mask.shape}")
            self.subjects[s.label] = s
        self.margin_mm = float(margin_mm)
        self.max_cached = max_cached
        self.rotations: dict[str, np.ndarray] = {IDENTITY: np.eye(3)}
        self._pairs: list[Pair] = []
        self._volumes: OrderedDict = OrderedDict()
        self._masks: dict = {}
        self._units: dict = {}
        self.mean = self.std = self.lo = self.hi = None

    # -- statistics
    @property
    def labels(self) -> list[str]:
        return list(self.subjects)

    def fit_statistics(self, train_labels, rotations=None, margin_mm: float | None = None) -> dict:
        """Training-set statistics: per-coefficient z-score mean/std pooled over the mask voxels
        of the ``train_labels`` subjects (unrotated volumes), and coordinate bounds ``lo``/``hi``
        (3,) over all their streamline points, widened by ``margin_mm``.

        The bounds cover the streamlines under every rotation of ``rotations`` (default: the
        default :func:`augmentation_rotations` and every rotation registered so far; ``[]`` for
        the unrotated points only), so rotated training batches stay within [-1, 1]."""
        labels = [str(lab) for lab in train_labels]
        unknown = sorted(set(labels) - set(self.subjects))
        if not labels or unknown:
            raise ValueError(f"train labels missing or unknown: {unknown or labels}")
        subs = [self.subjects[lab] for lab in labels]
        self.mean, self.std = _pooled_stats(subs)
        if rotations is None:
            rots = [R for _, R in augmentation_rotations()] + list(self.rotations.values())
        else:
            rots = [np.eye(3)] + [R for _, R in rotations]
        hull = _hull_points(np.concatenate(
            [_hull_points(s.streamlines.reshape(-1, 3).astype(np.float64)) for s in subs]))
        rotated = np.concatenate([hull @ np.asarray(R, np.float64).T for R in rots])
        margin = self.margin_mm if margin_mm is None else float(margin_mm)
        self.lo, self.hi = rotated.min(0) - margin, rotated.max(0) + margin
        self._volumes.clear()
        self._units.clear()
        return self.statistics()

    def set_statistics(self, mean, std, lo, hi) -> None:
        """Use given statistics (e.g. a checkpoint's) instead of :meth:`fit_statistics`."""
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        self.lo, self.hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        self._volumes.clear()
        self._units.clear()

    def statistics(self) -> dict:
        self._need_stats()
        return {"zscore": {"mean": self.mean.tolist(), "std": self.std.tolist()},
                "coord_bounds": {"lo": self.lo.tolist(), "hi": self.hi.tolist()}}

    def _need_stats(self) -> None:
        if self.mean is None or self.lo is None:
            raise RuntimeError("call fit_statistics() (or set_statistics()) first")

    def to_unit(self, points_mm) -> np.ndarray:
        """mm -> [-1, 1] per axis with the bounds (same map as ``model.CoordinateScaler``)."""
        self._need_stats()
        return (2 * (np.asarray(points_mm, np.float64) - self.lo) / (self.hi - self.lo) - 1)

    # -- pairs
    def register_rotations(self, rotations) -> None:
        """Make the named rotations ``[(name, R)]`` known (a name must keep its matrix)."""
        for name, R in rotations:
            R = np.asarray(R, np.float64)
            old = self.rotations.get(name)
            if old is not None and not np.allclose(old, R, atol=1e-9):
                raise ValueError(f"rotation {name!r} registered with another matrix")
            self.rotations[name] = R

    def prepare_rotations(self, rotations, labels=None, max_rotations: int | None = None,
                          seed: int = 0, lazy: bool = True) -> list[Pair]:
        """Pairs of ``labels`` (default: all subjects) with the identity and up to
        ``max_rotations`` (default: all) of the non-identity ``rotations`` each, drawn per subject
        from ``SeedSequence([seed, crc32(label)])`` (the same for a given seed, whatever the other
        subjects). ``lazy=False`` computes the volumes now (needs the statistics)."""
        rotations = list(rotations)
        self.register_rotations(rotations)
        others = [name for name, _ in rotations if name != IDENTITY]
        k = len(others) if max_rotations is None else max(0, min(int(max_rotations), len(others)))
        pairs = []
        for lab in (self.labels if labels is None else [str(x) for x in labels]):
            if lab not in self.subjects:
                raise KeyError(f"unknown subject {lab}")
            rng = np.random.default_rng(np.random.SeedSequence([int(seed),
                                                                zlib.crc32(lab.encode())]))
            pick = sorted(rng.choice(len(others), size=k, replace=False)) if k else []
            pairs += [(lab, IDENTITY)] + [(lab, others[i]) for i in pick]
        for p in pairs:
            if p not in self._pairs:
                self._pairs.append(p)
        if not lazy:
            for p in pairs:
                self.volume(p)
        return pairs

    def choose_pairs(self, labels, rotations, per_subject: int, seed: int = 0) -> list[Pair]:
        """The loop's pairs: identity + ``per_subject`` random rotations per subject (lazy)."""
        return self.prepare_rotations(rotations, labels, max_rotations=per_subject, seed=seed)

    @property
    def pairs(self) -> list[Pair]:
        """Every pair prepared so far, in order."""
        return list(self._pairs)

    def rotation(self, pair: Pair) -> np.ndarray:
        return self.rotations[pair[1]]

    def _subject(self, pair: Pair) -> PreparedSubject:
        return self.subjects[pair[0]]

    # -- per-pair data
    def mask(self, pair: Pair) -> np.ndarray:
        """The pair's brain mask (X, Y, Z) bool on the canonical grid, rotated."""
        if pair not in self._masks:
            s, R = self._subject(pair), self.rotation(pair)
            if pair[1] == IDENTITY:
                self._masks[pair] = s.mask
            else:
                self._masks[pair] = rotate_mask(s.mask, s.affine, R)
        return self._masks[pair]

    def volume(self, pair: Pair):
        """The pair's z-scored, rotated SH volume: torch float32 (m, X, Y, Z), 0 outside the mask."""
        import torch

        from ..fodf.grid import zscore

        self._need_stats()
        if pair in self._volumes:
            self._volumes.move_to_end(pair)
            return self._volumes[pair]
        s, R = self._subject(pair), self.rotation(pair)
        if pair[1] == IDENTITY:
            sh, mask = s.sh_raw, s.mask
        else:
            sh, mask = rotate_sh_volume(s.sh_raw, s.affine, R, mask=s.mask, only_in_mask=True)
            self._masks[pair] = mask
        out = np.zeros((sh.shape[-1],) + mask.shape, np.float32)
        out[:, mask] = zscore(sh[mask], self.mean, self.std).T  # the mask's voxels only
        vol = torch.from_numpy(out)
        self._volumes[pair] = vol
        if self.max_cached is not None:
            while len(self._volumes) > max(int(self.max_cached), 1):
                self._volumes.popitem(last=False)
        return vol

    def streamlines(self, pair: Pair) -> np.ndarray:
        """The pair's rotated streamlines (N, p, 3) float32 in mm."""
        s = self._subject(pair)
        if pair[1] == IDENTITY:
            return s.streamlines
        return rotate_points(s.streamlines, self.rotation(pair))

    def streamlines_unit(self, pair: Pair) -> np.ndarray:
        """The pair's rotated streamlines in [-1, 1] (N, p, 3) float32 (kept per pair).

        Points outside the bounds (a rotation not covered by :meth:`fit_statistics`) are clipped
        to [-1, 1], with a warning."""
        self._need_stats()
        if pair not in self._units:
            u = self.to_unit(self.streamlines(pair))
            out = np.abs(u) > 1.0 + 1e-6
            if out.any():
                LOG.warning("pair %s: %d streamline points fall outside the coordinate bounds "
                            "(fit_statistics without this rotation?); clipped", pair,
                            int(out.any(-1).sum()))
            self._units[pair] = np.clip(u, -1.0, 1.0).astype(np.float32)
        return self._units[pair]

    def sample_batch(self, pair: Pair, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` of the pair's streamlines (B, p, 3) float32 in [-1, 1].

        Drawn without replacement when the subject has enough (with replacement otherwise); each
        is reversed with probability 1/2 (both orientations are the same streamline). All
        randomness comes from ``rng``."""
        unit = self.streamlines_unit(pair)
        n = len(unit)
        if n == 0:
            raise ValueError(f"pair {pair} has no streamline")
        idx = rng.choice(n, size=int(batch_size), replace=n < batch_size)
        batch = unit[idx]
        flip = rng.random(len(idx)) < 0.5
        batch[flip] = batch[flip, ::-1]
        return np.ascontiguousarray(batch, np.float32)
