"""All-or-nothing commit of one series' derivatives into ``OUTPUT_DIR`` (issue 19).

A series' staged files are first copied into a hidden ``OUTPUT_DIR/.gentract/<run>/`` (the
same file system as the output, so renames are atomic), then a journal
``OUTPUT_DIR/.gentract/<run>.journal`` listing them is written atomically, then each file is
renamed into place with SIGTERM/SIGINT/SIGHUP held, and the journal is removed last.

After a kill -9 the next run calls :func:`recover`: a journal means every file was staged, so
the moves are completed (rolled forward); a stage folder without a journal was interrupted
while copying and is removed (rolled back). So a series is in ``OUTPUT_DIR`` whole or not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import signal
import threading
from pathlib import Path

HIDDEN = ".gentract"
HELD = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def signals_held():
    """Block SIGTERM, SIGINT and SIGHUP (delivered when the block ends) in this thread."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def folder_locked(folder: Path):
    """Hold an exclusive ``flock`` on ``folder`` itself (no lock file is left behind): writers
    of one folder's shared files (``dataset_description.json``, ``logs/CITATION.*``, the group
    tables and reports) take turns, across processes."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` whole or not at all: into a temporary file of the same folder,
    then ``os.replace``, under :func:`folder_locked`. A reader, a concurrent writer or a
    ``kill -9`` sees the old file or the new one, never a truncated one; the temporary file
    such a kill leaves is removed by the next write of that file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    with folder_locked(path.parent):
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
            stale.unlink(missing_ok=True)  # a killed writer's: live ones hold the lock
        try:
            with open(tmp, "x", encoding=encoding) as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def _journal(output_dir: Path, run: str) -> Path:
    return Path(output_dir) / HIDDEN / f"{run}.journal"


@contextlib.contextmanager
def _locked(output_dir: Path, run: str, wait: bool = True):
    """Hold ``.gentract/.<run>.lock`` (yields False, unlocked, when busy and not ``wait``)."""
    path = Path(output_dir) / HIDDEN / f".{run}.lock"
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fh = open(path, "a")
        except FileNotFoundError:  # another run removed the empty .gentract in between
            continue
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            yield False
            return
        with contextlib.suppress(FileNotFoundError):  # the holder before us removed it
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        fh.close()  # locked a removed file: lock the one at ``path`` now
    with fh:
        try:
            yield True
        finally:
            path.unlink(missing_ok=True)


def _move(stage: Path, output_dir: Path, rel: list[str]) -> None:
    """Rename each staged file into place (one already moved is skipped)."""
    for name in rel:
        src, dest = stage / name, Path(output_dir) / name
        if src.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)


def _cleanup(output_dir: Path, run: str) -> None:
    with contextlib.suppress(OSError):  # another run may still use it
        (Path(output_dir) / HIDDEN).rmdir()


def commit_series(files, staging_dir, output_dir, run: str) -> list[str]:
    """Commit ``files`` (under ``staging_dir``) into ``output_dir`` at their relative paths;
    returns the committed paths."""
    staging, output_dir = Path(staging_dir), Path(output_dir)
    rel = [str(Path(f).relative_to(staging)) for f in files]
    stage, journal = output_dir / HIDDEN / run, _journal(output_dir, run)
    try:
        with _locked(output_dir, run):
            shutil.rmtree(stage, ignore_errors=True)
            try:
                for name in rel:  # the slow part: a kill here leaves no journal (rolled back)
                    (stage / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(staging / name, stage / name)
                with signals_held():
                    write_atomic(journal, json.dumps({"run": run, "files": rel}))
                    _move(stage, output_dir, rel)
                    journal.unlink()
            except BaseException:  # a full disk, a signal: a stage without journal goes now
                if not journal.exists():
                    shutil.rmtree(stage, ignore_errors=True)
                raise
            shutil.rmtree(stage, ignore_errors=True)
    finally:
        _cleanup(output_dir, run)
    return [str(output_dir / name) for name in rel]


def unfinished(output_dir) -> list[str]:
    """Runs whose commit into ``output_dir`` was interrupted (journals and stage folders)."""
    hidden = Path(output_dir) / HIDDEN
    if not hidden.is_dir():
        return []
    return sorted({p.name.removesuffix(".journal") for p in hidden.iterdir()
                   if not p.name.startswith(".")})


def recover(output_dir) -> list[str]:
    """Finish (journal present) or roll back (no journal) every interrupted commit in
    ``output_dir`` (one another run is doing now is left alone); returns the runs rolled
    forward."""
    done = []
    for run in unfinished(output_dir):
        journal, stage = _journal(output_dir, run), Path(output_dir) / HIDDEN / run
        with _locked(output_dir, run, wait=False) as mine:
            if not mine:
                continue
            with signals_held():
                if journal.exists():
                    _move(stage, Path(output_dir), json.loads(journal.read_text())["files"])
                    journal.unlink()
                    done.append(run)
            shutil.rmtree(stage, ignore_errors=True)
        _cleanup(output_dir, run)
    return done
