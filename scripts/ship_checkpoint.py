#!/usr/bin/env python
"""Copy a trained checkpoint into the package under a shipped name.

    python scripts/ship_checkpoint.py /tmp/hrun2k/checkpoint/gentract gentract_human_phantom

Copies ``<stem>.safetensors`` and ``<stem>_template.nii.gz`` to
``gentract_bids/data/models/<name>.*``, points the JSON's template entry at the new file name,
seals the metadata again (``metadata_sha256``) and prints that checksum, which goes into
``SHIPPED_CHECKSUMS`` (``gentract_bids/model/inference.py``). Weights and template are unchanged
(their sha256 in the JSON still holds).
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
    meta = seal_metadata(meta)
    dst.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{name}: metadata_sha256 {meta['metadata_sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
