"""Group level: aggregate what the participant level wrote."""

from __future__ import annotations

import csv
import io
import json

from ..config import Config
from ..errors import EX_OK, NoInputError, OutputBusy


def run_group(config: Config) -> int:
    """Write ``group_fodf.tsv`` (one row per fODF derivative with its key sidecar figures),
    ``group_bundlestats.tsv`` (one row per series x tracker x bundle; when trackers ran) and
    ``group.html``, all from the committed participant-level outputs."""
    from ..reports.group import collect_results, write_group_bundlestats, write_group_report
    from ..reports.subject import fod_parameters

    from ..io.commit import HIDDEN, unfinished, write_atomic

    out = config.execution.output_dir
    busy = unfinished(out)
    if busy:
        raise OutputBusy(f"a participant-level commit into {out} is unfinished ({', '.join(busy)}"
                         f" in {out / HIDDEN}): wait for it, or rerun that participant")
    sidecars = sorted(out.glob("sub-*/**/*_space-dwi_model-csd_param-fod_dwimap.json"))
    if not sidecars:
        raise NoInputError(f"no participant-level outputs in {out}: run 'participant' first")
    rows = []
    for path in sidecars:
        meta = json.loads(path.read_text())
        params = fod_parameters(meta)
        shells = params.get("shells_used", params.get("shells", []))
        rows.append({
            "file": str(path.relative_to(out)).removesuffix(".json") + ".nii.gz",
            "csd_method": params.get("method", ""),
            "shells": " ".join(str(s) for s in shells),
            "csd_seconds": meta.get("Timings", {}).get("CSDSeconds", ""),
            "version": meta.get("Version", ""),
        })
    table = out / "group_fodf.tsv"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), delimiter="\t")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(table, text.getvalue())
    print(f"gentract: group table of {len(rows)} series written to {table}")

    summaries, bundle_rows, bundle_columns = collect_results(out)
    if summaries:
        stats = write_group_bundlestats(out, bundle_rows, bundle_columns)
        print(f"gentract: per-bundle table of {len(summaries)} series x tracker results "
              f"({len(bundle_rows)} rows) written to {stats}")
    else:
        print("gentract: no tractograms in the participant-level outputs (fODF only): "
              "group_bundlestats.tsv not written")
    report = write_group_report(out, rows, summaries, bundle_rows)
    print(f"gentract: group report: {report}")
    return EX_OK
