#!/usr/bin/env python
"""Copy a trained checkpoint into the package under a shipped name.

    python scripts/ship_checkpoint.py /tmp/hrun2k/checkpoint/gentract gentract_human_phantom

Copies ``<stem>.safetensors``, ``<stem>_template.nii.gz`` and ``<stem>_connectivity.npz`` (the
connectivity prior ``gentract-train`` attaches) to ``gentract_bids/data/models/<name>.*``, points
the JSON's template and connectivity entries at the new file names,
seals the metadata again (``metadata_sha256``) and prints that checksum, which goes into
``SHIPPED_CHECKSUMS`` (``gentract_bids/model/inference.py``). Weights, template and prior are
unchanged (their sha256 in the JSON still holds).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from gentract_bids.io.checkpoint import (checkpoint_paths, file_sha256, read_checkpoint_metadata,
                                         seal_metadata)
from gentract_bids.model.inference import SHIPPED_MODELS_DIR
from gentract_bids.registration.template import TEMPLATE_SUFFIX, template_path


def main(argv=None) -> int:
    src, name = (sys.argv[1:] if argv is None else argv)
    weights, _ = checkpoint_paths(src)
    meta = read_checkpoint_metadata(src)
    dst = SHIPPED_MODELS_DIR / name
    shutil.copyfile(weights, dst.with_suffix(".safetensors"))
    if meta.get("template"):
        tpl = Path(str(dst) + TEMPLATE_SUFFIX)
        shutil.copyfile(template_path(src), tpl)
        assert file_sha256(tpl) == meta["template"]["sha256"]
        meta["template"]["file"] = tpl.name
    if meta.get("connectivity"):
        from gentract_bids.model.connectivity import connectivity_path

        prior = connectivity_path(dst.with_suffix(".safetensors"))
        shutil.copyfile(connectivity_path(weights).with_name(meta["connectivity"]["file"]), prior)
        assert file_sha256(prior) == meta["connectivity"]["sha256"]
        meta["connectivity"]["file"] = prior.name
    meta = seal_metadata(meta)
    dst.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: metadata_sha256 {meta['metadata_sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
