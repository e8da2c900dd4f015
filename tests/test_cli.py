"""The BIDS-App command line: exit codes, bad input, and the fODF derivatives it writes."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from gentract_bids import __version__
from gentract_bids.cli.run import main
from gentract_bids.errors import (
    EX_BIDS_INVALID,
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOTHING_MATCHED,
    EX_UNKNOWN_LEVEL,
    EX_USAGE,
)
from helpers import assert_clean_failure, run_cli, tree_digest


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_usage_error_and_unknown_level(fibercup_bids, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(fibercup_bids)])
    assert exc.value.code == EX_USAGE
    code = main([str(fibercup_bids), str(tmp_path / "out"), "session"])
    assert code == EX_UNKNOWN_LEVEL
    assert "unknown analysis level" in capsys.readouterr().err
    out = tmp_path / "out2"
    code = run_cli(fibercup_bids, out, tmp_path, "--support-threshold", "1.5")
    assert_clean_failure(capsys, code, EX_USAGE, out, ["--support-threshold", "[0, 1)"])


def test_missing_input_dir(tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(tmp_path / "nope", out, tmp_path)
    assert_clean_failure(capsys, code, EX_NOINPUT, out, ["not found"])


def test_non_bids_folder(tmp_path, capsys):
    folder = tmp_path / "notbids"
    folder.mkdir()
    (folder / "scan.nii.gz").write_bytes(b"x")
    out = tmp_path / "out"
    for skip in (False, True):
        code = run_cli(folder, out, tmp_path, skip=skip)
        assert_clean_failure(capsys, code, EX_BIDS_INVALID, out, ["not a BIDS dataset"])


def test_output_inside_input_refused(fibercup_bids, tmp_path, capsys):
    before = tree_digest(fibercup_bids)
    for out, work in (
        (fibercup_bids / "derivatives" / "gentract", tmp_path / "work"),
        (tmp_path / "out", fibercup_bids / "work"),
    ):
        code = main([str(fibercup_bids), str(out), "participant", "--model", "gentract_phantom", "-w", str(work)])
        assert_clean_failure(capsys, code, EX_CANTCREAT, out, ["inside the input dataset"])
    assert tree_digest(fibercup_bids) == before


def test_unknown_participant(fibercup_bids, tmp_path, capsys):
    out = tmp_path / "out"
    code = run_cli(fibercup_bids, out, tmp_path, "--participant-label", "sub-07")
    assert_clean_failure(capsys, code, EX_NOTHING_MATCHED, out, ["07", "not found"])
    # one "sub-" prefix is stripped, not two: sub-sub-01 is the unknown label "sub-01"
    code = run_cli(fibercup_bids, out, tmp_path, "--participant-label", "sub-sub-01")
    assert_clean_failure(capsys, code, EX_NOTHING_MATCHED, out,
                         ["participant label(s) sub-01 not found", "it has: 01, 02"])


def _dwi(bids, sub="01"):
    return bids / f"sub-{sub}" / "dwi" / f"sub-{sub}_dwi"


@pytest.mark.parametrize(
    "breakage, words",
    [
        ("bval_count", ["65 b-vectors", "64 b-values"]),
        ("volume_count", ["65 volumes", "66 b-values"]),
        ("bvec_count", ["b-vectors", "b-values"]),
        ("missing_bvec", ["bvec"]),
        ("corrupt_nifti", ["cannot read"]),
        ("image_3d", ["3-D", "4-D"]),
    ],
)
def test_bad_data(fibercup_bids, tmp_path, capsys, breakage, words):
    stem = _dwi(fibercup_bids, "02")
    if breakage == "bval_count":
        vals = np.loadtxt(f"{stem}.bval")
        np.savetxt(f"{stem}.bval", vals[None, :-1], fmt="%d")
    elif breakage == "volume_count":
        np.savetxt(f"{stem}.bval", np.r_[np.loadtxt(f"{stem}.bval"), 1500][None], fmt="%d")
        vecs = np.loadtxt(f"{stem}.bvec")
        np.savetxt(f"{stem}.bvec", np.c_[vecs, [1, 0, 0]], fmt="%.6f")
    elif breakage == "bvec_count":
        vecs = np.loadtxt(f"{stem}.bvec")
        np.savetxt(f"{stem}.bvec", vecs[:, :-2], fmt="%.6f")
    elif breakage == "missing_bvec":
        Path(f"{stem}.bvec").unlink()
    elif breakage == "corrupt_nifti":
        raw = Path(f"{stem}.nii.gz").read_bytes()
        Path(f"{stem}.nii.gz").write_bytes(raw[: len(raw) // 2])
    elif breakage == "image_3d":
        img = nb.load(f"{stem}.nii.gz")
        nb.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine).to_filename(
            f"{stem}.nii.gz"
        )
    before = tree_digest(fibercup_bids)
    out = tmp_path / "out"
    code = run_cli(fibercup_bids, out, tmp_path)
    # sub-01 is fine, sub-02 is broken: nothing at all may be written
    assert_clean_failure(capsys, code, EX_DATAERR, out, ["sub-02", *words])
    assert tree_digest(fibercup_bids) == before


def test_validator_rejects_broken_dataset(fibercup_bids, tmp_path, capsys):
    Path(f"{_dwi(fibercup_bids, '02')}.bvec").unlink()
    out = tmp_path / "out"
    code = run_cli(fibercup_bids, out, tmp_path, skip=False)
    assert_clean_failure(capsys, code, EX_BIDS_INVALID, out, ["BIDS validation"])


@pytest.mark.slow
def test_participant_fodf_on_fibercup(fibercup_bids, tmp_path, capsys):
    """Real scanner data through the real workflow: BEP016 fODF derivatives for both subjects."""
    before = tree_digest(fibercup_bids)
    out = tmp_path / "out"
    code = run_cli(fibercup_bids, out, tmp_path, "--nprocs", "2", skip=False)
    assert code == 0, capsys.readouterr().err
    assert tree_digest(fibercup_bids) == before

    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "gentract"
    assert desc["GeneratedBy"][0]["Version"] == __version__
    for sub in ("01", "02"):
        d = out / f"sub-{sub}" / "dwi"
        fod = d / f"sub-{sub}_space-dwi_model-csd_param-fod_dwimap.nii.gz"
        img = nb.load(fod)
        assert img.shape == (64, 64, 3, 28)
        meta = json.loads(fod.with_name(fod.name.replace(".nii.gz", ".json")).read_text())
        enc = meta["OrientationEncoding"]
        # MRtrix3's basis, world frame: what MRtrix3/QSIRecon read as is (test_fodf_basis.py)
        assert enc["SphericalHarmonicBasis"] == "mrtrix3" and enc["Reference"] == "xyz"
        assert enc["SphericalHarmonicDegree"] == 6 and enc["Type"] == "sh"
        assert meta["Model"]["Name"] == "CSD"
        assert meta["Model"]["Description"].startswith("Constrained spherical deconvolution")
        assert meta["Version"] == __version__ and meta["RandomSeed"] == 0
        assert meta["Device"] == "cpu" and meta["Timings"]["CSDSeconds"] > 0
        mask = nb.load(d / f"sub-{sub}_space-dwi_desc-brain_mask.nii.gz")
        assert mask.get_data_dtype() == np.uint8 and mask.get_fdata().sum() > 100
        canon = nb.load(d / f"sub-{sub}_space-gentract_desc-zscored_model-csd_param-fod_dwimap.nii.gz")
        assert canon.shape == (80, 96, 80, 28)
        assert np.allclose(np.diag(canon.affine)[:3], 1.875)
        cmask = nb.load(d / f"sub-{sub}_space-gentract_desc-brain_mask.nii.gz").get_fdata() > 0
        z = canon.get_fdata()[cmask]
        assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05  # z-scored inside the mask
    assert not list(out.rglob("*.partial"))


def test_failed_series_leaves_no_output(fibercup_bids, tmp_path, capsys, monkeypatch):
    """A crash inside the workflow (after preflight) writes nothing and exits 1."""
    import gentract_bids.fodf.csd as csd

    def broken(*args, **kwargs):
        raise RuntimeError("injected CSD failure")

    monkeypatch.setattr(csd, "fit_csd", broken)
    out = tmp_path / "out"
    code = run_cli(fibercup_bids, out, tmp_path, "--participant-label", "01")
    err = capsys.readouterr().err
    assert code == 1 and "processing failed" in err
    assert not out.exists()


def _with_sessions(root: Path) -> Path:
    """Move the fixture's sub-01 series into two sessions (A, B)."""
    src = root / "sub-01" / "dwi"
    for ses in ("A", "B"):
        dst = root / "sub-01" / f"ses-{ses}" / "dwi"
        dst.mkdir(parents=True)
        for f in src.iterdir():
            shutil.copyfile(f, dst / f.name.replace("sub-01_", f"sub-01_ses-{ses}_"))
    shutil.rmtree(src)
    shutil.rmtree(root / "sub-02")
    (root / "participants.tsv").write_text("participant_id\nsub-01\n")
    return root


def test_session_label_selects_one_session(fibercup_bids, tmp_path, capsys):
    bids = _with_sessions(fibercup_bids)
    out = tmp_path / "out"
    code = run_cli(bids, out, tmp_path, "--participant-label", "01", "--session-label", "ses-Z")
    assert_clean_failure(capsys, code, EX_NOTHING_MATCHED, out, ["Z", "not found"])
    code = run_cli(bids, out, tmp_path, "--participant-label", "01", "--session-label", "B",
                   skip=False)
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in out.rglob("*.nii.gz"))
    assert written and all(n.startswith("sub-01_ses-B_") for n in written), written
    assert (out / "sub-01" / "ses-B" / "dwi").is_dir() and not (out / "sub-01" / "ses-A").exists()


def test_container_field_needs_our_image(monkeypatch):
    """The sidecars' Container field comes from our image's GENTRACT_CONTAINER (or Apptainer's
    variables), not from /.dockerenv, which this very sandbox has without any gentract image."""
    from gentract_bids.config import container

    for var in ("GENTRACT_CONTAINER", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    assert container() is None
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/gentract.sif")
    assert container() == "singularity"
    monkeypatch.setenv("GENTRACT_CONTAINER", "docker")
    assert container() == "docker"


@pytest.mark.parametrize("option, value, words", [
    ("--random-seed", "-1", ["--random-seed must lie in 0..4294967295, got -1"]),
    ("--sh-order", "20", ["--sh-order must be an even number from 2 to 12, got 20"]),
    ("--sh-order", "7", ["--sh-order", "got 7"]),
    ("--sh-order", "0", ["--sh-order", "got 0"]),
])
def test_bad_option_values(fibercup_bids, tmp_path, capsys, option, value, words):
    out = tmp_path / "out"
    code = run_cli(fibercup_bids, out, tmp_path, option, value)
    assert_clean_failure(capsys, code, EX_USAGE, out, words)


def test_unwritable_output_refused_up_front(fibercup_bids, tmp_path, capsys, monkeypatch):
    """Exit 73 before any work: an existing output directory without write permission (as root,
    which ignores permissions, the permission check is simulated), or one under a file."""
    import os

    from gentract_bids.cli import run as run_mod

    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(run_mod.os, "access",
                            lambda p, mode, **kw: Path(p) != out and real(p, mode, **kw))
    else:
        out.chmod(0o555)
    monkeypatch.setattr(run_mod, "preflight", lambda *a: pytest.fail("checked too late"))
    code = run_cli(fibercup_bids, out, tmp_path)
    assert_clean_failure(capsys, code, EX_CANTCREAT, out, [f"the output directory {out} is "
                                                           "not writable"])
    monkeypatch.undo()
    out.chmod(0o755)
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main([str(fibercup_bids), str(blocker / "out"), "participant", "--model", "gentract_phantom", "-w",
                 str(tmp_path / "work")])
    assert_clean_failure(capsys, code, EX_CANTCREAT, blocker / "out", [f"{blocker} is a file"])
