"""Thin nipype interface over :func:`gentract_bids.evaluation.evaluate.evaluate_tractogram`."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from . import optional


class _EvaluateInputSpec(BaseInterfaceInputSpec):
    tractogram = File(exists=True, mandatory=True, desc="whole-brain tractogram (RAS+ mm)")
    reference = File(exists=True, mandatory=True, desc="image on the subject's DWI grid")
    mask_file = File(exists=True, desc="brain mask on the DWI grid")
    mode = traits.Enum("groundtruth", "atlas", "sanity", mandatory=True)
    subject = traits.Str(mandatory=True)
    truth_dir = traits.Either(None, traits.Str, default=None, usedefault=True)
    waypoint_atlas = traits.Either(None, traits.Str, default=None, usedefault=True)
    recobundles_models = traits.Either(None, traits.Str, default=None, usedefault=True)
    bundleseg_atlas = traits.Either(None, traits.Str, default=None, usedefault=True)
    use_pyafq = traits.Bool(False, usedefault=True)
    bundle_atlas = traits.Either(None, traits.Str, default=None, usedefault=True,
                                 desc="TractSeg-layout bundle atlas in template space")
    xfm_file = File(exists=True, desc="registration (ITK text, template mm -> subject mm); "
                                      "needed with bundle_atlas")
    bundle_ending_dilation_mm = traits.Float(4.0, usedefault=True)
    bundle_mask_dilation_mm = traits.Float(2.0, usedefault=True)
    bundle_min_inside = traits.Float(0.8, usedefault=True)
    min_streamlines = traits.Int(10, usedefault=True)
    seed = traits.Int(0, usedefault=True)
    title = traits.Str("", usedefault=True, desc="figure titles (e.g. the tracker)")
    out_format = traits.Enum("trx", "tck", "trk", usedefault=True,
                             desc="format of the per-bundle tractograms")


class _EvaluateOutputSpec(TraitedSpec):
    metrics_file = File(exists=True, desc="the shared metrics (JSON)")
    bundlestats_file = File(exists=True, desc="one row per bundle (TSV)")
    bundle_files = OutputMultiObject(File(exists=True), desc="per-bundle tractograms (out_format)")
    bundle_labels = traits.List(traits.Str, desc="BIDS bundle entity of each bundle file")
    bundle_names = traits.List(traits.Str, desc="bundle name of each bundle file")
    figures = OutputMultiObject(File(exists=True), desc="PNG figures")
    figure_descs = traits.List(traits.Str, desc="desc entity of each figure")
    metadata = traits.Dict(desc="sidecar fields")


class EvaluateTractogram(SimpleInterface):
    """Sanity metrics + ground-truth scoring or atlas recognition, tables and figures."""

    input_spec = _EvaluateInputSpec
    output_spec = _EvaluateOutputSpec

    def _run_interface(self, runtime):
        from ..evaluation.evaluate import bundle_label, evaluate_tractogram
        from ..evaluation.groundtruth import load_groundtruth
        from ..evaluation.metrics import write_bundlestats_tsv, write_metrics_json
        from ..io.tractogram import load_tractogram, save_tractogram
        from ..reports import figures

        i = self.inputs
        t0 = time.perf_counter()
        cwd = Path(runtime.cwd)
        ref = nb.load(i.reference)
        affine, shape = ref.affine, ref.shape[:3]
        streamlines, _ = load_tractogram(i.tractogram)
        mask = (np.asanyarray(nb.load(i.mask_file).dataobj) > 0) if optional(i.mask_file) else None
        truth = load_groundtruth(i.truth_dir, i.subject) if i.mode == "groundtruth" else None
        ev = evaluate_tractogram(
            streamlines, affine, shape, mode=i.mode, truth=truth, brain_mask=mask,
            waypoint_atlas=optional(i.waypoint_atlas),
            recobundles_models=optional(i.recobundles_models),
            bundleseg_atlas=optional(i.bundleseg_atlas), use_pyafq=i.use_pyafq,
            bundle_atlas=optional(i.bundle_atlas), xfm_file=optional(i.xfm_file),
            bundle_tolerances={"ending_dilation_mm": i.bundle_ending_dilation_mm,
                               "mask_dilation_mm": i.bundle_mask_dilation_mm,
                               "min_inside": i.bundle_min_inside},
            min_streamlines=i.min_streamlines, seed=i.seed, work_dir=cwd / "atlas",
        )
        seconds = time.perf_counter() - t0
        ev.summary["timings"] = {"EvaluationSeconds": round(seconds, 3)}
        self._results["metrics_file"] = str(write_metrics_json(ev.summary, cwd / "metrics.json"))
        self._results["bundlestats_file"] = str(
            write_bundlestats_tsv(ev.summary, cwd / "bundlestats.tsv"))
        bundle_dir = cwd / "bundles"
        bundle_dir.mkdir(exist_ok=True)
        files, labels, names = [], [], []
        for name, sl in ev.bundles.items():
            if not len(sl):
                continue
            path = bundle_dir / f"{bundle_label(name)}.{i.out_format}"
            save_tractogram(path, sl, affine, shape)
            files.append(str(path))
            labels.append(bundle_label(name))
            names.append(str(name))
        self._results.update(bundle_files=files, bundle_labels=labels, bundle_names=names)
        figs, descs = [], []
        title = i.title or None
        outline = {"mask": mask, "affine": affine}  # the brain outline under the streamlines
        figs.append(str(figures.plot_tractogram_directions(
            streamlines, cwd / "directions.png", title=title, **outline)))
        descs.append("directions")
        if ev.bundles:
            figs.append(str(figures.plot_bundles(ev.bundles, cwd / "bundles.png", title=title,
                                                 **outline)))
            descs.append("bundles")
        if ev.summary.get("bundles"):
            figs.append(str(figures.plot_f1_bars(ev.summary, cwd / "f1.png", title=title)))
            descs.append("f1")
        self._results.update(figures=figs, figure_descs=descs)
        self._results["metadata"] = {
            "EvaluationMode": ev.mode,
            "Precision": ev.summary.get("precision"),
            "ValidBundles": ev.summary.get("valid_bundles"),
            "NumberOfBundles": ev.summary.get("n_bundles"),
            "Timings": ev.summary["timings"],
        }
        return runtime
