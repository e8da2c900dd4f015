"""Optional preprocessing of raw DWI before CSD: denoising and Gibbs-ringing removal (dipy).

For raw BIDS input only; QSIPrep's outputs are already preprocessed. Motion, eddy-current and
susceptibility-distortion correction are QSIPrep's job and are not done here.

- ``mppca``: Marchenko-Pastur PCA (Veraart 2016; dipy ``localpca.mppca``), patch radius 2, the
  noise level estimated from the data; works on any acquisition with enough volumes.
- ``patch2self``: self-supervised regression across volumes (Fadnavis 2020; dipy
  ``patch2self``, ordinary least squares), needs at least a few b=0 and many DW volumes.
- Gibbs ringing (``unring``): local subvoxel shifts (Kellner 2016; dipy ``gibbs_removal``) on the
  slices of the acquisition plane, after denoising (the order MRtrix3 recommends).

Plain functions on numpy arrays.
"""

from __future__ import annotations

import time

import numpy as np

DENOISE_METHODS = ("none", "mppca", "patch2self")


def denoise(data: np.ndarray, bvals, method: str, mask=None) -> tuple[np.ndarray, dict]:
    """Denoised ``data`` (X, Y, Z, N) float32 and the sidecar fields saying what was done."""
    import dipy

    data = np.asarray(data, np.float32)
    if method == "mppca":
        from dipy.denoise.localpca import mppca

        out, sigma = mppca(data, mask=mask, patch_radius=2, return_sigma=True,
                           out_dtype=np.float32, suppress_warning=True)
        inside = sigma[mask > 0] if mask is not None else sigma.ravel()
        info = {"Method": "MP-PCA", "PatchRadius": 2,
                "NoiseSigmaMedian": round(float(np.median(inside)), 4),
                "Reference": "Veraart et al. 2016, doi:10.1016/j.neuroimage.2016.08.016"}
    elif method == "patch2self":
        from dipy.denoise.patch2self import patch2self

        out = patch2self(data, np.asarray(bvals, float), model="ols", out_dtype=np.float32,
                         shift_intensity=True, clip_negative_vals=False)
        info = {"Method": "Patch2Self", "Model": "ols", "PatchRadius": [0, 0, 0],
                "Reference": "Fadnavis et al. 2020, NeurIPS (arXiv:2011.01355)"}
    else:
        raise ValueError(f"unknown denoising method {method!r} ({', '.join(DENOISE_METHODS)})")
    return np.asarray(out, np.float32), {**info, "Software": f"dipy {dipy.__version__}"}


def unring(data: np.ndarray, slice_axis: int = 2, n_jobs: int = 1) -> tuple[np.ndarray, dict]:
    """``data`` with Gibbs ringing removed slice by slice along ``slice_axis``."""
    import dipy
    from dipy.denoise.gibbs import gibbs_removal

    out = gibbs_removal(np.array(data, np.float32), slice_axis=slice_axis, n_points=3,
                        inplace=True, num_processes=n_jobs)
    return out, {"Method": "local subvoxel shifts", "SliceAxis": int(slice_axis),
                 "Software": f"dipy {dipy.__version__}",
                 "Reference": "Kellner et al. 2016, doi:10.1002/mrm.26054"}


def preprocess_dwi(data, bvals, *, denoise_method: str = "none", remove_gibbs: bool = False,
                   mask=None, slice_axis: int = 2) -> tuple[np.ndarray, dict]:
    """Denoise (``denoise_method``), then remove Gibbs ringing (``remove_gibbs``).

    Returns the data (float32; unchanged values when nothing is asked) and a ``Preprocessing``
    record for the fODF sidecar: the steps in order, with their settings and seconds."""
    steps, out = [], np.asarray(data, np.float32)
    if denoise_method != "none":
        t0 = time.perf_counter()
        out, info = denoise(out, bvals, denoise_method, mask=mask)
        steps.append({"Step": "denoising", **info,
                      "Seconds": round(time.perf_counter() - t0, 3)})
    if remove_gibbs:
        t0 = time.perf_counter()
        out, info = unring(out, slice_axis=slice_axis)
        steps.append({"Step": "Gibbs-ringing removal", **info,
                      "Seconds": round(time.perf_counter() - t0, 3)})
    return out, {"Steps": steps, "MotionEddyCorrection": "not done (QSIPrep's job)"}
