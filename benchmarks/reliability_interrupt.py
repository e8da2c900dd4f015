"""kill -9 during the fODF stage and during GenTract sampling, then the same command again
(issue 19): the rerun finishes, reuses the work directory, and its outputs are compared byte by
byte with those of an uninterrupted run of the same seed.

    python benchmarks/reliability_interrupt.py [ROOT] [--n-streamlines 200]

The kill is ``SIGKILL`` to the run's whole process group (what an OOM kill, ``docker kill`` or a
scheduler's hard limit does). Prints one line per run and, per interruption, the files that
differ from the uninterrupted run (for JSON files: the keys that differ). Too slow for CI
(about 2 minutes per run on 2 busy cores): the figures are in ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command(bids, out, work, n):
    return [sys.executable, "-m", "gentract_bids.cli.run", str(bids), str(out), "participant",
            "-w", str(work), "--nprocs", "1", "--skip-bids-validation", "--model",
            "gentract_phantom", "--n-streamlines", str(n), "--random-seed", "3"]


def start(cmd):
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def cpu() -> float:
    """CPU seconds (user + system) of the finished children so far: unlike the wall time, it
    does not grow with the machine's load."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def run(cmd):
    """Run to the end; returns (exit code, "W s wall, C s CPU", output)."""
    t0, c0 = time.time(), cpu()
    proc = start(cmd)
    text = proc.communicate()[0]
    return proc.returncode, f"{time.time() - t0:.1f} s wall, {cpu() - c0:.1f} s CPU", text


def kill_when(cmd, ready, delay):
    """Start ``cmd``, SIGKILL its process group ``delay`` s after ``ready(output so far)``
    holds; returns the seconds it ran."""
    t0, lines = time.time(), []
    proc = start(cmd)
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    while not ready("".join(lines)):
        if proc.poll() is not None or time.time() - t0 > 900:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before the marker")
        time.sleep(0.2)
    time.sleep(delay)
    if proc.poll() is not None:
        raise RuntimeError(f"the run ended (exit {proc.returncode}) before the kill")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return time.time() - t0


def digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def json_keys(a, b, prefix=""):
    """Key paths whose values differ between two JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b))
                for k in json_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".") or "(value)"]


def _around(x: str, y: str, width: int = 40) -> str:
    """Where two lines first differ: the text before it, then each side's next characters."""
    i = next((k for k, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
    return f"...{x[max(0, i - width):i]}[{x[i:i + 8]!r} vs {y[i:i + 8]!r}]"


def compare(fresh: Path, other: Path) -> list[str]:
    da, db = digests(fresh), digests(other)
    lines = [f"only in one: {name}" for name in sorted(set(da) ^ set(db))]
    for name in sorted(set(da) & set(db)):
        if da[name] == db[name]:
            continue
        a, b = fresh / name, other / name
        if name.endswith(".json"):
            keys = json_keys(json.loads(a.read_text()), json.loads(b.read_text()))
            lines.append(f"differs: {name} (keys: {', '.join(keys)})")
        elif name.endswith((".html", ".tsv", ".txt", ".md")):
            pairs = [(x, y) for x, y in zip(a.read_text().splitlines(),
                                             b.read_text().splitlines()) if x != y]
            lines.append(f"differs: {name} ({len(pairs)} lines: "
                         + "; ".join(_around(x, y) for x, y in pairs) + ")")
        else:
            lines.append(f"differs: {name}")
    return lines


def reused(work: Path, since: float) -> tuple[int, int]:
    """(nodes whose cached results the rerun kept, nodes in the work directory)."""
    results = list(work.rglob("result_*.pklz"))
    return sum(p.stat().st_mtime < since for p in results), len(results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path("/tmp/gentract_interrupt"))
    ap.add_argument("--n-streamlines", type=int, default=200)
    args = ap.parse_args(argv)
    from gentract_bids.phantom.cohort import make_cohort

    root, n = args.root, args.n_streamlines
    bids = make_cohort(root / "bids", n_subjects=1, voxel_size=4.0, n_truth_streamlines=20)
    out, work = root / "run/out", root / "run/work"  # every run at the same paths: the
    cmd = command(bids, out, work, n)                 # reports and sidecars name them
    code, fresh_s, text = run(cmd)
    print(f"fresh run: exit {code} in {fresh_s}", flush=True)
    if code:
        print(text)
        return 1
    os.rename(root / "run", root / "fresh")
    points = {  # where to kill: what marks the moment (in the output so far), a delay after it
        # the registration node started: CSD is done (reusable), the fODF stage is not
        "fodf": (lambda text: any(work.glob("gentract_wf/*/fodf_wf/register")), 2.0),
        "sampling": (lambda text: "gentract.inference INFO: sampling" in text, 3.0),
    }
    failed = False
    for point, (ready, delay) in points.items():
        killed_s = kill_when(cmd, ready, delay)
        left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) \
            if out.exists() else []
        since = time.time()
        code, rerun_s, text = run(cmd)
        kept, total = reused(work, since)
        diff = compare(root / "fresh/out", out)
        print(f"kill -9 during {point}: killed after {killed_s:.1f} s, {len(left)} files in "
              f"OUTPUT_DIR after the kill ({', '.join(left) or 'none'}); rerun: exit {code} in "
              f"{rerun_s} (fresh: {fresh_s}), the cached results of {kept} of "
              f"{total} nodes reused; {len(diff)} of {len(digests(out))} files differ from "
              "the fresh run", flush=True)
        for line in diff:
            print(f"  {line}")
        failed |= code != 0
        if code:
            print(text)
        os.rename(root / "run", root / point)
    return int(failed)


if __name__ == "__main__":
    sys.exit(main())
