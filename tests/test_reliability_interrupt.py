"""kill -9 during the fODF stage, during GenTract sampling and during the final copy into
``OUTPUT_DIR``, then the same command again (issue 19): each rerun reuses what finished before
and the last one's outputs equal an uninterrupted run's, apart from measured durations.

One chain keeps this affordable (a GenTract run is ~25 s of CPU): a reference run, then one run
killed in the fODF stage, its rerun killed in sampling, that one's rerun killed while copying
into the output's hidden stage, the next killed halfway through the renames, and a last rerun
that finishes. Every run uses the same paths (the reference is moved aside), because sidecars
and reports name them. The first two kills are SIGKILL to the run's process group when a marker
appears (a node's result file, a log line); the commit ones are exact: the process kills its
group at the k-th file it copies or renames (the commit runs in the main process with one CPU).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_reliability_resources import tiny_cohort

from gentract_bids.io.commit import HIDDEN, unfinished

pytestmark = pytest.mark.slow  # whole GenTract runs
REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["--nprocs", "1", "--skip-bids-validation", "--model", "gentract_phantom",
           "--n-streamlines", "100", "--random-seed", "3", "--registration", "none",
           "--eval", "sanity", "--support-threshold", "0", "--batch-size", "16"]
NODE = "gentract_wf/sub_01_wf"
# the nodes that compute (the sinks and the commit always run, and what follows them again)
COMPUTE = re.compile(r"/(fodf_wf|track_\w+_wf|eval_\w+_wf)/")
# measured durations and peak memory: the only values an interrupted run may change
TIMING = re.compile(r"Seconds|seconds|Timings|PerSecond|PeakRSS|PeakGPU")
# the run kills its own process group at the k-th file it copies into (or renames out of) the
# hidden stage; then it is the app itself
INJECT = """
import os, signal, sys
from gentract_bids.io import commit
phase, after, n = sys.argv[1], int(sys.argv[2]), [0]
def hooked(real, staged):
    def call(src, dst, *args, **kwargs):
        if "/.gentract/sub_" in str(staged(src, dst)):
            if n[0] == after:
                os.killpg(0, signal.SIGKILL)
            n[0] += 1
        return real(src, dst, *args, **kwargs)
    return call
if phase == "copy":
    commit.shutil.copy2 = hooked(commit.shutil.copy2, lambda src, dst: dst)
else:
    commit.os.replace = hooked(commit.os.replace, lambda src, dst: src)
from gentract_bids.cli.run import main
sys.exit(main(sys.argv[3:]))
"""


def _start(root: Path, inject: tuple[str, int] | None = None):
    args = [str(root / "bids"), str(root / "run/out"), "participant", "-w",
            str(root / "run/work"), *OPTIONS]
    cmd = [sys.executable, "-m", "gentract_bids.cli.run", *args]
    if inject:
        cmd = [sys.executable, "-c", INJECT, inject[0], str(inject[1]), *args]
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    return proc, lines, reader


def _run(root, inject=None, ready=None, timeout=300) -> tuple[int, str]:
    """Run the command to its end, or SIGKILL its process group as soon as ``ready(output)``
    holds; returns (exit code, output)."""
    proc, lines, reader = _start(root, inject)
    deadline = time.time() + timeout
    while ready is not None and proc.poll() is None and not ready("".join(lines)):
        assert time.time() < deadline, "".join(lines)
        time.sleep(0.02)
    if ready is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)
    reader.join(10)
    return proc.returncode, "".join(lines)


def _results(work: Path) -> dict[str, int]:
    """The result files (nipype's record of a finished node) of the computing nodes, with
    their mtimes."""
    found = {str(p.relative_to(work)): p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}
    return {k: v for k, v in found.items() if COMPUTE.search(k)}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _json_keys(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b))
                for k in _json_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def differences(fresh: Path, out: Path) -> list[str]:
    """What differs between two output folders beyond measured durations: JSON keys that are
    not durations, report lines that differ in more than their numbers, any other file."""
    a, b = _files(fresh), _files(out)
    found = [f"only in one: {name}" for name in sorted(set(a) ^ set(b))]
    for name in sorted(n for n in set(a) & set(b) if a[n] != b[n]):
        x, y = (fresh / name).read_bytes(), (out / name).read_bytes()
        if name.endswith(".json"):
            keys = _json_keys(json.loads(x), json.loads(y))
            found += [f"{name}: {k}" for k in keys if not TIMING.search(k)]
        elif name.endswith(".html"):
            number = re.compile(rb"\d+(\.\d+)?")
            lx, ly = x.splitlines(), y.splitlines()
            found += [f"{name}: {p[:80]!r}" for p, q in zip(lx, ly)
                      if number.sub(b"#", p) != number.sub(b"#", q)]
            found += [f"{name}: line count"] if len(lx) != len(ly) else []
        else:
            found.append(f"{name}: bytes")
    return found


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """The uninterrupted reference run, moved aside to ``ROOT/fresh``; returns ROOT."""
    root = tmp_path_factory.mktemp("interrupt")
    tiny_cohort(root / "bids")
    t0 = time.time()
    code, text = _run(root)
    assert code == 0, text
    os.rename(root / "run", root / "fresh")
    (root / "fresh/seconds").write_text(f"{time.time() - t0:.1f}")
    return root


def _reused(before: dict, after: dict) -> None:
    """Every node that had finished before the kill kept its result (was not run again)."""
    assert before and {k: after.get(k) for k in before} == before


def test_kill9_in_fodf_sampling_and_final_copy(fresh):
    root = fresh
    out, work = root / "run/out", root / "run/work"

    # 1. kill -9 in the fODF stage: CSD finished, the canonical-grid fODF not yet
    code, text = _run(root, ready=lambda _: (work / NODE / "fodf_wf/csd/result_csd.pklz").exists())
    assert code == -signal.SIGKILL, text
    done = _results(work)
    assert f"{NODE}/fodf_wf/csd/result_csd.pklz" in done, done
    assert f"{NODE}/fodf_wf/canonical/result_canonical.pklz" not in done, done
    assert not list(out.glob("sub-*")) and unfinished(out) == []

    # 2. its rerun, killed as GenTract sampling starts: the fODF stage is reused, then done
    code, text = _run(root, ready=lambda text: "sampling 100 streamlines on" in text)
    assert code == -signal.SIGKILL, text
    after = _results(work)
    _reused(done, after)
    assert f"{NODE}/fodf_wf/canonical/result_canonical.pklz" in after
    assert f"{NODE}/track_gentract_wf/sample/result_sample.pklz" not in after, after
    assert not list(out.glob("sub-*")) and unfinished(out) == []

    # 3. its rerun, killed after copying 3 files into the hidden stage: nothing in place
    done = after
    code, text = _run(root, inject=("copy", 3))
    assert code == -signal.SIGKILL, text
    after = _results(work)
    _reused(done, after)
    assert f"{NODE}/track_gentract_wf/sample/result_sample.pklz" in after
    assert not (work / NODE / "commit/result_commit.pklz").exists()
    assert not list(out.glob("sub-*")) and unfinished(out) == ["sub_01"]
    assert not (out / HIDDEN / "sub_01.journal").exists()  # the next run rolls it back

    # 4. its rerun, killed after 5 renames into place: a journal says what is missing
    done = after
    code, text = _run(root, inject=("move", 5))
    assert code == -signal.SIGKILL, text
    _reused(done, _results(work))
    assert len([p for p in out.rglob("*") if p.is_file() and HIDDEN not in p.parts]) == 5
    assert (out / HIDDEN / "sub_01.journal").exists()

    # 5. the same command again: completes that commit, reuses every node, finishes
    done = _results(work)
    t0 = time.time()
    code, text = _run(root)
    seconds = time.time() - t0
    assert code == 0, text
    assert "completed the interrupted commit of sub_01 " in text, text
    after = _results(work)
    _reused(done, after)
    assert (work / NODE / "commit/result_commit.pklz").exists()
    assert unfinished(out) == [] and not list(out.rglob("*.partial"))
    assert differences(root / "fresh/out", out) == []
    assert len(_files(out)) == len(_files(root / "fresh/out")) > 15
    print(f"last rerun {seconds:.1f} s, fresh run {(root / 'fresh/seconds').read_text()} s")
