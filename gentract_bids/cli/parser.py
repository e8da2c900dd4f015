"""The BIDS-App command line: ``gentract BIDS_DIR OUTPUT_DIR {participant,group}``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .. import __version__
from ..config import PRECISIONS, SCHEDULES, Config, Evaluation, Execution, Model, Seeds, Workflow
from .execution import config_file_defaults, load_bids_filters, load_plugin_file, parse_mem
from ..errors import EX_USAGE, UnknownAnalysisLevel, UsageError
from ..io.bids import bare_labels
from ..model.support import (DEFAULT_DENSITY_STRENGTH, DEFAULT_GUIDANCE_SCALE, DEFAULT_SMC_TIMES,
                              DEFAULT_THRESHOLD, SAMPLER_DEFAULTS, SAMPLER_OFF)

ANALYSIS_LEVELS = ("participant", "group")
# the trackers a run can use: GenTract (the default) and the baselines; "none": fODF stage only
TRACKERS = ("gentract", "ifod2", "sdstream", "tckglobal", "dipy-det", "dipy-prob")
EVAL_MODES = ("auto", "sanity", "groundtruth", "atlas", "none")
MIN_SH_ORDER, MAX_SH_ORDER = 2, 12  # 91 coefficients at 12; beyond, CSD runs for hours
MAX_SEED = 2**32 - 1  # numpy, torch and MRtrix3 all take it
# The numeric options' ranges (inclusive; None: no bound), checked after parsing and written
# into the Boutiques descriptor (scripts/boutiques_descriptor.py) as its minimum/maximum.
RANGES = {"random_seed": (0, MAX_SEED), "sh_order": (MIN_SH_ORDER, MAX_SH_ORDER),
          "nprocs": (1, None), "omp_nthreads": (1, None), "n_streamlines": (1, None),
          "sift_factor": (1, None), "steps": (1, None), "batch_size": (1, None),
          "guidance_scale": (0, None), "density_acceptance": (0, None),
          "bundle_ending_dilation_mm": (0, None), "bundle_mask_dilation_mm": (0, None),
          "bundle_min_inside": (0, 1), "min_registration_dice": (0, 1)}


def long_flag(action: argparse.Action) -> str:
    """The option string of an optional as the help and errors name it: the long one that spells
    its dest, else the first long one, else the short one."""
    long_flags = [s for s in action.option_strings if s.startswith("--")]
    spelled = "--" + action.dest.replace("_", "-")
    if spelled in long_flags:
        return spelled
    return long_flags[0] if long_flags else action.option_strings[0]


def check_ranges(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """:class:`UsageError` naming the first option of :data:`RANGES` outside its range (options
    left unset, None, are not checked)."""
    flags = {a.dest: long_flag(a) for a in parser._actions if a.option_strings}
    for dest, (lo, hi) in RANGES.items():
        value = getattr(opts, dest, None)
        if value is None or ((lo is None or value >= lo) and (hi is None or value <= hi)):
            continue
        whole = isinstance(value, int)
        got = f"got {value}" if whole else f"got {value:g}"
        if hi is None:
            raise UsageError(f"{flags[dest]} must be at least {lo:g}, {got}")
        span = f"{lo}..{hi}" if whole else f"[{lo:g}, {hi:g}]"
        raise UsageError(f"{flags[dest]} must lie in {span}, {got}")


class ExitCodeParser(argparse.ArgumentParser):
    """argparse that exits with the BIDS-Apps usage code (64) instead of 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = ExitCodeParser(
        prog="gentract",
        description="GenTract-BIDS: generative global tractography of diffusion MRI (BIDS-App).",
    )
    p.add_argument("bids_dir", type=Path, help="the root of the input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="where the derivatives dataset is written")
    p.add_argument(
        "analysis_level", help=f"processing stage: {' or '.join(ANALYSIS_LEVELS)}"
    )
    g = p.add_argument_group("selecting data")
    g.add_argument(
        "--participant-label", "--participant_label", nargs="+", default=[],
        help="participants to process, with or without 'sub-' (default: all)",
    )
    g.add_argument(
        "--session-label", "--session_label", nargs="+", default=[],
        help="sessions to process, with or without 'ses-' (default: all)",
    )
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not run the BIDS validator on the input")
    g.add_argument("--input-type", choices=("auto", "bids", "qsiprep"), default="auto",
                   help="raw BIDS, or a QSIPrep output folder (its space-*_desc-preproc_dwi, "
                        "brain mask and gradients); auto: QSIPrep when its "
                        "dataset_description.json says GeneratedBy QSIPrep (default: auto)")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, default=None,
                   metavar="JSON", help="pybids filters per query, e.g. "
                   '{"dwi": {"acquisition": "multishell"}}')
    g = p.add_argument_group("execution")
    g.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="working directory for intermediate results (default: ./work)")
    g.add_argument("--nthreads", "--nprocs", "--n-cpus", "--n_cpus", dest="nprocs", type=int,
                   default=os.cpu_count() or 1,
                   help="CPUs of the run: nipype's MultiProc processes and torch's threads "
                        "(default: all, %(default)s here)")
    g.add_argument("--omp-nthreads", "--omp_nthreads", type=int, default=1,
                   help="threads per process (OpenMP, MRtrix3) (default: %(default)s)")
    g.add_argument("--mem", "--mem-mb", "--mem_mb", dest="mem_mb", type=parse_mem, default=None,
                   metavar="MB", help="memory budget in MB (or with a unit: 16G): nipype's "
                   "memory_gb and the cap of the sampler's batch memory (default: free memory)")
    g.add_argument("--use-plugin", "--use_plugin", type=Path, default=None, metavar="YAML",
                   help="nipype plugin file (fMRIPrep's): 'plugin: SLURM' and its "
                        "'plugin_args:', e.g. sbatch_args; each node then asks for its own "
                        "CPUs and memory (default: MultiProc with --nthreads)")
    g.add_argument("--config-file", "--config_file", type=Path, default=None, metavar="TOML",
                   help="TOML file of options (option = value, long names); the command line "
                        "overrides it")
    g.add_argument("--stop-on-first-crash", action="store_true",
                   help="stop at the first failed node instead of finishing the others")
    g.add_argument("--notrack", action="store_true",
                   help="accepted for fMRIPrep compatibility: gentract never tracks usage")
    g.add_argument("--resource-monitor", action="store_true",
                   help="record each node's memory and CPU use (nipype's resource monitor)")
    g.add_argument("--write-graph", action="store_true",
                   help="write the workflow graph into OUTPUT_DIR/logs")
    g.add_argument("--clean-workdir", action="store_true",
                   help="empty the work directory before the run")
    g.add_argument("--reports-only", action="store_true",
                   help="only regenerate the reports from existing outputs; run nothing")
    g.add_argument("--boilerplate", "--boilerplate-only", "--boilerplate_only",
                   dest="boilerplate_only", action="store_true",
                   help="only write the methods and references (OUTPUT_DIR/logs/CITATION.md, "
                        ".html, .bib; every run writes them); run nothing")
    g.add_argument("--random-seed", type=int, default=0,
                   help="the one seed of the whole run (0 to 2**32 - 1) (default: %(default)s)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs: auto uses CUDA when available "
                        "(default: %(default)s)")
    g.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    g.add_argument("--version", action="version", version=f"gentract {__version__}")
    g = p.add_argument_group("fODF stage")
    g.add_argument("--sh-order", type=int, default=6,
                   help="maximal SH order of the CSD fODF (even, 2 to 12) "
                        "(default: %(default)s)")
    g.add_argument("--csd-method", choices=("auto", "ssst", "msmt"), default="auto",
                   help="CSD flavour; auto: single-shell CSD on one shell (see --csd-shell) "
                        "(default: %(default)s)")
    g.add_argument("--csd-shell", type=float, default=None,
                   help="b-value of the shell used by single-shell CSD on multi-shell data")
    g.add_argument("--denoise", choices=("none", "mppca", "patch2self"), default="none",
                   help="denoise the raw DWI before CSD and the baselines (dipy MP-PCA or "
                        "Patch2Self); motion/eddy correction is QSIPrep's job (default: none)")
    g.add_argument("--unring", action="store_true",
                   help="remove Gibbs ringing (dipy, after --denoise) before CSD")
    g = p.add_argument_group("tractography")
    g.add_argument("--tracker", nargs="+", choices=(*TRACKERS, "none"), default=["gentract"],
                   metavar="TRACKER",
                   help=f"trackers to run, several allowed: {', '.join(TRACKERS)} (GenTract, "
                        "then the baselines MRtrix3 iFOD2 / SD_Stream + SIFT, tckglobal, dipy "
                        "local tracking); 'none' runs the fODF stage only (default: gentract)")
    g.add_argument("--n-streamlines", type=int, default=100_000,
                   help="streamlines per tractogram (the SIFT target for iFOD2/SD_Stream) "
                        "(default: %(default)s)")
    g.add_argument("--sift-factor", type=float, default=10.0,
                   help="iFOD2/SD_Stream generate this many times --n-streamlines before tcksift")
    g.add_argument("--tckglobal-niter", type=float, default=2e7,
                   help="tckglobal iterations (MRtrix's default is 1e7 per 1e6 voxels)")
    g.add_argument("--output-format", choices=("trx", "tck", "trk"), default="trx",
                   help="file format of the whole-brain tractograms (default: %(default)s)")
    g = p.add_argument_group("GenTract model")
    g.add_argument("--model", type=Path, default=None,
                   help="GenTract checkpoint (.safetensors, .json or their stem), or the name of "
                        "a shipped one: gentract_human_phantom (the default; human-anatomy "
                        "phantoms in MNI space) or gentract_phantom (tube phantoms). Both are "
                        "trained on synthetic phantoms only, never on real data")
    g.add_argument("--sampler", choices=("ddim", "flow"), default=None,
                   help="ddim for diffusion-trained models, flow (ODE) for flow-matching ones "
                        "(default: the one that fits the model)")
    g.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's, 10)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="streamlines sampled at once (default: from free memory, at most what the "
                        "request needs: N x 4 with the support filter, N without, as a power of two;"
                        " at most 1024 on a CPU, 65536 on CUDA)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the network's number format while it samples: bfloat16 (matrix products "
                        "in bfloat16, accumulated in float32) or float32; auto: bfloat16 on CUDA "
                        "and on CPUs with native bfloat16 (avx512_bf16, amx_bf16), else float32 "
                        "(default: %(default)s)")
    g.add_argument("--step-size", type=float, default=1.0,
                   help="GenTract streamlines are resampled to this step in mm (cubic spline) and "
                        "their ends clipped to the brain mask (default: %(default)s; 0: off)")
    g.add_argument("--support-threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="keep only streamlines the fODF supports: ends trimmed to and extended "
                        "along the fibre signal, streamlines with an unsupported gap rejected, "
                        "sampling until --n-streamlines are kept; the fODF amplitude threshold "
                        "relative to its 99th-percentile peak (default: %(default)s; 0: off, "
                        "every sampled streamline is written)")
    g.add_argument("--guidance-scale", type=float, default=None,
                   help="guide every flow step by the fODF support of its predicted streamline "
                        "(needs the support filter; default: the checkpoint's sampler default, "
                        f"else {DEFAULT_GUIDANCE_SCALE} with the filter, off without it; 0: off; "
                        "docs/benchmarks.md, Sampler)")
    g.add_argument("--smc-times", type=float, nargs="+", default=None, metavar="T",
                   help="sequential Monte Carlo: at these flow times in (0, 1) resample the "
                        "batch by the fODF support of its predicted streamlines (needs the "
                        "support filter; default: the checkpoint's sampler default, else "
                        f"{' '.join(map(str, DEFAULT_SMC_TIMES))} with the filter, off without "
                        "it; 0: off; docs/benchmarks.md, Sampler)")
    g.add_argument("--density-acceptance", type=float, default=None, metavar="STRENGTH",
                   help="keep supported streamlines less often where the kept ones' endpoint "
                        "pairs are crowded (coverage; needs the support filter; default: the "
                        f"checkpoint's sampler default, else {DEFAULT_DENSITY_STRENGTH} with the "
                        "filter, off without it; 0: off)")
    g.add_argument("--time-schedule", choices=SCHEDULES, default="uniform",
                   help="the times of the flow sampler's --steps: uniform (k / steps), late "
                        "(denser near the data: the draws spread wider over each bundle, with "
                        "more overreach), early, cosine (default: %(default)s; "
                        "docs/benchmarks.md, Sampler)")
    g.add_argument("--connectivity-prior", choices=("on", "off"), default=None,
                   help="reject supported streamlines whose two ends join places that no "
                        "streamline of the model's training cohort joins (the checkpoint's "
                        "endpoint-pair prior, model/connectivity.py; needs the support filter "
                        "and a checkpoint that carries one; default: the checkpoint's sampler "
                        "default, else off; docs/benchmarks.md)")
    g.add_argument("--registration", choices=("affine", "none"), default="affine",
                   help="how each series is brought into the model's space (the template its "
                        "checkpoint carries): affine: registered to it (dipy, mutual information: "
                        "centre of mass, translation, rigid, affine), the streamlines mapped back; "
                        "none: the data are in the model's space already (default: %(default)s)")
    g.add_argument("--min-registration-dice", type=float, default=0.75,
                   help="a registration whose brain-mask overlap (Dice of the template's mask "
                        "mapped into the series and the series' own) is below this fails the "
                        "series (default: %(default)s)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval", dest="eval_mode", choices=EVAL_MODES, default="auto",
                   help="auto: ground truth when the dataset has phantom-truth derivatives, atlas "
                        "recognition when an atlas is given, else sanity metrics only; none: no "
                        "truth or atlas scoring even where they exist (the sanity metrics only)")
    g.add_argument("--truth-dir", type=Path, default=None,
                   help="ground-truth derivatives (default: BIDS_DIR/derivatives/phantom-truth)")
    g.add_argument("--waypoint-atlas", type=Path, default=None,
                   help="waypoints.json: per-bundle include/exclude/start/end ROIs in subject space")
    g.add_argument("--recobundles-models", type=Path, default=None,
                   help="folder of model bundles (one .trk/.tck/.trx per bundle) for RecoBundles")
    g.add_argument("--bundleseg-atlas", type=Path, default=None,
                   help="BundleSeg atlas folder (needs scilpy's scripts on PATH)")
    g.add_argument("--bundle-atlas", type=Path, default=None,
                   help="TractSeg-layout folder (bundle_segmentations/<Name>.nii.gz, "
                        "endings_segmentations/<Name>_b/_e.nii.gz) in the model's template space, "
                        "mapped into each subject by the registration; a streamline goes to the "
                        "bundle whose begin and end regions hold its end points and whose mask "
                        "holds enough of its points")
    g.add_argument("--bundle-ending-dilation", dest="bundle_ending_dilation_mm", type=float,
                   default=4.0, metavar="MM",
                   help="bundle atlas: dilation of the begin/end regions (default: %(default)s)")
    g.add_argument("--bundle-mask-dilation", dest="bundle_mask_dilation_mm", type=float,
                   default=2.0, metavar="MM",
                   help="bundle atlas: dilation of the bundle masks (default: %(default)s)")
    g.add_argument("--bundle-min-inside", type=float, default=0.8, metavar="FRACTION",
                   help="bundle atlas: fraction of a streamline's points that must lie in the "
                        "(dilated) bundle mask (default: %(default)s)")
    g.add_argument("--min-bundle-streamlines", type=int, default=10,
                   help="a bundle counts as found with at least this many streamlines")
    return p


def fill_sampler_defaults(opts) -> None:
    """Give each sampler option the user left unset its default: the checkpoint's own, else the
    app's; off without the support filter (``--support-threshold 0``)."""
    from ..model.inference import sampler_defaults

    defaults = sampler_defaults(opts.model) if opts.support_threshold else SAMPLER_OFF
    opts.sampler_defaults_from_checkpoint = []
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, list(value) if isinstance(value, list) else value)
            if opts.support_threshold and value != SAMPLER_DEFAULTS[key]:
                shown = " ".join(map(str, value)) or "0" if isinstance(value, list) else value
                opts.sampler_defaults_from_checkpoint.append(
                    f"--{key.replace('_', '-')} {shown}")


def parse_args(argv=None, check_paths: bool = False) -> Config:
    """Parse ``argv`` into the run's :class:`Config` (raises on inconsistent paths/levels);
    ``check_paths``: also the cheap checks of :func:`early_checks`, before the model is loaded."""
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)  # the config file's options become the defaults
    if pre.config_file is not None:
        parser.set_defaults(**config_file_defaults(parser, pre.config_file))
    opts = parser.parse_args(argv)
    if opts.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownAnalysisLevel(
            f"unknown analysis level '{opts.analysis_level}': use one of {', '.join(ANALYSIS_LEVELS)}"
        )
    if not MIN_SH_ORDER <= opts.sh_order <= MAX_SH_ORDER or opts.sh_order % 2:
        raise UsageError(f"--sh-order must be an even number from {MIN_SH_ORDER} to "
                         f"{MAX_SH_ORDER}, got {opts.sh_order}")
    check_ranges(parser, opts)
    if not 0 <= opts.support_threshold < 1:
        raise UsageError(f"--support-threshold must lie in [0, 1), got {opts.support_threshold}")
    fill_sampler_defaults(opts)
    if opts.guidance_scale and not opts.support_threshold:
        raise UsageError("--guidance-scale needs the support filter")
    opts.smc_times = [t for t in opts.smc_times if t != 0]  # --smc-times 0: off
    if any(not 0 < t < 1 for t in opts.smc_times):
        raise UsageError("--smc-times must lie in (0, 1)")
    if (opts.smc_times or opts.density_acceptance) and not opts.support_threshold:
        raise UsageError("--smc-times and --density-acceptance need the support filter")
    trackers = list(dict.fromkeys(opts.tracker))
    if "none" in trackers:
        if len(trackers) > 1:
            raise UsageError("--tracker none cannot be combined with other trackers")
        trackers = []
    for flag in ("waypoint_atlas", "recobundles_models", "bundleseg_atlas", "bundle_atlas",
                 "truth_dir"):
        path = getattr(opts, flag)
        if path is not None and not path.exists():
            raise UsageError(f"--{flag.replace('_', '-')} {path}: no such file or directory")
    if opts.bundle_atlas is not None and not opts.bundle_atlas.is_dir():
        raise UsageError(f"--bundle-atlas {opts.bundle_atlas}: not a folder (a TractSeg-layout "
                         "folder with bundle_segmentations/ and endings_segmentations/)")
    atlases = [opts.waypoint_atlas, opts.recobundles_models, opts.bundleseg_atlas,
               opts.bundle_atlas]
    if opts.eval_mode == "atlas" and not any(atlases):
        raise UsageError("--eval atlas needs --waypoint-atlas, --recobundles-models, "
                         "--bundleseg-atlas or --bundle-atlas")
    bids_dir = opts.bids_dir.resolve()
    output_dir = opts.output_dir.resolve()
    work_dir = (opts.work_dir or Path.cwd() / "work").resolve()
    if opts.bundle_atlas and opts.registration == "none":
        raise UsageError("--bundle-atlas maps the atlas through the registration to the model's "
                         "template: it cannot be combined with --registration none")
    config = Config(
        execution=Execution(
            bids_dir=bids_dir,
            output_dir=output_dir,
            work_dir=work_dir,
            analysis_level=opts.analysis_level,
            participant_label=bare_labels(opts.participant_label, "sub-"),
            session_label=bare_labels(opts.session_label, "ses-"),
            skip_bids_validation=opts.skip_bids_validation,
            nprocs=opts.nprocs,
            omp_nthreads=opts.omp_nthreads,
            device=opts.device,
            verbosity=opts.verbose,
            mem_mb=opts.mem_mb,
            bids_filters=load_bids_filters(opts.bids_filter_file) if opts.bids_filter_file
            else {},
            stop_on_first_crash=opts.stop_on_first_crash,
            resource_monitor=opts.resource_monitor,
            write_graph=opts.write_graph,
            clean_workdir=opts.clean_workdir,
            reports_only=opts.reports_only,
            boilerplate_only=opts.boilerplate_only,
            notrack=opts.notrack,
            input_type=opts.input_type,
            plugin=load_plugin_file(opts.use_plugin) if opts.use_plugin else None,
        ),
        workflow=Workflow(sh_order=opts.sh_order, csd_method=opts.csd_method,
                          csd_shell=opts.csd_shell, trackers=trackers,
                          n_streamlines=opts.n_streamlines, sift_factor=opts.sift_factor,
                          tckglobal_niter=opts.tckglobal_niter,
                          output_format=opts.output_format, registration=opts.registration,
                          min_registration_dice=opts.min_registration_dice,
                          step_size=opts.step_size or None,
                          denoise=opts.denoise, unring=opts.unring),
        evaluation=Evaluation(
            mode=opts.eval_mode,
            truth_dir=opts.truth_dir.resolve() if opts.truth_dir else None,
            waypoint_atlas=opts.waypoint_atlas.resolve() if opts.waypoint_atlas else None,
            recobundles_models=(opts.recobundles_models.resolve()
                                if opts.recobundles_models else None),
            bundleseg_atlas=opts.bundleseg_atlas.resolve() if opts.bundleseg_atlas else None,
            bundle_atlas=opts.bundle_atlas.resolve() if opts.bundle_atlas else None,
            bundle_ending_dilation_mm=opts.bundle_ending_dilation_mm,
            bundle_mask_dilation_mm=opts.bundle_mask_dilation_mm,
            bundle_min_inside=opts.bundle_min_inside,
            min_bundle_streamlines=opts.min_bundle_streamlines,
        ),
        seeds=Seeds(master=opts.random_seed),
    )
    if check_paths:  # cheap argument errors before the model is loaded
        early_checks(config)
    runs = not (opts.reports_only or opts.boilerplate_only)
    config.model = _model_section(
        opts, check=runs and ("gentract" in trackers or bool(opts.bundle_atlas)))
    config.workflow.registration = opts.registration  # "none" for a model without a template
    if "gentract" in trackers and runs:  # the canonical grid is the model's
        from ..io.checkpoint import read_checkpoint_metadata

        meta = read_checkpoint_metadata(config.model.path)
        config.workflow.grid_shape = tuple(int(s) for s in meta["grid_shape"])
    return config


def early_checks(config: Config) -> None:
    """The errors found without pybids or the model: the input folder, the output and work
    folders (not inside the input, writable), the participant labels (a ``sub-<label>``
    folder each)."""
    from ..errors import NothingMatched
    from .run import check_paths

    ex = config.execution
    check_paths(config)
    if ex.analysis_level != "participant" or ex.reports_only:
        return
    unknown = [lab for lab in ex.participant_label if not (ex.bids_dir / f"sub-{lab}").is_dir()]
    if unknown:
        have = sorted(d.name[4:] for d in ex.bids_dir.glob("sub-*") if d.is_dir())
        raise NothingMatched(f"participant label(s) {', '.join(unknown)} not found in "
                             f"{ex.bids_dir} (it has: {', '.join(have) or 'none'})")


def _model_section(opts, check: bool) -> Model:
    """The GenTract model of the run; when it will be used, load it now (checksum, weights) and
    refuse one that does not fit the fODFs this run makes, before anything is written."""
    from ..model.inference import check_compatible, load_model, resolve_model_path

    path = resolve_model_path(opts.model).resolve()  # a path, or a shipped model's name
    model = Model(path=path, sampler=opts.sampler, steps=opts.steps, batch_size=opts.batch_size,
                  support_threshold=opts.support_threshold or None,
                  guidance_scale=opts.guidance_scale, smc_times=list(opts.smc_times),
                  density_strength=opts.density_acceptance, precision=opts.precision,
                  time_schedule=opts.time_schedule,
                  connectivity_prior=(opts.connectivity_prior == "on"
                                      and bool(opts.support_threshold)),
                  checkpoint_defaults=list(opts.sampler_defaults_from_checkpoint))
    if check:
        from ..registration.template import load_model_template

        _, meta = load_model(path)
        grid = Workflow()
        check_compatible(meta, sh_order=opts.sh_order, grid_spacing=grid.grid_spacing,
                         sampler=opts.sampler, name=f"the model {path}")
        template = load_model_template(path, meta)  # checksum verified before anything runs
        if template is None and opts.registration == "affine":
            # a checkpoint made before templates: its grid is its subjects' world, as it was
            import logging

            logging.getLogger("gentract").warning(
                "the model %s carries no template to register to: the data are taken to be in "
                "its space (--registration none)", path)
            opts.registration = "none"
        model.sha256 = meta["sha256"]
    return model
