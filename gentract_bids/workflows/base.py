"""The participant-level workflow: one sub-workflow per DWI series."""

from pathlib import Path

from nipype.pipeline import engine as pe

from ..config import Config
from ..io.bids import DWIInput
from .fodf import init_fodf_wf
from .outputs import FODF_FIELDS, init_fodf_derivatives_wf


def series_id(item: DWIInput) -> str:
    """A workflow-safe name for one DWI series, from its BIDS entities."""
    keys = ("subject", "session", "acquisition", "run")
    prefix = {"subject": "sub", "session": "ses", "acquisition": "acq", "run": "run"}
    return "_".join(f"{prefix[k]}_{item.entities[k]}" for k in keys if k in item.entities)


def init_gentract_wf(config: Config, inputs: list[DWIInput], device: str):
    """Top-level workflow of a participant-level run (one ``init_single_series_wf`` per series)."""
    wf = pe.Workflow(name="gentract_wf", base_dir=str(config.execution.work_dir))
    for item in inputs:
        wf.add_nodes([init_single_series_wf(config, item, device)])
    return wf


def init_single_series_wf(config: Config, item: DWIInput, device: str):
    """fODF stage and derivatives of one DWI series.

    Inputs are fixed at build time from ``item`` (files found by pybids); outputs are the committed
    derivatives in ``config.execution.output_dir``.
    """
    name = series_id(item)
    ex, wcfg = config.execution, config.workflow
    wf = pe.Workflow(name=f"{name}_wf")
    fodf_wf = init_fodf_wf(
        sh_order=wcfg.sh_order,
        csd_method=wcfg.csd_method,
        csd_shell=wcfg.csd_shell,
        grid_spacing=wcfg.grid_spacing,
        grid_shape=wcfg.grid_shape,
        use_given_mask=item.mask is not None,
        omp_nthreads=ex.omp_nthreads,
    )
    fodf_wf.inputs.inputnode.dwi_file = item.dwi
    fodf_wf.inputs.inputnode.bval_file = item.bval
    fodf_wf.inputs.inputnode.bvec_file = item.bvec
    if item.mask:
        fodf_wf.inputs.inputnode.in_mask = item.mask

    staging = Path(ex.work_dir) / "staging" / name
    ds_wf = init_fodf_derivatives_wf(
        staging_dir=str(staging),
        output_dir=str(ex.output_dir),
        provenance=config.provenance(device),
    )
    ds_wf.inputs.inputnode.source_file = item.dwi
    wf.connect([(fodf_wf, ds_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in FODF_FIELDS])])
    return wf
