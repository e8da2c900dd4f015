#!/usr/bin/env python
"""Context ablation on subjects whose bundles differ (issue 16): does the context still matter
with the app's sampler?

Two human-anatomy phantom datasets of the same seed and pose, one with the 31 left-hemisphere
TractSeg bundles only and one with the 31 right-hemisphere ones (``gentract-phantom --anatomy
human --bundles ...``), are sampled with the app's defaults (guidance, SMC, density acceptance,
support filter), each with its **own** context and with the **other** dataset's (the model's
context comes from the other subject's z-scored fODF; guidance, SMC weights and the filter keep
reading the subject's own fODF). Scored against the subject's own ground truth. "Valid per draw"
= valid kept streamlines / streamlines drawn: the issue asks that it falls by at least half with
another subject's context::

    python benchmarks/context_swap.py --out /tmp/cswap [--seed 1000] [--n 1000]

Prints one JSON line per run and writes ``context_swap.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from phantom.common import Settings  # noqa: E402
from phantom.runners import score_run  # noqa: E402
from sampler_bench import run_one, subject_setup  # noqa: E402

SIDES = ("left", "right")
OTHER = {"left": "right", "right": "left"}


def hemisphere_bundles(side: str) -> list[str]:
    """The packaged anatomy's bundles of one hemisphere (``*_left`` or ``*_right``)."""
    from gentract_bids.phantom.atlas import load_atlas

    return [b for b in load_atlas().names if b.endswith(f"_{side}")]


def make_dataset(out: Path, side: str, seed: int) -> Path:
    """A one-subject human phantom with one hemisphere's bundles (made once, then reused)."""
    from gentract_bids.cli.phantom import main as gentract_phantom

    root = out / f"seed{seed}" / f"human-{side}"
    if not (root / "dataset_description.json").exists():
        code = gentract_phantom([str(root), "--anatomy", "human", "--n-subjects", "1", "--seed",
                                 str(seed), "--bundles", ",".join(hemisphere_bundles(side))])
        if code:
            raise SystemExit(f"gentract-phantom failed ({code}) for {root}")
    return root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("work/context_swap"))
    ap.add_argument("--seed", type=int, default=1000, help="phantom seed (1000: held out)")
    ap.add_argument("--n", type=int, default=1000, help="streamlines to keep")
    ap.add_argument("--model", default="gentract_human_phantom")
    ap.add_argument("--sample-seed", type=int, default=0)
    a = ap.parse_args(argv)
    import torch

    from gentract_bids.model.support import (DEFAULT_DENSITY_STRENGTH, DEFAULT_GUIDANCE_SCALE,
                                             DEFAULT_SMC_TIMES)

    torch.set_num_threads(1)
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    roots = {side: make_dataset(a.out, side, a.seed) for side in SIDES}
    setups = {side: subject_setup(a.model, roots[side], "01") for side in SIDES}
    min_streamlines = Settings().min_streamlines
    rows = []
    for side in SIDES:
        for context in (side, OTHER[side]):
            s = dict(setups[side], z=setups[context]["z"])
            t0 = time.time()
            r = run_one(s, a.n, 10, a.sample_seed, DEFAULT_GUIDANCE_SCALE, a.out,
                        tuple(DEFAULT_SMC_TIMES), DEFAULT_DENSITY_STRENGTH)
            r.update(score_run(r.pop("streamlines"), roots[side], "01", min_streamlines))
            r.update(subject=side, context=context, seconds=round(time.time() - t0, 1),
                     valid_per_draw=r["precision"] * r["kept"] / r["drawn"])
            r.pop("ib", None)
            rows.append(r)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in r.items()}, default=str), flush=True)
    for side in SIDES:
        own, swapped = (next(r for r in rows if r["subject"] == side and r["context"] == c)
                        for c in (side, OTHER[side]))
        print(f"{side}: valid per draw {own['valid_per_draw']:.3f} own context, "
              f"{swapped['valid_per_draw']:.3f} the other hemisphere's "
              f"(ratio {swapped['valid_per_draw'] / max(own['valid_per_draw'], 1e-9):.2f})")
    (a.out / "context_swap.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
