"""Scoring of one tractogram: sanity metrics, then ground truth or atlas recognition."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.evaluation import EvaluateTractogram

EVAL_FIELDS = ("metrics_file", "bundlestats_file", "bundle_files", "bundle_labels",
               "bundle_names", "figures", "figure_descs", "metadata")


def init_evaluation_wf(
    *,
    mode: str,
    subject: str,
    truth_dir: str | None = None,
    waypoint_atlas: str | None = None,
    recobundles_models: str | None = None,
    bundleseg_atlas: str | None = None,
    bundle_atlas: str | None = None,
    bundle_tolerances: dict | None = None,
    min_streamlines: int = 10,
    seed: int = 0,
    title: str = "",
    output_format: str = "trx",
    name: str = "evaluation_wf",
):
    """Build the evaluation workflow (``mode``: groundtruth, atlas or sanity).

    Inputs (``inputnode``): ``tractogram``, ``reference`` (an image on the DWI grid),
    ``mask_file`` (brain mask), ``xfm_file`` (the registration, ITK text, template mm -> subject
    mm; used only in atlas mode with a ``bundle_atlas``, whose ``bundle_tolerances`` are
    ``{"ending_dilation_mm", "mask_dilation_mm", "min_inside"}``).
    ``output_format`` (trx, tck or trk) is the format of the per-bundle tractograms.

    Outputs (``outputnode``): ``metrics_file`` (JSON), ``bundlestats_file`` (TSV),
    ``bundle_files``/``bundle_labels``/``bundle_names`` (per-bundle tractograms),
    ``figures``/``figure_descs`` (PNG) and ``metadata`` (sidecar fields).
    """
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["tractogram", "reference", "mask_file", "xfm_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=list(EVAL_FIELDS)), name="outputnode")
    evaluate = pe.Node(
        EvaluateTractogram(mode=mode, subject=subject, truth_dir=truth_dir,
                           waypoint_atlas=waypoint_atlas, recobundles_models=recobundles_models,
                           bundleseg_atlas=bundleseg_atlas, min_streamlines=min_streamlines,
                           seed=seed, title=title, out_format=output_format),
        name="evaluate",
    )
    use_bundle_atlas = mode == "atlas" and bool(bundle_atlas)
    if use_bundle_atlas:
        evaluate.inputs.bundle_atlas = str(bundle_atlas)
        for key, value in (bundle_tolerances or {}).items():
            setattr(evaluate.inputs, f"bundle_{key}", float(value))
    wf.connect([
        (inputnode, evaluate, [("tractogram", "tractogram"), ("reference", "reference"),
                               ("mask_file", "mask_file")]),
        (evaluate, outputnode, [(f, f) for f in EVAL_FIELDS]),
    ])  # fmt: skip
    if use_bundle_atlas:
        wf.connect(inputnode, "xfm_file", evaluate, "xfm_file")
    return wf
