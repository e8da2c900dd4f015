"""Give an existing checkpoint the template it was trained in (models made before templates).

    python scripts/add_template.py gentract_bids/data/models/gentract_phantom /tmp/train16 \\
        --space phantomTubes

Builds the cohort template of ``gentract-train``'s recipe key ``data.template: cohort`` (the mean
FA of the checkpoint's training subjects, as they are placed) from the BIDS dataset the model was
trained on (``gentract-phantom /tmp/train16 --n-subjects 16 --seed 0`` for the shipped tube model),
writes ``<stem>_template.nii.gz`` and records it in ``<stem>.json`` (sealing the JSON with its
checksum). The weights are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from types import SimpleNamespace

from gentract_bids.cli.train import model_template
from gentract_bids.io.checkpoint import checkpoint_paths, read_checkpoint_metadata, seal_metadata
from gentract_bids.registration.template import save_model_template
from gentract_bids.train.dataset import discover_subjects


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("bids_dir", type=Path, help="the dataset the model was trained on")
    p.add_argument("--space", default="cohort", help="the template's space label")
    opts = p.parse_args(argv)
    meta = read_checkpoint_metadata(opts.checkpoint)
    train = set(meta["provenance"]["train_subjects"])
    sources = [s for s in discover_subjects(opts.bids_dir) if s.label in train]
    if {s.label for s in sources} != train:
        raise SystemExit(f"{opts.bids_dir} lacks training subjects "
                         f"{sorted(train - {s.label for s in sources})}")
    cfg = SimpleNamespace(grid_spacing=float(meta["grid_spacing"]),
                          grid_shape=tuple(meta["grid_shape"]))
    recipe = {"data": {"template": "cohort", "template_space": opts.space}}
    template = model_template(recipe, cfg, sources)
    meta["template"] = {**save_model_template(opts.checkpoint, template),
                        "registered_training": False}
    _, meta_path = checkpoint_paths(opts.checkpoint)
    tmp = meta_path.with_name(meta_path.name + ".partial")
    tmp.write_text(json.dumps(seal_metadata(meta), indent=1))
    os.replace(tmp, meta_path)
    print(json.dumps(meta["template"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
