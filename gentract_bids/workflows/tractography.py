"""Baseline tractography of one DWI series: MRtrix3 (iFOD2/SD_Stream + SIFT, tckglobal) or dipy."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.tracking import DipyTrack, MRtrixTrack

# tracker name (CLI) -> (model entity of its derivatives, how it runs)
TRACKERS = {
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
    wf = pe.Workflow(name=name or f"track_{model}_wf")
    fields = ["dwi_file", "bval_file", "bvec_file", "mask_file", "fod_file",
              "wm_pve_file", "gm_pve_file", "csf_pve_file"]
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["tractogram", "metadata"]),
                         name="outputnode")
    if engine == "mrtrix":
        track = pe.Node(MRtrixTrack(algorithm=tracker, n_streamlines=n_streamlines,
                                    sift_factor=sift_factor, niter=tckglobal_niter,
                                    random_seed=seed,
                                    nthreads=omp_nthreads, out_format=output_format),
                        name="track", n_procs=omp_nthreads)
        links = [("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                 ("bvec_file", "bvec_file"), ("mask_file", "mask_file")]
        if use_tissue_maps and tracker != "tckglobal":
            links.append(("wm_pve_file", "wm_pve_file"))
    else:
        track = pe.Node(DipyTrack(kind=tracker.split("-")[1], n_streamlines=n_streamlines,
                                  seeds_per_voxel=2,  # 1 per voxel can fall short of n
                                  random_seed=seed, out_format=output_format),
                        name="track")
        links = [("fod_file", "fod_file"), ("dwi_file", "dwi_file"), ("bval_file", "bval_file"),
                 ("bvec_file", "bvec_file"), ("mask_file", "mask_file")]
        if use_tissue_maps:
            links += [(f"{t}_pve_file", f"{t}_pve_file") for t in ("wm", "gm", "csf")]
    wf.connect([
        (inputnode, track, links),
        (track, outputnode, [("out_file", "tractogram"), ("metadata", "metadata")]),
    ])  # fmt: skip
    return wf
