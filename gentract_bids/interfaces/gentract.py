"""Thin nipype interface over GenTract sampling (:mod:`gentract_bids.model.inference`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from . import optional
from ..config import PRECISIONS, SCHEDULES


class _GenTractSampleInputSpec(BaseInterfaceInputSpec):
    canonical_fod = File(exists=True, mandatory=True,
                         desc="SH coefficients on the model's grid, z-scored with its statistics")
    reference_file = File(exists=True, mandatory=True,
                          desc="native-space image whose grid the tractogram header records")
    model_path = traits.Str(mandatory=True, desc="checkpoint (either file or their stem)")
    model_sha256 = traits.Either(None, traits.Str, default=None, usedefault=True,
                                 desc="refuse a checkpoint with another checksum")
    n_streamlines = traits.Int(100_000, usedefault=True)
    sampler = traits.Either(None, traits.Enum("ddim", "flow"), default=None, usedefault=True,
                            desc="default: the model's own")
    steps = traits.Either(None, traits.Int, default=None, usedefault=True)
    batch_size = traits.Either(None, traits.Int, default=None, usedefault=True,
                               desc="default: from the request and free memory")
    random_seed = traits.Int(0, usedefault=True)
    device = traits.Str("cpu", usedefault=True)
    out_format = traits.Enum("trx", "tck", "trk", usedefault=True)
    step_size = traits.Either(None, traits.Float, default=1.0, usedefault=True,
                              desc="resample to this step (mm, spline) and clip the ends to the "
                                   "reference mask; None: the model's points as sampled")
    support_threshold = traits.Either(None, traits.Float, default=None, usedefault=True,
                                      desc="fODF support filter threshold; None: off")
    guidance_scale = traits.Float(0.0, usedefault=True,
                                  desc="fODF guidance of each flow step (needs the filter); 0: off")
    smc_times = traits.List(traits.Float, usedefault=True,
                            desc="SMC resampling times of the flow (needs the filter); []: off")
    density_strength = traits.Float(0.0, usedefault=True,
                                    desc="density-aware acceptance (needs the filter); 0: off")
    time_schedule = traits.Enum(*SCHEDULES, usedefault=True,
                                desc="the flow sampler's time grid (model/flow.py time_grid)")
    precision = traits.Enum(*PRECISIONS, usedefault=True,
                            desc="the network's number format while sampling")
    connectivity_prior = traits.Bool(False, usedefault=True,
                                     desc="the checkpoint's endpoint-pair prior, when it carries "
                                          "one (needs the filter)")
    canonical_mask = File(exists=True, desc="brain mask on the model's grid (support filter)")
    xfm_file = File(exists=True, desc="registration (ITK affine, template mm -> subject mm): "
                    "the streamlines are mapped back to the subject through it")


class _GenTractSampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="whole-brain tractogram, RAS+ mm")
    metadata = traits.Dict(desc="model, sampler, steps, seed, device, timings for the sidecar")


def resample_to_step(path, step: float, mask, affine) -> dict:
    """Rewrite the tractogram ``path`` resampled to ``step`` mm with its ends clipped to
    ``mask``; returns the sidecar fields that say so."""
    from ..io.tractogram import clip_to_mask, load_tractogram, resample_streamlines, save_tractogram

    streamlines, _ = load_tractogram(path)
    kept = clip_to_mask(resample_streamlines(streamlines, step), mask, affine)
    if not kept:
        raise ValueError("no GenTract streamline has two points inside the brain mask")
    save_tractogram(path, kept, affine, np.shape(mask)[:3], step_size=step)
    return {"StepSize": float(step), "NumberOfStreamlines": len(kept),
            "NumberOutsideMask": len(streamlines) - len(kept),
            "PointsPerStreamline": "variable (resampled to StepSize, cubic spline)",
            "EndpointsClippedToMask": True}


class GenTractSample(SimpleInterface):
    """Encode the subject's context once and sample whole streamlines from GenTract."""

    input_spec = _GenTractSampleInputSpec
    output_spec = _GenTractSampleOutputSpec

    def _run_interface(self, runtime):
        from ..logs import worker_logging
        from ..model.connectivity import load_connectivity
        from ..model.inference import (fod_support, load_model, model_sampler,
                                       resolve_model_path, sample_tractogram)
        from ..registration.template import subject_map

        worker_logging()  # progress lines reach the console from a MultiProc worker too
        i = self.inputs
        model, meta = load_model(i.model_path, device=i.device,
                                 expected_sha256=optional(i.model_sha256))
        fod = nb.load(i.canonical_fod)
        ref = nb.load(i.reference_file)
        zscored = np.asanyarray(fod.dataobj, np.float32)
        support = None
        if optional(i.support_threshold):
            if not isdefined(i.canonical_mask):
                raise ValueError("the support filter needs canonical_mask")
            mask = nb.load(i.canonical_mask)
            support = fod_support(meta, zscored, np.asanyarray(mask.dataobj) > 0, fod.affine,
                                  threshold=i.support_threshold)
        # guidance steers flow steps only (a DDIM model samples unguided; the sidecar says so)
        flow = model_sampler(meta) == "flow"
        guidance = i.guidance_scale if support is not None and flow else 0.0
        smc = list(i.smc_times) if support is not None and flow else []
        prior = (load_connectivity(resolve_model_path(i.model_path), meta)
                 if support is not None and i.connectivity_prior else None)
        out = Path(f"tractogram.{i.out_format}").absolute()
        to_subject = subject_map(i.model_path, i.xfm_file if isdefined(i.xfm_file) else None)
        self._results["metadata"] = sample_tractogram(
            model, meta, zscored, out, support=support,
            n_streamlines=i.n_streamlines, ref_affine=ref.affine, ref_shape=ref.shape[:3],
            steps=optional(i.steps), sampler=optional(i.sampler),
            batch_size=optional(i.batch_size), seed=i.random_seed, device=i.device,
            to_subject=to_subject, guidance_scale=guidance, smc_times=smc,
            density_strength=i.density_strength if support is not None else 0.0,
            connectivity=prior, precision=i.precision,
            time_schedule=i.time_schedule)
        if optional(i.step_size):
            self._results["metadata"].update(
                resample_to_step(out, i.step_size, np.asanyarray(ref.dataobj), ref.affine))
        self._results["out_file"] = str(out)
        return runtime
