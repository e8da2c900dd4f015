"""``--denoise {none,mppca,patch2self}`` and ``--unring``: dipy's denoising and Gibbs-ringing
removal change the DWI that CSD reads, lower its noise, and are recorded in the fODF sidecar."""

import json

import nibabel as nb
import numpy as np
import pytest

from gentract_bids.cli.parser import build_parser, parse_args
from gentract_bids.fodf.denoise import preprocess_dwi, unring
from gentract_bids.phantom.signal import gradient_scheme, tensor_attenuation
from gentract_bids.workflows.fodf import init_fodf_wf

SHAPE = (12, 12, 6)
S0, SNR = 1000.0, 15.0


def _phantom(seed=0, shape=SHAPE):
    """A tiny two-fibre-region phantom (tensor signal, b = 0/1000/2000, 16 directions per shell):
    clean and Rician-noisy (SNR 15)."""
    bvals, bvecs = gradient_scheme((0, 1000, 2000), n_dirs=16, n_b0=3)
    dirs = np.zeros(shape + (3,))
    dirs[: shape[0] // 2, ..., 0] = 1
    dirs[shape[0] // 2 :, ..., 1] = 1
    clean = (S0 * tensor_attenuation(bvals, bvecs, dirs.reshape(-1, 3))).reshape(shape + (-1,))
    rng = np.random.default_rng(seed)
    sigma = S0 / SNR
    noisy = np.hypot(clean + sigma * rng.standard_normal(clean.shape),
                     sigma * rng.standard_normal(clean.shape))
    return clean.astype(np.float32), noisy.astype(np.float32), bvals, bvecs


@pytest.mark.parametrize("method, at_most", [("mppca", 0.3), ("patch2self", 0.6)])  # 0.19, 0.42
def test_denoising_lowers_the_noise(method, at_most):
    clean, noisy, bvals, _ = _phantom(shape=(24, 24, 6))  # Patch2Self regresses over voxels
    out, meta = preprocess_dwi(noisy, bvals, denoise_method=method)
    assert out.shape == noisy.shape
    assert np.std(out - clean) < at_most * np.std(noisy - clean)
    assert [s["Step"] for s in meta["Steps"]] == ["denoising"]
    assert meta["Steps"][0]["Software"].startswith("dipy ")


def test_nothing_asked_leaves_the_data():
    _, noisy, bvals, _ = _phantom()
    out, meta = preprocess_dwi(noisy, bvals)
    assert np.array_equal(out, noisy) and meta["Steps"] == []


def test_unring_reduces_truncation_ringing():
    """A sharp-edged square imaged with a truncated k-space rings; Gibbs removal brings the image
    closer to the square (less error inside it, less total variation)."""
    edge = np.zeros((64, 64, 2), np.float32)
    edge[20:44, 20:44] = 100.0
    k = np.fft.fftshift(np.fft.fft2(edge, axes=(0, 1)), axes=(0, 1))
    k[:16], k[-16:], k[:, :16], k[:, -16:] = 0, 0, 0, 0
    ringing = np.real(np.fft.ifft2(np.fft.ifftshift(k, axes=(0, 1)), axes=(0, 1)))
    fixed, meta = unring(ringing[..., None].astype(np.float32), slice_axis=2)
    fixed = fixed[..., 0]

    def tv(a):
        return np.abs(np.diff(a, axis=0)).sum() + np.abs(np.diff(a, axis=1)).sum()

    inside = (slice(23, 41), slice(23, 41))
    assert tv(fixed) < 0.95 * tv(ringing)  # measured: -12 %
    assert np.abs(fixed - edge)[inside].mean() < 0.95 * np.abs(ringing - edge)[inside].mean()
    assert meta["SliceAxis"] == 2


def test_fodf_stage_reads_the_preprocessed_dwi_and_records_it(tmp_path):
    clean, noisy, bvals, bvecs = _phantom(seed=1)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    files = {"dwi_file": tmp_path / "dwi.nii.gz", "bval_file": tmp_path / "dwi.bval",
             "bvec_file": tmp_path / "dwi.bvec", "in_mask": tmp_path / "mask.nii.gz"}
    nb.Nifti1Image(noisy, affine).to_filename(files["dwi_file"])
    nb.Nifti1Image(np.ones(SHAPE, np.uint8), affine).to_filename(files["in_mask"])
    np.savetxt(files["bval_file"], bvals[None], fmt="%d")
    np.savetxt(files["bvec_file"], bvecs.T * np.array([[-1], [1], [1]]), fmt="%.6f")
    wf = init_fodf_wf(sh_order=4, grid_spacing=3.0, grid_shape=SHAPE, use_given_mask=True,
                      registration="none", denoise="mppca", unring=True)
    wf.base_dir = str(tmp_path / "work")
    for field, path in files.items():
        setattr(wf.inputs.inputnode, field, str(path))
    nodes = {n.name: n for n in wf.run().nodes()}
    fed = nodes["csd"].inputs.dwi_file
    assert fed == nodes["preprocess_dwi"].result.outputs.out_file != str(files["dwi_file"])
    denoised = nb.load(fed).get_fdata(dtype=np.float32)
    assert np.std(denoised - clean) < 0.6 * np.std(noisy - clean)
    meta = nodes["record_preprocessing"].result.outputs.metadata  # -> outputnode.fod_metadata
    steps = meta["Preprocessing"]["Steps"]
    assert [s["Method"] for s in steps] == ["MP-PCA", "local subvoxel shifts"]
    assert json.dumps(meta)  # the sidecar stays JSON
    assert meta["OrientationEncoding"]["SphericalHarmonicBasis"] == "mrtrix3"
    # the baseline trackers read outputnode.dwi_file: the preprocessed series as well
    edge = wf._graph.get_edge_data(wf.get_node("dwi_source"), wf.get_node("outputnode"))
    assert ("dwi_file", "dwi_file") in edge["connect"]
    edge = wf._graph.get_edge_data(wf.get_node("record_preprocessing"), wf.get_node("outputnode"))
    assert ("metadata", "fod_metadata") in edge["connect"]


def test_flags(tmp_path):
    base = [str(tmp_path), str(tmp_path / "out"), "participant"]
    opts = build_parser().parse_args(base)
    assert opts.denoise == "none" and opts.unring is False
    wcfg = parse_args([*base, "--denoise", "patch2self", "--unring"]).workflow
    assert wcfg.denoise == "patch2self" and wcfg.unring is True
    with pytest.raises(SystemExit) as err:
        parse_args([*base, "--denoise", "nlmeans"])
    assert err.value.code == 64
