"""Bundle-atlas recognition (``--bundle-atlas``) against the ground-truth scorer on human phantoms.

    python benchmarks/bundle_atlas_check.py PHANTOM_BIDS [--tractogram sub-01=FILE ...]
        [--atlas ../shared/data/external/tractseg-hcp] [--subjects 01 02]

``PHANTOM_BIDS`` comes from ``gentract-phantom OUT --anatomy human --n-subjects 2 --seed 7`` (a
development cohort: tune on seed 7 only, never on the held-out seed 1000). Per subject the real
registration (FA of the DWI onto the template of the packaged atlas, dipy affine) gives the matrix
A (template mm -> subject mm), cached in ``PHANTOM_BIDS/code/bundle_atlas_check/``. The same
tractograms are scored by both: the truth streamlines themselves and any tractogram given with
``--tractogram`` (e.g. ``gentract ... --tracker sdstream``'s output). Printed: the precision of
each (ground truth's valid fraction vs the bundle atlas's recognised fraction), the bundles each
finds (at least ``--min-streamlines``), and the per-streamline agreement. ``--xfm SUB=FILE``
takes A from a participant run's ``..._from-dwi_to-<space>_mode-image_xfm.txt`` instead (the
registration the app used for that tractogram; nothing is registered again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from gentract_bids.evaluation.recognition.endings import (ENDING_DILATION_MM, MASK_DILATION_MM,
                                                         MIN_INSIDE)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ATLAS = ROOT.parent / "shared" / "data" / "external" / "tractseg-hcp"


def registration_matrix(bids: Path, sub: str, cache: Path) -> np.ndarray:
    """A (4x4, template mm -> subject mm) from the real registration, cached as .npy."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"sub-{sub}_A.npy"
    failed = cache / f"sub-{sub}_A.failed.txt"
    if path.is_file():
        return np.load(path)
    if failed.is_file():
        raise RuntimeError(failed.read_text())
    from gentract_bids.fodf.csd import compute_brain_mask, make_gtab
    from gentract_bids.io.dwi import read_dwi
    from gentract_bids.phantom.atlas import load_atlas
    from gentract_bids.registration.affine import fa_map, register_to_template
    from gentract_bids.registration.template import template_from_atlas

    d = bids / f"sub-{sub}" / "dwi"
    dwi = read_dwi(d / f"sub-{sub}_dwi.nii.gz", d / f"sub-{sub}_dwi.bval",
                   d / f"sub-{sub}_dwi.bvec")
    mask = compute_brain_mask(dwi.data, make_gtab(dwi.bvals, dwi.bvecs))
    fa = fa_map(dwi.data, dwi.bvals, dwi.bvecs, mask)
    template = template_from_atlas(load_atlas(), shape=(80, 112, 96))
    try:
        reg = register_to_template(fa, dwi.affine, mask, template, name=f"sub-{sub}")
    except Exception as exc:
        failed.write_text(f"{type(exc).__name__}: {exc}")
        raise
    np.save(path, np.asarray(reg.matrix, float))
    return np.asarray(reg.matrix, float)


def true_affine(bids: Path, sub: str) -> np.ndarray:
    """A fitted (least squares, brain voxels) to the phantom's true displacement field
    scanner -> atlas (LPS components: atlas = scanner + (-dx, -dy, dz)); the reference the real
    registration is compared with, and the fallback where it fails."""
    import nibabel as nib

    d = bids / "derivatives" / "phantom-truth" / f"sub-{sub}" / "dwi"
    img = nib.load(str(d / f"sub-{sub}_from-MNI152NLin6Asym_to-dwi_mode-image_xfm.nii.gz"))
    field = np.asarray(img.dataobj, float).reshape(*img.shape[:3], 3)
    brain = np.asarray(nib.load(str(d / f"sub-{sub}_space-dwi_desc-brain_mask.nii.gz")).dataobj) > 0
    ijk = np.argwhere(brain)
    scanner = ijk @ img.affine[:3, :3].T + img.affine[:3, 3]
    disp = field[brain] * np.array([-1.0, -1.0, 1.0])
    atlas = scanner + disp
    x = np.c_[atlas, np.ones(len(atlas))]
    coef, *_ = np.linalg.lstsq(x, scanner, rcond=None)  # scanner = [atlas, 1] @ coef
    a = np.eye(4)
    a[:3, :] = coef.T
    return a


def compare(streamlines, truth, atlas, matrix, *, min_streamlines: int, ending_dilations,
            mask_dilations, min_insides) -> list[dict]:
    """Both scorers on one tractogram, the bundle atlas with every combination of tolerances
    (the measures are computed once per mask dilation): precision, bundles found, agreement."""
    from gentract_bids.evaluation.groundtruth import score_groundtruth
    from gentract_bids.evaluation.metrics import summarise
    from gentract_bids.evaluation.recognition.common import degenerate_mask
    from gentract_bids.evaluation.recognition.endings import (assign_from_measures,
                                                             endings_measures)

    t0 = time.perf_counter()
    gt_labels, gt = score_groundtruth(streamlines, truth, min_streamlines=min_streamlines)
    gt_s = time.perf_counter() - t0
    names = set(truth.bundle_names)
    gt_lab = np.asarray(gt_labels, str)
    gt_lab = np.where(np.isin(gt_lab, list(names)), gt_lab, "-")
    degenerate = degenerate_mask(streamlines)
    rows = []
    for md in mask_dilations:
        t0 = time.perf_counter()
        meas = endings_measures(streamlines, atlas, matrix, affine=truth.affine,
                                shape=truth.shape, ending_dilation_mm=max(ending_dilations),
                                mask_dilation_mm=md, degenerate=degenerate)
        ba_s = time.perf_counter() - t0
        for ed in ending_dilations:
            for mi in min_insides:
                labels, _, _ = assign_from_measures(meas, atlas.names, len(streamlines),
                                                    degenerate, ed, mi)
                ba = summarise("atlas", labels, atlas.names, min_streamlines=min_streamlines)
                ba_lab = np.where(np.isin(labels, list(names)), labels, "-")
                both = (gt_lab != "-") & (ba_lab != "-")
                rows.append({
                    "n": len(streamlines), "ending_dilation_mm": ed, "mask_dilation_mm": md,
                    "min_inside": mi,
                    "gt_precision": gt["precision"], "ba_precision": ba["precision"],
                    "gt_bundles": gt["valid_bundles"], "ba_bundles": ba["valid_bundles"],
                    "agree": float(np.mean(gt_lab == ba_lab)) if len(gt_lab) else 1.0,
                    "same_bundle": (float(np.mean(gt_lab[both] == ba_lab[both])) if both.any()
                                    else 1.0),
                    "gt_s": gt_s, "ba_s": ba_s})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bids", type=Path)
    ap.add_argument("--atlas", type=Path, default=DEFAULT_ATLAS)
    ap.add_argument("--subjects", nargs="+", default=["01", "02"])
    ap.add_argument("--tractogram", action="append", default=[],
                    help="SUB=FILE[:NAME], a tractogram of subject SUB to score (repeatable)")
    ap.add_argument("--xfm", action="append", default=[],
                    help="SUB=FILE, the ITK transform (template -> subject) a participant run "
                         "wrote for SUB: used instead of registering again (repeatable)")
    ap.add_argument("--min-streamlines", type=int, default=10)
    ap.add_argument("--ending-dilation-mm", type=float, nargs="+", default=[ENDING_DILATION_MM])
    ap.add_argument("--mask-dilation-mm", type=float, nargs="+", default=[MASK_DILATION_MM])
    ap.add_argument("--min-inside", type=float, nargs="+", default=[MIN_INSIDE])
    ap.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = ap.parse_args(argv)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    from gentract_bids.evaluation.groundtruth import load_groundtruth
    from gentract_bids.evaluation.recognition.endings import load_bundle_atlas
    from gentract_bids.io.tractogram import load_tractogram

    atlas = load_bundle_atlas(args.atlas)
    extra: dict = {}
    for spec in args.tractogram:
        sub, rest = spec.split("=", 1)
        path, _, label = rest.partition(":")
        extra.setdefault(sub, []).append((label or Path(path).name.split("_")[-2], Path(path)))
    xfms = dict(spec.split("=", 1) for spec in args.xfm)
    cache = args.bids / "code" / "bundle_atlas_check"
    rows = []
    for sub in args.subjects:
        truth = load_groundtruth(args.bids, sub)
        ref = true_affine(args.bids, sub)
        try:
            if sub in xfms:
                from gentract_bids.registration.xfm import read_xfm

                matrix, how = read_xfm(xfms[sub]), "the run's transform"
            else:
                matrix, how = registration_matrix(args.bids, sub, cache), "registration"
        except Exception as exc:  # RegistrationError: report it and score with the true affine
            print(f"sub-{sub}: registration failed ({str(exc)[:160]}); using the affine fitted "
                  "to the true displacement field", flush=True)
            matrix, how = ref, "true-affine"
        probe = np.array([[0, -18, 18], [40, -20, 10], [-40, 20, 40], [0, 40, -10]], float)
        err = np.linalg.norm((probe @ matrix[:3, :3].T + matrix[:3, 3])
                             - (probe @ ref[:3, :3].T + ref[:3, 3]), axis=1)
        print(f"sub-{sub}: A from {how}; vs the true affine at 4 brain points: "
              f"{np.round(err, 1).tolist()} mm", flush=True)
        sets = [("truth", truth.streamlines)]
        sets += [(label, load_tractogram(p)[0]) for label, p in extra.get(sub, [])]
        for label, sl in sets:
            for r in compare(sl, truth, atlas, matrix, min_streamlines=args.min_streamlines,
                             ending_dilations=args.ending_dilation_mm,
                             mask_dilations=args.mask_dilation_mm, min_insides=args.min_inside):
                r.update(sub=sub, tractogram=label, registration=how)
                rows.append(r)
                print(_row(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _row(r) -> str:
    tol = " ".join(f"{k.split('_')[0][:3]}={r[k]:g}" for k in
                   ("ending_dilation_mm", "mask_dilation_mm", "min_inside") if k in r)
    return (f"sub-{r['sub']} {r['tractogram']:<9} n={r['n']:>6}  precision GT {r['gt_precision']:.3f}"
            f" atlas {r['ba_precision']:.3f} (diff {100 * (r['ba_precision'] - r['gt_precision']):+.1f})"
            f"  bundles GT {r['gt_bundles']:>2} atlas {r['ba_bundles']:>2}  label agreement "
            f"{r['agree']:.3f} same-bundle {r['same_bundle']:.3f}  [{r['gt_s']:.1f}s/{r['ba_s']:.1f}s]"
            f" {tol}")


if __name__ == "__main__":
    sys.exit(main())
