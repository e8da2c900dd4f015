"""Thin nipype interface over :mod:`gentract_bids.fodf.denoise` (load, call, save)."""

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


class _PreprocessInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True, desc="4-D DWI series")
    bval_file = File(exists=True, mandatory=True)
    denoise = traits.Enum("none", "mppca", "patch2self", usedefault=True)
    unring = traits.Bool(False, usedefault=True, desc="remove Gibbs ringing after denoising")


class _PreprocessOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the preprocessed DWI (float32, same grid)")
    metadata = traits.Dict(desc="Preprocessing record for the fODF sidecar")


class PreprocessDWI(SimpleInterface):
    """Denoising (MP-PCA or Patch2Self) and/or Gibbs-ringing removal of a raw DWI series."""

    input_spec = _PreprocessInputSpec
    output_spec = _PreprocessOutputSpec

    def _run_interface(self, runtime):
        from ..fodf.denoise import preprocess_dwi

        img = nb.load(self.inputs.dwi_file)
        bvals = np.loadtxt(self.inputs.bval_file, ndmin=1)
        # slices of the acquisition plane: the axis BIDS' SliceEncodingDirection would give is
        # rarely known here; the stored third axis is the usual slice axis of an EPI series
        data, meta = preprocess_dwi(np.asanyarray(img.dataobj), bvals,
                                    denoise_method=self.inputs.denoise,
                                    remove_gibbs=self.inputs.unring, slice_axis=2)
        out = nb.Nifti1Image(data, img.affine, img.header)
        out.header.set_data_dtype(np.float32)
        out.header.set_slope_inter(1, 0)
        path = str(Path("dwi_preproc.nii.gz").absolute())
        out.to_filename(path)
        self._results["out_file"] = path
        self._results["metadata"] = {**meta, "Source": Path(self.inputs.dwi_file).name}
        return runtime
