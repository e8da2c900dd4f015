"""Thin nipype interfaces over :mod:`gentract_bids.fodf` (load, call, save)."""

from __future__ import annotations

import json
import time
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


def _save(data, affine, name, dtype=np.float32) -> str:
    img = nb.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    path = str(Path(name).absolute())
    img.to_filename(path)
    return path


class _DWIInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="4-D DWI series")
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)


class _BrainMaskInputSpec(_DWIInputSpec):
    in_mask = File(exists=True, desc="a brain mask given with the dataset (used when present)")


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True)
    metadata = traits.Dict()


class BrainMask(SimpleInterface):
    """The dataset's brain mask if given (checked against the DWI grid), else dipy median_otsu."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from ..fodf.csd import compute_brain_mask, make_gtab
        from ..io.dwi import read_dwi, read_mask

        t0 = time.perf_counter()
        if self.inputs.in_mask:  # only the DWI's grid is needed: read its header, not its data
            ref = nb.load(self.inputs.dwi_file)
            affine = ref.affine
            mask = read_mask(self.inputs.in_mask, affine, ref.shape,
                             Path(self.inputs.dwi_file).name)
            source = f"given: {Path(self.inputs.in_mask).name}"
        else:
            dwi = read_dwi(self.inputs.dwi_file, self.inputs.bval_file, self.inputs.bvec_file)
            affine = dwi.affine
            mask = compute_brain_mask(dwi.data, make_gtab(dwi.bvals, dwi.bvecs))
            source = "dipy median_otsu on the mean b=0 image"
        self._results["out_mask"] = _save(mask, affine, "brain_mask.nii.gz", np.uint8)
        self._results["metadata"] = {
            "Type": "Brain",
            "Source": source,
            "Timings": {"MaskSeconds": round(time.perf_counter() - t0, 3)},
        }
        return runtime


class _FitCSDInputSpec(_DWIInputSpec):
    mask_file = File(exists=True, mandatory=True)
    sh_order = traits.Int(6, usedefault=True)
    method = traits.Enum("auto", "ssst", "msmt", usedefault=True)
    shell = traits.Either(None, traits.Float, default=None, usedefault=True)


class _FitCSDOutputSpec(TraitedSpec):
    out_fod = File(exists=True, desc="SH coefficients of the fODF, native grid")
    metadata = traits.Dict(desc="BEP016 sidecar fields")


class FitCSD(SimpleInterface):
    """Response estimation and constrained spherical deconvolution (dipy)."""

    input_spec = _FitCSDInputSpec
    output_spec = _FitCSDOutputSpec

    def _run_interface(self, runtime):
        from ..fodf.csd import LEGACY, SH_BASIS, fit_csd, make_gtab
        from ..io.dwi import read_dwi

        dwi = read_dwi(self.inputs.dwi_file, self.inputs.bval_file, self.inputs.bvec_file)
        mask = np.asanyarray(nb.load(self.inputs.mask_file).dataobj) > 0
        t0 = time.perf_counter()
        sh, info = fit_csd(
            dwi.data, make_gtab(dwi.bvals, dwi.bvecs), mask,
            sh_order=self.inputs.sh_order, method=self.inputs.method, shell=self.inputs.shell,
        )
        seconds = time.perf_counter() - t0
        self._results["out_fod"] = _save(sh, dwi.affine, "fod.nii.gz")
        self._results["metadata"] = {
            "Model": {
                "Name": "CSD",
                "Description": "Constrained spherical deconvolution (CSD), dipy",
                "URL": "https://docs.dipy.org/stable/examples_built/reconstruction/reconst_csd.html",
                "Parameters": json.loads(json.dumps(info, default=_jsonable)),
            },
            # what out_fod holds (the work-directory file): ExportFOD rewrites this for the
            # derivative, which is in MRtrix3's basis
            "OrientationEncoding": {
                "Type": "sh",
                "SphericalHarmonicBasis": SH_BASIS,
                "LegacyBasis": bool(LEGACY),
                "SphericalHarmonicDegree": int(self.inputs.sh_order),
                "EncodingAxis": 3,
                "Reference": "ijk",
            },
            "NonNegativity": "constrained",
            "Timings": {"CSDSeconds": round(seconds, 3)},
        }
        return runtime


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


class _ExportInputSpec(BaseInterfaceInputSpec):
    fod_file = File(exists=True, mandatory=True, desc="FitCSD's out_fod (internal basis, ijk)")
    metadata = traits.Dict(mandatory=True, desc="FitCSD's metadata")


class _ExportOutputSpec(TraitedSpec):
    out_fod = File(exists=True, desc="the fODF in MRtrix3's basis, world (xyz) frame")
    out_response = File(desc="MRtrix3 response text file (single-shell CSD only)")
    metadata = traits.Dict(desc="BEP016 sidecar of out_fod")
    response_metadata = traits.Dict(desc="sidecar of out_response")


class ExportFOD(SimpleInterface):
    """The fODF derivative: coefficients converted to MRtrix3's SH basis and the scanner (RAS+
    world) frame, so that MRtrix3/QSIRecon read the written file as it is (``sh2peaks``,
    ``tckgen``, ``mrview``); the response function is written beside it in MRtrix3's format."""

    input_spec = _ExportInputSpec
    output_spec = _ExportOutputSpec

    def _run_interface(self, runtime):
        from ..fodf.basis import MRTRIX3, internal_to_mrtrix3, zonal_response_mrtrix3

        img = nb.load(self.inputs.fod_file)
        meta = json.loads(json.dumps(self.inputs.metadata))
        enc = meta["OrientationEncoding"]
        sh = internal_to_mrtrix3(np.asanyarray(img.dataobj), img.affine)
        self._results["out_fod"] = _save(sh, img.affine, "fod_mrtrix3.nii.gz")
        meta["OrientationEncoding"] = {
            "Type": "sh",
            "SphericalHarmonicBasis": MRTRIX3,
            "SphericalHarmonicDegree": int(enc["SphericalHarmonicDegree"]),
            "EncodingAxis": 3,
            "Reference": "xyz",
            "Description": "MRtrix3 SH basis (read as is by MRtrix3 and QSIRecon); directions in "
                           "the scanner (RAS+ world) frame of the NIfTI affine",
        }
        params = meta.get("Model", {}).get("Parameters", {})
        resp = params.get("response", {})
        if params.get("method") == "ssst" and "evals" in resp:
            row = zonal_response_mrtrix3(resp["evals"], resp["S0"], params["shells_used"][0],
                                         int(enc["SphericalHarmonicDegree"]))
            path = Path("response_mrtrix3.txt").absolute()
            path.write_text(" ".join(f"{c:.6g}" for c in row) + "\n")
            self._results["out_response"] = str(path)
            meta["ResponseFunction"] = {
                "Type": "zsh",
                "Coefficients": [row],
                "Shells": [float(params["shells_used"][0])],
                "Description": "single-fibre response, m=0 SH coefficients (l = 0, 2, ...) in "
                               "MRtrix3's basis, one row per shell: the text file "
                               "(suffix 'response') that dwi2fod csd reads",
            }
            self._results["response_metadata"] = {
                **meta["ResponseFunction"], "Model": {"Name": "CSD", "Description":
                "dipy response_from_mask_ssst (tensor fit in high-FA voxels of the brain mask)",
                "Parameters": resp}}
        self._results["metadata"] = meta
        return runtime


class _CanonicalInputSpec(BaseInterfaceInputSpec):
    fod_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True)
    spacing = traits.Float(1.875, usedefault=True)
    shape = traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True)
    stats_file = File(exists=True, desc="JSON with per-coefficient 'mean' and 'std', at its top "
                      "level or under 'zscore' (a GenTract checkpoint's metadata)")
    model_path = traits.Str(desc="checkpoint whose template places the grid (and whose space "
                            "the registration maps to)")
    xfm_file = File(exists=True, desc="registration (ITK affine, template mm -> subject mm); "
                    "without it the data are taken to be in the template's space")


class _CanonicalOutputSpec(TraitedSpec):
    out_fod = File(exists=True, desc="z-scored SH coefficients on the canonical grid")
    out_mask = File(exists=True, desc="brain mask on the canonical grid")
    metadata = traits.Dict()


class CanonicalFOD(SimpleInterface):
    """Resample the fODF coefficients to the canonical grid and z-score them."""

    input_spec = _CanonicalInputSpec
    output_spec = _CanonicalOutputSpec

    def _run_interface(self, runtime):
        from ..fodf.grid import to_canonical, zscore, zscore_stats

        t0 = time.perf_counter()
        fod_img = nb.load(self.inputs.fod_file)
        mask_img = nb.load(self.inputs.mask_file)
        to_subject = _model_to_subject(self.inputs)
        # voxel-frame coefficients -> RAS+ world frame -> canonical grid, exactly as in training
        sh, mask, affine = to_canonical(np.asanyarray(fod_img.dataobj), fod_img.affine,
                                        np.asanyarray(mask_img.dataobj) > 0.5, mask_img.affine,
                                        self.inputs.spacing, tuple(self.inputs.shape),
                                        to_subject=to_subject)
        if self.inputs.stats_file:
            stats = json.loads(Path(self.inputs.stats_file).read_text())
            stats = stats.get("zscore", stats)
            mean, std = np.asarray(stats["mean"]), np.asarray(stats["std"])
            source = f"model: {Path(self.inputs.stats_file).name}"
        else:
            mean, std = zscore_stats(sh, mask)
            source = "subject (inside its brain mask)"
        self._results["out_fod"] = _save(zscore(sh, mean, std, mask), affine, "fod_canonical.nii.gz")
        self._results["out_mask"] = _save(mask, affine, "mask_canonical.nii.gz", np.uint8)
        self._results["metadata"] = {
            "Resampling": "coefficients rotated from the voxel (ijk) frame to RAS+ world axes, "
                          "then trilinear interpolation of each SH coefficient (world space)"
                          + ("" if to_subject is None else
                             " through the registration to the model's template, each fODF "
                             "reoriented by the rotation part of the map (finite strain)"),
            "ModelToSubject": None if to_subject is None else np.round(to_subject, 6).tolist(),
            "VoxelSize": [self.inputs.spacing] * 3,
            "GridShape": list(mask.shape),
            "ZScore": {"Statistics": source, "Mean": mean.tolist(), "Std": std.tolist(),
                       "Background": 0.0},
            "Timings": {"CanonicalSeconds": round(time.perf_counter() - t0, 3)},
        }
        return runtime


def _model_to_subject(inputs):
    from ..registration.template import subject_map

    xfm = inputs.xfm_file if isdefined(inputs.xfm_file) else None
    return subject_map(inputs.model_path, xfm) if isdefined(inputs.model_path) else None
