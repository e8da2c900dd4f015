#!/usr/bin/env python
"""Rebuild the packaged compact human anatomy from the TractSeg reference files and check it.

    python scripts/build_human_atlas.py [--source ../shared/data/external/tractseg-hcp] [--check]

Writes ``gentract_bids/data/anatomy/tractseg_hcp.npz`` and its ``.json`` (content checksum, source,
sizes), and copies the source's Apache-2.0 ``LICENSE`` beside them. With ``--check`` it writes
nothing and exits 1 unless the rebuilt content has the recorded checksum.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gentract_bids.phantom.atlas import (PACKAGED, compact_from_tractseg,  # noqa: E402
                                         content_checksum)

OUT = ROOT / "gentract_bids" / "data" / "anatomy"
SOURCE = "github.com/MIC-DKFZ/TractSeg tests/reference_files/ at commit bff9497"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--source", type=Path, default=ROOT.parent / "shared/data/external/tractseg-hcp")
    p.add_argument("--check", action="store_true", help="verify only; write nothing")
    args = p.parse_args(argv)
    arrays = compact_from_tractseg(args.source)
    digest = content_checksum(arrays)
    meta_file = (OUT / PACKAGED).with_suffix(".json")
    if args.check:
        recorded = json.loads(meta_file.read_text())["ContentSha256"]
        ok = recorded == digest
        print(f"{'OK' if ok else 'MISMATCH'}: rebuilt {digest}, recorded {recorded}")
        return 0 if ok else 1
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / PACKAGED, **arrays)
    meta = {"Name": "TractSeg HCP-like subject, compact form",
            "Source": SOURCE, "License": "Apache-2.0 (LICENSE beside this file)",
            "Citation": "Wasserthal J., Neher P., Maier-Hein K. H. TractSeg - Fast and accurate "
                        "white matter tract segmentation. NeuroImage 183:239-253 (2018). "
                        "doi:10.1016/j.neuroimage.2018.07.070",
            "Space": "MNI152NLin6Asym", "Bundles": int(len(arrays["names"])),
            "Shape": [int(s) for s in arrays["shape"]],
            "ContentSha256": digest,
            "Derivation": "masks bit-packed; TOMs (unit) and peaks (scaled) as int8 vectors in "
                          "RAS+ world axes, as in the source; FA as uint8; cropped to the "
                          "brain and every TOM + 2 voxels"}
    meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copyfile(args.source / "LICENSE", OUT / "LICENSE")
    print(f"wrote {OUT / PACKAGED} ({(OUT / PACKAGED).stat().st_size / 1e6:.2f} MB), sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
