"""Shared pieces of the phantom benchmark: paths, run sizes (:class:`Settings`), logging, NIfTI
and JSON helpers, and the /proc memory probes (also used by ``benchmarks/inference_speed.py``)."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TEST_SEED = 1000  # held-out phantom seed: training cohorts use other seeds (default 0)
PAPER_FOD_SIGMA = 0.005  # Rician sigma the paper adds to its (dipy CSD, HCP) fODF input


@dataclass
class Settings:
    """Run sizes; ``tracker_options`` feed the tracker functions."""

    n_subjects: int = 3
    seed: int = TEST_SEED
    n_streamlines: int = 1000
    sift_factor: float = 2.0
    tckglobal_niter: float = 5e6
    dipy_seed_factor: float = 3.0  # dipy: track from this many seeds per requested streamline
    nthreads: int = 1  # MRtrix3 threads of the trackers (1: reproducible tckgen/tckglobal)
    prep_nthreads: int = 2  # threads of the fODF estimation (preprocessing, not timed)
    clean_voxel_size: float = 2.0
    clean_snr: float = 30.0
    low_snr: float = 10.0
    lr_voxel_size: float = 3.0
    fod_sigma: float = PAPER_FOD_SIGMA
    n_truth_streamlines: int = 200
    min_streamlines: int = 10  # a bundle counts in VB with at least this many valid streamlines
    anatomy: str = "tubes"  # tubes (22 procedural bundles) or human (72 TractSeg bundles)

    def tracker_options(self, tracker: str) -> dict:
        if tracker.startswith("gentract"):
            return {}  # the checkpoint comes with run_benchmark's gentract_options
        if tracker in ("ifod2", "sdstream"):
            return {"sift_factor": self.sift_factor, "nthreads": self.nthreads}
        if tracker == "tckglobal":
            return {"niter": self.tckglobal_niter, "nthreads": self.nthreads}
        return {"seed_factor": self.dipy_seed_factor}


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _load(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.dataobj, np.float32), img.affine


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, Path):
        return str(v)
    return v


# ----------------------------------------------------------------------------- memory probes
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def _read_proc(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def tree_rss_kb(root_pid: int) -> int:
    """Resident set size (kB) of ``root_pid`` plus all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            stat = _read_proc(f"/proc/{d}/stat")
            if stat:  # "pid (comm) state ppid ...": comm may hold spaces
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        statm = _read_proc(f"/proc/{pid}/statm")
        if statm:
            total += int(statm.split()[1]) * PAGE_KB
        todo += children.get(pid, [])
    return total


def _vm_hwm_kb() -> int:
    """This process's exact peak RSS since its exec (``VmHWM``). Not ``ru_maxrss``: on Linux
    that survives fork + exec, so a spawned child would report its parent's RSS."""
    for line in (_read_proc("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0
