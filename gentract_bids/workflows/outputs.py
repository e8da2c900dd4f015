"""Derivative sinks: naming comes from ``data/io_spec.json`` through DerivativesDataSink."""

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink, StageTractography

# What the fODF stage writes: outputnode field -> (metadata field, entities). Naming as data.
# The fODF derivative is in MRtrix3's basis (fodf/basis.py); the z-scored canonical fODF, GenTract's
# input, stays in the internal basis.
FODF_OUTPUTS = {
    "mask_file": ("mask_metadata", {"space": "dwi", "desc": "brain", "suffix": "mask"}),
    "fod_derivative": ("fod_metadata",
                       {"space": "dwi", "model": "csd", "param": "fod", "suffix": "dwimap"}),
    "fod_response": ("response_metadata", {"desc": "wm", "model": "csd", "suffix": "response"}),
    "canonical_fod": ("canonical_metadata", {"space": "gentract", "desc": "zscored",
                                             "model": "csd", "param": "fod", "suffix": "dwimap"}),
    "canonical_mask": ("canonical_metadata",
                       {"space": "gentract", "desc": "brain", "suffix": "mask"}),
}
# every field the fODF stage hands to the sinks: images first, then their metadata dicts
FODF_FIELDS = (*FODF_OUTPUTS, *sorted({meta for meta, _ in FODF_OUTPUTS.values()}))


def init_fodf_derivatives_wf(*, staging_dir: str, provenance: dict, with_response: bool = True,
                             spatial_references: dict | None = None,
                             metadata: dict | None = None, name: str = "fodf_derivatives_wf"):
    """Write the fODF stage's derivatives into ``staging_dir`` (committed later, all at once).

    Inputs (``inputnode``): ``source_file`` (the raw DWI) and every field of ``FODF_OUTPUTS`` with
    its metadata field. Outputs (``outputnode``): ``out_files`` (staged images and sidecars).

    Each sink adds ``provenance`` to its JSON sidecar. ``with_response=False`` (multi-shell CSD,
    whose responses are not written) leaves the response file out. ``spatial_references``
    (space -> BIDS URI) gives each ``space-`` file its ``SpatialReference``; ``metadata`` (field
    -> dict) adds to one file's sidecar (e.g. the mask's ``Sources`` and ``Description``).
    """
    outputs = {k: v for k, v in FODF_OUTPUTS.items() if with_response or k != "fod_response"}
    wf = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", *FODF_FIELDS]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    gather = pe.Node(niu.Merge(2 * len(outputs)), name="gather")
    for i, (field, (meta, entities)) in enumerate(outputs.items()):
        compress = entities["suffix"] != "response"  # a text file
        # only the canonical (z-scored with the model's statistics) files depend on the model
        prov = {k: v for k, v in provenance.items()
                if k != "ModelChecksum" or entities.get("space") == "gentract"}
        ref = (spatial_references or {}).get(entities.get("space"))
        prov.update({"SpatialReference": ref} if ref else {}, **(metadata or {}).get(field, {}))
        sink = pe.Node(
            DerivativesDataSink(base_directory=staging_dir, compress=compress, **entities,
                                **prov),
            name=f"ds_{field}",
            run_without_submitting=True,
        )
        wf.connect([
            (inputnode, sink, [("source_file", "source_file"), (field, "in_file"),
                               (meta, "meta_dict")]),
            (sink, gather, [("out_file", f"in{2 * i + 1}"), ("out_meta", f"in{2 * i + 2}")]),
        ])  # fmt: skip
    wf.connect([(gather, outputnode, [("out", "out_files")])])
    return wf


def init_tractography_derivatives_wf(*, model: str, staging_dir: str, provenance: dict,
                                     base_entities: dict, spatial_reference: str | None = None,
                                     name: str | None = None):
    """Stage one tracker's outputs, named by ``io_spec.json`` with ``model-<model>``.

    Inputs (``inputnode``): ``tractogram``, ``tractogram_metadata`` and the evaluation fields
    (:data:`~gentract_bids.workflows.evaluation.EVAL_FIELDS`). Outputs: ``out_files``.
    """
    from .evaluation import EVAL_FIELDS

    wf = pe.Workflow(name=name or f"{model}_derivatives_wf")
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["tractogram", "tractogram_metadata", *EVAL_FIELDS]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    stage = pe.Node(
        StageTractography(staging_dir=staging_dir, base_entities=base_entities, model=model,
                          provenance=provenance, spatial_reference=spatial_reference or ""),
        name="stage", run_without_submitting=True,
    )
    eval_links = [(f, f) for f in EVAL_FIELDS if f != "metadata"] + [("metadata", "eval_metadata")]
    wf.connect([
        (inputnode, stage, [("tractogram", "tractogram"),
                            ("tractogram_metadata", "tractogram_metadata"), *eval_links]),
        (stage, outputnode, [("out_files", "out_files")]),
    ])  # fmt: skip
    return wf
