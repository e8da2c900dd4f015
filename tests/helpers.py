"""Small helpers shared by the tests."""

import hashlib
from pathlib import Path

import numpy as np


def angle_deg(u, v):
    """Angle between axes (sign-free), degrees; 90 where either vector is zero."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.abs(np.sum(u * v, -1)) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.degrees(np.arccos(np.clip(np.nan_to_num(c), 0, 1)))


def tree_digest(root: Path) -> str:
    """Hash of every path and file content under ``root`` (to prove the input is untouched)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def run_cli(bids, out, tmp_path, *extra, skip=True):
    """``gentract BIDS OUT participant`` (one process, fODF stage only unless --tracker)."""
    from gentract_bids.cli.run import main

    args = [str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--nprocs", "1"]
    if skip:
        args.append("--skip-bids-validation")
    if "--model" not in extra:  # tube phantoms and FiberCup: the tube model's space
        args += ["--model", "gentract_phantom"]
    if "--tracker" not in extra:  # these tests are about the fODF stage and the CLI's checks
        args += ["--tracker", "none"]
    return main([*args, *extra])


def assert_clean_failure(capsys, code, expected, out, words):
    """Exit ``expected``, nothing in ``out``, one error line holding ``words``, no traceback."""
    err = capsys.readouterr().err
    assert code == expected, err
    assert "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir()), "output written despite the error"
    lines = [line for line in err.splitlines() if line.startswith("gentract: error:")]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], lines[0]
