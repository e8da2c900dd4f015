"""Two participants into one OUTPUT_DIR at once against the same two one after the other, and a
read-only input run by a user other than root (issue 19). Figures in ``docs/reliability.md``.

    python benchmarks/reliability_shared.py [ROOT] [--n-streamlines 200] [--user rouser]

Concurrent and sequential runs use the same paths (moved aside in between), so the reports
and sidecars that name them can be compared byte by byte. ``--user``: an existing account
(``useradd -m rouser``) that runs GenTract on a ``chmod -R a-w`` copy of the dataset, with
the BIDS validator, through ``runuser`` (needs root and an interpreter that account can run:
``/usr/bin/python3`` with this virtual environment's packages on ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_interrupt import REPO, compare, cpu, digests  # noqa: E402


def command(python, bids, out, work, n, *extra):
    return [python, "-m", "gentract_bids.cli.run", str(bids), str(out), "participant", "-w",
            str(work), "--nprocs", "1", "--model", "gentract_phantom", "--n-streamlines",
            str(n), "--random-seed", "3", *extra]


def start(cmd, env=None):
    env = {**os.environ, "NIPYPE_NO_ET": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def wait_all(procs) -> list[tuple[int, str]]:
    """(exit code, output) of each process, once it has ended."""
    texts = [p.communicate()[0] for p in procs]
    return [(p.returncode, text) for p, text in zip(procs, texts)]


def shared(root: Path, bids: Path, n: int) -> bool:
    out, work = root / "run/out", root / "run/work"
    subjects = ("01", "02")
    cmds = [command(sys.executable, bids, out, work / s, n, "--skip-bids-validation",
                    "--participant-label", s) for s in subjects]
    t0, c0 = time.time(), cpu()
    done = wait_all([start(c) for c in cmds])
    both = f"{time.time() - t0:.1f} s wall, {cpu() - c0:.1f} s CPU"
    print(f"two participants at once: exits {[c for c, _ in done]} in {both}", flush=True)
    os.rename(root / "run", root / "concurrent")
    t0, c0 = time.time(), cpu()
    seq = [wait_all([start(c)])[0] for c in cmds]
    print(f"one after the other: exits {[c for c, _ in seq]} in {time.time() - t0:.1f} s wall,"
          f" {cpu() - c0:.1f} s CPU", flush=True)
    os.rename(root / "run", root / "sequential")
    diff = compare(root / "sequential/out", root / "concurrent/out")
    print(f"  {len(diff)} of {len(digests(root / 'concurrent/out'))} files differ; hidden "
          f"left: {sorted(p.name for p in (root / 'concurrent/out').glob('.*'))}")
    for line in diff:
        print(f"    {line}")
    return all(c == 0 for c, _ in done + seq)


def read_only(root: Path, bids: Path, n: int, user: str) -> bool:
    """GenTract (which reads the phantom's truth TRX) on a chmod -R a-w copy, as ``user``."""
    src = root / "ro/bids"
    shutil.copytree(bids, src)
    subprocess.run(["chmod", "-R", "a-w", str(src)], check=True)
    rw = root / "ro_rw"  # beside ro/, not in it: ro/ must stay as it is
    rw.mkdir()
    shutil.chown(rw, user)
    for p in (root, root / "ro"):
        p.chmod(0o755)
    before, beside = digests(src), sorted(os.listdir(src.parent))
    site = sysconfig.get_paths()["purelib"]  # this venv's packages for the system interpreter
    py = "/usr/bin/python3"
    tools = rw / "bin"  # the validator's entry point, for that interpreter (deno from the venv)
    tools.mkdir()
    (tools / "bids-validator-deno").write_text(
        f"#!{py}\nimport sys\nfrom bids_validator_deno import cli\nsys.exit(cli())\n")
    (tools / "bids-validator-deno").chmod(0o755)
    home = Path("~" + user).expanduser()  # where deno's finder looks for that interpreter
    (home / ".local/bin").mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (home / ".local/bin/deno").symlink_to(Path(sys.executable).parent / "deno")
    subprocess.run(["chown", "-R", user, str(home / ".local")], check=True)
    env = {"PYTHONPATH": f"{REPO}:{site}", "HOME": str(Path("~" + user).expanduser()),
           "PATH": f"{tools}:{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in env.items()),
           *command(py, src, rw / "out", rw / "work", n, "--participant-label", "01")]
    t0 = time.time()
    code, text = wait_all([start(cmd)])[0]
    after = digests(src) == before and sorted(os.listdir(src.parent)) == beside
    wrote = sorted(str(p.relative_to(src.parent)) for p in src.parent.rglob("*")
                   if p.stat().st_mtime > t0)
    print(f"read-only input as {user} (chmod -R a-w, BIDS validator on, GenTract): exit {code}"
          f" in {time.time() - t0:.1f} s; input unchanged: {after}; outputs: "
          f"{len(list((rw / 'out').rglob('*.trx')))} TRX; written beside the input: "
          f"{wrote or 'nothing'}", flush=True)
    if code:
        print(text[-3000:])
    subprocess.run(["chmod", "-R", "u+w", str(src)], check=False)
    return code == 0 and after


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", type=Path, default=Path("/tmp/gentract_shared"))
    ap.add_argument("--n-streamlines", type=int, default=200)
    ap.add_argument("--user", default=None)
    ap.add_argument("--skip-shared", action="store_true")
    args = ap.parse_args(argv)
    from gentract_bids.phantom.cohort import make_cohort

    bids = make_cohort(args.root / "bids", n_subjects=2, voxel_size=4.0,
                       n_truth_streamlines=20)
    ok = True
    if not args.skip_shared:
        ok &= shared(args.root, bids, args.n_streamlines)
    if args.user:
        ok &= read_only(args.root, bids, args.n_streamlines, args.user)
    return int(not ok)


if __name__ == "__main__":
    sys.exit(main())
