"""Resources (issue 19): a full output or work disk (a small tmpfs) gives exit 73 and one line,
exhausted memory (an address-space limit set during the run) exit 1 and one line, neither a
traceback nor a half-written file; a read-only input (``chmod -R a-w`` on a read-only bind
mount, run without root's file-mode capabilities) runs and nothing is written next to it.

The mounts need root (CI runs as root): those tests skip, saying so, elsewhere."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import nipype  # noqa: F401  its log handler takes this stdout, not one a test closes later
import pytest

from gentract_bids.errors import EX_CANTCREAT, EX_FAILURE
from gentract_bids.phantom.cohort import make_cohort
from helpers import assert_clean_failure, run_cli, tree_digest

REPO = Path(__file__).resolve().parents[1]
MASK = "derivatives/phantom-truth/sub-{s}/dwi/sub-{s}_space-dwi_desc-brain_mask.nii.gz"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs or a read-only "
                                "bind mount needs root (CI runs as root)")


def tiny_cohort(root: Path, n_subjects: int = 1) -> Path:
    """4 mm tube phantoms, DWI and brain mask cut to 16^3 voxels: a whole fODF run in seconds
    (its outputs, the model-grid fODF above all, still take 4.7 MB)."""
    bids = make_cohort(root, n_subjects=n_subjects, voxel_size=4.0, n_truth_streamlines=5)
    for s in (f"{i:02d}" for i in range(1, n_subjects + 1)):
        for path in (bids / f"sub-{s}/dwi/sub-{s}_dwi.nii.gz", bids / MASK.format(s=s)):
            nb.load(path).slicer[12:28, 16:32, 12:28].to_filename(path)
    return bids


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("tiny") / "bids")


@contextlib.contextmanager
def mounted(*cmds):
    """Run the ``mount`` commands (the last argument of the first is the mount point), unmount
    it afterwards whatever happens."""
    point = cmds[0][-1]
    subprocess.run(cmds[0], check=True, capture_output=True)
    try:
        for cmd in cmds[1:]:
            subprocess.run(cmd, check=True, capture_output=True)
        yield Path(point)
    finally:
        subprocess.run(["umount", point], check=False, capture_output=True)


def tmpfs(path: Path, size: str = "2m"):
    path.mkdir(parents=True, exist_ok=True)
    return mounted(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])


def _gentract(bids, out, work, **kwargs):
    """The app in a process of its own: stdout and stderr together in ``.stdout``."""
    cmd = [*kwargs.pop("prefix", []), sys.executable, "-m", "gentract_bids.cli.run", str(bids),
           str(out), "participant",
           "-w", str(work), "--nprocs", "1", "--skip-bids-validation",
           "--model", "gentract_phantom", "--tracker", "none", *kwargs.pop("extra", [])]
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(REPO), **kwargs.pop("env", {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, **kwargs)


def _finish(proc, timeout=300) -> tuple[str, int]:
    text = proc.communicate(timeout=timeout)[0]
    return text, proc.returncode


def _one_error(text: str) -> str:
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("gentract: error:")]
    assert len(errors) == 1, text
    return errors[0]


@needs_root
def test_full_output_disk(tiny, tmp_path, capsys):
    """The commit into a full OUTPUT_DIR fails: 73, one line naming it, its stage removed."""
    before = tree_digest(tiny)
    with tmpfs(tmp_path / "out") as out:
        code = run_cli(tiny, out, tmp_path)
        assert_clean_failure(capsys, code, EX_CANTCREAT, out,
                             [f"no space left on the device of {out} (", "commit ran",
                              "run the same command again"])
        assert not list(out.iterdir())  # no .gentract stage, no dataset_description.json
    assert tree_digest(tiny) == before


@needs_root
def test_full_work_disk(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    with tmpfs(tmp_path / "work") as work:  # run_cli's work directory
        code = run_cli(tiny, out, tmp_path)
        assert_clean_failure(capsys, code, EX_CANTCREAT, out,
                             [f"no space left on the device of {work} (0.0 MB free now)"])
    assert not out.exists()


def test_memory_limit(tiny, tmp_path):
    """An address-space limit (``prlimit --as``) put on the run as its workflow starts: the
    first node that allocates fails with MemoryError; exit 1, one line, no traceback."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _gentract(tiny, out, work)
    lines = []
    while not lines or "processing 1 DWI series" not in lines[-1]:  # just before the workflow
        lines.append(proc.stdout.readline())
        assert lines[-1] or proc.poll() is None, "".join(lines)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    size = int(next(ln for ln in status.splitlines() if ln.startswith("VmSize")).split()[1])
    limit = size * 1024 + (16 << 20)  # 16 MiB more than it has: the fODF stage needs more
    resource.prlimit(proc.pid, resource.RLIMIT_AS, (limit, limit))
    text = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == EX_FAILURE, text
    line = _one_error(text)
    assert "out of memory while" in line and "raise the memory limit" in line, line
    assert not out.exists()


# root without the capabilities that let it ignore file modes (the issue's "as root, chmod -R
# a-w hides this"); a user of its own cannot run this interpreter when it lives under /root
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not found")
def test_read_only_input(tiny, tmp_path):
    """``chmod -R a-w`` on a read-only bind mount, run without root's file-mode capabilities:
    exit 0, the fODF written, the input tree and the folder that holds it unchanged."""
    src = shutil.copytree(tiny, tmp_path / "src" / "bids")
    subprocess.run(["chmod", "-R", "a-w", str(src)], check=True)
    point = tmp_path / "ro" / "bids"
    point.mkdir(parents=True)
    try:
        with mounted(["mount", "--bind", str(src), str(point)],
                     ["mount", "-o", "remount,bind,ro", str(point)]) as bids:
            before, beside = tree_digest(bids), sorted(os.listdir(bids.parent))
            out = tmp_path / "out"
            proc = _gentract(bids, out, tmp_path / "work", prefix=NO_DAC)
            text, code = _finish(proc)
            assert code == 0, text
            assert list(out.glob("sub-01/dwi/*_param-fod_dwimap.nii.gz"))
            assert "Traceback" not in text
            assert tree_digest(bids) == before and sorted(os.listdir(bids.parent)) == beside
            assert "Read-only file system" not in text and "Permission denied" not in text
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(src)], check=False)
