"""Tractography of one DWI series: GenTract sampling, or a baseline (MRtrix3 iFOD2/SD_Stream +
SIFT, tckglobal, dipy local tracking). Every tracker's workflow has the same inputnode (the fields of
:data:`TRACKING_INPUTS`) and outputnode (``tractogram``, ``metadata``)."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.gentract import GenTractSample
from ..interfaces.tracking import DipyTrack, MRtrixTrack

TRACKING_INPUTS = ["dwi_file", "bval_file", "bvec_file", "mask_file", "fod_file", "canonical_fod",
                   "canonical_mask", "xfm_file", "wm_pve_file", "gm_pve_file", "csf_pve_file"]

# tracker name (CLI) -> (model entity of its derivatives, how it runs)
TRACKERS = {
    "gentract": ("gentract", "gentract"),
    "ifod2": ("ifod2", "mrtrix"),
    "sdstream": ("sdstream", "mrtrix"),
    "tckglobal": ("tckglobal", "mrtrix"),
    "dipy-det": ("dipydet", "dipy"),
    "dipy-prob": ("dipyprob", "dipy"),
}


def init_baseline_tracking_wf(
    *,
    tracker: str,
    n_streamlines: int,
    sift_factor: float = 10.0,
    tckglobal_niter: float = 2e7,
    seed: int = 0,
    omp_nthreads: int = 1,
    use_tissue_maps: bool = False,
    output_format: str = "trx",
    mem_gb: float = 0.5,
    name: str | None = None,
):
    """Build the tracking workflow of one baseline ``tracker`` (a key of :data:`TRACKERS`).

    Inputs (``inputnode``): ``dwi_file``, ``bval_file``, ``bvec_file``, ``mask_file`` (native
    brain mask), ``fod_file`` (dipy CSD coefficients, for the dipy trackers), and, read only when
    ``use_tissue_maps``, ``wm_pve_file``/``gm_pve_file``/``csf_pve_file``.

    Outputs (``outputnode``): ``tractogram`` (.trx, RAS+ mm) and ``metadata`` (command lines,
    settings, timings).
    """
    model, engine = TRACKERS[tracker]
    wf, inputnode, outputnode = _tracking_wf(name or f"track_{model}_wf")
    if engine == "mrtrix":
        track = pe.Node(MRtrixTrack(algorithm=tracker, n_streamlines=n_streamlines,
                                    sift_factor=sift_factor, niter=tckglobal_niter,
                                    random_seed=seed,
                                    nthreads=omp_nthreads, out_format=output_format),
                        name="track", n_procs=omp_nthreads, mem_gb=mem_gb)
        links = [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                 ("bvec_file", "bvec_file"), ("mask_file", "mask_file")]
        if use_tissue_maps and tracker != "tckglobal":
            links.append(("wm_pve_file", "wm_pve_file"))
    else:
        track = pe.Node(DipyTrack(kind=tracker.split("-")[1], n_streamlines=n_streamlines,
                                  seeds_per_voxel=2,  # 1 per voxel can fall short of n
                                  random_seed=seed, out_format=output_format),
                        name="track", mem_gb=mem_gb)
        links = [("fod_file", "fod_file"), ("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                 ("bvec_file", "bvec_file"), ("mask_file", "mask_file")]
        if use_tissue_maps:
            links += [(f"{t}_pve_file", f"{t}_pve_file") for t in ("wm", "gm", "csf")]
    wf.connect([
        (inputnode, track, links),
        (track, outputnode, [("out_file", "tractogram"), ("metadata", "metadata")]),
    ])  # fmt: skip
    return wf


def init_gentract_tractography_wf(
    *,
    model_path: str,
    model_sha256: str | None = None,
    n_streamlines: int,
    sampler: str | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    output_format: str = "trx",
    support_threshold: float | None = None,
    guidance_scale: float = 0.0,
    smc_times=(),
    density_strength: float = 0.0,
    precision: str = "auto",
    time_schedule: str = "uniform",
    connectivity_prior: bool = False,
    registered: bool = False,
    step_size: float | None = 1.0,
    mem_gb: float = 1.0,
    n_procs: int = 1,
    name: str = "track_gentract_wf",
):
    """GenTract: encode the subject's context once, sample ``n_streamlines`` whole streamlines.

    Inputs (``inputnode``, see :data:`TRACKING_INPUTS`): reads ``canonical_fod`` (the fODF on the
    model's grid, z-scored with the model's statistics: the fODF stage's ``canonical_fod`` when it
    was built with the checkpoint as ``stats_file``) and ``mask_file`` (the native grid the
    tractogram header records); with ``support_threshold`` also ``canonical_mask``, and the
    sampled streamlines are trimmed, extended and filtered by their fODF support
    (:mod:`gentract_bids.model.support`) until ``n_streamlines`` are kept; with
    ``connectivity_prior`` also by the checkpoint's endpoint-pair prior, when it carries one
    (:mod:`gentract_bids.model.connectivity`).

    ``step_size`` (mm): the streamlines are resampled to this step (cubic spline) and their ends
    clipped to ``mask_file``; None writes the model's points as sampled. ``n_procs``: the torch
    threads the sampling node runs (``--nthreads``), so that MultiProc never runs more sampling
    threads at once than it has CPUs.

    Outputs (``outputnode``): ``tractogram`` (RAS+ mm) and ``metadata`` (model name and sha256,
    sampler, steps, seed, device, number of streamlines, timings).
    """
    wf, inputnode, outputnode = _tracking_wf(name)
    sample = pe.Node(GenTractSample(model_path=str(model_path), model_sha256=model_sha256,
                                    n_streamlines=n_streamlines, sampler=sampler, steps=steps,
                                    batch_size=batch_size, random_seed=seed, device=device,
                                    out_format=output_format,
                                    support_threshold=support_threshold,
                                    guidance_scale=guidance_scale, step_size=step_size,
                                    smc_times=list(smc_times),
                                    density_strength=density_strength,
                                    precision=precision, time_schedule=time_schedule,
                                    connectivity_prior=connectivity_prior),
                     name="sample", mem_gb=mem_gb,  # the sampler's batches stay inside --mem
                     n_procs=n_procs)
    links = [("canonical_fod", "canonical_fod"), ("mask_file", "reference_file")]
    if support_threshold:
        links.append(("canonical_mask", "canonical_mask"))
    if registered:
        links.append(("xfm_file", "xfm_file"))
    wf.connect([
        (inputnode, sample, links),
        (sample, outputnode, [("out_file", "tractogram"), ("metadata", "metadata")]),
    ])  # fmt: skip
    return wf


def _tracking_wf(name: str):
    """A tracking workflow with the shared inputnode/outputnode contract."""
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=TRACKING_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["tractogram", "metadata"]),
                         name="outputnode")
    return wf, inputnode, outputnode
