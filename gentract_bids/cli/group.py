"""Group level: aggregate what the participant level wrote."""

from __future__ import annotations

import csv
import json

from ..config import Config
from ..errors import EX_OK, NoInputError


def run_group(config: Config) -> int:
    """Write ``group_fodf.tsv``: one row per fODF derivative with its key sidecar figures."""
    out = config.execution.output_dir
    sidecars = sorted(out.glob("sub-*/**/*_space-dwi_model-csd_param-fod_dwimap.json"))
    if not sidecars:
        raise NoInputError(f"no participant-level outputs in {out}: run 'participant' first")
    rows = []
    for path in sidecars:
        meta = json.loads(path.read_text())
        params = meta.get("Parameters", {})
        rows.append({
            "file": str(path.relative_to(out)).removesuffix(".json") + ".nii.gz",
            "csd_method": params.get("method", ""),
            "shells": " ".join(str(s) for s in params.get("shells", [])),
            "csd_seconds": meta.get("Timings", {}).get("CSDSeconds", ""),
            "version": meta.get("Version", ""),
        })
    table = out / "group_fodf.tsv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    print(f"gentract: group table of {len(rows)} series written to {table}")
    return EX_OK
