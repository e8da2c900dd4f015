#!/usr/bin/env python
"""Phantom benchmark of the tractography baselines: the GenTract paper's Tables 2-5 on phantoms.

A held-out synthetic test cohort (phantom seed :data:`TEST_SEED` = 1000; the training recipes use
``gentract-phantom``'s default seed 0) is generated under ``--out``, every tracker of
:data:`TRACKERS` runs on every subject under every condition of :func:`make_conditions`, and each
tractogram is scored against the phantom's ground truth with
:func:`gentract_bids.evaluation.evaluate.evaluate_tractogram` (``mode="groundtruth"``).

Conditions (each a cohort, or a transformation of one):

``clean``     2 mm, SNR 30 (the phantom defaults).
``fodnoise``  the ``clean`` cohort with Rician noise on the fODF that a tracker reads
              (:func:`add_fod_noise`; sigma mapping in :func:`fod_noise_sigmas`).
``lowsnr``    the same anatomy (same seed) synthesised at SNR 10.
``lr_noise``  the same anatomy at 3 mm, plus the fODF noise (the paper's low-field proxy).
``ood``       out of family: the ISBI 2013 challenge geometry (phantomas JSON) instead of our
              brain-like template, with the ``clean`` degradations (2 mm, SNR 30, no fODF noise).

``tckglobal`` reads the DWI, not an fODF: under a noise condition whose cohort is also run
without noise (``fodnoise``) its result would repeat that run, so it is reported as "n/a"; where
the cohort is only run with noise (``lr_noise``) it runs on that cohort's DWI (resolution
degradation only) and the table says so.

Inputs shared by every tracker of a subject: the phantom's brain mask and tissue partial-volume
maps (the truth ``probseg`` maps, standing in for an anatomical segmentation, which DWI noise
does not degrade), our dipy CSD fODF (L_max 6) for the dipy trackers and an MRtrix3 fODF
(``dwi2response dhollander`` + single-shell ``dwi2fod csd``, L_max 8) for iFOD2/SD_Stream; the
responses also feed ``tckglobal``. The ISBI geometry has no grey matter, where ``dwi2response
dhollander`` fails: the ``ood`` subjects borrow the responses of the same subject of the ``clean``
cohort (same signal model and gradient scheme). fODF estimation is preprocessing: it is timed
separately (``results.json``: ``preprocessing``), not in the trackers' times.

Default sizes (they fit this 2-core machine, shared with other sessions, in ~45 min for 3 subjects
and the five conditions): 1000 streamlines per tractogram; iFOD2/SD_Stream generate 2x that and
``tcksift`` keeps 1000 (the paper's factor 10 would make SIFT dominate the run); ``tckglobal``
``-niter 5e6``; dipy trackers start from 3 random WM seeds per requested streamline; trackers run
single-threaded (MRtrix ``-nthreads 0``), fODF estimation with 2 threads.

Time and memory: every tracker call runs in a fresh *spawned* Python process that reads its inputs
from disk. ``seconds`` is the wall time of the tracker call in that process (tracking plus SIFT /
length filtering; no fODF estimation, no scoring). ``peak_mb`` is the peak resident set size of
the tracker's process tree (the worker plus the MRtrix3 programs it runs, summed), sampled every
0.1 s from ``/proc`` by the parent, and never below the worker's exact ``VmHWM``
(``results.json`` keeps both: ``tree_peak_mb``, ``worker_hwm_mb``). ``getrusage`` is not used: on
Linux ``ru_maxrss`` survives fork + exec, so a spawned worker (and every program it starts)
reports at least the RSS its parent had when it forked.

GenTract: ``gentract`` samples from the checkpoint given with ``--model`` (default: the shipped
one), reading ``inputs.dipy_sh`` (which carries the condition's noise) through the app's own
canonical-grid, z-scoring and sampling code; ``gentract-other`` / ``gentract-zero`` are the context
ablations (the next subject's fODF / an all-zero volume). They are not in the default tracker list
of a run unless named with ``--trackers``.

Run ``python benchmarks/phantom_benchmark.py --help``; ``--quick`` is the CI smoke run.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from gentract_bids.model.support import DEFAULT_THRESHOLD as DEFAULT_SUPPORT_THRESHOLD  # noqa: E402

TEST_SEED = 1000  # held-out phantom seed: training cohorts use other seeds (default 0)
PAPER_FOD_SIGMA = 0.005  # Rician sigma the paper adds to its (dipy CSD, HCP) fODF input
ISBI_GEOMETRY = Path("/work/shared/data/external/isbi2013-phantom/isbi_challenge_2013.json")
if not ISBI_GEOMETRY.exists():  # the same folder relative to the repository (README: ../shared)
    ISBI_GEOMETRY = REPO.parent / "shared/data/external/isbi2013-phantom/isbi_challenge_2013.json"
METRICS = ("precision", "valid_bundles", "mean_overlap", "mean_f1", "mean_overreach", "seconds",
           "peak_mb")
CONDITION_ORDER = ("clean", "fodnoise", "lowsnr", "lr_noise", "ood")


# ----------------------------------------------------------------------------- data classes
@dataclass(frozen=True)
class CohortSpec:
    """One synthetic cohort (all subjects share the seed and the acquisition)."""

    name: str
    snr: float
    voxel_size: float
    geometry: str | None = None  # phantomas JSON path; None = our brain-like template


@dataclass(frozen=True)
class Condition:
    """A benchmark condition: a cohort, with or without noise on the fODF input."""

    name: str
    cohort: CohortSpec
    fod_noise: bool
    description: str


@dataclass
class SubjectInputs:
    """Everything a tracker may read for one subject under one condition (paths, RAS+ files).

    ``dipy_sh`` / ``mrtrix_fod`` already carry the condition's fODF noise."""

    subject: str  # "01"
    condition: str
    cohort_root: str
    dwi: str
    bval: str
    bvec: str
    mask: str
    wm: str
    gm: str
    csf: str
    dipy_sh: str  # NIfTI, 28 coefficients, dipy descoteaux07 non-legacy
    mrtrix_fod: str  # NIfTI/MIF, MRtrix SH basis, L_max 8
    responses: dict  # wm/gm/csf response files (dwi2response dhollander)
    fod_sigma: dict = field(default_factory=dict)  # {"dipy": s, "mrtrix": s} (0 = no noise)


@dataclass
class Settings:
    """Run sizes; ``tracker_options`` feed the tracker functions."""

    n_subjects: int = 3
    seed: int = TEST_SEED
    n_streamlines: int = 1000
    sift_factor: float = 2.0
    tckglobal_niter: float = 5e6
    dipy_seed_factor: float = 3.0  # dipy: track from this many seeds per requested streamline
    nthreads: int = 1  # MRtrix3 threads of the trackers (1: reproducible tckgen/tckglobal)
    prep_nthreads: int = 2  # threads of the fODF estimation (preprocessing, not timed)
    clean_voxel_size: float = 2.0
    clean_snr: float = 30.0
    low_snr: float = 10.0
    lr_voxel_size: float = 3.0
    fod_sigma: float = PAPER_FOD_SIGMA
    n_truth_streamlines: int = 200
    min_streamlines: int = 10  # a bundle counts in VB with at least this many valid streamlines

    def tracker_options(self, tracker: str) -> dict:
        if tracker.startswith("gentract"):
            return {}  # the checkpoint comes with run_benchmark's gentract_options
        if tracker in ("ifod2", "sdstream"):
            return {"sift_factor": self.sift_factor, "nthreads": self.nthreads}
        if tracker == "tckglobal":
            return {"niter": self.tckglobal_niter, "nthreads": self.nthreads}
        return {"seed_factor": self.dipy_seed_factor}


# ----------------------------------------------------------------------------- conditions
def make_conditions(settings: Settings, names=CONDITION_ORDER,
                    ood_geometry: Path | str | None = ISBI_GEOMETRY) -> list[Condition]:
    """The benchmark conditions ``names`` (in :data:`CONDITION_ORDER`)."""
    s = settings
    base = CohortSpec("base", s.clean_snr, s.clean_voxel_size)
    all_c = {
        "clean": Condition("clean", base, False,
                           f"{s.clean_voxel_size:g} mm, SNR {s.clean_snr:g}"),
        "fodnoise": Condition("fodnoise", base, True,
                              f"clean + Rician noise on the fODF input (paper sigma "
                              f"{s.fod_sigma:g})"),
        "lowsnr": Condition("lowsnr", CohortSpec("lowsnr", s.low_snr, s.clean_voxel_size), False,
                            f"{s.clean_voxel_size:g} mm, DWI SNR {s.low_snr:g}"),
        "lr_noise": Condition("lr_noise", CohortSpec("lr", s.clean_snr, s.lr_voxel_size), True,
                              f"{s.lr_voxel_size:g} mm, SNR {s.clean_snr:g} + fODF noise "
                              "(low-field proxy)"),
        "ood": Condition("ood", CohortSpec("ood", s.clean_snr, s.clean_voxel_size,
                                           None if ood_geometry is None else str(ood_geometry)),
                         False, f"ISBI 2013 geometry, {s.clean_voxel_size:g} mm, "
                                f"SNR {s.clean_snr:g} (the clean degradations)"),
    }
    unknown = [n for n in names if n not in all_c]
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; choose from {list(all_c)}")
    return [all_c[n] for n in CONDITION_ORDER if n in names]


def dwi_tracker_status(tracker: str, condition: Condition, conditions: list[Condition]) -> str:
    """``"run"``, ``"run-dwi-only"`` or ``"n/a"`` for a tracker that reads the DWI (tckglobal)."""
    if tracker not in DWI_TRACKERS or not condition.fod_noise:
        return "run"
    if any(c.cohort == condition.cohort and not c.fod_noise for c in conditions):
        return "n/a"
    return "run-dwi-only"


# ----------------------------------------------------------------------------- fODF noise
def add_fod_noise(sh: np.ndarray, sigma: float, mask: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Rician noise of scale ``sigma`` on every SH coefficient of the voxels in ``mask``.

    An SH coefficient is signed, so the Rician magnitude is applied to its absolute value and the
    sign is kept: ``c' = sign(c) * sqrt((|c| + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, sigma^2)`` i.i.d.
    per coefficient. For ``|c| >> sigma`` this is ``c + n1`` (Gaussian); for ``|c| <~ sigma`` it
    has the Rician noise floor (mean ``sigma * sqrt(pi / 2)`` at ``c = 0``). Coefficients that are
    exactly 0 get a random sign. Voxels outside ``mask`` are unchanged."""
    sh = np.asarray(sh, np.float32)
    out = sh.copy()
    idx = np.flatnonzero(np.asarray(mask, bool))
    flat = out.reshape(-1, sh.shape[-1])
    c = flat[idx].astype(np.float64)
    n1 = rng.normal(0.0, sigma, c.shape)
    n2 = rng.normal(0.0, sigma, c.shape)
    sign = np.where(c > 0, 1.0, np.where(c < 0, -1.0, rng.choice([-1.0, 1.0], c.shape)))
    flat[idx] = (sign * np.sqrt((np.abs(c) + n1) ** 2 + n2 ** 2)).astype(np.float32)
    return out


def median_wm_c00(sh: np.ndarray, wm: np.ndarray, threshold: float = 0.5) -> float:
    """Median |c00| (the l = 0 coefficient) over voxels with WM fraction > ``threshold``."""
    sel = np.asarray(wm) > threshold
    return float(np.median(np.abs(np.asarray(sh)[..., 0][sel]))) if sel.any() else float("nan")


def fod_noise_sigmas(sigma: float, dipy_c00: float, mrtrix_c00: float) -> dict:
    """Map the paper's sigma onto our two fODFs.

    The paper adds ``sigma`` to dipy CSD fODFs of HCP data. dipy's CSD divides by the response's
    S0, so its fODF is unitless with the same scale on any data: a voxel that matches the response
    has c00 = 1/sqrt(4 pi) = 0.282 (our phantom's WM median is ~0.30). Our dipy fODF therefore
    gets ``sigma`` as is. The MRtrix3 fODF (another basis normalisation and response scale) gets
    the same noise *relative to its own WM median c00*: ``sigma * mrtrix_c00 / dipy_c00``."""
    return {"dipy": float(sigma), "mrtrix": float(sigma * mrtrix_c00 / dipy_c00),
            "relative_to_wm_c00": float(sigma / dipy_c00),
            "dipy_wm_c00": float(dipy_c00), "mrtrix_wm_c00": float(mrtrix_c00)}


# ----------------------------------------------------------------------------- trackers
def _load(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, np.float32), img.affine


def track_mrtrix_local(algorithm: str, inputs: SubjectInputs, condition: Condition,
                       n_streamlines: int, seed: int, workdir, *, sift_factor: float = 2.0,
                       nthreads: int = 1):
    """MRtrix3 iFOD2/SD_Stream on ``inputs.mrtrix_fod``, seeded in WM > 0.5, then tcksift."""
    from gentract_bids.baselines.mrtrix import run_local

    workdir = Path(workdir)
    return run_local(algorithm, inputs.dwi, inputs.bval, inputs.bvec, inputs.mask,
                     workdir / f"{algorithm}.tck", n_streamlines=n_streamlines,
                     sift_factor=sift_factor, wm_pve=inputs.wm, wm_fod=inputs.mrtrix_fod,
                     nthreads=nthreads, random_seed=seed, workdir=workdir / "work")


def track_ifod2(inputs, condition, n_streamlines, seed, workdir, **options):
    """MRtrix3 iFOD2 + SIFT."""
    return track_mrtrix_local("ifod2", inputs, condition, n_streamlines, seed, workdir, **options)


def track_sdstream(inputs, condition, n_streamlines, seed, workdir, **options):
    """MRtrix3 SD_Stream + SIFT."""
    return track_mrtrix_local("sdstream", inputs, condition, n_streamlines, seed, workdir,
                              **options)


def track_tckglobal(inputs, condition, n_streamlines, seed, workdir, *, niter: float = 5e6,
                    nthreads: int = 1):
    """MRtrix3 tckglobal on the DWI with the subject's dhollander responses."""
    from gentract_bids.baselines.mrtrix import run_tckglobal

    workdir = Path(workdir)
    r = inputs.responses
    return run_tckglobal(inputs.dwi, inputs.bval, inputs.bvec, inputs.mask,
                         workdir / "tckglobal.tck", wm_response=r["wm"], gm_response=r.get("gm"),
                         csf_response=r.get("csf"), niter=niter, n_streamlines=n_streamlines,
                         nthreads=nthreads, random_seed=seed, workdir=workdir / "work")


def track_dipy_kind(kind: str, inputs: SubjectInputs, condition: Condition, n_streamlines: int,
                    seed: int, workdir, *, seed_factor: float = 3.0):
    """dipy local tracking on ``inputs.dipy_sh`` with CMC stopping on the tissue maps, from
    ``seed_factor * n_streamlines`` random WM seeds (fewer may pass the 10 mm length filter)."""
    from gentract_bids.baselines.dipy_tracking import track_dipy

    sh, affine = _load(inputs.dipy_sh)
    pves = {f"{t}_pve": _load(getattr(inputs, t))[0] for t in ("wm", "gm", "csf")}
    return track_dipy(sh, affine, kind=kind, n_streamlines=n_streamlines, random_seed=seed,
                      max_seeds=int(math.ceil(seed_factor * n_streamlines)), **pves)


def track_dipy_det(inputs, condition, n_streamlines, seed, workdir, **options):
    """dipy deterministic (maximum direction) tracking."""
    return track_dipy_kind("det", inputs, condition, n_streamlines, seed, workdir, **options)


def track_dipy_prob(inputs, condition, n_streamlines, seed, workdir, **options):
    """dipy probabilistic tracking."""
    return track_dipy_kind("prob", inputs, condition, n_streamlines, seed, workdir, **options)


CONTEXTS = ("own", "other", "zero")


def track_gentract(inputs, condition, n_streamlines, seed, workdir, *, model=None,
                   context: str = "own", steps=None, sha256=None, support_threshold=None):
    """GenTract sampling from the checkpoint ``model`` (default: the shipped one), conditioned on
    ``inputs.dipy_sh`` (the condition's fODF, noise included) through the app's own code: the
    canonical grid (:func:`fodf.grid.to_canonical`), the model's z-score statistics and
    :func:`model.inference.sample_tractogram`. ``context`` is the ablation of issue 5: ``own``
    (the subject's fODF), ``other`` (the next subject's fODF of the same cohort and condition) or
    ``zero`` (an all-zero z-scored volume: no anatomy at all). ``sha256``: refuse another
    checkpoint than the one the run's cache key names. ``support_threshold``: the app's fODF
    support filter (:mod:`gentract_bids.model.support`), always with the subject's *own* fODF,
    whatever the context; None or 0: off (every sampled streamline is scored)."""
    from gentract_bids.fodf.grid import to_canonical, zscore
    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model.inference import fod_support, load_model, sample_tractogram

    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    net, meta = load_model(model, expected_sha256=sha256)
    cfg = net.config
    mean, std = np.asarray(meta["zscore"]["mean"]), np.asarray(meta["zscore"]["std"])

    def canonical(sh_file, mask_file):
        sh, affine = _load(sh_file)
        mask, mask_affine = _load(mask_file)
        sh_c, mask_c, affine_c = to_canonical(sh, affine, mask > 0, mask_affine,
                                              cfg.grid_spacing, cfg.grid_shape)
        return zscore(sh_c, mean, std, mask_c), mask_c, affine_c, mask_affine, mask.shape[:3]

    own, own_mask, affine_c, mask_affine, mask_shape = canonical(inputs.dipy_sh, inputs.mask)
    support = (fod_support(meta, own, own_mask, affine_c, threshold=support_threshold)
               if support_threshold else None)
    z = own
    if context == "other":  # the next subject of the same cohort (wrapping around)
        labels = sorted(p.name[4:] for p in Path(inputs.cohort_root).glob("sub-*") if p.is_dir())
        other = labels[(labels.index(inputs.subject) + 1) % len(labels)]
        if other == inputs.subject:
            raise ValueError("the 'other' context needs a cohort of at least 2 subjects")
        z = canonical(inputs.dipy_sh.replace(f"sub-{inputs.subject}", f"sub-{other}"),
                      subject_files(Path(inputs.cohort_root), other)["mask"])[0]
    if context == "zero":
        z = np.zeros_like(z)
    out = Path(workdir) / "gentract_raw.trx"
    info = sample_tractogram(net, meta, z, out, n_streamlines=n_streamlines, steps=steps,
                             seed=seed, ref_affine=mask_affine, ref_shape=mask_shape,
                             support=support)
    streamlines, _ = load_tractogram(out)
    out.unlink()
    return list(streamlines), {
        "Parameters": {"context": context, "sampler": info["Sampler"], "steps": info["Steps"],
                       "sha256": info["Model"]["SHA256"], "batch_size": info["BatchSize"],
                       "support_filter": info["SupportFilter"],
                       "n_sampled": info["NumberSampled"]},
        "Timings": info["Timings"]}


def _gentract_variant(context: str):
    def track(inputs, condition, n_streamlines, seed, workdir, **options):
        return track_gentract(inputs, condition, n_streamlines, seed, workdir, context=context,
                              **options)

    track.__doc__ = f"GenTract sampling with the {context} subject's context."
    return track


# name -> fn(inputs, condition, n_streamlines, seed, workdir, **options) -> streamlines
# (a list of (n, 3) RAS+ mm arrays) or (streamlines, metadata). The gentract entries read
# inputs.dipy_sh (and the checkpoint given with --model).
TRACKERS = {
    "gentract": _gentract_variant("own"),
    "gentract-other": _gentract_variant("other"),
    "gentract-zero": _gentract_variant("zero"),
    "ifod2": track_ifod2,
    "sdstream": track_sdstream,
    "tckglobal": track_tckglobal,
    "dipy-det": track_dipy_det,
    "dipy-prob": track_dipy_prob,
}
# the SubjectInputs field each tracker reads (default "dipy_sh", GenTract's input too); the
# trackers that read "dwi" get no fODF noise (see dwi_tracker_status)
TRACKER_READS = {"ifod2": "mrtrix_fod", "sdstream": "mrtrix_fod", "tckglobal": "dwi"}
DWI_TRACKERS = {t for t, field_ in TRACKER_READS.items() if field_ == "dwi"}
GENTRACT_TRACKERS = ("gentract", "gentract-other", "gentract-zero")
BASELINES = [t for t in TRACKERS if t not in GENTRACT_TRACKERS]
TRACKER_LABELS = {"gentract": "GenTract", "gentract-other": "GenTract, other subject's context",
                  "gentract-zero": "GenTract, zero context", "ifod2": "iFOD2 + SIFT", "sdstream": "SD_Stream + SIFT",
                  "tckglobal": "tckglobal", "dipy-det": "dipy det", "dipy-prob": "dipy prob"}


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4
MEMORY_METHOD = ("peak RSS of the tracker's process tree (spawned Python worker + the MRtrix3 "
                 "programs it runs), summed over the tree and sampled every 0.1 s from /proc; "
                 "never below the worker's own VmHWM")


def _read_proc(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def tree_rss_kb(root_pid: int) -> int:
    """Resident set size (kB) of ``root_pid`` plus all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read_proc(f"/proc/{d}/stat")
            if stat:  # "pid (comm) state ppid ...": comm may hold spaces
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        statm = _read_proc(f"/proc/{pid}/statm")
        if statm:
            total += int(statm.split()[1]) * PAGE_KB
        todo += children.get(pid, [])
    return total


def _vm_hwm_kb() -> int:
    """This process's exact peak RSS since its exec (``VmHWM``). Not ``ru_maxrss``: on Linux
    that survives fork + exec, so a spawned child would report its parent's RSS."""
    for line in (_read_proc("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _worker(tracker: str, inputs: dict, condition: dict, n_streamlines: int, seed: int,
            workdir: str, options: dict, out_file: str, result_file: str) -> None:
    """Run one tracker in this (spawned) process; save its streamlines and a JSON record
    (wall time of the tracker call, the worker's VmHWM, tracker metadata) or the error."""
    import traceback

    import nibabel as nib

    from gentract_bids.io.tractogram import save_tractogram

    try:
        inp = SubjectInputs(**inputs)
        cond = Condition(condition["name"], CohortSpec(**condition["cohort"]),
                         condition["fod_noise"], condition["description"])
        t0 = time.perf_counter()
        out = TRACKERS[tracker](inp, cond, n_streamlines, seed, workdir, **options)
        seconds = time.perf_counter() - t0
        streamlines, meta = out if isinstance(out, tuple) else (out, {})
        hwm_kb = _vm_hwm_kb()
        ref = nib.load(inp.mask)
        save_tractogram(out_file, streamlines, ref.affine, ref.shape[:3])
        keep = ("Algorithm", "FOD", "NGenerated", "NAfterSIFT", "NRaw", "NAboveMinLength",
                "NSeeds", "NTracked", "NStreamlines", "Commands", "Timings", "Parameters",
                "StoppingCriterion")
        rec = {"seconds": seconds, "worker_hwm_mb": hwm_kb / 1024,
               "n_streamlines": len(streamlines),
               "meta": _jsonable({k: meta[k] for k in keep if k in meta})}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        rec = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    Path(result_file).write_text(json.dumps(rec) + "\n")


def run_tracker(tracker: str, inputs: SubjectInputs, condition: Condition, n_streamlines: int,
                seed: int, workdir: Path, options: dict, interval: float = 0.1) -> dict:
    """Run ``tracker`` in a fresh spawned process while sampling the RSS of its process tree;
    return its record (+ ``file``, ``peak_mb``). Raises RuntimeError if the tracker failed."""
    import threading

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out_file = workdir / f"{tracker}.trx"
    result_file = workdir / "worker_result.json"
    result_file.unlink(missing_ok=True)
    proc = mp.get_context("spawn").Process(
        target=_worker, args=(tracker, asdict(inputs), asdict(condition), n_streamlines, seed,
                              str(workdir), options, str(out_file), str(result_file)))
    proc.start()
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_kb(proc.pid))
            done.wait(interval)

    monitor = threading.Thread(target=sample, daemon=True)
    monitor.start()
    proc.join()
    done.set()
    monitor.join()
    if not result_file.exists():
        raise RuntimeError(f"{tracker} worker died (exit code {proc.exitcode})")
    rec = json.loads(result_file.read_text())
    if "error" in rec:
        raise RuntimeError(rec["error"])
    rec["tree_peak_mb"] = peak[0] / 1024
    rec["peak_mb"] = max(rec["tree_peak_mb"], rec["worker_hwm_mb"])
    rec["peak_method"] = MEMORY_METHOD
    rec["file"] = str(out_file)
    return rec


# ----------------------------------------------------------------------------- data preparation
def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_cohort(spec: CohortSpec, settings: Settings, root: Path) -> Path:
    """Write ``spec``'s cohort under ``root/<name>`` (reused when the same parameters exist)."""
    from gentract_bids.phantom.cohort import make_cohort

    out = root / spec.name
    stamp = out / "benchmark_cohort.json"
    params = {"spec": asdict(spec), "n_subjects": settings.n_subjects, "seed": settings.seed,
              "n_truth_streamlines": settings.n_truth_streamlines}
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return out
    t0 = time.perf_counter()
    make_cohort(out, n_subjects=settings.n_subjects, seed=settings.seed, snr=spec.snr,
                voxel_size=spec.voxel_size, geometry=spec.geometry,
                n_truth_streamlines=settings.n_truth_streamlines)
    stamp.write_text(json.dumps(params, indent=2) + "\n")
    _log(f"cohort {spec.name}: {settings.n_subjects} subject(s) in "
         f"{time.perf_counter() - t0:.0f} s")
    return out


def subject_files(cohort_root: Path, label: str) -> dict:
    raw = cohort_root / f"sub-{label}" / "dwi" / f"sub-{label}_dwi"
    tr = (cohort_root / "derivatives" / "phantom-truth" / f"sub-{label}" / "dwi"
          / f"sub-{label}_space-dwi")
    return {"dwi": f"{raw}.nii.gz", "bval": f"{raw}.bval", "bvec": f"{raw}.bvec",
            "mask": f"{tr}_desc-brain_mask.nii.gz", "wm": f"{tr}_label-WM_probseg.nii.gz",
            "gm": f"{tr}_label-GM_probseg.nii.gz", "csf": f"{tr}_label-CSF_probseg.nii.gz"}


def mrtrix_fod_given_responses(f: dict, responses: dict, work: Path, log, nthreads: int = 1,
                               lmax: int = 8) -> Path:
    """``wmfod.mif`` by single-shell ``dwi2fod csd`` (shell closest to b = 3000, as
    :func:`gentract_bids.baselines.mrtrix.estimate_fod`) with *given* dhollander responses."""
    import re

    import nibabel as nib

    from gentract_bids.baselines.mrtrix import _threads, prepare_dwi
    from gentract_bids.fodf.csd import choose_shell

    work.mkdir(parents=True, exist_ok=True)
    b = choose_shell(np.loadtxt(f["bval"], ndmin=1))
    text = Path(responses["wm"]).read_text()
    m = re.search(r"#\s*Shells:\s*([0-9.,\s]+)", text)
    shells = [float(v) for v in m.group(1).replace(",", " ").split()] if m else []
    rows = np.loadtxt(responses["wm"], comments="#", ndmin=2)
    row = rows[int(np.argmin([abs(s - b) for s in shells]))] if shells else rows[-1]
    wm_row = work / f"response_wm_b{b:g}.txt"
    np.savetxt(wm_row, row[None], fmt="%.6f")
    mask = work / "mask.nii.gz"
    data, affine = _load(f["mask"])
    nib.Nifti1Image((data > 0).astype(np.uint8), affine).to_filename(str(mask))
    dwi_mif = prepare_dwi(f["dwi"], f["bval"], f["bvec"], work, log, nthreads)
    sub = work / f"dwi_b{b:g}.mif"
    log.run(["dwiextract", "-quiet", "-force", dwi_mif, "-shells", f"0,{b:g}", sub,
             *_threads(nthreads)], "dwiextract")
    fod = work / "wmfod.mif"
    log.run(["dwi2fod", "csd", "-quiet", "-force", sub, wm_row, fod, "-mask", mask,
             "-lmax", str(lmax), *_threads(nthreads)], "dwi2fod")
    return fod


def prepare_fods(cohort_root: Path, label: str, work: Path, nthreads: int = 1,
                 responses: dict | None = None) -> dict:
    """dipy CSD (L_max 6) and MRtrix3 CSD (L_max 8) fODFs of one subject, as NIfTI; reused when
    present. ``responses``: dhollander response files to use instead of estimating them (the
    ISBI geometry has no GM, where ``dwi2response dhollander`` fails). Returns paths, response
    files, WM median c00 of both fODFs and the seconds spent."""
    import nibabel as nib

    from gentract_bids.baselines.mrtrix import CommandLog, estimate_fod
    from gentract_bids.fodf.csd import fit_csd, make_gtab
    from gentract_bids.io.dwi import read_dwi

    f = subject_files(cohort_root, label)
    work.mkdir(parents=True, exist_ok=True)
    info_file = work / "fods.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    mask = _load(f["mask"])[0] > 0
    wm = _load(f["wm"])[0]
    t0 = time.perf_counter()
    dwi = read_dwi(f["dwi"], f["bval"], f["bvec"])
    sh, csd_info = fit_csd(dwi.data, make_gtab(dwi.bvals, dwi.bvecs), mask, sh_order=6)
    dipy_sh = work / "dipy_csd_sh.nii.gz"
    nib.Nifti1Image(sh, dwi.affine).to_filename(str(dipy_sh))
    t_dipy = time.perf_counter() - t0
    del dwi
    t0 = time.perf_counter()
    log = CommandLog([], {})
    if responses is None:
        fod_mif, meta = estimate_fod(f["dwi"], f["bval"], f["bvec"], f["mask"], work / "mrtrix",
                                     nthreads=nthreads, log=log)
        responses = meta["ResponseFiles"]
    else:
        fod_mif = mrtrix_fod_given_responses(f, responses, work / "mrtrix", log, nthreads)
    fod_nii = work / "mrtrix_wmfod.nii.gz"
    log.run(["mrconvert", "-quiet", "-force", fod_mif, fod_nii, "-datatype", "float32"],
            "mrconvert_fod")
    t_mrtrix = time.perf_counter() - t0
    fod = _load(fod_nii)[0]
    info = {"dipy_sh": str(dipy_sh), "mrtrix_fod": str(fod_nii),
            "responses": dict(responses), "dipy_wm_c00": median_wm_c00(sh, wm),
            "mrtrix_wm_c00": median_wm_c00(fod, wm), "dipy_csd_seconds": round(t_dipy, 2),
            "mrtrix_fod_seconds": round(t_mrtrix, 2), "dipy_csd": csd_info,
            "mrtrix_steps_seconds": dict(log.seconds), "mrtrix_commands": log.commands}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _noisy_copy(src: str, dst: Path, sigma: float, mask_file: str, rng) -> str:
    import nibabel as nib

    if dst.exists():
        return str(dst)
    img = nib.load(src)
    data = np.asarray(img.dataobj, np.float32)
    mask = _load(mask_file)[0] > 0
    noisy = add_fod_noise(data, sigma, mask, rng)
    nib.Nifti1Image(noisy, img.affine, img.header).to_filename(str(dst))
    return str(dst)


def subject_inputs(condition: Condition, cohort_root: Path, label: str, fods: dict,
                   settings: Settings, work: Path) -> SubjectInputs:
    """The inputs of one subject under ``condition`` (noisy fODF copies written when needed)."""
    f = subject_files(cohort_root, label)
    dipy_sh, mrtrix_fod, sig = fods["dipy_sh"], fods["mrtrix_fod"], {"dipy": 0.0, "mrtrix": 0.0}
    if condition.fod_noise:
        sig = fod_noise_sigmas(settings.fod_sigma, fods["dipy_wm_c00"], fods["mrtrix_wm_c00"])
        ss = np.random.SeedSequence([settings.seed, int(label), 5])  # fixed per subject
        r_dipy, r_mrtrix = (np.random.default_rng(s) for s in ss.spawn(2))
        work.mkdir(parents=True, exist_ok=True)
        dipy_sh = _noisy_copy(dipy_sh, work / "dipy_csd_sh_noise.nii.gz", sig["dipy"], f["mask"],
                              r_dipy)
        mrtrix_fod = _noisy_copy(mrtrix_fod, work / "mrtrix_wmfod_noise.nii.gz", sig["mrtrix"],
                                 f["mask"], r_mrtrix)
    return SubjectInputs(subject=label, condition=condition.name, cohort_root=str(cohort_root),
                         dipy_sh=dipy_sh, mrtrix_fod=mrtrix_fod, responses=fods["responses"],
                         fod_sigma=sig, **f)


# ----------------------------------------------------------------------------- scoring
def score_run(streamlines, cohort_root: Path, label: str, min_streamlines: int) -> dict:
    """Ground-truth scores of one tractogram (the benchmark's columns + IC/NC details)."""
    from gentract_bids.evaluation.evaluate import evaluate_tractogram
    from gentract_bids.evaluation.groundtruth import load_groundtruth

    truth = load_groundtruth(cohort_root, label)
    ev = evaluate_tractogram(streamlines, truth.affine, truth.shape, mode="groundtruth",
                             truth=truth, min_streamlines=min_streamlines)
    s = ev.summary
    return {"precision": s["vs_ratio"], "valid_bundles": s["valid_bundles"],
            "n_bundles": s["n_bundles"], "mean_overlap": s["mean_overlap"],
            "mean_overreach": s["mean_overreach"], "mean_f1": s["mean_f1"],
            "n_scored": s["n_streamlines"], "ic_ratio": s["ic_ratio"], "nc_ratio": s["nc_ratio"],
            "ib": s["ib"], "density_weighted_dice": s["density_weighted_dice"]}


# ----------------------------------------------------------------------------- summary/report
def summarise_runs(runs: list[dict], conditions: list[str], trackers: list[str]) -> dict:
    """{condition: {tracker: {metric: [mean, sd, n]} or {"status": "n/a"}}} over subjects."""
    out: dict = {}
    for c in conditions:
        out[c] = {}
        for t in trackers:
            rs = [r for r in runs if r["condition"] == c and r["tracker"] == t]
            ok = [r for r in rs if r["status"].startswith("run") and "precision" in r]
            if not ok:
                out[c][t] = {"status": rs[0]["status"] if rs else "missing"}
                continue
            row = {"status": ok[0]["status"], "n_subjects": len(ok),
                   "n_bundles": ok[0]["n_bundles"]}
            for m in METRICS:
                v = np.array([r[m] for r in ok], float)
                row[m] = [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]
            failed = [r for r in rs if r["status"] == "failed"]
            if failed:
                row["failed"] = len(failed)
            out[c][t] = row
    return out


def _pm(ms, scale=1.0, fmt="{:.2f}"):
    m, s = ms
    return f"{fmt.format(m * scale)} ± {fmt.format(s * scale)}"


def markdown_tables(summary: dict, conditions: list[Condition], trackers: list[str]) -> str:
    """One Markdown table per condition, like the paper's Tables 2-5 (mean ± sd over subjects)."""
    lines = []
    for cond in conditions:
        lines += [f"### {cond.name}: {cond.description}", "",
                  "| tracker | precision % | VB | mean OL | mean F1 | mean OR | time s | peak MB |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        notes = set()
        for t in trackers:
            row = summary[cond.name][t]
            label = TRACKER_LABELS.get(t, t)
            if "precision" not in row:
                why = {"n/a": "n/a (reads the DWI: same input as without fODF noise)",
                       "failed": "failed"}.get(row["status"], row["status"])
                lines.append(f"| {label} | {why} | | | | | | |")
                continue
            if row["status"] == "run-dwi-only":
                label += " ¹"
                notes.add("¹ reads the DWI: gets this cohort's resolution/SNR, not the fODF "
                          "noise.")
            if row.get("failed"):
                label += f" ({row['failed']} failed)"
            lines.append(
                f"| {label} | {_pm(row['precision'], 100, '{:.1f}')} | "
                f"{_pm(row['valid_bundles'], 1, '{:.1f}')} / {row['n_bundles']} | "
                f"{_pm(row['mean_overlap'])} | {_pm(row['mean_f1'])} | "
                f"{_pm(row['mean_overreach'])} | {_pm(row['seconds'], 1, '{:.0f}')} | "
                f"{_pm(row['peak_mb'], 1, '{:.0f}')} |")
        lines += [""] + sorted(notes) + ([""] if notes else [])
    return "\n".join(lines)


def plot_precision(summary: dict, conditions: list[str], trackers: list[str], path: Path) -> Path:
    """Grouped bars: mean precision (%) per condition, one bar per tracker (sd as error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(conditions), 3.6))
    width = 0.8 / max(len(trackers), 1)
    x = np.arange(len(conditions))
    for i, t in enumerate(trackers):
        mean = [summary[c][t]["precision"][0] * 100 if "precision" in summary[c][t] else np.nan
                for c in conditions]
        sd = [summary[c][t]["precision"][1] * 100 if "precision" in summary[c][t] else 0.0
              for c in conditions]
        ax.bar(x + (i - (len(trackers) - 1) / 2) * width, mean, width, yerr=sd, capsize=2,
               label=TRACKER_LABELS.get(t, t))
    ax.set_xticks(x, conditions)
    ax.set_ylabel("precision (valid streamlines, %)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=min(len(trackers), 3), loc="upper right")
    ax.set_title("Phantom benchmark: precision by condition (mean ± sd over subjects)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="phantom_benchmark",
        description="Benchmark the tractography baselines on a held-out phantom test cohort "
                    "(the GenTract paper's Tables 2-5 on phantoms).")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="output folder (cohorts, work files, results.json, tables.md, plot)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 subject at 3 mm, 300 streamlines, clean + fodnoise")
    p.add_argument("--n-subjects", type=int, default=d.n_subjects)
    p.add_argument("--seed", type=int, default=d.seed,
                   help="phantom cohort seed (held out from training; default %(default)s)")
    p.add_argument("--n-streamlines", type=int, default=d.n_streamlines)
    p.add_argument("--sift-factor", type=float, default=d.sift_factor,
                   help="iFOD2/SD_Stream generate this many times --n-streamlines before tcksift")
    p.add_argument("--tckglobal-niter", type=float, default=d.tckglobal_niter)
    p.add_argument("--dipy-seed-factor", type=float, default=d.dipy_seed_factor,
                   help="dipy trackers start from this many seeds per requested streamline")
    p.add_argument("--nthreads", type=int, default=d.nthreads, help="MRtrix3 threads")
    p.add_argument("--fod-sigma", type=float, default=d.fod_sigma,
                   help="the paper's Rician sigma on the (dipy CSD) fODF")
    p.add_argument("--low-snr", type=float, default=d.low_snr)
    p.add_argument("--trackers", nargs="+", default=list(BASELINES), choices=list(TRACKERS),
                   metavar="TRACKER", help=f"subset of {', '.join(TRACKERS)}")
    p.add_argument("--conditions", nargs="+", default=None, choices=list(CONDITION_ORDER),
                   metavar="CONDITION", help=f"subset of {', '.join(CONDITION_ORDER)}")
    p.add_argument("--keep-work", action="store_true",
                   help="keep intermediate files (MRtrix DWI copies, raw tractograms)")
    p.add_argument("--model", type=Path, default=None,
                   help="GenTract checkpoint of the gentract trackers (default: the shipped one)")
    p.add_argument("--steps", type=int, default=None,
                   help="GenTract sampling steps (default: the checkpoint's)")
    p.add_argument("--support-threshold", type=float, default=DEFAULT_SUPPORT_THRESHOLD,
                   help="the app's fODF support filter for the gentract trackers, with the "
                        "subject's own fODF (default: the app's, %(default)s; 0: off)")
    return p


def settings_from_args(args) -> tuple[Settings, list[str]]:
    if args.quick:
        s = Settings(n_subjects=1, seed=args.seed, n_streamlines=300, sift_factor=2.0,
                     tckglobal_niter=1e6, dipy_seed_factor=args.dipy_seed_factor,
                     nthreads=args.nthreads, clean_voxel_size=3.0, fod_sigma=args.fod_sigma,
                     low_snr=args.low_snr, n_truth_streamlines=100)
        return s, args.conditions or ["clean", "fodnoise"]
    s = Settings(n_subjects=args.n_subjects, seed=args.seed, n_streamlines=args.n_streamlines,
                 sift_factor=args.sift_factor, tckglobal_niter=args.tckglobal_niter,
                 dipy_seed_factor=args.dipy_seed_factor, nthreads=args.nthreads,
                 fod_sigma=args.fod_sigma, low_snr=args.low_snr)
    return s, args.conditions or list(CONDITION_ORDER)


def _machine() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "loadavg": load}


def run_benchmark(settings: Settings, condition_names: list[str], trackers: list[str],
                  out: Path, argv=None, keep_work: bool = False,
                  gentract_options: dict | None = None) -> dict:
    """The whole benchmark; writes ``results.json``, ``tables.md`` and
    ``precision_by_condition.png`` under ``out`` and returns the results dict. Finished runs,
    cohorts and fODFs found under ``out`` with the same settings are reused. ``keep_work``: keep
    the intermediate files of the trackers and of the MRtrix3 fODF estimation."""
    from gentract_bids.io.tractogram import load_tractogram

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() == (REPO / "benchmarks" / "results").resolve():
        (out / ".gitignore").write_text("# benchmark outputs: regenerate, don't commit\n*\n")
    conditions = make_conditions(settings, condition_names)
    labels = [f"{i:02d}" for i in range(1, settings.n_subjects + 1)]
    load_samples = [os.getloadavg()[0]]
    cohorts, fods, prep = {}, {}, []
    specs = [c.cohort for c in conditions]
    if any(s.geometry for s in specs) and not any(s.name == "base" for s in specs):
        specs.insert(0, make_conditions(settings, ["clean"])[0].cohort)  # responses for ood
    for spec in specs:  # cohorts and fODFs first (each cohort once)
        if spec.name in cohorts:
            continue
        cohorts[spec.name] = build_cohort(spec, settings, out / "cohorts")
        for lab in labels:
            # external geometries have no GM, where dwi2response dhollander fails: they borrow
            # the responses of the same subject of the base cohort (same signal model and scheme)
            resp = fods["base", lab]["responses"] if spec.geometry else None
            fods[spec.name, lab] = prepare_fods(cohorts[spec.name], lab,
                                                out / "work" / spec.name / f"sub-{lab}",
                                                settings.prep_nthreads, responses=resp)
            if not keep_work:  # the fODFs are kept as NIfTI; drop MRtrix's DWI copies
                mdir = out / "work" / spec.name / f"sub-{lab}" / "mrtrix"
                for junk in [*mdir.glob("*.mif"), mdir / "dwi2response_scratch"]:
                    shutil.rmtree(junk) if junk.is_dir() else junk.unlink(missing_ok=True)
            prep.append({"cohort": spec.name, "subject": lab,
                         **{k: fods[spec.name, lab][k] for k in
                            ("dipy_csd_seconds", "mrtrix_fod_seconds", "dipy_wm_c00",
                             "mrtrix_wm_c00")}})
            _log(f"fODFs {spec.name} sub-{lab}: dipy {prep[-1]['dipy_csd_seconds']:.0f} s, "
                 f"MRtrix {prep[-1]['mrtrix_fod_seconds']:.0f} s")
    runs = []
    for cond in conditions:
        root = cohorts[cond.cohort.name]
        for lab in labels:
            wdir = out / "work" / cond.cohort.name / f"sub-{lab}"
            inputs = subject_inputs(cond, root, lab, fods[cond.cohort.name, lab], settings,
                                    wdir / cond.name)
            for t in trackers:
                rec = {"condition": cond.name, "subject": lab, "tracker": t,
                       "input": getattr(inputs, TRACKER_READS.get(t, "dipy_sh")),
                       "fod_sigma": inputs.fod_sigma}
                status = dwi_tracker_status(t, cond, conditions)
                rec["status"] = status
                if status == "n/a":
                    runs.append(rec)
                    continue
                seed = settings.seed + int(lab)
                rdir = wdir / cond.name / t
                key = {"settings": asdict(settings), "seed": seed, "inputs": asdict(inputs),
                       "memory": MEMORY_METHOD}
                options = settings.tracker_options(t)
                if t in GENTRACT_TRACKERS:  # a new checkpoint (sha256) makes new runs
                    options.update(gentract_options or {})
                    key["gentract"] = _jsonable(options)
                cached = rdir / "record.json"
                if cached.exists() and json.loads(cached.read_text()).get("key") == key:
                    runs.append(json.loads(cached.read_text())["record"])  # --out reused
                    _log(f"{cond.name} sub-{lab} {t}: reused {cached}")
                    continue
                try:
                    r = run_tracker(t, inputs, cond, settings.n_streamlines, seed, rdir, options)
                    streamlines, _ = load_tractogram(r["file"])
                    rec.update(r)
                    rec.update(score_run(streamlines, root, lab, settings.min_streamlines))
                    cached.write_text(json.dumps(_jsonable({"key": key, "record": rec})) + "\n")
                    if not keep_work:  # MRtrix intermediates (DWI copies, raw tractograms)
                        shutil.rmtree(rdir / "work", ignore_errors=True)
                        for tck in rdir.glob("*.tck"):
                            tck.unlink()
                    _log(f"{cond.name} sub-{lab} {t}: precision {rec['precision']:.3f}, "
                         f"VB {rec['valid_bundles']}/{rec['n_bundles']}, "
                         f"{rec['seconds']:.0f} s, {rec['peak_mb']:.0f} MB")
                except Exception as exc:  # noqa: BLE001 - record and go on with the others
                    rec.update(status="failed", error=f"{type(exc).__name__}: {exc}")
                    _log(f"{cond.name} sub-{lab} {t}: FAILED {rec['error']}")
                runs.append(rec)
                load_samples.append(os.getloadavg()[0])
    summary = summarise_runs(runs, [c.name for c in conditions], trackers)
    results = {
        "command": " ".join(argv) if argv else None,
        "settings": asdict(settings), "trackers": trackers,
        "conditions": [asdict(c) for c in conditions],
        "held_out_seed": settings.seed,
        "fod_noise": {
            "model": "signed Rician: c' = sign(c) sqrt((|c| + n1)^2 + n2^2), n1, n2 ~ N(0, s^2), "
                     "every SH coefficient of every brain-mask voxel",
            "paper_sigma": settings.fod_sigma,
            "mapping": "dipy CSD fODF: s = paper sigma (same unitless scale as the paper's dipy "
                       "CSD fODFs); MRtrix fODF: s = sigma * median WM c00 (MRtrix) / median WM "
                       "c00 (dipy), per subject",
            "tckglobal": "reads the DWI: n/a where the cohort also runs without fODF noise, "
                         "otherwise run on the cohort's DWI",
        },
        "timing": "seconds = wall time of the tracker call in its spawned worker (tracking + "
                  "SIFT / length filter; fODF estimation is in preprocessing)",
        "memory": MEMORY_METHOD,
        "preprocessing": prep, "runs": runs, "summary": summary,
        "machine": dict(_machine(), loadavg_1min_during_run={
            "min": float(np.min(load_samples)), "mean": float(np.mean(load_samples)),
            "max": float(np.max(load_samples))}),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    head = (f"Phantom benchmark, held-out seed {settings.seed}, {settings.n_subjects} subject(s), "
            f"{settings.n_streamlines} streamlines per tracker; mean ± sd over subjects.\n\n")
    (out / "tables.md").write_text(head + markdown_tables(summary, conditions, trackers))
    plot_precision(summary, [c.name for c in conditions], trackers,
                   out / "precision_by_condition.png")
    _log(f"done in {results['total_seconds']:.0f} s: {out / 'results.json'}")
    return results


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, Path):
        return str(v)
    return v


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    gentract = [t for t in args.trackers if t in GENTRACT_TRACKERS]
    gentract_options = {}
    if gentract:
        from gentract_bids.io.checkpoint import read_checkpoint_metadata
        from gentract_bids.model.inference import SHIPPED_MODEL

        model = args.model or SHIPPED_MODEL
        gentract_options = {"model": str(model), "steps": args.steps,
                            "sha256": read_checkpoint_metadata(model)["sha256"],
                            "support_threshold": args.support_threshold or None}
    if args.n_subjects < 1 or args.n_streamlines < 1 or args.sift_factor < 1:
        parser.error("--n-subjects and --n-streamlines must be positive, --sift-factor >= 1")
    settings, conditions = settings_from_args(args)
    if "ood" in conditions and not ISBI_GEOMETRY.exists():
        parser.error(f"the ood condition needs the ISBI 2013 geometry ({ISBI_GEOMETRY})")
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    run_benchmark(settings, conditions, args.trackers, args.out,
                  argv=["benchmarks/phantom_benchmark.py", *argv], keep_work=args.keep_work,
                  gentract_options=gentract_options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
