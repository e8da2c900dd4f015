"""Thin nipype interfaces over the baseline trackers (:mod:`gentract_bids.baselines`)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from . import optional



def _save(streamlines, ref_file, fmt) -> str:
    from ..io.tractogram import save_tractogram

    ref = nb.load(ref_file)
    path = Path(f"tractogram.{fmt}").absolute()
    save_tractogram(path, streamlines, ref.affine, ref.shape[:3])
    return str(path)


class _MRtrixTrackInputSpec(BaseInterfaceInputSpec):
    algorithm = traits.Enum("ifod2", "sdstream", "tckglobal", mandatory=True)
    dwi_file = File(exists=True, mandatory=True)
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True, desc="brain mask")
    wm_pve_file = File(exists=True, desc="WM fraction map (seeding and SIFT processing mask)")
    wm_fod = File(exists=True, desc="an existing MRtrix WM fODF (.mif) to track on")
    n_streamlines = traits.Int(100_000, usedefault=True)
    sift_factor = traits.Float(10.0, usedefault=True)
    fod_method = traits.Enum("csd", "msmt", usedefault=True)
    niter = traits.Float(2e7, usedefault=True, desc="tckglobal iterations")
    random_seed = traits.Either(None, traits.Int, default=None, usedefault=True)
    nthreads = traits.Int(1, usedefault=True)
    out_format = traits.Enum("trx", "tck", "trk", usedefault=True)


class _TrackOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="whole-brain tractogram, RAS+ mm")
    metadata = traits.Dict(desc="settings, command lines and timings for the sidecar")


class MRtrixTrack(SimpleInterface):
    """MRtrix3 iFOD2 / SD_Stream + SIFT, or tckglobal."""

    input_spec = _MRtrixTrackInputSpec
    output_spec = _TrackOutputSpec

    def _run_interface(self, runtime):
        from ..baselines import mrtrix

        i = self.inputs
        work = Path(runtime.cwd) / "mrtrix"
        common = dict(nthreads=i.nthreads, random_seed=optional(i.random_seed), workdir=work)
        args = (i.dwi_file, i.bval_file, i.bvec_file, i.mask_file, work / f"{i.algorithm}.tck")
        if i.algorithm == "tckglobal":
            sl, meta = mrtrix.run_tckglobal(*args, niter=i.niter, n_streamlines=i.n_streamlines,
                                            **common)
        else:
            sl, meta = mrtrix.run_local(i.algorithm, *args, n_streamlines=i.n_streamlines,
                                        sift_factor=i.sift_factor, wm_pve=optional(i.wm_pve_file),
                                        wm_fod=optional(i.wm_fod), fod_method=i.fod_method,
                                        **common)
        self._results["out_file"] = _save(sl, i.mask_file, i.out_format)
        self._results["metadata"] = meta
        return runtime


class _DipyTrackInputSpec(BaseInterfaceInputSpec):
    fod_file = File(exists=True, mandatory=True,
                    desc="SH coefficients (descoteaux07, non-legacy, voxel-frame)")
    kind = traits.Enum("det", "prob", usedefault=True)
    wm_pve_file = File(exists=True)
    gm_pve_file = File(exists=True)
    csf_pve_file = File(exists=True)
    wm_mask_file = File(exists=True)
    dwi_file = File(exists=True, desc="used to estimate tissue maps when none are given")
    bval_file = File(exists=True)
    bvec_file = File(exists=True)
    mask_file = File(exists=True, desc="brain mask (for the tissue estimate)")
    seeds_per_voxel = traits.Int(1, usedefault=True)
    step_mm = traits.Float(0.5, usedefault=True)
    max_angle = traits.Float(30.0, usedefault=True)
    n_streamlines = traits.Either(None, traits.Int, default=None, usedefault=True)
    max_seeds = traits.Either(None, traits.Int, default=None, usedefault=True,
                              desc="track from a random subset of at most this many seeds")
    random_seed = traits.Int(0, usedefault=True)
    out_format = traits.Enum("trx", "tck", "trk", usedefault=True)


class DipyTrack(SimpleInterface):
    """dipy deterministic / probabilistic local tracking on an fODF SH volume."""

    input_spec = _DipyTrackInputSpec
    output_spec = _TrackOutputSpec

    def _run_interface(self, runtime):
        from ..baselines.dipy_tracking import estimate_tissue_maps, track_dipy

        i = self.inputs
        img = nb.load(i.fod_file)
        load = (lambda f: np.asanyarray(nb.load(f).dataobj, np.float32) if optional(f) else None)
        maps = {k: load(getattr(i, f"{k}_file")) for k in ("wm_pve", "gm_pve", "csf_pve",
                                                           "wm_mask")}
        source = "given"
        if maps["wm_pve"] is None and maps["wm_mask"] is None:
            if not all(optional(f) for f in (i.dwi_file, i.bval_file, i.bvec_file, i.mask_file)):
                raise ValueError("DipyTrack needs tissue maps, a WM mask, or the DWI + mask")
            from ..fodf.csd import make_gtab
            from ..io.dwi import read_dwi

            dwi = read_dwi(i.dwi_file, i.bval_file, i.bvec_file)
            mask = np.asanyarray(nb.load(i.mask_file).dataobj) > 0
            est = estimate_tissue_maps(dwi.data, make_gtab(dwi.bvals, dwi.bvecs), mask)
            maps.update(wm_pve=est["wm"], gm_pve=est["gm"], csf_pve=est["csf"])
            source = "estimated from the DWI (estimate_tissue_maps)"
        sl, meta = track_dipy(np.asanyarray(img.dataobj, np.float32), img.affine, kind=i.kind,
                              seeds_per_voxel=i.seeds_per_voxel, step_mm=i.step_mm,
                              max_angle=i.max_angle, n_streamlines=optional(i.n_streamlines),
                              max_seeds=optional(i.max_seeds), random_seed=i.random_seed, **maps)
        meta["TissueMaps"] = source
        self._results["out_file"] = _save(sl, i.fod_file, i.out_format)
        self._results["metadata"] = meta
        return runtime
