"""Bad inputs refused up front: exit 65 (BIDS-Apps "bad data"), one line, no traceback, nothing
written, the input untouched (issue 19)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gentract_bids.errors import EX_DATAERR, EX_USAGE
from gentract_bids.fodf import csd
from gentract_bids.phantom.cohort import make_cohort
from helpers import assert_clean_failure, run_cli, tree_digest

DWI = "sub-01/dwi/sub-01_dwi"
MASK = "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_desc-brain_mask.nii.gz"
TRUTH = "derivatives/phantom-truth/sub-01/dwi/sub-01_space-dwi_model-truth_streamlines.trx"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """One small phantom subject (4 mm, 3 shells of 32 directions, a brain mask), its DWI and
    mask cut to the central 16 x 16 x 16 voxels: every case rewrites and reads the DWI, so a
    small one keeps the battery fast (the checks do not depend on the field of view)."""
    bids = make_cohort(tmp_path_factory.mktemp("cohort") / "bids", n_subjects=1,
                       voxel_size=4.0, n_truth_streamlines=20)
    for path in (bids / f"{DWI}.nii.gz", bids / MASK):
        img = nb.load(path)
        img.slicer[12:28, 16:32, 12:28].to_filename(path)
    return bids


def _rewrite(path, data=None, affine=None):
    """Rewrite a NIfTI with new data and/or a new affine (sform only when it is singular)."""
    img = nb.load(path)
    data = np.asanyarray(img.dataobj) if data is None else data
    new = nb.Nifti1Image(data, None, img.header)
    aff = img.affine if affine is None else np.asarray(affine, float)
    new.header.set_sform(aff, code=1)
    new.header.set_qform(aff if np.linalg.matrix_rank(aff[:3, :3]) == 3 else None,
                         code=1 if np.linalg.matrix_rank(aff[:3, :3]) == 3 else 0)
    nb.save(new, path)


def _break(bids, breakage):
    dwi = bids / f"{DWI}.nii.gz"
    affine = nb.load(dwi).affine
    if breakage == "affine_zero":
        _rewrite(dwi, affine=np.zeros((4, 4)))
    elif breakage == "affine_singular":
        bad = affine.copy()
        bad[:3, 1] = bad[:3, 0]  # two voxel axes point the same way
        _rewrite(dwi, affine=bad)
    elif breakage == "voxel_50mm":
        bad = affine.copy()
        bad[:3, :3] *= 12.5
        _rewrite(dwi, affine=bad)
    elif breakage in ("two_volumes", "twelve_directions", "zero_signal"):
        img, bvals, bvecs = nb.load(dwi), np.loadtxt(f"{bids / DWI}.bval"), \
            np.loadtxt(f"{bids / DWI}.bvec")
        data = np.asanyarray(img.dataobj)
        keep = {"two_volumes": [0, int(np.argmax(bvals > 0))],  # one b=0, one direction
                "twelve_directions": np.r_[0, np.flatnonzero(bvals == 3000)[:12]],
                "zero_signal": slice(None)}[breakage]
        data = np.zeros_like(data) if breakage == "zero_signal" else data[..., keep]
        _rewrite(dwi, data=data)
        np.savetxt(f"{bids / DWI}.bval", bvals[keep][None], fmt="%d")
        np.savetxt(f"{bids / DWI}.bvec", bvecs[:, keep], fmt="%.6f")
    elif breakage in TEXT_BREAKS:
        suffix, text = TEXT_BREAKS[breakage]
        Path(f"{bids / DWI}.{suffix}").write_text(text(Path(f"{bids / DWI}.{suffix}")))
    elif breakage == "zero_byte_nifti":
        dwi.write_bytes(b"")
    elif breakage == "truncated_nifti":
        dwi.write_bytes(dwi.read_bytes()[:400])
    elif breakage == "three_d":
        _rewrite(dwi, data=np.asanyarray(nb.load(dwi).dataobj)[..., 0])
    elif breakage == "nan_voxels":
        data = np.asanyarray(nb.load(dwi).dataobj).astype(np.float32)
        data[...] = np.nan
        _rewrite(dwi, data=data)
    elif breakage == "mask_shape":
        img = nb.load(bids / MASK)
        nb.save(nb.Nifti1Image(np.ones((3, 3, 3), np.uint8), img.affine), bids / MASK)
    elif breakage == "mask_affine":
        bad = affine.copy()
        bad[:3, 3] += 8.0  # same shape, shifted by two voxels
        _rewrite(bids / MASK, affine=bad)


def _lines(path, fn):
    return "\n".join(fn(line) for line in path.read_text().splitlines()) + "\n"


TEXT_BREAKS = {  # breakage: (file suffix, new text from the file)
    "bval_text": ("bval", lambda p: p.read_text().replace("1000", "abc", 1)),
    "bval_short": ("bval", lambda p: " ".join(p.read_text().split()[:-1]) + "\n"),
    "bval_empty": ("bval", lambda p: ""),
    "bval_negative": ("bval", lambda p: p.read_text().replace("1000", "-1000", 1)),
    "bvec_nan": ("bvec", lambda p: p.read_text().replace(p.read_text().split()[3], "nan", 1)),
    "bvec_two_rows": ("bvec", lambda p: "\n".join(p.read_text().splitlines()[:2]) + "\n"),
    "bvec_short": ("bvec", lambda p: _lines(p, lambda ln: " ".join(ln.split()[:-1]))),
    "bvec_scaled": ("bvec", lambda p: _lines(p, lambda ln: " ".join(
        str(3 * float(v)) for v in ln.split()))),
    "bvec_text": ("bvec", lambda p: p.read_text().replace(p.read_text().split()[3], "x", 1)),
}


@pytest.mark.parametrize("breakage", [*TEXT_BREAKS, "zero_byte_nifti", "truncated_nifti",
                                      "three_d", "nan_voxels", "mask_shape"])
def test_more_bad_inputs_refused(cohort, tmp_path, capsys, breakage):
    """Each refused with 65 and one line naming the broken file of the series."""
    bids = shutil.copytree(cohort, tmp_path / "bids")
    _break(bids, breakage)
    before = tree_digest(bids)
    out = tmp_path / "out"
    code = run_cli(bids, out, tmp_path)
    name = {"bval": "sub-01_dwi.bval", "bvec": "sub-01_dwi.bvec"}.get(
        TEXT_BREAKS.get(breakage, ("",))[0],
        "mask" if breakage.startswith("mask") else "sub-01_dwi.nii.gz")
    assert_clean_failure(capsys, code, EX_DATAERR, out, ["sub-01", name])
    assert tree_digest(bids) == before


@pytest.mark.parametrize("breakage, words", [
    ("affine_zero", ["sub-01_dwi.nii.gz", "affine", "singular"]),
    ("affine_singular", ["sub-01_dwi.nii.gz", "affine", "singular"]),
    ("voxel_50mm", ["sub-01_dwi.nii.gz", "voxel size 50 x 50 x 50 mm", "0.1-20 mm"]),
    ("two_volumes", ["sub-01_dwi.bval", "b=1000 shell has 1 independent",
                     "SH order 6 needs at least 15"]),
    ("twelve_directions", ["b=3000 shell has 12 independent", "needs at least 15"]),
    ("zero_signal", ["sub-01_dwi.nii.gz", "b=0 signal is zero everywhere",
                     "inside sub-01_space-dwi_desc-brain_mask.nii.gz"]),
    ("mask_affine", ["sub-01_space-dwi_desc-brain_mask.nii.gz", "another affine", "DWI grid"]),
])
def test_bad_input_refused(cohort, tmp_path, capsys, breakage, words):
    bids = shutil.copytree(cohort, tmp_path / "bids")
    _break(bids, breakage)
    before = tree_digest(bids)
    out = tmp_path / "out"
    code = run_cli(bids, out, tmp_path)
    assert_clean_failure(capsys, code, EX_DATAERR, out, ["sub-01:", *words])
    assert not out.exists()
    assert tree_digest(bids) == before


def test_csd_direction_rule():
    """15 independent directions from order 4 on (6 at order 2); repeats and antipodes count once;
    32 directions at order 8 (super-resolved CSD) pass."""
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(32, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    assert [csd.csd_min_directions(o) for o in (2, 4, 6, 8)] == [6, 15, 15, 15]
    assert csd.independent_directions(dirs, 8) == 15
    assert csd.independent_directions(np.r_[dirs[:6], -dirs[:6], dirs[:6]], 6) == 6
    assert csd.independent_directions(dirs[:0], 6) == 0


def test_few_directions_pass_at_low_order(cohort, tmp_path):
    """Twelve directions are refused at order 6 but enough for order 2 (checked alone)."""
    from gentract_bids.io.dwi import check_csd_input, read_dwi

    bids = shutil.copytree(cohort, tmp_path / "bids")
    _break(bids, "twelve_directions")
    dwi = read_dwi(f"{bids / DWI}.nii.gz", f"{bids / DWI}.bval", f"{bids / DWI}.bvec")
    check_csd_input(dwi, None, sh_order=2, method="auto", shell=None, names=("d", "b", None))


def test_csd_shell_not_in_data(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(cohort, out, tmp_path, "--csd-shell", "12345")
    assert_clean_failure(capsys, code, EX_USAGE, out,
                         ["--csd-shell 12345", "sub-01_dwi.bval", "1000, 2000, 3000"])


def test_input_tractogram_opened_read_only(cohort, tmp_path, monkeypatch):
    """A read-only input TRX (a :ro mount, DataLad) is read: it is never opened for writing
    (observed through ``open``, as root ignores file modes) and a mode 0444 file loads."""
    import builtins
    from pathlib import Path

    from gentract_bids.io.tractogram import load_tractogram

    truth = shutil.copytree(cohort, tmp_path / "bids") / TRUTH
    truth.chmod(0o444)
    modes, real_open = [], builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == truth:
            modes.append(mode)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    streamlines, groups = load_tractogram(truth)
    assert streamlines and groups
    assert modes and all(set(m) <= set("rb") for m in modes), modes


FUZZ = settings(max_examples=10, deadline=None, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _only_bad_data(bids):
    """Reading and checking the series either passes or raises BadDataError (one message)."""
    from gentract_bids.errors import BadDataError
    from gentract_bids.io.dwi import check_csd_input, read_dwi

    try:
        dwi = read_dwi(f"{bids / DWI}.nii.gz", f"{bids / DWI}.bval", f"{bids / DWI}.bvec")
        check_csd_input(dwi, None, sh_order=6, method="auto", shell=None,
                        names=("d.nii.gz", "d.bval", None))
    except BadDataError as err:
        assert "\n" not in str(err) and str(err)


@pytest.fixture(scope="module")
def fuzz_bids(cohort, tmp_path_factory):
    return shutil.copytree(cohort, tmp_path_factory.mktemp("fuzz") / "bids")


@FUZZ
@given(text=st.text(alphabet="0123456789 .-e+nainf\t\nx,", max_size=200))
def test_fuzz_bval_text(fuzz_bids, text):
    Path(f"{fuzz_bids / DWI}.bval").write_text(text)
    try:
        _only_bad_data(fuzz_bids)
    finally:
        shutil.copy(f"{_ORIG[0] / DWI}.bval", f"{fuzz_bids / DWI}.bval")


@FUZZ
@given(values=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32),
                       min_size=0, max_size=12), rows=st.integers(1, 4))
def test_fuzz_bvec_numbers(fuzz_bids, values, rows):
    text = "\n".join(" ".join(map(str, values)) for _ in range(rows))
    Path(f"{fuzz_bids / DWI}.bvec").write_text(text)
    try:
        _only_bad_data(fuzz_bids)
    finally:
        shutil.copy(f"{_ORIG[0] / DWI}.bvec", f"{fuzz_bids / DWI}.bvec")


@FUZZ
@given(affine=arrays(np.float64, (3, 4), elements=st.floats(-100, 100, width=32)),
       slope=st.sampled_from([1.0, 0.0, -1.0, 1e-30, 1e30, float("nan")]),
       dtype=st.sampled_from([np.int16, np.uint8, np.float32, np.float64, np.int8]))
def test_fuzz_nifti_header(fuzz_bids, affine, slope, dtype):
    """Affine (pixdim with it), dtype and scl_slope of the DWI header, any combination."""
    path = fuzz_bids / f"{DWI}.nii.gz"
    orig = nb.load(_ORIG[0] / f"{DWI}.nii.gz")
    data = np.asanyarray(orig.dataobj)
    img = nb.Nifti1Image(np.clip(data, 0, 100).astype(dtype), None)
    img.header.set_sform(np.r_[affine, [[0, 0, 0, 1]]], code=1)
    img.header.set_qform(None, code=0)
    img.header["scl_slope"], img.header["scl_inter"] = slope, 0.0  # raw, as a writer may
    img.to_filename(path)
    try:
        _only_bad_data(fuzz_bids)
    finally:
        shutil.copy(_ORIG[0] / f"{DWI}.nii.gz", path)


_ORIG: list = []


@pytest.fixture(scope="module", autouse=True)
def _orig(cohort):
    _ORIG[:] = [cohort]
