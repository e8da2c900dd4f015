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

``--anatomy human`` runs the same trackers and scoring on human-anatomy phantoms
(``gentract-phantom --anatomy human``: 72 TractSeg bundles, each subject in its own scanner
space; cohorts ``human-base``, ``human-lr``, ...) under ``clean``, ``fodnoise`` and ``lr_noise`` by
default (``lowsnr`` on request; ``ood`` does not apply). Use another ``--out`` than the tubes run.

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
canonical-grid, z-scoring and sampling code, with the app's sampler defaults (support filter,
guidance, SMC, density acceptance; ``--connectivity-prior`` as the app's); ``gentract-other`` /
``gentract-zero`` are the context ablations (the next subject's fODF / an all-zero volume) and
``gentract-alone`` the model alone (no support filter, so none of its companions). They are not in
the default tracker list of a run unless named with ``--trackers``.

Run ``python benchmarks/phantom_benchmark.py --help``; ``--quick`` is the CI smoke run.

Code: the package ``benchmarks/phantom/`` (``cohorts``: conditions and cohorts; ``inputs``: fODFs,
fODF noise, a subject's tracker inputs; ``runners``: the trackers and the whole run; ``tables``:
summary, tables and figure; ``common``: settings and shared helpers). This file is the command
line and re-exports the package's names (``import phantom_benchmark as pb``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):  # run from a checkout: gentract_bids and benchmarks/phantom
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from gentract_bids.model.support import (  # noqa: E402
    DEFAULT_DENSITY_STRENGTH, DEFAULT_GUIDANCE_SCALE, DEFAULT_SMC_TIMES)
from gentract_bids.model.support import DEFAULT_THRESHOLD as DEFAULT_SUPPORT_THRESHOLD  # noqa: E402
from phantom.cohorts import (  # noqa: E402, F401
    CONDITION_ORDER, HUMAN_CONDITIONS, ISBI_GEOMETRY, CohortSpec, Condition, build_cohort, make_conditions,
    subject_files)
from phantom.common import (  # noqa: E402, F401
    PAPER_FOD_SIGMA, REPO, TEST_SEED, Settings, _jsonable, _load, _log, _vm_hwm_kb, tree_rss_kb)
from phantom.inputs import (  # noqa: E402, F401
    SubjectInputs, add_fod_noise, fod_noise_sigmas, median_wm_c00, mrtrix_fod_given_responses,
    prepare_fods, subject_inputs)
from phantom.runners import (  # noqa: E402, F401
    BASELINES, CONTEXTS, DWI_TRACKERS, GENTRACT_TRACKERS, MEMORY_METHOD, TRACKER_READS, TRACKERS,
    dwi_tracker_status, run_benchmark, run_tracker, score_run, track_dipy_det, track_dipy_kind,
    track_dipy_prob, track_gentract, track_ifod2, track_mrtrix_local, track_sdstream,
    track_tckglobal)
from phantom.tables import (  # noqa: E402, F401
    METRICS, TRACKER_LABELS, markdown_tables, plot_precision, summarise_runs)


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
    p.add_argument("--anatomy", choices=("tubes", "human"), default=d.anatomy,
                   help="phantom anatomy: tubes (22 procedural bundles, origin-centred) or human "
                        "(72 TractSeg bundles in scanner space; conditions clean, fodnoise, "
                        "lr_noise by default)")
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
                   help="GenTract checkpoint of the gentract trackers (default: the shipped model "
                        "of the anatomy: gentract_human_phantom or gentract_phantom)")
    p.add_argument("--steps", type=int, default=None,
                   help="GenTract sampling steps (default: the checkpoint's)")
    p.add_argument("--support-threshold", type=float, default=DEFAULT_SUPPORT_THRESHOLD,
                   help="the app's fODF support filter for the gentract trackers, with the "
                        "subject's own fODF (default: the app's, %(default)s; 0: off; the "
                        "gentract-alone tracker always runs without it)")
    # the sampler's four: default the app's for the model (its checkpoint's sampler_defaults,
    # else the app's own: guidance 0.03, SMC at 0.5, density 2, prior off)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="the app's fODF guidance of the flow steps (default: the app's for the "
                        f"model, else {DEFAULT_GUIDANCE_SCALE}; 0: off)")
    p.add_argument("--smc-times", type=float, nargs="+", default=None,
                   metavar="T", help="the app's SMC resampling times (default: the app's for "
                   f"the model, else {' '.join(map(str, DEFAULT_SMC_TIMES))}; 0: off)")
    p.add_argument("--density-acceptance", type=float, default=None,
                   help="the app's density-aware acceptance (default: the app's for the model, "
                        f"else {DEFAULT_DENSITY_STRENGTH})")
    p.add_argument("--connectivity-prior", choices=("on", "off"), default=None,
                   help="the checkpoint's endpoint-pair prior (default: the app's for the "
                        "model, else off)")
    return p


def settings_from_args(args) -> tuple[Settings, list[str]]:
    if args.quick:
        s = Settings(n_subjects=1, seed=args.seed, n_streamlines=300, sift_factor=2.0,
                     tckglobal_niter=1e6, dipy_seed_factor=args.dipy_seed_factor,
                     nthreads=args.nthreads, clean_voxel_size=3.0, fod_sigma=args.fod_sigma,
                     low_snr=args.low_snr, n_truth_streamlines=100, anatomy=args.anatomy)
        return s, args.conditions or ["clean", "fodnoise"]
    s = Settings(n_subjects=args.n_subjects, seed=args.seed, n_streamlines=args.n_streamlines,
                 sift_factor=args.sift_factor, tckglobal_niter=args.tckglobal_niter,
                 dipy_seed_factor=args.dipy_seed_factor, nthreads=args.nthreads,
                 fod_sigma=args.fod_sigma, low_snr=args.low_snr, anatomy=args.anatomy)
    default = HUMAN_CONDITIONS if args.anatomy == "human" else CONDITION_ORDER
    return s, args.conditions or list(default)



def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    gentract = [t for t in args.trackers if t in GENTRACT_TRACKERS]
    gentract_options = {}
    if gentract:
        from gentract_bids.io.checkpoint import read_checkpoint_metadata
        from gentract_bids.model.inference import HUMAN_MODEL, TUBE_MODEL, sampler_defaults

        model = args.model or (HUMAN_MODEL if args.anatomy == "human" else TUBE_MODEL)
        for key, value in sampler_defaults(model).items():  # the app's, for this model
            if getattr(args, key) is None:
                setattr(args, key, value)
        gentract_options = {"model": str(model), "steps": args.steps,
                            "sha256": read_checkpoint_metadata(model)["sha256"],
                            "support_threshold": args.support_threshold or None,
                            "guidance_scale": args.guidance_scale,
                            "smc_times": [t for t in args.smc_times if t != 0],
                            "density_strength": args.density_acceptance,
                            "connectivity_prior": args.connectivity_prior == "on"}
    if args.n_subjects < 1 or args.n_streamlines < 1 or args.sift_factor < 1:
        parser.error("--n-subjects and --n-streamlines must be positive, --sift-factor >= 1")
    settings, conditions = settings_from_args(args)
    if "ood" in conditions and args.anatomy == "human":
        parser.error("the ood condition (ISBI 2013 geometry) has no human-anatomy form")
    if "ood" in conditions and not ISBI_GEOMETRY.exists():
        parser.error(f"the ood condition needs the ISBI 2013 geometry ({ISBI_GEOMETRY})")
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    run_benchmark(settings, conditions, args.trackers, args.out,
                  argv=["benchmarks/phantom_benchmark.py", *argv], keep_work=args.keep_work,
                  gentract_options=gentract_options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
