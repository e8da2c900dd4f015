"""The fODF stage: brain mask -> response + CSD -> canonical grid and z-scoring."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.fodf import BrainMask, CanonicalFOD, ExportFOD, FitCSD
from ..interfaces.preproc import PreprocessDWI
from ..interfaces.registration import RegisterToTemplate

REGISTRATION_FIELDS = ("xfm_file", "registration_metadata", "fa_file", "registration_figure",
                       "template_space")


def init_fodf_wf(
    *,
    sh_order: int = 6,
    csd_method: str = "auto",
    csd_shell: float | None = None,
    grid_spacing: float = 1.875,
    grid_shape: tuple[int, int, int] = (80, 96, 80),
    use_given_mask: bool = False,
    stats_file: str | None = None,
    model_path: str | None = None,
    registration: str = "affine",
    min_dice: float = 0.75,
    label: str = "the series",
    omp_nthreads: int = 1,
    mem_gb: float = 0.5,
    denoise: str = "none",
    unring: bool = False,
    name: str = "fodf_wf",
):
    """Build the fODF workflow of one DWI series.

    Inputs (``inputnode``): ``dwi_file``, ``bval_file``, ``bvec_file``, ``in_mask`` (read only
    when ``use_given_mask``).

    Outputs (``outputnode``): ``mask_file``/``mask_metadata`` (native brain mask),
    ``fod_file`` (native SH coefficients in the internal basis: dipy's non-legacy descoteaux07,
    voxel frame, what the trackers read), ``fod_derivative``/``fod_metadata`` (the same fODF in
    MRtrix3's basis, world frame, with its BEP016 sidecar: what is written as the derivative),
    ``fod_response``/``response_metadata`` (the MRtrix3 response file; single-shell CSD only),
    ``canonical_fod``/``canonical_mask``/``canonical_metadata`` (z-scored coefficients on the
    canonical ``grid_spacing`` grid; z-scored with ``stats_file`` when given, else the subject's own
    statistics). With ``model_path`` the canonical grid is the model's, placed by its template;
    with ``registration="affine"`` the series is first registered to that template
    (:mod:`gentract_bids.registration`) and ``xfm_file`` (ITK affine, template mm -> subject mm),
    ``registration_metadata``, ``fa_file``, ``registration_figure`` and ``template_space`` are
    set; ``"none"`` takes the data to be in the template's space already.

    ``omp_nthreads`` and ``mem_gb`` are the resource hints of the heavy nodes (CSD, registration,
    resampling) that MultiProc and the batch plugins (``--use-plugin``) schedule by.

    ``denoise`` (``mppca``/``patch2self``) and ``unring`` preprocess the DWI first
    (:mod:`gentract_bids.fodf.denoise`); every later node, and ``outputnode.dwi_file`` (what the
    baseline trackers read), gets the preprocessed series, and the fODF sidecar records the steps
    under ``Preprocessing``.
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["dwi_file", "bval_file", "bvec_file", "in_mask"]),
        name="inputnode",
    )
    outputnode = pe.Node(
        niu.IdentityInterface(
            fields=["dwi_file", "mask_file", "mask_metadata", "fod_file", "fod_derivative",
                    "fod_metadata",
                    "fod_response", "response_metadata",
                    "canonical_fod", "canonical_mask", "canonical_metadata",
                    *REGISTRATION_FIELDS]
        ),
        name="outputnode",
    )
    mask = pe.Node(BrainMask(), name="brain_mask")
    csd = pe.Node(
        FitCSD(sh_order=sh_order, method=csd_method, shell=csd_shell),
        name="csd",
        n_procs=omp_nthreads,  # MultiProc accounts for the threads CSD's linear algebra uses
        mem_gb=mem_gb,
    )
    export = pe.Node(ExportFOD(), name="export_fod")
    canonical = pe.Node(
        CanonicalFOD(spacing=grid_spacing, shape=tuple(grid_shape)), name="canonical",
        mem_gb=mem_gb,
    )
    if stats_file:
        canonical.inputs.stats_file = stats_file
    if model_path:
        canonical.inputs.model_path = str(model_path)

    dwi_fields = ("dwi_file", "bval_file", "bvec_file")
    source = inputnode  # the DWI every node reads: the input, or its preprocessed copy
    if denoise != "none" or unring:
        source = pe.Node(niu.IdentityInterface(fields=list(dwi_fields)), name="dwi_source")
        preproc = pe.Node(PreprocessDWI(denoise=denoise, unring=unring), name="preprocess_dwi")
        record = pe.Node(niu.Function(function=_with_preprocessing,
                                      input_names=["metadata", "preprocessing"],
                                      output_names=["metadata"]), name="record_preprocessing")
        wf.connect([
            (inputnode, preproc, [("dwi_file", "dwi_file"), ("bval_file", "bval_file")]),
            (inputnode, source, [("bval_file", "bval_file"), ("bvec_file", "bvec_file")]),
            (preproc, source, [("out_file", "dwi_file")]),
            (export, record, [("metadata", "metadata")]),
            (preproc, record, [("metadata", "preprocessing")]),
            (record, outputnode, [("metadata", "fod_metadata")]),
        ])  # fmt: skip
    else:
        wf.connect(export, "metadata", outputnode, "fod_metadata")
    wf.connect([
        # separate lists: nipype extends an edge's list in place when it is connected again
        (source, outputnode, [("dwi_file", "dwi_file")]),
        (source, mask, [(f, f) for f in dwi_fields]),
        (source, csd, [(f, f) for f in dwi_fields]),
        (mask, csd, [("out_mask", "mask_file")]),
        (csd, canonical, [("out_fod", "fod_file")]),
        (mask, canonical, [("out_mask", "mask_file")]),
        (mask, outputnode, [("out_mask", "mask_file"), ("metadata", "mask_metadata")]),
        (csd, export, [("out_fod", "fod_file"), ("metadata", "metadata")]),
        (csd, outputnode, [("out_fod", "fod_file")]),
        (export, outputnode, [("out_fod", "fod_derivative"), ("out_response", "fod_response"),
                              ("response_metadata", "response_metadata")]),
        (canonical, outputnode, [("out_fod", "canonical_fod"), ("out_mask", "canonical_mask"),
                                 ("metadata", "canonical_metadata")]),
    ])  # fmt: skip
    if use_given_mask:
        wf.connect(inputnode, "in_mask", mask, "in_mask")
    if model_path and registration == "affine":
        register = pe.Node(RegisterToTemplate(model_path=str(model_path), min_dice=min_dice,
                                              label=label),
                           name="register", n_procs=omp_nthreads, mem_gb=mem_gb)
        wf.connect([
            (source, register, [(f, f) for f in dwi_fields]),
            (mask, register, [("out_mask", "mask_file")]),
            (register, canonical, [("xfm_file", "xfm_file")]),
            (register, outputnode, [("xfm_file", "xfm_file"), ("metadata", "registration_metadata"),
                                    ("fa_file", "fa_file"), ("figure", "registration_figure"),
                                    ("space", "template_space")]),
        ])  # fmt: skip
    return wf


def _with_preprocessing(metadata: dict, preprocessing: dict) -> dict:
    """The fODF sidecar with the DWI preprocessing record (a nipype Function node)."""
    return {**metadata, "Preprocessing": preprocessing}
