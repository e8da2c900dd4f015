"""GenTract outputs: resampled to a fixed step (spline), ends clipped to the brain mask, the step
in the TCK/TRX headers (read back by MRtrix3's tckinfo), byte-identical files for the same input."""

import json
import shutil
import subprocess
import zipfile

import nibabel as nb
import numpy as np
import pytest

from gentract_bids.interfaces.gentract import resample_to_step
from gentract_bids.io.tractogram import (
    MIN_SEGMENT_MM,
    clip_to_mask,
    load_tractogram,
    resample_streamlines,
    save_tractogram,
)

AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
SHAPE = (30, 20, 20)


def _coarse(n=40, seed=0):
    """16-point streamlines with ~5 mm steps, as GenTract samples them, partly leaving the mask."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, 16)[:, None]
    out = []
    for _ in range(n):
        y0, z0, a = rng.uniform(15, 45), rng.uniform(15, 45), rng.uniform(2, 8)
        out.append(np.c_[t * 84 - 2, y0 + a * np.sin(np.pi * t), z0 + 0 * t].astype(np.float32))
    return out


def _mask():
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:26, 2:18, 2:18] = 1
    return mask


def _steps(streamlines):
    return np.concatenate([np.linalg.norm(np.diff(s, axis=0), axis=1) for s in streamlines])


def _outside(streamlines, mask):
    ends = np.concatenate([s[[0, -1]] for s in streamlines])
    ijk = np.rint(ends @ np.linalg.inv(AFFINE)[:3, :3].T).astype(int)
    ok = np.all((ijk >= 0) & (ijk < SHAPE), axis=1)
    return int((~ok).sum() + (mask[tuple(ijk[ok].T)] == 0).sum())


@pytest.mark.parametrize("step", [1.0, 0.5])
def test_resampling_gives_the_step_on_a_smooth_curve(step):
    coarse = _coarse()
    dense = resample_streamlines(coarse, step)
    steps = _steps(dense)
    assert abs(np.median(steps) - step) <= 0.1 * step
    assert steps.max() <= step + MIN_SEGMENT_MM
    for c, d in zip(coarse, dense):  # same ends, and the curve passes through the input points
        assert np.allclose(d[0], c[0], atol=1e-4) and np.allclose(d[-1], c[-1], atol=1e-4)
        gap = np.linalg.norm(c[:, None] - d[None], axis=2).min(1)
        assert gap.max() < step


@pytest.mark.parametrize("remainder", [0.0, 1e-9, 0.00017, 0.0015, 0.0025, 0.4])
def test_resampling_leaves_no_overlapping_points(remainder):
    """A length just over a whole number of steps gave a last segment of 0.0002 mm (4 of 3000
    GenTract streamlines of a human phantom), which trx_validate drops as overlapping points:
    no segment is shorter than MIN_SEGMENT_MM, and the end point stays where it was."""
    length = 37.0 + remainder
    line = np.c_[np.linspace(0, length, 16), np.zeros(16), np.zeros(16)]
    (out,) = resample_streamlines([line], 1.0)
    steps = np.linalg.norm(np.diff(out, axis=0), axis=1)
    assert steps.min() >= MIN_SEGMENT_MM * 0.999 and steps.max() <= 1.0 + MIN_SEGMENT_MM
    assert np.allclose(out[0], line[0], atol=1e-5) and np.allclose(out[-1], line[-1], atol=1e-4)


def test_clipping_keeps_every_endpoint_in_the_mask():
    mask = _mask()
    dense = resample_streamlines(_coarse(), 1.0)
    assert _outside(dense, mask) > 0  # the phantom streamlines do leave it
    clipped = clip_to_mask(dense, mask, AFFINE)
    assert len(clipped) == len(dense) and _outside(clipped, mask) == 0


@pytest.mark.skipif(shutil.which("tckinfo") is None, reason="MRtrix3 not installed")
@pytest.mark.parametrize("ext", ["tck", "trx"])
def test_rewritten_file_has_the_step_and_is_deterministic(tmp_path, ext):
    mask = _mask()
    paths = []
    for k in range(2):
        path = tmp_path / f"t{k}.{ext}"
        save_tractogram(path, _coarse(), AFFINE, SHAPE)
        meta = resample_to_step(path, 1.0, mask, AFFINE)
        paths.append(path)
    assert meta["StepSize"] == 1.0 and meta["NumberOutsideMask"] == 0
    streamlines, _ = load_tractogram(paths[0])
    assert abs(np.median(_steps(streamlines)) - 1.0) <= 0.1 and _outside(streamlines, mask) == 0
    if ext == "tck":
        assert paths[0].read_bytes() == paths[1].read_bytes()
        info = subprocess.run(["tckinfo", str(paths[0])], capture_output=True, text=True,
                              check=True).stdout
        step_line = [ln for ln in info.splitlines() if "step_size" in ln]
        assert step_line and float(step_line[0].split(":")[1]) == 1.0
    else:
        header = json.loads(zipfile.ZipFile(paths[0]).read("header.json"))
        assert header["STEP_SIZE"] == 1.0
        with zipfile.ZipFile(paths[0]) as a, zipfile.ZipFile(paths[1]) as b:
            assert {n: a.read(n) for n in a.namelist()} == {n: b.read(n) for n in b.namelist()}


@pytest.mark.skipif(shutil.which("tckmap") is None, reason="MRtrix3 not installed")
def test_resampling_raises_tckmap_coverage(tmp_path):
    mask = _mask()
    nb.Nifti1Image(mask, AFFINE).to_filename(tmp_path / "mask.nii.gz")
    covered = []
    for name, sl in (("raw", _coarse()), ("dense", resample_streamlines(_coarse(), 1.0))):
        save_tractogram(tmp_path / f"{name}.tck", sl, AFFINE, SHAPE)
        subprocess.run(["tckmap", "-quiet", "-force", "-template", str(tmp_path / "mask.nii.gz"),
                        str(tmp_path / f"{name}.tck"), str(tmp_path / f"{name}.nii")], check=True)
        covered.append(int((np.asanyarray(nb.load(tmp_path / f"{name}.nii").dataobj) > 0).sum()))
    assert covered[1] > covered[0]
