"""The participant-level workflow: one sub-workflow per DWI series."""

import re
from pathlib import Path

import numpy as np

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..config import Config
from ..interfaces.bids import CommitDerivatives, StageRegistration
from ..io.bids import (
    DWIInput,
    bids_uri,
    build_path,
    check_distinct_series,
    input_link,
    mask_metadata,
    output_prefix,
)
from .evaluation import EVAL_FIELDS, init_evaluation_wf
from .fodf import REGISTRATION_FIELDS, init_fodf_wf
from .outputs import FODF_FIELDS, init_fodf_derivatives_wf, init_tractography_derivatives_wf
from .tractography import TRACKERS, init_baseline_tracking_wf, init_gentract_tractography_wf

def series_id(item: DWIInput) -> str:
    """A workflow-safe name for one DWI series: every entity of its file name
    (``sub-01_ses-1_dir-AP_run-2_dwi.nii.gz`` -> ``sub_01_ses_1_dir_AP_run_2``), so series that
    differ by any entity (``dir-`` AP/PA included) get distinct workflows and work folders."""
    return re.sub(r"[^A-Za-z0-9]", "_", item.label)


def init_gentract_wf(config: Config, inputs: list[DWIInput], device: str):
    """Top-level workflow of a participant-level run (one ``init_single_series_wf`` per series)."""
    check_distinct_series(inputs)
    wf = pe.Workflow(name="gentract_wf", base_dir=str(config.execution.work_dir))
    for item in inputs:
        wf.add_nodes([init_single_series_wf(config, item, device)])
    return wf


SAMPLE_BUDGET_GB = 2.0  # GenTract sampling's memory budget without --mem, on a batch plugin


def resource_hints(config: Config, item: DWIInput) -> dict:
    """Memory hints (GB) of the heavy nodes, from the DWI's size (a float64 copy of it: ``dwi``):
    CSD, registration and resampling hold a few such arrays, a baseline tracker the fODF image;
    GenTract sampling 0.5 GB and the quarter of the ``--mem`` budget (default 2 GB) its batches
    may take (model/inference.py). Capped at ``--mem`` so that MultiProc can run every node."""
    import nibabel as nb

    dwi = float(np.prod(nb.load(item.dwi).shape)) * 8 / 2**30
    cap = config.execution.mem_mb / 1024 if config.execution.mem_mb else None
    hints = {"fodf": 0.5 + 3 * dwi, "track": 0.5 + dwi,
             "sample": 0.5 + 0.25 * (cap or SAMPLE_BUDGET_GB)}
    # rounded down: a hint above MultiProc's memory_gb (--mem) would stop the run
    return {k: float(np.floor(100 * (min(v, cap) if cap else v)) / 100) for k, v in hints.items()}


def truth_dir(config: Config) -> Path:
    """Where phantom ground truth is looked for (``--truth-dir`` or derivatives/phantom-truth)."""
    ev = config.evaluation
    return Path(ev.truth_dir or Path(config.execution.bids_dir) / "derivatives" / "phantom-truth")


def _tissue_maps(tdir: Path, subject: str) -> dict | None:
    """The phantom truth's WM/GM/CSF probseg maps of ``subject`` (None when absent)."""
    found = {t: sorted(tdir.glob(f"sub-{subject}/**/*_label-{t.upper()}_probseg.nii*"))
             for t in ("wm", "gm", "csf")}
    if not all(found.values()):
        return None
    return {f"{t}_pve_file": str(paths[0]) for t, paths in found.items()}


def evaluation_mode(config: Config, subject: str) -> str:
    from ..evaluation.evaluate import resolve_mode, truth_available

    ev = config.evaluation
    has_atlas = any((ev.waypoint_atlas, ev.recobundles_models, ev.bundleseg_atlas,
                     ev.bundle_atlas))
    mode = resolve_mode(ev.mode, has_truth=truth_available(truth_dir(config), subject),
                        has_atlas=has_atlas)
    return mode


def init_single_series_wf(config: Config, item: DWIInput, device: str):
    """fODF stage, trackers, evaluation and derivatives of one DWI series.

    Inputs are fixed at build time from ``item`` (files found by pybids); outputs are the committed
    derivatives in ``config.execution.output_dir``: every file of the series is staged first and
    copied into the output only when all of them exist.
    """
    name = series_id(item)
    ex, wcfg, ev = config.execution, config.workflow, config.evaluation
    wf = pe.Workflow(name=f"{name}_wf")
    # the model's space is needed by GenTract and by recognition with a template-space atlas
    in_model_space = "gentract" in wcfg.trackers or bool(ev.bundle_atlas)
    registered = in_model_space and wcfg.registration == "affine"
    hints = resource_hints(config, item)
    fodf_wf = init_fodf_wf(
        sh_order=wcfg.sh_order,
        csd_method=wcfg.csd_method,
        csd_shell=wcfg.csd_shell,
        grid_spacing=wcfg.grid_spacing,
        grid_shape=wcfg.grid_shape,
        use_given_mask=item.mask is not None,
        # GenTract reads the canonical fODF z-scored with its checkpoint's statistics
        stats_file=_model_json(config) if "gentract" in wcfg.trackers else None,
        model_path=str(config.model.path) if in_model_space else None,
        registration=wcfg.registration,
        min_dice=wcfg.min_registration_dice,
        label=item.label,
        omp_nthreads=ex.omp_nthreads,
        mem_gb=hints["fodf"],
        denoise=wcfg.denoise,
        unring=wcfg.unring,
    )
    fodf_wf.inputs.inputnode.dwi_file = item.dwi
    fodf_wf.inputs.inputnode.bval_file = item.bval
    fodf_wf.inputs.inputnode.bvec_file = item.bvec
    if item.mask:
        fodf_wf.inputs.inputnode.in_mask = item.mask

    staging = str(Path(ex.work_dir) / "staging" / name)
    provenance = config.provenance(device)
    refs = spatial_references(config, item, in_model_space)
    native_mask = "bids::" + build_path({**item.series_entities, "space": "dwi", "desc": "brain",
                                         "suffix": "mask", "extension": ".nii.gz"})
    ds_wf = init_fodf_derivatives_wf(
        staging_dir=staging, provenance=provenance, with_response=wcfg.csd_method != "msmt",
        spatial_references=refs,
        metadata={"mask_file": mask_metadata(item.mask, item.dwi, ex.bids_dir),
                  "canonical_mask": {"Type": "Brain", "Sources": [native_mask],
                                     "Description": "the brain mask on the canonical grid"}})
    # named by the series entities only: a QSIPrep series' space-/desc- are not the outputs'
    ds_wf.inputs.inputnode.source_file = str(
        Path(item.dwi).parent / f"{output_prefix(item.series_entities)}_dwi.nii.gz")
    wf.connect([(fodf_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in FODF_FIELDS])])

    trackers = wcfg.trackers
    gather = pe.Node(niu.Merge(2 + len(trackers)), name="gather")
    commit = pe.Node(CommitDerivatives(staging_dir=staging, output_dir=str(ex.output_dir)),
                     name="commit")
    wf.connect([
        (ds_wf, gather, [("outputnode.out_files", "in1")]),
        (gather, commit, [("out", "in_files")]),
    ])  # fmt: skip
    if registered:
        ds_reg = pe.Node(StageRegistration(staging_dir=staging, base_entities=item.series_entities,
                                           provenance=provenance, spatial_reference=refs["dwi"]),
                         name="ds_registration", run_without_submitting=True)
        wf.connect([
            (fodf_wf, ds_reg, [("outputnode.xfm_file", "xfm_file"),
                               ("outputnode.registration_metadata", "metadata"),
                               ("outputnode.fa_file", "fa_file"),
                               ("outputnode.registration_figure", "figure"),
                               ("outputnode.template_space", "space")]),
            (ds_reg, gather, [("out_files", "in2")]),
        ])  # fmt: skip
    if not trackers:
        return wf

    mode = evaluation_mode(config, item.subject)
    tdir = truth_dir(config)
    tissue = _tissue_maps(tdir, item.subject)
    base_entities = item.series_entities
    for k, tracker in enumerate(trackers, start=3):
        model = TRACKERS[tracker][0]
        track_wf = _tracking_wf(config, tracker, device, use_tissue_maps=tissue is not None,
                                hints=hints)
        for field, value in {"bval_file": item.bval, "bvec_file": item.bvec,
                             **(tissue or {})}.items():
            setattr(track_wf.inputs.inputnode, field, value)
        eval_wf = init_evaluation_wf(
            mode=mode, subject=item.subject, truth_dir=str(tdir),
            waypoint_atlas=_str(ev.waypoint_atlas), recobundles_models=_str(ev.recobundles_models),
            bundleseg_atlas=_str(ev.bundleseg_atlas), bundle_atlas=_str(ev.bundle_atlas),
            bundle_tolerances={"ending_dilation_mm": ev.bundle_ending_dilation_mm,
                               "mask_dilation_mm": ev.bundle_mask_dilation_mm,
                               "min_inside": ev.bundle_min_inside},
            min_streamlines=ev.min_bundle_streamlines,
            seed=config.seeds.numpy % (2**31), title=f"{item.label} {tracker}",
            output_format=wcfg.output_format, name=f"eval_{model}_wf",
        )
        out_wf = init_tractography_derivatives_wf(
            model=model, staging_dir=staging, provenance=provenance, base_entities=base_entities,
            spatial_reference=refs["dwi"])
        wf.connect([
            (fodf_wf, track_wf, [("outputnode.dwi_file", "inputnode.dwi_file"),
                                 ("outputnode.mask_file", "inputnode.mask_file"),
                                 ("outputnode.fod_file", "inputnode.fod_file"),
                                 ("outputnode.canonical_fod", "inputnode.canonical_fod"),
                                 ("outputnode.canonical_mask", "inputnode.canonical_mask")]),
            (fodf_wf, eval_wf, [("outputnode.mask_file", "inputnode.reference"),
                                ("outputnode.mask_file", "inputnode.mask_file")]),
            (track_wf, eval_wf, [("outputnode.tractogram", "inputnode.tractogram")]),
            (track_wf, out_wf, [("outputnode.tractogram", "inputnode.tractogram"),
                                ("outputnode.metadata", "inputnode.tractogram_metadata")]),
            (eval_wf, out_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in EVAL_FIELDS]),
            (out_wf, gather, [("outputnode.out_files", f"in{k}")]),
        ])  # fmt: skip
        if registered and tracker == "gentract":
            wf.connect(fodf_wf, "outputnode.xfm_file", track_wf, "inputnode.xfm_file")
        if registered and "xfm_file" in eval_wf.get_node("inputnode").inputs.trait_names():
            wf.connect(fodf_wf, "outputnode.xfm_file", eval_wf, "inputnode.xfm_file")
    return wf


def spatial_references(config: Config, item: DWIInput, in_model_space: bool) -> dict:
    """``SpatialReference`` per output space: ``dwi`` the input series (a BIDS URI through the
    output's ``DatasetLinks``); ``gentract`` the model's template image when the canonical grid is
    the model's (its voxel grid; model coordinates are template mm shifted to centre it), else
    the input series, in whose world space that grid then lies."""
    bids_dir = config.execution.bids_dir
    dwi = bids_uri(item.dwi, bids_dir, input_link(bids_dir))
    template = None
    if in_model_space:
        from ..model.inference import resolve_model_path
        from ..registration.template import template_path

        template = template_path(resolve_model_path(config.model.path))
    return {"dwi": dwi,
            "gentract": template.resolve().as_uri() if template and template.is_file() else dwi}


def _tracking_wf(config: Config, tracker: str, device: str, use_tissue_maps: bool,
                 hints: dict):
    """The tracking workflow of ``tracker`` (same inputnode/outputnode for every tracker)."""
    wcfg, mcfg = config.workflow, config.model
    if tracker == "gentract":
        return init_gentract_tractography_wf(
            model_path=str(mcfg.path), model_sha256=mcfg.sha256,
            n_streamlines=wcfg.n_streamlines, sampler=mcfg.sampler, steps=mcfg.steps,
            batch_size=mcfg.batch_size, seed=config.seeds.torch % (2**63), device=device,
            output_format=wcfg.output_format, support_threshold=mcfg.support_threshold,
            guidance_scale=mcfg.guidance_scale, smc_times=mcfg.smc_times,
            density_strength=mcfg.density_strength, precision=mcfg.precision,
            time_schedule=mcfg.time_schedule,
            connectivity_prior=mcfg.connectivity_prior, registered=wcfg.registration == "affine",
            step_size=wcfg.step_size,
            mem_gb=hints["sample"], n_procs=config.execution.nprocs,
        )
    return init_baseline_tracking_wf(
        tracker=tracker, n_streamlines=wcfg.n_streamlines, sift_factor=wcfg.sift_factor,
        tckglobal_niter=wcfg.tckglobal_niter,
        seed=config.seeds.numpy % (2**31), omp_nthreads=config.execution.omp_nthreads,
        use_tissue_maps=use_tissue_maps, output_format=wcfg.output_format,
        mem_gb=hints["track"],
    )


def _model_json(config: Config) -> str:
    from ..io.checkpoint import checkpoint_paths
    from ..model.inference import resolve_model_path

    return str(checkpoint_paths(resolve_model_path(config.model.path))[1])


def _str(path) -> str | None:
    return str(path) if path else None
