"""Thin nipype interface over the registration to the model's template
(:mod:`gentract_bids.registration`)."""

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


class _RegisterInputSpec(BaseInterfaceInputSpec):
    dwi_file = File(exists=True, mandatory=True)
    bval_file = File(exists=True, mandatory=True)
    bvec_file = File(exists=True, mandatory=True)
    mask_file = File(exists=True, mandatory=True, desc="the subject's brain mask (DWI grid)")
    model_path = traits.Str(mandatory=True, desc="checkpoint whose template is the target")
    min_dice = traits.Float(0.75, usedefault=True,
                            desc="brain-mask overlap below which the registration fails")
    label = traits.Str("the subject", usedefault=True, desc="names the series in messages")


class _RegisterOutputSpec(TraitedSpec):
    xfm_file = File(exists=True, desc="ITK affine: template mm -> subject mm")
    fa_file = File(exists=True, desc="the subject's FA (DWI grid), what was registered")
    figure = File(exists=True, desc="subject FA with the template's edges (PNG)")
    metadata = traits.Dict(desc="method, matrix, Dice, timings for the sidecar")
    space = traits.Str(desc="the template's space (the to- entity)")


class RegisterToTemplate(SimpleInterface):
    """FA of the series, registered affinely to the model's template; refuses a failed one."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from ..io.checkpoint import read_checkpoint_metadata
        from ..io.dwi import read_dwi, read_mask
        from ..model.inference import resolve_model_path
        from ..registration.affine import fa_map, register_to_template
        from ..registration.template import load_model_template
        from ..registration.xfm import write_xfm
        from ..reports.figures import plot_registration

        i = self.inputs
        path = resolve_model_path(i.model_path)
        template = load_model_template(path, read_checkpoint_metadata(path))
        if template is None:
            from ..errors import UsageError

            raise UsageError(f"the model {path} carries no template to register to; run with "
                             "--registration none (data already in the model's space)")
        dwi = read_dwi(i.dwi_file, i.bval_file, i.bvec_file)
        mask = read_mask(i.mask_file, dwi.affine, dwi.data.shape[:3], Path(i.dwi_file).name)
        fa = fa_map(dwi.data, dwi.bvals, dwi.bvecs, mask)
        reg = register_to_template(fa, dwi.affine, mask, template, min_dice=i.min_dice,
                                   name=i.label)
        cwd = Path.cwd()
        self._results["xfm_file"] = str(write_xfm(cwd / "xfm.txt", reg.matrix))
        fa_img = nb.Nifti1Image(fa, dwi.affine)
        fa_img.header.set_xyzt_units("mm")
        fa_img.to_filename(cwd / "fa.nii.gz")
        self._results["fa_file"] = str(cwd / "fa.nii.gz")
        self._results["figure"] = str(plot_registration(
            fa, dwi.affine, template, reg.matrix, cwd / "registration.png", mask=mask,
            title=f"{i.label}: registration to the model's {template.space} template "
                  "(cyan: template brain outline, yellow: template FA 0.25)"))
        self._results["space"] = template.space
        self._results["metadata"] = {
            "Description": f"affine map of points from the template ({template.space}) to this "
                           "DWI series' scanner space (ITK convention: what resamples the DWI "
                           "into the template grid)",
            "FromSpace": "dwi", "ToSpace": template.space, "TransformType": "affine",
            "Template": template.description, "Registration": reg.as_dict(),
            "Timings": {"RegistrationSeconds": round(reg.seconds, 2)}}
        return runtime
