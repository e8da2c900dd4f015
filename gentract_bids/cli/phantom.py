"""gentract-phantom: write a BIDS dataset of synthetic DWI subjects with ground truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import EX_CANTCREAT, EX_OK
from .parser import ExitCodeParser


def _bvals(text: str):
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}")
    if not vals or any(v < 0 for v in vals) or not any(v > 0 for v in vals):
        raise argparse.ArgumentTypeError("need b-values >= 0 with at least one shell > 0")
    return vals


def _positive(kind):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind.__name__}: {text!r}")
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return v
    return conv


def build_parser() -> argparse.ArgumentParser:
    p = ExitCodeParser(prog="gentract-phantom", description=__doc__)
    p.add_argument("out_dir", type=Path, help="output BIDS dataset directory")
    p.add_argument("--n-subjects", type=_positive(int), default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snr", type=_positive(float), default=30.0,
                   help="b=0 white-matter SNR (Rician sigma = S0/SNR)")
    p.add_argument("--voxel-size", type=_positive(float), default=2.0, help="mm, isotropic")
    p.add_argument("--geometry", type=Path, default=None,
                   help="phantomas-format JSON geometry to use instead of the brain-like template")
    p.add_argument("--bvals", type=_bvals, default=(0, 1000, 2000, 3000),
                   help="comma-separated shells, e.g. 0,1000,2000,3000 (0 = b0 volumes)")
    p.add_argument("--n-dirs", type=_positive(int), default=32, help="directions per shell")
    p.add_argument("--n-b0", type=_positive(int), default=6)
    p.add_argument("--n-truth-streamlines", type=_positive(int), default=200,
                   help="ground-truth streamlines per bundle")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0.5 <= args.voxel_size <= 5.0:
        parser.error("--voxel-size must be between 0.5 and 5 mm")
    if args.n_dirs < 6:
        parser.error("--n-dirs must be >= 6")
    geometry = None
    if args.geometry is not None:
        from gentract_bids.phantom.geometry import load_geometry

        try:
            geometry = load_geometry(args.geometry)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"cannot read --geometry {args.geometry}: {exc}")
    from gentract_bids.phantom.cohort import is_phantom_dataset, make_cohort

    out = args.out_dir
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_phantom_dataset(out))):
        print(f"gentract-phantom: {out} exists and is not an empty directory or an earlier "
              "phantom; refusing to overwrite it", file=sys.stderr)
        return EX_CANTCREAT
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"gentract-phantom: cannot create {out}: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    make_cohort(out, n_subjects=args.n_subjects, seed=args.seed, snr=args.snr,
                voxel_size=args.voxel_size, geometry=args.geometry, bvals=args.bvals,
                n_dirs=args.n_dirs, n_b0=args.n_b0, n_truth_streamlines=args.n_truth_streamlines)
    print(f"gentract-phantom: wrote {args.n_subjects} subject(s) to {out}")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
