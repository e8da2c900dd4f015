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


def _report(n_requested: int):
    """Per-subject progress line; bundles short of ground-truth streamlines, named."""
    def report(subj):
        line = f"gentract-phantom: sub-{subj.label} written"
        short = subj.extra.get("shortfall")
        if short is not None:
            pose = subj.extra["atlas_map"].pose.as_dict()
            n_ok = len(subj.bundle_names) - len(short)
            line += (f" ({pose['StorageOrientation']}, rotation {pose['RotationDegrees']} deg, "
                     f"translation {pose['TranslationMm']} mm; {n_ok}/{len(subj.bundle_names)} "
                     f"bundles gave {n_requested} ground-truth streamlines)")
            for name, info in short.items():
                line += f"\n  {name}: {info['n']} of {n_requested} (rejected: " + ", ".join(
                    f"{k} {v}" for k, v in info.items() if k not in ("n", "seeds")) + ")"
        print(line, flush=True)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = ExitCodeParser(prog="gentract-phantom", description=__doc__)
    p.add_argument("out_dir", type=Path, help="output BIDS dataset directory")
    p.add_argument("--n-subjects", type=_positive(int), default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snr", type=_positive(float), default=30.0,
                   help="b=0 white-matter SNR (Rician sigma = S0/SNR)")
    p.add_argument("--voxel-size", type=_positive(float), default=2.0, help="mm, isotropic")
    p.add_argument("--anatomy", choices=("tubes", "human"), default="tubes",
                   help="tubes: procedural brain-like tube phantom centred on the origin; human: "
                        "72 TractSeg bundles of a human brain (packaged), each subject deformed "
                        "and written in its own scanner space")
    p.add_argument("--geometry", type=Path, default=None,
                   help="(tubes) phantomas-format JSON geometry instead of the brain-like template")
    p.add_argument("--atlas-dir", type=Path, default=None,
                   help="(human) a TractSeg-layout folder (bundle_segmentations/, "
                        "endings_segmentations/, TOM/, peaks, FA, brain mask) instead of the "
                        "packaged anatomy")
    p.add_argument("--bundles", default=None,
                   help="(human) comma-separated subset of bundle names, e.g. CST_left,CC_4,AF_left")
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
    bundles = None
    if args.anatomy == "human":
        if args.geometry is not None:
            parser.error("--geometry applies to --anatomy tubes only")
        from gentract_bids.phantom.atlas import load_atlas

        try:
            atlas = load_atlas(None if args.atlas_dir is None else str(args.atlas_dir))
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"cannot read the human anatomy{f' from {args.atlas_dir}' if args.atlas_dir else ''}: {exc}")
        if args.bundles:
            bundles = [b.strip() for b in args.bundles.split(",") if b.strip()]
            unknown = sorted(set(bundles) - set(atlas.names))
            if unknown:
                parser.error(f"unknown bundle(s) {', '.join(unknown)}; known: {', '.join(atlas.names)}")
    elif args.atlas_dir is not None or args.bundles:
        parser.error("--atlas-dir and --bundles apply to --anatomy human only")
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
                n_dirs=args.n_dirs, n_b0=args.n_b0, n_truth_streamlines=args.n_truth_streamlines,
                anatomy_kind=args.anatomy, atlas_dir=args.atlas_dir, bundles=bundles,
                on_subject=_report(args.n_truth_streamlines))
    print(f"gentract-phantom: wrote {args.n_subjects} subject(s) to {out}")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
