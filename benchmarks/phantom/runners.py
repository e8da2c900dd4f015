"""Running the trackers of the phantom benchmark: the baselines and GenTract (:data:`TRACKERS`),
each call in a fresh spawned worker whose wall time and process-tree memory are measured
(:func:`run_tracker`), the ground-truth scores of a tractogram (:func:`score_run`) and the whole
run over cohorts, subjects, conditions and trackers (:func:`run_benchmark`)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .cohorts import CohortSpec, Condition, cohort_specs, make_conditions, subject_files
from .common import REPO, Settings, _jsonable, _load, _log, _vm_hwm_kb, tree_rss_kb
from .inputs import SubjectInputs, prepare_cohorts, subject_inputs
from .tables import summarise_runs, write_report


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
                   context: str = "own", steps=None, sha256=None, support_threshold=None,
                   guidance_scale: float = 0.0, smc_times=(), density_strength: float = 0.0,
                   connectivity_prior: bool = False):
    """GenTract sampling from the checkpoint ``model`` (default: the shipped one), conditioned on
    ``inputs.dipy_sh`` (the condition's fODF, noise included) through the app's own code: the
    canonical grid (:func:`fodf.grid.to_canonical`), the model's z-score statistics and
    :func:`model.inference.sample_tractogram`. ``context`` is the ablation of issue 5: ``own``
    (the subject's fODF), ``other`` (the next subject's fODF of the same cohort and condition) or
    ``zero`` (an all-zero z-scored volume: no anatomy at all). ``sha256``: refuse another
    checkpoint than the one the run's cache key names. ``support_threshold``: the app's fODF
    support filter (:mod:`gentract_bids.model.support`), always with the subject's *own* fODF,
    whatever the context; None or 0: off (every sampled streamline is scored).
    ``guidance_scale``, ``smc_times``, ``density_strength`` and ``connectivity_prior`` (the
    checkpoint's endpoint-pair prior) are the app's sampler options (``--guidance-scale`` ...);
    like the app, they apply only with the support filter, guidance and SMC only to flow models.
    A model with a
    template (its space) gets every subject registered to it first, as the app does it
    (:func:`gentract_bids.train.dataset.subject_registration`: FA, affine, cached beside the
    cohort), and the streamlines mapped back through it."""
    from gentract_bids.fodf.grid import to_canonical, zscore
    from gentract_bids.io.tractogram import load_tractogram
    from gentract_bids.model.connectivity import load_connectivity
    from gentract_bids.model.inference import (fod_support, load_model, model_sampler,
                                               resolve_model_path, sample_tractogram)
    from gentract_bids.registration.template import load_model_template, model_to_subject
    from gentract_bids.train.dataset import SubjectSource, subject_registration

    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    net, meta = load_model(model, expected_sha256=sha256)
    cfg = net.config
    mean, std = np.asarray(meta["zscore"]["mean"]), np.asarray(meta["zscore"]["std"])

    template = load_model_template(resolve_model_path(model), meta)

    def to_subject_of(files: dict, label: str):
        if template is None:
            return None
        source = SubjectSource(label, files["dwi"], files["bval"], files["bvec"], files["mask"], [])
        cache = Path(inputs.cohort_root).parent / "registration" / Path(inputs.cohort_root).name
        return model_to_subject(template, subject_registration(source, template, cache))

    def canonical(sh_file, mask_file, to_subject):
        sh, affine = _load(sh_file)
        mask, mask_affine = _load(mask_file)
        sh_c, mask_c, affine_c = to_canonical(sh, affine, mask > 0, mask_affine,
                                              cfg.grid_spacing, cfg.grid_shape,
                                              to_subject=to_subject)
        return zscore(sh_c, mean, std, mask_c), mask_c, affine_c, mask_affine, mask.shape[:3]

    own_map = to_subject_of({"dwi": inputs.dwi, "bval": inputs.bval, "bvec": inputs.bvec,
                             "mask": inputs.mask}, inputs.subject)
    own, own_mask, affine_c, mask_affine, mask_shape = canonical(inputs.dipy_sh, inputs.mask,
                                                                 own_map)
    support = (fod_support(meta, own, own_mask, affine_c, threshold=support_threshold)
               if support_threshold else None)
    z = own
    if context == "other":  # the next subject of the same cohort (wrapping around)
        labels = sorted(p.name[4:] for p in Path(inputs.cohort_root).glob("sub-*") if p.is_dir())
        other = labels[(labels.index(inputs.subject) + 1) % len(labels)]
        if other == inputs.subject:
            raise ValueError("the 'other' context needs a cohort of at least 2 subjects")
        files = subject_files(Path(inputs.cohort_root), other)
        z = canonical(inputs.dipy_sh.replace(f"sub-{inputs.subject}", f"sub-{other}"),
                      files["mask"], to_subject_of(files, other))[0]
    if context == "zero":
        z = np.zeros_like(z)
    guided = support is not None and model_sampler(meta) == "flow"
    sampler_options = {
        "guidance_scale": guidance_scale if guided else 0.0,
        "smc_times": tuple(smc_times) if guided else (),
        "density_strength": density_strength if support is not None else 0.0,
        "connectivity": (load_connectivity(resolve_model_path(model), meta)
                         if support is not None and connectivity_prior else None)}
    out = Path(workdir) / "gentract_raw.trx"
    info = sample_tractogram(net, meta, z, out, n_streamlines=n_streamlines, steps=steps,
                             seed=seed, ref_affine=mask_affine, ref_shape=mask_shape,
                             support=support, to_subject=own_map, **sampler_options)
    streamlines, _ = load_tractogram(out)
    out.unlink()
    return list(streamlines), {
        "Parameters": {"context": context, "sampler": info["Sampler"], "steps": info["Steps"],
                       "sha256": info["Model"]["SHA256"], "batch_size": info["BatchSize"],
                       "support_filter": info["SupportFilter"],
                       "n_sampled": info["NumberSampled"],
                       "guidance": info.get("Guidance"),
                       "smc": info.get("SequentialMonteCarlo"),
                       "density": info.get("DensityAcceptance"),
                       "connectivity": info.get("ConnectivityPrior"),
                       "model_fit": info.get("ModelFit")},
        "Timings": info["Timings"]}


def _gentract_variant(context: str, alone: bool = False):
    def track(inputs, condition, n_streamlines, seed, workdir, **options):
        if alone:  # the model alone: no support filter, so none of the filter's companions
            options = dict(options, support_threshold=None)
        return track_gentract(inputs, condition, n_streamlines, seed, workdir, context=context,
                              **options)

    track.__doc__ = (f"GenTract sampling with the {context} subject's context"
                     + (", the model alone (no fODF support filter)." if alone else "."))
    return track


# name -> fn(inputs, condition, n_streamlines, seed, workdir, **options) -> streamlines
# (a list of (n, 3) RAS+ mm arrays) or (streamlines, metadata). The gentract entries read
# inputs.dipy_sh (and the checkpoint given with --model).
TRACKERS = {
    "gentract": _gentract_variant("own"),
    "gentract-other": _gentract_variant("other"),
    "gentract-zero": _gentract_variant("zero"),
    "gentract-alone": _gentract_variant("own", alone=True),
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
GENTRACT_TRACKERS = ("gentract", "gentract-other", "gentract-zero", "gentract-alone")
BASELINES = [t for t in TRACKERS if t not in GENTRACT_TRACKERS]


def dwi_tracker_status(tracker: str, condition: Condition, conditions: list[Condition]) -> str:
    """``"run"``, ``"run-dwi-only"`` or ``"n/a"`` for a tracker that reads the DWI (tckglobal)."""
    if tracker not in DWI_TRACKERS or not condition.fod_noise:
        return "run"
    if any(c.cohort == condition.cohort and not c.fod_noise for c in conditions):
        return "n/a"
    return "run-dwi-only"


MEMORY_METHOD = ("peak RSS of the tracker's process tree (spawned Python worker + the MRtrix3 "
                 "programs it runs), summed over the tree and sampled every 0.1 s from /proc; "
                 "never below the worker's own VmHWM")


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (the MRtrix3 programs)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _worker(tracker: str, inputs: dict, condition: dict, n_streamlines: int, seed: int,
            workdir: str, options: dict, out_file: str, result_file: str) -> None:
    """Run one tracker in this (spawned) process; save its streamlines and a JSON record
    (wall time and CPU seconds of the tracker call, its own threads and the programs it ran,
    the worker's VmHWM, tracker metadata) or the error."""
    import traceback

    import nibabel as nib

    from gentract_bids.io.tractogram import save_tractogram

    try:
        inp = SubjectInputs(**inputs)
        cond = Condition(condition["name"], CohortSpec(**condition["cohort"]),
                         condition["fod_noise"], condition["description"])
        t0, c0, k0 = time.perf_counter(), time.process_time(), _children_cpu()
        out = TRACKERS[tracker](inp, cond, n_streamlines, seed, workdir, **options)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0 + _children_cpu() - k0
        streamlines, meta = out if isinstance(out, tuple) else (out, {})
        hwm_kb = _vm_hwm_kb()
        ref = nib.load(inp.mask)
        save_tractogram(out_file, streamlines, ref.affine, ref.shape[:3])
        keep = ("Algorithm", "FOD", "NGenerated", "NAfterSIFT", "NRaw", "NAboveMinLength",
                "NSeeds", "NTracked", "NStreamlines", "Commands", "Timings", "Parameters",
                "StoppingCriterion")
        rec = {"seconds": seconds, "cpu_seconds": cpu_seconds, "worker_hwm_mb": hwm_kb / 1024,
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
    cohorts, fods, prep = prepare_cohorts(cohort_specs(conditions, settings), settings, labels,
                                          out, keep_work)  # cohorts and fODFs first
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
    write_report(summary, conditions, trackers, settings, out)
    _log(f"done in {results['total_seconds']:.0f} s: {out / 'results.json'}")
    return results

