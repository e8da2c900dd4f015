"""Derivative writing with niworkflows' DerivativesDataSink and GenTract's naming spec."""

import shutil
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from niworkflows.interfaces.bids import DerivativesDataSink as _DDS

from ..io.bids import io_spec


class DerivativesDataSink(_DDS):
    """niworkflows' sink writing at the output root with the entities/patterns of io_spec.json."""

    out_path_base = ""
    _config_entities = frozenset(e["name"] for e in io_spec()["entities"])
    _config_entities_dict = io_spec()["entities"]
    _file_patterns = tuple(io_spec()["default_path_patterns"])


class _CommitInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="staged derivatives")
    staging_dir = Directory(mandatory=True, desc="root the staged files are relative to")
    output_dir = Directory(mandatory=True, desc="the derivatives dataset")


class _CommitOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True))


class CommitDerivatives(SimpleInterface):
    """Commit one series' staged derivatives into the output dataset once all of them exist.

    It runs only after every sink of the series succeeded, so a failed series leaves nothing
    in the output; :func:`..io.commit.commit_series` makes the commit all-or-nothing, even
    across a kill.
    """

    input_spec = _CommitInputSpec
    output_spec = _CommitOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        from ..io.commit import commit_series

        staging = Path(self.inputs.staging_dir)
        self._results["out_files"] = commit_series(self.inputs.in_files, staging,
                                                   self.inputs.output_dir, run=staging.name)
        return runtime



def stage_file(src, entities: dict, staging_dir, sidecar: dict | None = None) -> list[str]:
    """Copy ``src`` into ``staging_dir`` under the io_spec name of ``entities`` (+ JSON sidecar)."""
    import json

    from ..io.bids import build_path

    src = str(src)
    ext = ".nii.gz" if src.endswith(".nii.gz") else Path(src).suffix
    dest = Path(staging_dir) / build_path({**entities, "extension": ext})
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    out = [str(dest)]
    if sidecar is not None:
        side = dest.with_name(dest.name[: -len(ext)] + ".json")
        side.write_text(json.dumps(sidecar, indent=2, default=str))
        out.append(str(side))
    return out


def stage_responses(files: dict, base: dict, staging_dir, provenance: dict):
    """Stage a tracker's response files (tissue -> path) as ``desc-<tissue>_model-<tracker>
    _response.txt``; returns (staged paths, tissue -> BIDS URI in the output dataset)."""
    from ..io.bids import build_path

    out, uris = [], {}
    for tissue, path in files.items():
        ents = {**base, "desc": tissue, "suffix": "response"}
        out += stage_file(path, ents, staging_dir,
                          {"Description": f"{tissue.upper()} response function (MRtrix3 text "
                                          "format: one row per shell, m=0 SH coefficients)",
                           "ResponseAlgorithm": "dwi2response dhollander", **provenance})
        uris[tissue] = "bids::" + build_path({**ents, "extension": ".txt"})
    return out, uris


def tracker_provenance(provenance: dict, metadata: dict, model: str) -> dict:
    """The sidecar of one tracker's tractogram: its own ``metadata`` first, then the run's
    ``provenance``. A tool's own ``Software`` (e.g. ``MRtrix3 3.0.4``) is kept, gentract's goes to
    ``Pipeline``/``PipelineVersion``; ``ModelChecksum`` only where GenTract made the file."""
    prov = {k: v for k, v in provenance.items() if model == "gentract" or k != "ModelChecksum"}
    if "Software" in metadata:
        prov["Pipeline"], prov["PipelineVersion"] = prov.pop("Software"), prov.pop("Version")
    return {**metadata, **prov}


class _StageTractographyInputSpec(BaseInterfaceInputSpec):
    staging_dir = Directory(mandatory=True)
    base_entities = traits.Dict(mandatory=True, desc="subject, session, acquisition, run")
    model = traits.Str(mandatory=True, desc="model entity of the tracker (ifod2, ...)")
    provenance = traits.Dict(mandatory=True, desc="added to every sidecar")
    tractogram = File(exists=True, mandatory=True)
    tractogram_metadata = traits.Dict(mandatory=True)
    eval_metadata = traits.Dict(mandatory=True)
    metrics_file = File(exists=True, mandatory=True)
    bundlestats_file = File(exists=True, mandatory=True)
    bundle_files = InputMultiObject(File(exists=True))
    bundle_labels = traits.List(traits.Str)
    bundle_names = traits.List(traits.Str)
    figures = InputMultiObject(File(exists=True))
    figure_descs = traits.List(traits.Str)
    spatial_reference = traits.Str("", usedefault=True, desc="SpatialReference of space-dwi")


class StageTractography(SimpleInterface):
    """Name one tracker's outputs by ``io_spec.json`` and stage them (commit comes later):
    whole-brain tractogram + sidecar, metrics JSON, bundle table, per-bundle tractograms, figures."""

    input_spec = _StageTractographyInputSpec
    output_spec = _CommitOutputSpec

    def _run_interface(self, runtime):
        i = self.inputs
        base = {**i.base_entities, "model": i.model}
        dwi = {**base, "space": "dwi"}
        staging = i.staging_dir
        ref = {"SpatialReference": i.spatial_reference} if i.spatial_reference else {}
        side = {**tracker_provenance(i.provenance, i.tractogram_metadata, i.model), **ref}
        prov = {**tracker_provenance(i.provenance, {}, i.model), **ref}
        out = []
        if isinstance(side.get("ResponseFiles"), dict):  # MRtrix3's, in the work directory
            tool = {k: v for k, v in i.tractogram_metadata.items() if k == "Software"}
            out, side["ResponseFiles"] = stage_responses(
                side["ResponseFiles"], base, staging,
                tracker_provenance(i.provenance, tool, i.model))
        out += stage_file(i.tractogram, {**dwi, "suffix": "streamlines"}, staging,
                         {**side, "Evaluation": i.eval_metadata})
        out += stage_file(i.metrics_file, {**dwi, "desc": "eval", "suffix": "metrics"}, staging)
        out += stage_file(i.bundlestats_file, {**dwi, "suffix": "bundlestats"}, staging)
        files = i.bundle_files if isdefined(i.bundle_files) else []
        for path, label, name in zip(files, i.bundle_labels, i.bundle_names):
            out += stage_file(path, {**dwi, "bundle": label, "suffix": "streamlines"}, staging,
                              {"BundleName": name, "Description": "valid/recognised streamlines",
                               **prov})
        figs = i.figures if isdefined(i.figures) else []
        for path, desc in zip(figs, i.figure_descs):
            suffix = {"f1": "bundlestats", "bundles": "bundles"}.get(desc, "streamlines")
            out += stage_file(path, {**base, "datatype": "figures", "desc": desc,
                                     "suffix": suffix}, staging)
        self._results["out_files"] = out
        return runtime


class _StageRegistrationInputSpec(BaseInterfaceInputSpec):
    staging_dir = Directory(mandatory=True)
    base_entities = traits.Dict(mandatory=True, desc="subject, session, acquisition, run")
    provenance = traits.Dict(mandatory=True, desc="added to every sidecar")
    space = traits.Str(mandatory=True, desc="the template's space")
    xfm_file = File(exists=True, mandatory=True)
    metadata = traits.Dict(mandatory=True)
    fa_file = File(exists=True, mandatory=True)
    figure = File(exists=True, mandatory=True)
    spatial_reference = traits.Str("", usedefault=True, desc="SpatialReference of space-dwi")


class StageRegistration(SimpleInterface):
    """Stage the registration of a series: the transform (``from-dwi_to-<space>_mode-image_xfm``)
    with its sidecar, the FA map it was computed from, and the report figure."""

    input_spec = _StageRegistrationInputSpec
    output_spec = _CommitOutputSpec

    def _run_interface(self, runtime):
        i = self.inputs
        base, prov = dict(i.base_entities), dict(i.provenance)
        out = stage_file(i.xfm_file, {**base, "from": "dwi", "to": i.space, "mode": "image",
                                      "suffix": "xfm"}, i.staging_dir, {**i.metadata, **prov})
        out += stage_file(i.fa_file, {**base, "space": "dwi", "model": "tensor", "param": "fa",
                                      "suffix": "dwimap"}, i.staging_dir,
                          {"Description": "fractional anisotropy (dipy WLS tensor fit, b <= "
                                          "1600 s/mm2), the image registered to the template",
                           "Model": {"Name": "DTI"}, **prov,
                           **({"SpatialReference": i.spatial_reference}
                              if i.spatial_reference else {})})
        out += stage_file(i.figure, {**base, "datatype": "figures", "space": i.space,
                                     "desc": "registration", "suffix": "dwi"}, i.staging_dir)
        self._results["out_files"] = out
        return runtime
