"""Interruptions survived (issue 19): all-or-nothing commits with a journal, kill -9 in the
final copy recovered, SIGTERM a clean stop, the group level refusing an unfinished commit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gentract_bids.errors import EX_NOINPUT
from gentract_bids.io.commit import HIDDEN, commit_series, recover, unfinished
from gentract_bids.phantom.cohort import make_cohort
from helpers import tree_digest

FILES = [f"sub-01/dwi/sub-01_f{i}.txt" for i in range(6)]


def _staging(tmp_path) -> Path:
    staging = tmp_path / "work" / "staging" / "sub_01_dwi"
    for name in FILES:
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(name)
    return staging


def _kill_during_commit(staging, out, after: int):
    """A real ``kill -9`` of a process committing ``staging``, after ``after`` renames."""
    code = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parents[1])!r})
from gentract_bids.io import commit
n, real = [0], os.replace
def replace(src, dst):
    if "{HIDDEN}/sub_01_dwi/" in str(src):
        if n[0] == {after}:
            os.kill(os.getpid(), signal.SIGKILL)
        n[0] += 1
    real(src, dst)
commit.os.replace = replace
commit.commit_series({[str(staging / f) for f in FILES]!r}, {str(staging)!r}, {str(out)!r},
                     "sub_01_dwi")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_commit_moves_everything_and_leaves_no_trace(tmp_path):
    staging = _staging(tmp_path)
    out = tmp_path / "out"
    done = commit_series([staging / f for f in FILES], staging, out, "sub_01_dwi")
    assert sorted(done) == sorted(str(out / f) for f in FILES)
    assert all((out / f).read_text() == f for f in FILES)
    assert not (out / HIDDEN).exists() and unfinished(out) == []


@pytest.mark.parametrize("after", [0, 3, 5])
def test_kill9_during_moves_is_rolled_forward(tmp_path, after):
    staging, out = _staging(tmp_path), tmp_path / "out"
    _kill_during_commit(staging, out, after)
    moved = [f for f in FILES if (out / f).exists()]
    assert len(moved) == after  # half-done in place: the journal says what is missing
    assert unfinished(out) == ["sub_01_dwi"]
    assert recover(out) == ["sub_01_dwi"]
    assert all((out / f).read_text() == f for f in FILES)
    assert not (out / HIDDEN).exists()


def test_interrupted_copy_without_journal_is_rolled_back(tmp_path):
    out = tmp_path / "out"
    stage = out / HIDDEN / "sub_01_dwi" / "sub-01" / "dwi"
    stage.mkdir(parents=True)
    (stage / "sub-01_f0.txt").write_text("half")
    assert unfinished(out) == ["sub_01_dwi"]
    assert recover(out) == []
    assert not (out / HIDDEN).exists() and not (out / "sub-01").exists()


def test_group_refuses_unfinished_commit(tmp_path, capsys):
    from gentract_bids.cli.run import main

    bids = make_cohort(tmp_path / "bids", n_subjects=1, voxel_size=4.0, n_truth_streamlines=5)
    out = tmp_path / "out"
    (out / HIDDEN).mkdir(parents=True)
    (out / HIDDEN / "sub_01_dwi.journal").write_text(json.dumps({"files": []}))
    code = main([str(bids), str(out), "group", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    err = capsys.readouterr().err
    assert code == EX_NOINPUT, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("gentract: error:")]
    assert len(lines) == 1 and "unfinished (sub_01_dwi" in lines[0], err
    assert not (out / "group_fodf.tsv").exists()


def _gentract(bids, out, work):
    cmd = [sys.executable, "-m", "gentract_bids.cli.run", str(bids), str(out), "participant",
           "-w", str(work), "--nprocs", "1", "--skip-bids-validation",
           "--model", "gentract_phantom", "--tracker", "none"]
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)


def test_sigterm_stops_cleanly_and_rerun_completes(tmp_path):
    """SIGTERM during the fODF stage: exit 143 within seconds, one line, nothing in the output,
    the input untouched; the same command again finishes."""
    bids = make_cohort(tmp_path / "bids", n_subjects=1, voxel_size=4.0, n_truth_streamlines=5)
    before = tree_digest(bids)
    out, work = tmp_path / "out", tmp_path / "work"
    proc = _gentract(bids, out, work)
    deadline = time.time() + 60
    while time.time() < deadline and not list(work.glob("gentract_wf/*/fodf_wf/*")):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert time.time() - sent < 10
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("gentract: error:")]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0], err
    assert not list(out.glob("sub-*")) and unfinished(out) == []
    assert tree_digest(bids) == before
    proc = _gentract(bids, out, work)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert list(out.glob("sub-01/dwi/*_param-fod_dwimap.nii.gz"))
    assert (out / "dataset_description.json").exists() and unfinished(out) == []
    assert tree_digest(bids) == before


def _commit_many(out: str, worker: int, rounds: int) -> None:
    """Commit series ``w<worker>_<i>`` (3 files each) into ``out``, recovering before each."""
    from gentract_bids.io.commit import commit_series, recover

    for i in range(rounds):
        run = f"w{worker}_{i}"
        staging = Path(out).parent / "work" / run
        files = [staging / f"sub-{run}" / f"f{k}.txt" for k in range(3)]
        for f in files:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(f"{run} {f.name}")
        recover(out)  # what every participant run does first: must not touch the others
        commit_series(files, staging, out, run)


def test_concurrent_commits_and_recovery_stay_whole(tmp_path):
    """Four processes committing and recovering in one OUTPUT_DIR at once: every series whole,
    no stage, journal or lock left (the hidden folder and its locks come and go under them)."""
    import multiprocessing

    out, rounds = tmp_path / "out", 15
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_commit_many, args=(str(out), w, rounds)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    for w in range(4):
        for i in range(rounds):
            for k in range(3):
                assert (out / f"sub-w{w}_{i}" / f"f{k}.txt").read_text() == f"w{w}_{i} f{k}.txt"
    assert not (out / HIDDEN).exists() and unfinished(out) == []


def test_trx_bytes_do_not_depend_on_the_time(tmp_path):
    """The TRX zip's entries carry a fixed date (trx-python stamps the writing time), so the same
    streamlines and groups give the same bytes in a rerun; the file reads back the same."""
    import zipfile

    import numpy as np

    from gentract_bids.io.tractogram import load_tractogram, save_tractogram

    rng = np.random.default_rng(0)
    lines = [rng.normal(size=(8, 3)).astype(np.float32) for _ in range(4)]
    path = save_tractogram(tmp_path / "a.trx", lines, np.eye(4), (9, 9, 9), groups={"g": [1, 2]})
    entries = zipfile.ZipFile(path).infolist()
    assert {i.date_time for i in entries} == {(1980, 1, 1, 0, 0, 0)}
    assert {"header.json", "groups/g.uint32"} <= {i.filename for i in entries}
    back, groups = load_tractogram(path)
    assert all(np.array_equal(a, b) for a, b in zip(back, lines)) and list(groups["g"]) == [1, 2]
    assert not list(tmp_path.glob(".*partial"))


def _write_many(path: str, worker: int, rounds: int) -> None:
    from gentract_bids.io.commit import write_atomic

    for i in range(rounds):
        write_atomic(Path(path), json.dumps({"worker": worker, "i": i, "pad": "x" * 200_000}))


def test_write_atomic_whole_under_concurrent_writers(tmp_path):
    """Four processes rewriting one file while it is read: every read parses (old or new, never
    a mix or a truncated one); a killed writer's temporary file goes with the next write."""
    import multiprocessing

    from gentract_bids.io.commit import write_atomic

    path = tmp_path / "dataset_description.json"
    write_atomic(path, json.dumps({"worker": -1, "i": 0, "pad": ""}))
    (tmp_path / f".{path.name}.123.456.partial").write_text('{"half": ')  # a kill -9's
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(path), w, 20)) for w in range(4)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        assert set(json.loads(path.read_text())) == {"worker", "i", "pad"}
        reads += 1
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4 and reads > 0
    assert json.loads(path.read_text())["i"] == 19
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
