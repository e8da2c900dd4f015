"""A real single-node Slurm (scripts/slurm-local.sh): the participant level of a 2-subject tube
phantom through nipype's SLURM plugin writes what a MultiProc run writes (same seed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GENTRACT = [sys.executable, "-m", "gentract_bids.cli.run"]
ARGS = ["participant", "--model", "gentract_phantom", "--tracker", "gentract",
        "--n-streamlines", "200", "--random-seed", "0", "--nprocs", "2",
        "--mem", "2G"]  # the sampler's batch size follows the memory budget: the same in both
# what may differ between two runs of the same seed: clocks, hosts, the plugin
VOLATILE = ("time", "seconds", "date", "duration", "host", "peak", "persecond", "per_s")


def _slurm_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "idle" in out.split() or "mix" in out.split()


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get("GENTRACT_TEST_SLURM") != "1":  # about 15 min: beyond CI's time budget
        pytest.skip("the Slurm test runs with GENTRACT_TEST_SLURM=1 (about 15 min on 2 cores)")
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (scripts/slurm-local.sh start installs and starts it)")
    if not _slurm_up():
        run = subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local.sh"), "start"],
                             capture_output=True, text=True, timeout=180)
        if run.returncode != 0 or not _slurm_up():
            pytest.skip(f"Slurm did not start: {(run.stderr or run.stdout).strip()[-300:]}")


def _jobcomp_log() -> Path:
    """slurm.conf's JobCompLoc: finished jobs, one line each (there is no accounting database)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return Path(next(ln.split("=", 1)[1].strip() for ln in out.splitlines()
                     if ln.startswith("JobCompLoc")))


def _jobs() -> list[dict]:
    log = _jobcomp_log()
    lines = log.read_text().splitlines() if log.exists() else []
    return [dict(kv.split("=", 1) for kv in ln.split() if "=" in kv) for ln in lines if ln]


def _stable(obj):
    """A sidecar without what changes from run to run (timings, hosts)."""
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items()
                if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


def _compare(a: Path, b: Path) -> list[str]:
    import trx.trx_file_memmap as tmm

    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()
                   and p.parts[len(a.parts)] not in ("logs", ".gentract")
                   and p.suffix not in (".html", ".svg", ".png"))
    assert files, f"no outputs in {a}"
    bad = []
    for rel in files:
        x, y = a / rel, b / rel
        if not y.exists():
            bad.append(f"missing: {rel}")
        elif rel.name.endswith(".nii.gz"):
            if not np.array_equal(nb.load(x).get_fdata(), nb.load(y).get_fdata()):
                bad.append(f"image differs: {rel}")
        elif rel.suffix == ".trx":
            sa, sb = tmm.load(str(x)), tmm.load(str(y))
            if not np.array_equal(sa.streamlines._data, sb.streamlines._data):
                bad.append(f"streamlines differ: {rel}")
        elif rel.suffix == ".json":
            if _stable(json.loads(x.read_text())) != _stable(json.loads(y.read_text())):
                bad.append(f"sidecar differs: {rel}")
        elif rel.suffix == ".tsv":
            if x.read_text() != y.read_text():
                bad.append(f"table differs: {rel}")
    return bad


@pytest.mark.slow
def test_slurm_participant_level_equals_multiproc(slurm, tmp_path):
    from gentract_bids.cli.phantom import main as phantom

    bids = tmp_path / "bids"
    assert phantom([str(bids), "--n-subjects", "2", "--seed", "1000", "--voxel-size", "4"]) == 0
    plugin = tmp_path / "slurm.yml"
    plugin.write_text("plugin: SLURM\nplugin_args:\n  poll_sleep_duration: 1\n")
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    before = {j["JobId"] for j in _jobs()}
    shared = tmp_path / "shared"  # the work directory every job reads and writes
    run = subprocess.run([*GENTRACT, str(bids), str(tmp_path / "slurm"), *ARGS,
                          "-w", str(shared / "work"), "--use-plugin", str(plugin)],
                         env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "nipype's SLURM plugin" in run.stderr
    jobs = [j for j in _jobs() if j["JobId"] not in before]
    print("\n".join(f"{j['JobId']} {j['Name'][:40]} {j['JobState']} ProcCnt={j['ProcCnt']}"
                    for j in jobs))
    names = [j["Name"].split(".")[0] for j in jobs]
    assert {"brain_mask", "csd", "register", "canonical", "sample", "commit"} <= set(names)
    assert names.count("sample") == 2 and all(j["JobState"] == "COMPLETED" for j in jobs)
    assert {j["ProcCnt"] for j in jobs if j["Name"].startswith("sample")} == {"2"}  # --nprocs
    ref = subprocess.run([*GENTRACT, str(bids), str(tmp_path / "multiproc"), *ARGS,
                          "-w", str(tmp_path / "work_mp")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _compare(tmp_path / "multiproc", tmp_path / "slurm") == []
    assert _compare(tmp_path / "slurm", tmp_path / "multiproc") == []
