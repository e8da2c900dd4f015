#!/usr/bin/env python
"""Learn a checkpoint's connectivity prior from its training cohort and attach it.

    python scripts/build_connectivity.py gentract_human_phantom /tmp/htrain10 --cache /tmp/hcache

The subjects are the checkpoint's own training subjects (``provenance.train_subjects``; never its
validation or test subjects), registered to its template exactly as ``gentract-train`` does
(:func:`gentract_bids.train.dataset.reference_in_model`, cached in ``--cache``), and their
reference streamlines' ends binned as :class:`gentract_bids.model.connectivity.ConnectivityPrior`
says. ``gentract-train`` does the same at the end of a run; this script gives a checkpoint trained
before that its prior. ``--ends FILE.npy`` also saves the ends (n, 2, 3, model mm) so that cell
sizes can be compared without registering again (``--from-ends``); ``--dry-run`` attaches nothing.
For a shipped model, put the printed metadata checksum into ``SHIPPED_CHECKSUMS``.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _ends(source, template, cache):
    from gentract_bids.train.dataset import reference_in_model

    _, streamlines = reference_in_model(source, template, cache)
    return np.stack([[s[0], s[-1]] for s in streamlines]).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint path or shipped model name")
    ap.add_argument("bids_dir", type=Path, nargs="?", help="the training cohort")
    ap.add_argument("--reference", type=Path, help="reference tractograms (default: "
                    "BIDS/derivatives/phantom-truth)")
    ap.add_argument("--cache", type=Path, help="registration cache (gentract-train's)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cell-mm", type=float, default=None)
    ap.add_argument("--reach", type=int, default=None)
    ap.add_argument("--ends", type=Path, help="save the training ends here (.npy)")
    ap.add_argument("--from-ends", type=Path, help="use saved ends instead of registering")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)

    from gentract_bids.io.checkpoint import read_checkpoint_metadata
    from gentract_bids.model.connectivity import (DEFAULT_CELL_MM, DEFAULT_REACH,
                                                  ConnectivityPrior, attach_connectivity)
    from gentract_bids.model.inference import resolve_model_path
    from gentract_bids.registration.template import load_model_template
    from gentract_bids.train.dataset import discover_subjects

    path = resolve_model_path(a.model)
    meta = read_checkpoint_metadata(path)
    labels = meta.get("provenance", {}).get("train_subjects") or []
    if a.from_ends:
        ends = np.load(a.from_ends)
    else:
        if a.bids_dir is None or not labels:
            ap.error("the training cohort (BIDS_DIR) and the checkpoint's train_subjects are needed")
        sources = discover_subjects(a.bids_dir, a.reference, participant_label=labels)
        template = load_model_template(path, meta)  # None: trained where the data lie
        if template is not None and not meta["template"].get("registered_training", True):
            template = None
        with ProcessPoolExecutor(max_workers=max(1, a.workers)) as pool:
            ends = np.concatenate(list(pool.map(_ends, sources, [template] * len(sources),
                                                [a.cache] * len(sources))))
        if a.ends:
            np.save(a.ends, ends)
    prior = ConnectivityPrior.from_streamlines(
        ends, DEFAULT_CELL_MM if a.cell_mm is None else a.cell_mm,
        DEFAULT_REACH if a.reach is None else a.reach)
    print(f"{len(ends)} training streamlines of sub-{', sub-'.join(labels)}: {prior.as_dict()}")
    if not a.dry_run:
        source = (f"reference streamlines of the training subjects {', '.join(labels)} "
                  f"({meta.get('provenance', {}).get('reference', 'reference tractograms')}), "
                  "in the model's space through their registration")
        meta = attach_connectivity(path, prior, source)
        print(f"{Path(path).name}: metadata_sha256 {meta['metadata_sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
