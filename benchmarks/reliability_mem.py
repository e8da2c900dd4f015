"""``--mem`` against an address-space limit (issue 19): GenTract sampling with the default batch
and with ``--mem``, without a limit and under ``prlimit --as``; the default batch runs out of
memory where the ``--mem`` one finishes.

    python benchmarks/reliability_mem.py [ROOT] [--n-streamlines 2048] [--mem 400]
                                         [--limit 1750000000]

The fODF stage runs once; each case then reruns only the sampling node (and what follows) in
the same work directory. Prints per case the batch, the process's VmPeak, the exit code and
the error line. About 1.5 minutes per case on 2 busy cores: the figures are in
``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "gentract_wf/sub_01_wf/track_gentract_wf/sample"
# the app, then its VmPeak on stderr as it exits
PEAK = """
import atexit, runpy, sys
def peak():
    status = open("/proc/self/status").read()
    print("VmPeak", status.split("VmPeak:")[1].split()[0], "kB", file=sys.stderr)
atexit.register(peak)
sys.argv = ["gentract", *sys.argv[1:]]
runpy.run_module("gentract_bids.cli.run", run_name="__main__")
"""


def run(root: Path, out: str, n: int, mem: int | None, limit: int | None) -> str:
    cmd = [sys.executable, "-c", PEAK, str(root / "bids"), str(root / out), "participant",
           "-w", str(root / "work"), "--nprocs", "1", "--skip-bids-validation", "--model",
           "gentract_phantom", "--n-streamlines", str(n), "--support-threshold", "0",
           "--registration", "none", "--eval", "sanity", "--random-seed", "3"]
    cmd += ["--mem", str(mem)] if mem else []
    cmd = ["prlimit", f"--as={limit}", *cmd] if limit else cmd
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    text = proc.stdout + proc.stderr
    batch = next((ln.split("in batches of ")[1].split()[0] for ln in text.splitlines()
                  if "sampling" in ln and "in batches of" in ln), "?")
    peak = next((ln for ln in text.splitlines() if ln.startswith("VmPeak")), "VmPeak ?")
    error = next((ln for ln in text.splitlines() if ln.startswith("gentract: error")), "")
    return f"batch {batch}, {peak}, exit {proc.returncode} {error[:200]}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path("/tmp/gentract_mem"))
    ap.add_argument("--n-streamlines", type=int, default=2048)
    ap.add_argument("--mem", type=int, default=400)
    ap.add_argument("--limit", type=int, default=1_750_000_000)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    from test_reliability_resources import tiny_cohort

    tiny_cohort(args.root / "bids")
    cases = [("default", None, None), (f"--mem {args.mem}", args.mem, None),
             (f"default, prlimit --as={args.limit}", None, args.limit),
             (f"--mem {args.mem}, prlimit --as={args.limit}", args.mem, args.limit)]
    for i, (name, mem, limit) in enumerate(cases):
        shutil.rmtree(args.root / "work" / SAMPLE, ignore_errors=True)
        print(f"{name}: {run(args.root, f'out{i}', args.n_streamlines, mem, limit)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
