"""Small helpers shared by the tests."""

import hashlib
import importlib.util
import sys
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


def validate_derivatives(out: Path) -> dict:
    """Run ``bids-validator-deno --datasetTypes derivative`` on ``out``; assert exit 0 and no
    error, and return the validator's JSON report."""
    import json
    import shutil
    import subprocess
    import sys

    beside = Path(sys.executable).parent / "bids-validator-deno"
    exe = str(beside) if beside.is_file() else shutil.which("bids-validator-deno")
    assert exe, "bids-validator-deno is a pinned dependency (requirements.lock)"
    proc = subprocess.run([exe, "--datasetTypes", "derivative", "--format", "json", str(out)],
                          capture_output=True, text=True, check=False, timeout=300)
    report = json.loads(proc.stdout)
    errors = sorted({(i["code"], i.get("location")) for i in report["issues"]["issues"]
                     if i.get("severity") == "error"})
    assert proc.returncode == 0 and not errors, errors[:20] or proc.stderr[-2000:]
    return report


def whole_brain_tractograms(out: Path) -> dict:
    """model -> whole-brain tractogram file names, found by pybids with the shipped config."""
    from bids import BIDSLayout
    from bids.layout import Query

    from gentract_bids.io.bids import pybids_config

    layout = BIDSLayout(str(out), config=["bids", "derivatives", pybids_config()],
                        validate=False)
    found = layout.get(suffix="streamlines", bundle=Query.NONE,
                       extension=[".trx", ".tck", ".trk"])
    models: dict = {}
    for f in found:
        models.setdefault(f.entities["model"], []).append(f.filename)
    return {m: sorted(names) for m, names in models.items()}


def load_script(path: Path):
    """A benchmark script imported as a module named after its file."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod
